"""Timing helpers for the benchmarks: medians of interleaved runs.

On a shared machine the load changes from second to second; taking turns between the things
compared makes that noise hit each alike, so their ratio is what a benchmark should report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timer(function: Callable[..., object], *args: object) -> Callable[[], float]:
    """A measurement: calling it runs ``function(*args)`` once and returns the seconds taken."""

    def once() -> float:
        start = time.perf_counter()
        function(*args)
        return time.perf_counter() - start

    return once


def interleaved_medians(measurements: list[Callable[[], float]], repeats: int) -> list[float]:
    """Median seconds of each measurement over ``repeats`` rounds, taking turns each round."""
    samples: list[list[float]] = [[] for _ in measurements]
    for _ in range(repeats):
        for measure, times in zip(measurements, samples, strict=True):
            times.append(measure())
    return [statistics.median(times) for times in samples]
