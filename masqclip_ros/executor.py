"""An rclpy executor with thread lanes: callback groups that own a thread pool of their own,
so that callbacks which wait (a find waiting for the next frame) never starve the others."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rclpy.callback_groups import CallbackGroup
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    ShutdownException,
    TimeoutException,
)
from rclpy.task import Future


class LaneExecutor(Executor):
    """An executor whose callback groups may own thread pools ("lanes"); the other callbacks
    share the default pool.

    rclpy's MultiThreadedExecutor runs every callback on one pool, so callbacks that wait
    (a find waiting for the next frame) can hold every thread while the image callback that
    would end their wait queues behind them. A callback of a lane never waits for a thread of
    another lane or of the default pool, nor takes one.

    :param lanes: callback group -> the threads of its own pool.
    :param num_threads: threads of the default pool.
    """

    def __init__(self, lanes: dict[CallbackGroup, int], num_threads: int = 4) -> None:
        super().__init__()
        self._default_pool = ThreadPoolExecutor(num_threads, 'masqclip-callbacks')
        self._lane_pools = {
            group: ThreadPoolExecutor(threads, f'masqclip-lane{number}')
            for number, (group, threads) in enumerate(lanes.items())
        }
        self._handlers: list[Future] = []

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self._spin_once_impl(timeout_sec)

    def _spin_once_until_future_complete(
        self, future: Future, timeout_sec: float | None = None
    ) -> None:  # what Executor.spin_until_future_complete calls
        self._spin_once_impl(timeout_sec, future.done)

    def _spin_once_impl(
        self, timeout_sec: float | None = None, wait_condition: Callable[[], bool] = lambda: False
    ) -> None:
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (
            ConditionReachedException,
            ExternalShutdownException,
            ShutdownException,
            TimeoutException,
        ):
            return
        group = getattr(entity, 'callback_group', None)
        self._lane_pools.get(group, self._default_pool).submit(handler)
        self._handlers.append(handler)
        for done in [handler for handler in self._handlers if handler.done()]:
            self._handlers.remove(done)
            done.result()  # a callback's exception stops spin, as in rclpy's executors

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        """Stop executing callbacks and wait for the running ones to finish."""
        finished = super().shutdown(timeout_sec)
        for pool in (self._default_pool, *self._lane_pools.values()):
            pool.shutdown(wait=True)
        return finished
