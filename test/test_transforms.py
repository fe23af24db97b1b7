"""The test-time resize and padding, against what the reference (detectron2) does."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masqclip.inference import postprocess
from masqclip.inference.postprocess import (
    ImageSizeMaskLogits,
    cropped_mask,
    instance_inference,
    panoptic_inference,
)
from masqclip.inference.transforms import (
    image_to_tensor,
    mask_logits_to_image,
    plan_resize,
    resize_axes,
)

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'


def shipped_images() -> list[np.ndarray]:
    """The shipped 64-px scenes (the sequence's PNGs are label and depth maps)."""
    paths = [EXAMPLES / 'scene.png', *sorted((EXAMPLES / 'frames').glob('*.png'))]
    assert paths, 'no shipped example images'
    return [np.asarray(Image.open(path).convert('RGB')) for path in paths]


def photo_sized(images: list[np.ndarray]) -> np.ndarray:
    """The shipped scenes tiled into one 640x480-ish picture full of sharp edges."""
    row = np.concatenate(images * 2, axis=1)[:, :640]
    return np.ascontiguousarray(np.concatenate([row] * 8, axis=0)[:480])


def pil_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def canvas_content(image: np.ndarray, min_size: int, max_size: int) -> tuple[np.ndarray, tuple]:
    spec = plan_resize(*image.shape[:2], min_size, max_size, 32)
    canvas = image_to_tensor(image, spec)[0].permute(1, 2, 0).numpy()
    return canvas, spec


def test_the_network_input_is_contiguous():
    """A compiled image path is specialised to the contiguous layout it was traced with."""
    image = shipped_images()[0]
    tensor = image_to_tensor(image, plan_resize(*image.shape[:2], 64, 128, 32))
    assert tensor.is_contiguous() and tensor.dtype == torch.float32


@pytest.mark.parametrize(('min_size', 'max_size'), [(800, 1333), (200, 400), (64, 128)])
def test_resize_matches_pil_bilinear_within_one_grey_level(min_size, max_size):
    images = shipped_images()
    for image in [*images, photo_sized(images)]:
        canvas, spec = canvas_content(image, min_size, max_size)
        h, w = spec.resized
        want = pil_bilinear(image, h, w).astype(np.float32)
        assert np.abs(canvas[:h, :w] - want).max() <= 1.0, (image.shape, spec)
        # Black padding: CLIP sees it as it is (the proposer fills it itself).
        assert not canvas[h:].any() and not canvas[:, w:].any()


def test_plan_resize_rounds_as_detectron2():
    # ResizeShortestEdge: the short side exactly min_size, the long side int(x + 0.5).
    assert plan_resize(480, 640, 800, 1333, 32).resized == (800, 1067)
    assert plan_resize(480, 640, 800, 1333, 32).padded == (800, 1088)
    # 21x42 hits the 1333 cap: 21 * 1333 / 42 = 666.5 rounds half up (not to even, 666).
    assert plan_resize(21, 42, 800, 1333, 32).resized == (667, 1333)
    assert plan_resize(28, 56, 800, 1333, 32).resized == (667, 1333)


def test_shrinking_is_antialiased():
    """A one-pixel checkerboard shrunk 3x is near mid-grey (PIL's filter averages); a plain
    bilinear sampler lands on single pixels and keeps black and white."""
    board = (np.indices((192, 192)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[..., None], 3, axis=2)
    canvas, spec = canvas_content(image, 64, 128)
    content = canvas[: spec.resized[0], : spec.resized[1]]
    assert np.abs(content - 127.5).max() < 30


@pytest.mark.parametrize(
    'image_size, geometry',
    [
        ((70, 85), (64, 128, 32)),  # padded, then resized back up
        ((480, 640), (480, 640, 32)),  # the network input is the frame itself
        ((480, 640), (64, 128, 32)),  # the demo model on a camera frame
        ((2160, 3840), (480, 1333, 32)),  # 4K
    ],
)
def test_resize_axes_are_mask_logits_to_image(image_size, geometry):
    spec = plan_resize(*image_size, *geometry)
    low_res = torch.randn(3, spec.padded[0] // 4, spec.padded[1] // 4) * 3
    rows, cols = resize_axes(spec, tuple(low_res.shape[-2:]))
    dense = mask_logits_to_image(low_res, spec)
    torch.testing.assert_close(rows.weights @ low_res @ cols.weights.T, dense, atol=1e-5, rtol=0)
    for axis in (rows, cols):
        assert (axis.weights >= 0).all()  # what lets a crop read only its band
        used = axis.weights > 0
        for inputs in (torch.rand(used.shape[1]) < 0.1, torch.zeros(used.shape[1], dtype=bool)):
            reached = used[:, inputs].any(dim=1).nonzero().flatten().tolist()
            first, end = axis.outputs_reached(inputs)
            assert list(range(first, end)) == list(
                range(reached[0], reached[-1] + 1) if reached else []
            )
        read = used[10:30].any(dim=0).nonzero().flatten().tolist()
        assert axis.inputs_read(10, 30) == (read[0], read[-1] + 1)


def test_image_size_mask_logits_equal_one_resize_of_all_proposals():
    torch.manual_seed(0)
    low_res = torch.randn(7, 16, 24) * 3
    low_res[3] = -1.0  # an empty mask
    low_res[4] = -1.0
    low_res[4, 5, 7] = 2.0  # a mask of one low-resolution cell
    low_res[5] = -2.0
    low_res[5, 3:7, 4:10] = torch.rand(4, 6) * 3  # a compact object: a window read
    spec = plan_resize(70, 85, 64, 128, 32)
    dense = mask_logits_to_image(low_res, spec)
    lazy = ImageSizeMaskLogits(low_res, spec)
    assert lazy.shape == tuple(dense.shape) and len(lazy) == 7
    for query in range(7):
        torch.testing.assert_close(lazy[query], dense[query], atol=1e-5, rtol=0)
        want, got = cropped_mask(dense[query]), lazy.cropped(query)
        assert got[0] == pytest.approx(want[0], abs=1e-6)
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    # Post-processing one proposal at a time gives what it gives on all of them at once.
    scores = torch.rand(7, 3)
    is_thing = torch.tensor([True, False, True])
    want_map, want_segments = panoptic_inference(scores, dense, is_thing, 0.1, 0.2)
    got_map, got_segments = panoptic_inference(scores, lazy, is_thing, 0.1, 0.2)
    assert torch.equal(got_map, want_map) and got_segments == want_segments
    want = instance_inference(scores, dense, 10, is_thing)
    got = instance_inference(scores, lazy, 10, is_thing)
    assert got.query_indices.tolist() == want.query_indices.tolist()
    assert torch.equal(got.paste_masks(*spec.original), want.paste_masks(*spec.original))
    torch.testing.assert_close(got.scores, want.scores)


def test_instance_inference_reuses_the_crops_panoptic_inference_made(monkeypatch):
    torch.manual_seed(1)
    low_res = torch.randn(7, 16, 24) * 3
    spec = plan_resize(70, 85, 64, 128, 32)
    scores, is_thing = torch.rand(7, 3), torch.tensor([True, False, True])
    want = instance_inference(scores, mask_logits_to_image(low_res, spec), 10, is_thing)
    resized = []  # every full read and every window read

    def counting_full(logits, spec):
        resized.append('full')
        return mask_logits_to_image(logits, spec)

    def counting_window(self, query, rows, cols):
        resized.append('window')
        return resize_window(self, query, rows, cols)

    resize_window = ImageSizeMaskLogits._resize_window
    monkeypatch.setattr(postprocess, 'mask_logits_to_image', counting_full)
    monkeypatch.setattr(ImageSizeMaskLogits, '_resize_window', counting_window)
    _, candidates, _ = postprocess.top_instance_pairs(scores, 10, is_thing)
    lazy = ImageSizeMaskLogits(low_res, spec, keep_crops=candidates.tolist())
    _, segments = panoptic_inference(scores, lazy, is_thing, 0.0, 0.0)
    panoptic_reads = len(resized)
    got = instance_inference(scores, lazy, 10, is_thing)
    # Panoptic read every proposal (no threshold), so instances resized none again.
    assert panoptic_reads == 7 and len(resized) == 7
    assert got.query_indices.tolist() == want.query_indices.tolist()
    assert torch.equal(got.paste_masks(*spec.original), want.paste_masks(*spec.original))
    torch.testing.assert_close(got.scores, want.scores)
