"""A heartbeat for long operations: a log line at a fixed interval until the work ends."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

logger = logging.getLogger('masqclip')


class Heartbeat:
    """Logs ``'<what> running for N s (<status>)'`` every ``interval_s`` inside a ``with``.

    TensorRT reports phases through ``IProgressMonitor``, but one tactic-timing phase can run
    for minutes without a step; this thread guarantees a line at least every interval whatever
    the builder reports. Others update the status with ``set_status`` (thread-safe).

    :param what: names the operation in the log lines.
    :param interval_s: seconds between lines.
    """

    def __init__(self, what: str, interval_s: float = 10.0) -> None:
        self.what = what
        self.interval_s = interval_s
        self._status = 'starting'
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='masqclip-heartbeat', daemon=True)
        self._start = 0.0

    def set_status(self, status: str) -> None:
        """Replace the text shown in the next line."""
        with self._lock:
            self._status = status

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def __enter__(self) -> Heartbeat:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                status = self._status
            logger.info('%s running for %.0f s (%s)', self.what, self.elapsed_s, status)
