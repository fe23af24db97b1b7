"""masqclip_node in a child process: what the demo, the benchmark and the tests start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory


def share_directory() -> Path:
    """The installed package share (launch/, config/, examples/), else the checkout."""
    try:
        return Path(get_package_share_directory('masqclip_ros'))
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH (not sourced)
        return Path(__file__).resolve().parents[1]


class NodeProcess:
    """``python -m masqclip_ros.node`` with a parameters file plus ``-p`` overrides, its output
    in ``log_path``; ``stop()`` shuts it down as Ctrl-C would.

    :param overrides: parameter name -> value, as ``ros2 run ... -p name:=value`` takes it.
    :param name: the node's name (remapped with ``__node``).
    :param namespace: the node's namespace (remapped with ``__ns``), e.g. ``/robot1``.
    """

    def __init__(
        self,
        log_path: Path,
        params_file: str | Path | None = None,
        overrides: dict[str, str] | None = None,
        name: str = 'masqclip_node',
        namespace: str = '/',
    ) -> None:
        params_file = params_file or share_directory() / 'config' / 'segment.yaml'
        command = [sys.executable, '-m', 'masqclip_ros.node', '--ros-args',
                   '--params-file', str(params_file),
                   '-r', f'__node:={name}', '-r', f'__ns:={namespace}']  # fmt: skip
        for key, value in (overrides or {}).items():
            command += ['-p', f'{key}:={value}']
        # Unbuffered, so the log is complete when a test reads it.
        env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM='0', PYTHONUNBUFFERED='1')
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'w')  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGINT, then SIGKILL after 15 s; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
