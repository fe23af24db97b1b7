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
from masqclip.visualization import (
    MAX_FONT_SCALE,
    MIN_FONT_SCALE,
    LabelBox,
    draw_overlay,
    label_color,
    label_layout,
    overlay_style,
)

HEIGHT, WIDTH = 64, 80
VOCABULARY = ('person', 'wall', 'sky', 'car', 'dog', 'mug')


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _instance(
    label: str, score: float, rows: slice, cols: slice, size: tuple[int, int] = (HEIGHT, WIDTH)
) -> Instance:
    mask = np.zeros(size, dtype=bool)
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
    assert label_color('mug') == (20, 61, 213)
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


SCENE = (120, 160)


def _scene() -> SegmentationResult:
    """Three separate instances, best first: one on the top edge (no room above it), one
    on the left edge, one free."""
    return SegmentationResult(
        image_size=SCENE,
        vocabulary=VOCABULARY,
        instances=[
            _instance('person', 0.87, slice(0, 40), slice(5, 45), SCENE),
            _instance('car', 0.61, slice(60, 100), slice(100, 150), SCENE),
            _instance('dog', 0.42, slice(70, 118), slice(0, 30), SCENE),
        ],
    )


def _pixels(mask: np.ndarray, box: tuple[int, int, int, int]) -> int:
    x0, y0, x1, y1 = box
    return int(mask[y0:y1, x0:x1].sum())


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _assert_pairwise_disjoint(labels: list[LabelBox]) -> None:
    for i, first in enumerate(labels):
        for second in labels[i + 1 :]:
            assert _disjoint(first.box, second.box), (first, second)


def test_pen_sizes_grow_with_the_image_within_bounds() -> None:
    sizes = [(64, 64), (240, 320), (480, 640), (1080, 1920), (2160, 3840), (8000, 8000)]
    styles = [overlay_style(size) for size in sizes]
    scales = [style.font_scale for style in styles]
    assert scales == sorted(scales)
    assert scales[0] == MIN_FONT_SCALE
    assert scales[-1] == MAX_FONT_SCALE
    assert scales[2] < scales[3] < scales[4]
    lines = [style.line_thickness for style in styles]
    assert lines == sorted(lines)
    assert lines[0] == 1 < lines[3]


def test_labels_are_small_on_tiny_images_and_legible_on_large_ones() -> None:
    def label_height(size: tuple[int, int]) -> int:
        rows, cols = slice(size[0] // 2, size[0]), slice(0, size[1] // 2)
        result = SegmentationResult(
            image_size=size,
            vocabulary=VOCABULARY,
            instances=[_instance('mug', 0.87, rows, cols, size)],
        )
        (label,) = label_layout(result)
        x0, y0, x1, y1 = label.box
        assert x1 - x0 <= size[1]
        return y1 - y0

    # On 64 x 64 a label is no taller than a fifth of the image (a small object's size);
    # on 1080p its box is taller than a 1080 / 40 = 27-pixel line of text.
    assert label_height((64, 64)) <= 64 // 5
    assert label_height((1080, 1920)) > 1080 // 40


def test_instance_labels_never_cover_their_own_mask() -> None:
    result = _scene()
    labels = label_layout(result)
    assert [label.index for label in labels] == [0, 1, 2]
    for label in labels:
        x0, y0, x1, y1 = label.box
        assert 0 <= x0 < x1 <= SCENE[1]
        assert 0 <= y0 < y1 <= SCENE[0]
        assert _pixels(result.instances[label.index].mask, label.box) == 0, label
    # The person touches the top edge: its label goes below it, not clipped onto it.
    assert labels[0].box[1] >= 40
    _assert_pairwise_disjoint(labels)


def test_instance_labels_avoid_each_other_when_there_is_room() -> None:
    # Two narrow neighbours: both labels are wider than the objects, so the first choice
    # of each (above, left-aligned) would collide.
    result = SegmentationResult(
        image_size=SCENE,
        vocabulary=VOCABULARY,
        instances=[
            _instance('person', 0.9, slice(40, 80), slice(10, 30), SCENE),
            _instance('car', 0.8, slice(40, 80), slice(33, 53), SCENE),
        ],
    )
    labels = label_layout(result)
    _assert_pairwise_disjoint(labels)
    for label in labels:
        assert _pixels(result.instances[label.index].mask, label.box) == 0


def test_label_texts_name_and_score() -> None:
    assert [label.text for label in label_layout(_scene())] == [
        'person 0.87',
        'car 0.61',
        'dog 0.42',
    ]
    semantic = np.full((HEIGHT, WIDTH), UNLABELED, dtype=np.int32)
    semantic[:30] = 2
    regions = SegmentationResult(
        image_size=(HEIGHT, WIDTH), vocabulary=VOCABULARY, semantic=semantic
    )
    assert [label.text for label in label_layout(regions)] == ['sky']


def test_panoptic_labels_stand_on_their_segment_and_off_each_other() -> None:
    # Two 20-pixel strips side by side: labels centred on each strip (both about 30
    # pixels wide, at the same height) would collide.
    result = _panoptic_result()
    result.panoptic = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    result.panoptic[:, :20] = 1
    result.panoptic[:, 20:40] = 2
    labels = label_layout(result)
    assert [(label.index, label.text) for label in labels] == [
        (1, 'wall 0.60'),
        (2, 'person 0.80'),
    ]
    _assert_pairwise_disjoint(labels)
    for label in labels:
        assert _pixels(result.panoptic == label.index, label.box) > 0


def test_drawn_labels_sit_where_the_layout_says_and_off_the_masks() -> None:
    result = _scene()
    image = np.full((*SCENE, 3), 128, dtype=np.uint8)
    drawn = draw_overlay(image, result, alpha=1.0)
    for instance in result.instances:
        # Every mask pixel shows the fill: no label text landed on any object.
        assert np.all(drawn[instance.mask] == label_color(instance.label))
    for label in label_layout(result):
        x0, y0, x1, y1 = label.box
        assert tuple(drawn[y0, x0]) == label.color
        assert tuple(drawn[y1 - 1, x1 - 1]) == label.color
        text_pixels = np.any(drawn[y0:y1, x0:x1] != label.color, axis=-1)
        assert text_pixels.any()


def test_colors_override_the_label_colour_per_index() -> None:
    result = _scene()
    track_red = (255, 0, 0)
    image = np.full((*SCENE, 3), 128, dtype=np.uint8)
    drawn = draw_overlay(image, result, alpha=1.0, colors={1: track_red})
    assert np.all(drawn[result.instances[1].mask] == track_red)
    assert np.all(drawn[result.instances[0].mask] == label_color('person'))
    labels = label_layout(result, colors={1: track_red})
    assert [label.color for label in labels] == [
        label_color('person'),
        track_red,
        label_color('dog'),
    ]


def test_label_text_is_black_or_white_by_contrast() -> None:
    def ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
        return LabelBox(0, 'x', color, (0, 0, 1, 1)).text_color

    black, white = (0, 0, 0), (255, 255, 255)
    assert ink(label_color('person')) == black  # (181, 225, 91), a light green
    assert ink(label_color('mug')) == white  # (20, 61, 213), a dark blue
    assert ink((255, 255, 0)) == black
    assert ink((128, 0, 128)) == white
    # Pure red: black contrasts 5.3:1, white only 4.0:1.
    assert ink((255, 0, 0)) == black
