"""Overlay drawing and label colours."""

from dataclasses import replace

import numpy as np
import pytest

from masqclip.inference.results import (
    UNLABELED,
    Instance,
    PanopticSegment,
    SegmentationResult,
)
from masqclip.visualization import draw_overlay, label_color

HEIGHT, WIDTH = 64, 80
VOCABULARY = ('person', 'wall', 'sky')


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _instance(label: str, score: float, rows: slice, cols: slice) -> Instance:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[rows, cols] = True
    return Instance.from_mask(
        label, VOCABULARY.index(label), score, 0.9, mask, np.zeros(8, dtype=np.float32), 0
    )


def _panoptic_result() -> SegmentationResult:
    panoptic = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    panoptic[:, :40] = 1
    panoptic[:, 40:70] = 2
    segments = [
        PanopticSegment(id=1, class_id=1, label='wall', is_thing=False, score=0.6, area=2560),
        PanopticSegment(id=2, class_id=0, label='person', is_thing=True, score=0.8, area=1920),
    ]
    return SegmentationResult(
        image_size=(HEIGHT, WIDTH), vocabulary=VOCABULARY, panoptic=panoptic, segments=segments
    )


def test_label_color_is_stable_and_distinct() -> None:
    # A literal: a colour that changed between runs or processes (a salted hash) fails here.
    assert label_color('person') == (181, 225, 91)
    assert label_color('person') == label_color('person')
    names = ['person', 'car', 'wall', 'sky', 'tree', 'road', 'dog', 'cat', 'window ']
    colors = [label_color(name) for name in names]
    assert len(set(colors)) == len(names)
    for color in colors:
        assert len(color) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in color)


def test_empty_result_draws_the_image_unchanged() -> None:
    image = _image()
    result = SegmentationResult(image_size=(HEIGHT, WIDTH), vocabulary=VOCABULARY)
    drawn = draw_overlay(image, result)
    assert drawn is not image
    assert np.array_equal(drawn, image)
    instances_only = draw_overlay(image, result, show='instances')
    assert np.array_equal(instances_only, image)


def test_instances_are_blended_outlined_and_input_untouched() -> None:
    image = _image()
    original = image.copy()
    empty = replace(_instance('sky', 0.1, slice(0, 0), slice(0, 0)), box=np.zeros(4, np.float32))
    result = SegmentationResult(
        image_size=(HEIGHT, WIDTH),
        vocabulary=VOCABULARY,
        instances=[_instance('person', 0.87, slice(20, 50), slice(10, 40)), empty],
    )
    drawn = draw_overlay(image, result, alpha=1.0)
    assert drawn.shape == image.shape
    assert drawn.dtype == np.uint8
    assert np.array_equal(image, original)
    # Inside the mask, far from the label and outline: exactly the label colour.
    assert tuple(drawn[40, 25]) == label_color('person')
    # Far from the instance nothing changes.
    assert np.array_equal(drawn[:, 60:], image[:, 60:])
    # The label is written above the box.
    assert not np.array_equal(drawn[5:20, 10:40], image[5:20, 10:40])

    half = draw_overlay(image, result, alpha=0.5)
    expected = np.rint(0.5 * image[40, 25] + 0.5 * np.array(label_color('person')))
    assert np.array_equal(half[40, 25], expected.astype(np.uint8))


def test_auto_prefers_panoptic_over_instances() -> None:
    image = _image()
    result = _panoptic_result()
    result.instances = [_instance('sky', 0.9, slice(0, 64), slice(0, 80))]
    drawn = draw_overlay(image, result, alpha=1.0)
    assert tuple(drawn[50, 5]) == label_color('wall')
    assert tuple(drawn[50, 45]) == label_color('person')
    # Void (id 0) stays as it is (away from the labels, written mid-height).
    assert np.array_equal(drawn[48:, 72:], image[48:, 72:])
    instances = draw_overlay(image, result, alpha=1.0, show='instances')
    assert tuple(instances[50, 45]) == label_color('sky')


def test_semantic_map_leaves_unlabeled_pixels() -> None:
    image = _image()
    semantic = np.full((HEIGHT, WIDTH), UNLABELED, dtype=np.int32)
    semantic[:30] = 2
    result = SegmentationResult(
        image_size=(HEIGHT, WIDTH), vocabulary=VOCABULARY, semantic=semantic
    )
    drawn = draw_overlay(image, result, alpha=1.0)
    assert tuple(drawn[2, 2]) == label_color('sky')
    assert np.array_equal(drawn[34:], image[34:])


def test_draw_overlay_rejects_bad_arguments() -> None:
    image = _image()
    result = SegmentationResult(image_size=(HEIGHT, WIDTH), vocabulary=VOCABULARY)
    with pytest.raises(ValueError, match='no semantic map'):
        draw_overlay(image, result, show='semantic')
    with pytest.raises(ValueError, match='show'):
        draw_overlay(image, result, show='boxes')
    with pytest.raises(ValueError, match='alpha'):
        draw_overlay(image, result, alpha=1.5)
    with pytest.raises(ValueError, match='computed on'):
        draw_overlay(image[:32], result)
    with pytest.raises(ValueError, match='uint8'):
        draw_overlay(image.astype(np.float32), result)
