"""masqclip.animation: the GIF read back with Pillow, the contact sheet's grid and captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageSequence

from masqclip.animation import CAPTION_HEIGHT, contact_sheet, evenly_spaced, shrink, write_gif

H, W = 30, 40


def distinct_frames(count: int) -> list[np.ndarray]:
    """Frames no two alike (Pillow would merge equal neighbours), each one flat colour."""
    return [np.full((H, W, 3), (20 * k, 255 - 20 * k, 100), np.uint8) for k in range(count)]


@pytest.mark.parametrize(('fps', 'duration_ms'), [(10, 100), (4, 250), (30, 30)])
def test_gif_has_every_frame_at_the_rate(tmp_path, fps, duration_ms):
    path = tmp_path / 'a.gif'
    frames = distinct_frames(5)
    write_gif(frames, path, fps)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.info['loop'] == 0
        played = [
            (frame.info['duration'], frame.convert('RGB')) for frame in ImageSequence.Iterator(gif)
        ]
    assert [duration for duration, _ in played] == [duration_ms] * 5
    for (_, image), frame in zip(played, frames, strict=True):
        assert image.size == (W, H)
        # Flat colours survive the palette within a small error.
        assert np.abs(np.asarray(image).astype(int) - frame).max() <= 8


def test_gif_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match='at least one'):
        write_gif([], tmp_path / 'a.gif', 10)
    with pytest.raises(ValueError, match='fps'):
        write_gif(distinct_frames(2), tmp_path / 'a.gif', 0)
    with pytest.raises(ValueError, match='shapes'):
        write_gif(
            [distinct_frames(1)[0], np.zeros((H + 1, W, 3), np.uint8)], tmp_path / 'a.gif', 5
        )


def test_contact_sheet_lays_tiles_out_in_rows_with_captions_below():
    frames = distinct_frames(5)
    sheet = contact_sheet(frames, 3, [f'frame {k}' for k in range(5)])
    cell = H + CAPTION_HEIGHT
    assert sheet.shape == (2 * cell, 3 * W, 3) and sheet.dtype == np.uint8
    for k, frame in enumerate(frames):
        top, left = k // 3 * cell, k % 3 * W
        np.testing.assert_array_equal(sheet[top : top + H, left : left + W], frame)
        caption = sheet[top + H : top + cell, left : left + W]
        assert caption.max() > 200, f'caption {k} is drawn in white'
    # The sixth cell has no frame: black, caption included.
    assert sheet[cell:, 2 * W :].max() == 0


def test_an_empty_caption_leaves_its_strip_black():
    sheet = contact_sheet(distinct_frames(2), 2, ['', 'x'])
    assert sheet[H:, :W].max() == 0
    assert sheet[H:, W:].max() > 200


def test_contact_sheet_refuses_mismatched_input():
    with pytest.raises(ValueError, match='one each'):
        contact_sheet(distinct_frames(3), 2, ['a', 'b'])
    with pytest.raises(ValueError, match='columns'):
        contact_sheet(distinct_frames(1), 0, ['a'])
    with pytest.raises(ValueError, match='at least one'):
        contact_sheet([], 2, [])


@pytest.mark.parametrize(
    ('count', 'n', 'expected'),
    [(10, 4, [0, 3, 6, 9]), (3, 5, [0, 1, 2]), (7, 1, [0]), (7, 0, []), (150, 2, [0, 149])],
)
def test_evenly_spaced_takes_first_and_last(count, n, expected):
    assert evenly_spaced(count, n) == expected


def test_shrink_keeps_the_aspect_and_never_enlarges():
    frame = np.zeros((480, 640, 3), np.uint8)
    assert shrink(frame, 320).shape == (240, 320, 3)
    assert shrink(frame, 800) is frame
