"""Image sequences at a glance: an animated GIF to play, a contact sheet to look at.

Pure functions of uint8 RGB frames (numpy, Pillow for GIF, OpenCV for resizing and captions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CAPTION_HEIGHT = 24
"""Pixels of the strip under each contact-sheet tile that holds its caption."""


def evenly_spaced(count: int, n: int) -> list[int]:
    """Indices of ``n`` of ``count`` items spread evenly, first and last included; every
    index when ``n >= count``."""
    if n >= count:
        return list(range(count))
    if n <= 0:
        return []
    if n == 1:
        return [0]
    return [round(k * (count - 1) / (n - 1)) for k in range(n)]


def shrink(frame: np.ndarray, width: int) -> np.ndarray:
    """``frame`` scaled down to ``width`` pixels across, aspect kept; unchanged when it is
    no wider."""
    height, current = frame.shape[:2]
    if current <= width:
        return frame
    size = (width, max(1, round(height * width / current)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> None:
    """Write RGB frames as a GIF that loops forever, ``1 / fps`` seconds per frame.

    GIF stores durations in hundredths of a second, so the duration is rounded to 10 ms.
    Pillow merges a frame identical to the one before into a single longer frame.

    :param frames: uint8 (H, W, 3) RGB, all of one size; at least one.
    :param path: the ``.gif`` file to write.
    :param fps: frames per second, > 0.
    :raises ValueError: no frames, frames of different sizes, or fps <= 0.
    """
    if not frames:
        raise ValueError('write_gif needs at least one frame')
    if fps <= 0:
        raise ValueError(f'write_gif needs fps > 0, got {fps}')
    _check_same_size(frames)
    duration_ms = 10 * max(1, round(100 / fps))
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def contact_sheet(
    frames: Sequence[np.ndarray], columns: int, captions: Sequence[str]
) -> np.ndarray:
    """Frames in a grid, left to right then top to bottom, each above its caption.

    :param frames: uint8 (H, W, 3) RGB, all of one size; at least one.
    :param columns: tiles per row, >= 1.
    :param captions: one per frame, white on black in a ``CAPTION_HEIGHT`` strip under it
        (cut at the tile's right edge).
    :return: uint8 (rows x (H + CAPTION_HEIGHT), columns x W, 3) RGB, black where a row has
        fewer tiles than ``columns``.
    :raises ValueError: no frames, frames of different sizes, columns < 1, or not one caption
        per frame.
    """
    if not frames:
        raise ValueError('contact_sheet needs at least one frame')
    if columns < 1:
        raise ValueError(f'contact_sheet needs columns >= 1, got {columns}')
    if len(captions) != len(frames):
        raise ValueError(f'{len(captions)} captions for {len(frames)} frames: give one each')
    _check_same_size(frames)
    height, width = frames[0].shape[:2]
    cell = height + CAPTION_HEIGHT
    rows = -(-len(frames) // columns)
    sheet = np.zeros((rows * cell, columns * width, 3), np.uint8)
    for index, (frame, caption) in enumerate(zip(frames, captions, strict=True)):
        top, left = index // columns * cell, index % columns * width
        sheet[top : top + height, left : left + width] = frame
        sheet[top + height : top + cell, left : left + width] = _caption_strip(caption, width)
    return sheet


def _caption_strip(text: str, width: int) -> np.ndarray:
    # Drawn on a strip of its own, so a long caption is cut at its tile's edge.
    strip = np.zeros((CAPTION_HEIGHT, width, 3), np.uint8)
    cv2.putText(strip, text, (4, CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return strip


def _check_same_size(frames: Sequence[np.ndarray]) -> None:
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise ValueError(f'frames of different shapes {sorted(sizes)}: give one size')
