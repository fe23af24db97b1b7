"""Helpers for the benchmarks: medians of interleaved runs, and image-path inputs.

On a shared machine the load changes from second to second; taking turns between the things
compared makes that noise hit each alike, so their ratio is what a benchmark should report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from masqclip.inference.transforms import plan_resize


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


def frame_inputs(
    config: dict, frame_size: tuple[int, int], device: str | torch.device = 'cpu', seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image-path input as the predictor makes it for a camera frame of ``frame_size``
    (H, W): the network-input canvas with random content and black padding, and the content's
    size (images [1, 3, Hp, Wp], image sizes [1, 2])."""
    pre = config['preprocess']
    plan = plan_resize(*frame_size, pre['min_size'], pre['max_size'], pre['size_divisibility'])
    (h, w), generator = plan.resized, torch.Generator().manual_seed(seed)
    images = torch.zeros(1, 3, *plan.padded)
    images[..., :h, :w] = torch.rand(1, 3, h, w, generator=generator) * 255
    return images.to(device), torch.tensor([plan.resized], device=device)
