"""Drawing a :class:`SegmentationResult` over its image (numpy and OpenCV only, no torch).

Colours come from the label text, so a class has the same colour in every frame, run and
process, and in every tool that uses :func:`label_color`; ``colors=`` overrides them per
drawn item (e.g. an instance by its track id), as ``texts=`` does their labels. Pen sizes
follow the image's shorter side (:func:`overlay_style`), and :func:`label_layout` places the
labels: off the object they name, and off each other where there is room.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import cv2
import numpy as np

from masqclip.inference.results import SegmentationResult

SHOW_MODES = ('auto', 'panoptic', 'instances', 'semantic')
"""Values of ``draw_overlay``'s ``show``."""

MIN_FONT_SCALE = 0.25
"""Font scale up to a 250-pixel shorter side: text about 7 pixels tall, the smallest that
stays readable, and still smaller than the objects of a 64 x 64 image."""

MAX_FONT_SCALE = 2.5
"""Font scale from a 2500-pixel shorter side on: text about 70 pixels tall."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX

Rgb = tuple[int, int, int]
Rect = tuple[int, int, int, int]
"""x0, y0, x1, y1 in pixels, x1/y1 exclusive (as ``Instance.box``)."""


def label_color(label: str) -> Rgb:
    """A stable RGB colour for a label, derived from a hash of its text.

    The hash is SHA-256 (Python's ``hash`` is salted per process). Hue spans the whole
    circle; saturation and value stay high so every colour shows up on a photograph.

    :param label: the class name.
    :return: (r, g, b), each in 0..255.
    """
    digest = hashlib.sha256(label.encode('utf-8')).digest()
    hue = int.from_bytes(digest[:2], 'big') / 65536.0
    saturation = 0.55 + 0.4 * digest[2] / 255.0
    value = 0.75 + 0.25 * digest[3] / 255.0
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


@dataclass(frozen=True)
class OverlayStyle:
    """Pen sizes for one image size.

    :param line_thickness: width of the mask outlines, in pixels.
    :param font_scale: OpenCV font scale of the label text.
    :param font_thickness: stroke width of the label text, in pixels.
    :param padding: pixels between the label text and the edge of its box.
    """

    line_thickness: int
    font_scale: float
    font_thickness: int
    padding: int


def overlay_style(image_size: tuple[int, int]) -> OverlayStyle:
    """Pen sizes that grow with the image's shorter side.

    Text is about 2.7 % of the shorter side tall (13 pixels at 480, 29 at 1080), within
    ``MIN_FONT_SCALE`` and ``MAX_FONT_SCALE``.

    :param image_size: (H, W) of the image.
    """
    short_side = min(image_size)
    font_scale = float(np.clip(short_side / 1000, MIN_FONT_SCALE, MAX_FONT_SCALE))
    return OverlayStyle(
        line_thickness=max(1, round(short_side / 320)),
        font_scale=font_scale,
        font_thickness=max(1, round(2 * font_scale)),
        padding=max(1, round(4 * font_scale)),
    )


@dataclass(frozen=True)
class LabelBox:
    """One placed label: ``text`` on a box filled with ``color``.

    :param index: what the label names: the instance's position in ``result.instances``,
        the panoptic segment's id, or the semantic class id (the keys of ``colors=``).
    :param text: 'name score' for instances and panoptic segments, 'name' for semantic
        regions.
    :param color: RGB fill of the box, the colour its mask is drawn in.
    :param box: where the box goes, inside the image.
    """

    index: int
    text: str
    color: Rgb
    box: Rect

    @property
    def text_color(self) -> Rgb:
        """Black or white, whichever has the higher WCAG contrast ratio with ``color``."""
        luminance = _relative_luminance(self.color)
        black_contrast = (luminance + 0.05) / 0.05
        white_contrast = 1.05 / (luminance + 0.05)
        return (0, 0, 0) if black_contrast >= white_contrast else (255, 255, 255)


@dataclass(frozen=True)
class _Item:
    """One thing to fill, outline and label, its mask as the crop inside ``box``.

    :param is_region: True for panoptic segments and semantic regions, whose label may
        sit inside them; an instance's label must not cover it.
    """

    index: int
    text: str
    color: Rgb
    box: Rect
    crop: np.ndarray
    is_region: bool


def draw_overlay(
    image_rgb: np.ndarray,
    result: SegmentationResult,
    alpha: float = 0.5,
    show: str = 'auto',
    *,
    colors: Mapping[int, Rgb] | None = None,
    texts: Mapping[int, str] | None = None,
) -> np.ndarray:
    """Draw segmentation output over a copy of the image.

    Masks and regions are alpha-blended in their colour and outlined, then labelled where
    :func:`label_layout` says, on a box of their colour with black or white text.

    :param image_rgb: uint8 (H, W, 3) RGB image the result was computed on; not modified.
    :param result: the segmentation of ``image_rgb``.
    :param alpha: opacity of the colour fill, in [0, 1].
    :param show: 'panoptic', 'instances', 'semantic', or 'auto' = the panoptic map if
        present, else the instances if any, else the semantic map if present.
    :param colors: RGB colours that replace the label colour, keyed as
        :attr:`LabelBox.index` (e.g. an instance's position -> its track's colour).
    :param texts: label texts that replace the default ones (:attr:`LabelBox.text`), keyed
        as ``colors`` (e.g. '#7 mug 0.81' for a tracked instance).
    :return: uint8 (H, W, 3) RGB drawing; a plain copy of the image when there is nothing
        to draw.
    """
    _check_image(image_rgb, result)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    items = _items(result, show, colors or {}, texts or {})
    style = overlay_style(result.image_size)
    canvas = np.ascontiguousarray(image_rgb).copy()
    # Items come best first; paint in reverse so the best ends up on top.
    painting_order = items[::-1]
    for item in painting_order:
        _fill(canvas, item, alpha)
    # Outlines after every fill, so a neighbour's fill does not hide them.
    for item in painting_order:
        _outline(canvas, item, style)
    for label in reversed(_layout(items, result.image_size, style)):
        _draw_label(canvas, label, style)
    return canvas


def label_layout(
    result: SegmentationResult,
    show: str = 'auto',
    *,
    colors: Mapping[int, Rgb] | None = None,
    texts: Mapping[int, str] | None = None,
) -> list[LabelBox]:
    """Where :func:`draw_overlay` puts its labels, best instance (or first segment) first.

    Greedy, in that order: each label takes the cheapest of its candidate spots, the
    first of equals. An instance's candidates lie just outside its box (above, else below,
    else left or right), shifted into the image; its label covers no pixel of its mask
    while any candidate avoids the mask, and among those overlaps the labels already
    placed least. A region's candidates are centred on its most interior pixel or one
    label's size away from there; its label overlaps the labels already placed least.

    :param result: the segmentation.
    :param show: as :func:`draw_overlay`'s.
    :param colors: as :func:`draw_overlay`'s.
    :param texts: as :func:`draw_overlay`'s.
    :return: one label per non-empty instance, segment or region drawn.
    """
    items = _items(result, show, colors or {}, texts or {})
    return _layout(items, result.image_size, overlay_style(result.image_size))


def _check_image(image_rgb: np.ndarray, result: SegmentationResult) -> None:
    """Raise ValueError unless the image is uint8 (H, W, 3) at the result's size."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(
            f'image_rgb must be a uint8 (H, W, 3) RGB array, got {image_rgb.dtype} '
            f'{image_rgb.shape}'
        )
    if tuple(image_rgb.shape[:2]) != tuple(result.image_size):
        raise ValueError(
            f'image is {image_rgb.shape[:2]} but the result is for {tuple(result.image_size)}; '
            'draw the result over the image it was computed on'
        )


def _items(
    result: SegmentationResult,
    show: str,
    colors: Mapping[int, Rgb],
    texts: Mapping[int, str],
) -> list[_Item]:
    """What ``show`` selects from the result, in drawing priority (best first), with the
    texts given."""
    mode = _chosen_mode(result, show)
    items = []
    if mode == 'instances':
        items = _instance_items(result, colors)
    elif mode == 'panoptic':
        items = _panoptic_items(result, colors)
    elif mode == 'semantic':
        items = _semantic_items(result, colors)
    return [replace(item, text=texts.get(item.index, item.text)) for item in items]


def _chosen_mode(result: SegmentationResult, show: str) -> str | None:
    """The output ``show`` names ('auto' resolved); None when 'auto' finds nothing.

    :raise ValueError: for an unknown ``show``, or a map the result does not have.
    """
    if show not in SHOW_MODES:
        raise ValueError(f'show must be one of {SHOW_MODES}, got {show!r}')
    if show in ('panoptic', 'semantic') and getattr(result, show) is None:
        raise ValueError(f'show={show!r} but the result has no {show} map; enable that output')
    if show != 'auto':
        return show
    if result.panoptic is not None:
        return 'panoptic'
    if result.instances:
        return 'instances'
    if result.semantic is not None:
        return 'semantic'
    return None


def _instance_items(result: SegmentationResult, colors: Mapping[int, Rgb]) -> list[_Item]:
    """Every non-empty instance, labelled 'name score'."""
    items = []
    for index, instance in enumerate(result.instances):
        if not instance.mask_crop.any():
            continue
        x0, y0, x1, y1 = (int(v) for v in instance.box)
        items.append(
            _Item(
                index,
                f'{instance.label} {instance.score:.2f}',
                _color(index, instance.label, colors),
                (x0, y0, x1, y1),
                instance.mask_crop,
                is_region=False,
            )
        )
    return items


def _panoptic_items(result: SegmentationResult, colors: Mapping[int, Rgb]) -> list[_Item]:
    """Every non-empty panoptic segment, labelled 'name score'; void is not an item."""
    items = [
        _region_item(
            segment.id,
            f'{segment.label} {segment.score:.2f}',
            _color(segment.id, segment.label, colors),
            result.panoptic == segment.id,
        )
        for segment in result.segments
    ]
    return [item for item in items if item is not None]


def _semantic_items(result: SegmentationResult, colors: Mapping[int, Rgb]) -> list[_Item]:
    """Every class present in the semantic map, labelled with its name."""
    items = []
    for class_id in np.unique(result.semantic).tolist():
        if not 0 <= class_id < len(result.vocabulary):  # UNLABELED stays as it is
            continue
        label = result.vocabulary[class_id]
        color = _color(class_id, label, colors)
        items.append(_region_item(class_id, label, color, result.semantic == class_id))
    return items


def _region_item(index: int, text: str, color: Rgb, mask: np.ndarray) -> _Item | None:
    """A region's item from its full-size bool mask, cropped to its box; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return _Item(index, text, color, (x0, y0, x1, y1), mask[y0:y1, x0:x1], is_region=True)


def _color(index: int, label: str, colors: Mapping[int, Rgb]) -> Rgb:
    """The override for ``index`` if there is one, else the label's colour."""
    if index in colors:
        red, green, blue = colors[index]
        return int(red), int(green), int(blue)
    return label_color(label)


def _fill(canvas: np.ndarray, item: _Item, alpha: float) -> None:
    """Mix the item's colour into its mask pixels of ``canvas``, in place."""
    x0, y0, x1, y1 = item.box
    inside = canvas[y0:y1, x0:x1]  # a view: writing to it writes to the canvas
    mixed = inside[item.crop].astype(np.float32) * (1.0 - alpha)
    mixed += np.array(item.color, np.float32) * alpha
    inside[item.crop] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _outline(canvas: np.ndarray, item: _Item, style: OverlayStyle) -> None:
    """Draw the outer contours of the item's mask in its colour."""
    contours, _ = cv2.findContours(
        item.crop.astype(np.uint8),
        cv2.RETR_EXTERNAL,
        cv2.CHAIN_APPROX_SIMPLE,
        offset=item.box[:2],
    )
    cv2.drawContours(canvas, contours, -1, item.color, style.line_thickness, cv2.LINE_AA)


def _text_metrics(text: str, style: OverlayStyle) -> tuple[int, int, int]:
    """Width and height of the label box around ``text``, and the text's baseline."""
    (text_width, text_height), baseline = cv2.getTextSize(
        text, _FONT, style.font_scale, style.font_thickness
    )
    width = text_width + 2 * style.padding
    height = text_height + baseline + 2 * style.padding
    return width, height, baseline


def _draw_label(canvas: np.ndarray, label: LabelBox, style: OverlayStyle) -> None:
    """Fill the label's box with its colour and write its text in it."""
    x0, y0, x1, y1 = label.box
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), label.color, cv2.FILLED)
    baseline = _text_metrics(label.text, style)[2]
    cv2.putText(
        canvas,
        label.text,
        (x0 + style.padding, y1 - style.padding - baseline),
        _FONT,
        style.font_scale,
        label.text_color,
        style.font_thickness,
        cv2.LINE_AA,
    )


def _layout(
    items: list[_Item], image_size: tuple[int, int], style: OverlayStyle
) -> list[LabelBox]:
    """Place the items' labels greedily, in item order, each at its cheapest candidate."""
    placed: list[LabelBox] = []
    for item in items:
        width, height = _text_metrics(item.text, style)[:2]
        if item.is_region:
            corners = _region_candidates(item, width, height)
        else:
            corners = _object_candidates(item.box, width, height)
        rects = [_rect_in_image(corner, width, height, image_size) for corner in corners]
        # min keeps the first of equal costs, so the candidates' order is their preference.
        best = min(rects, key=lambda rect: _placement_cost(rect, item, placed))
        placed.append(LabelBox(item.index, item.text, item.color, best))
    return placed


def _object_candidates(box: Rect, width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners of a label just outside the box: above it, else below, else left
    or right, each at both ends of that side."""
    x0, y0, x1, y1 = box
    return [
        (x0, y0 - height),
        (x1 - width, y0 - height),
        (x0, y1),
        (x1 - width, y1),
        (x0 - width, y0),
        (x1, y0),
        (x0 - width, y1 - height),
        (x1, y1 - height),
    ]


def _region_candidates(item: _Item, width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners of a label centred on the region's most interior pixel, then one
    label's size above, below, left and right of there."""
    interior_x, interior_y = _interior_point(item.crop)
    x = item.box[0] + interior_x - width // 2
    y = item.box[1] + interior_y - height // 2
    return [(x, y), (x, y - height), (x, y + height), (x - width, y), (x + width, y)]


def _interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border: a label spot inside the region."""
    # The zero frame makes the crop's edge (the image's edge, where the region touches it)
    # count as the region's edge; without it a region touching the edge gets its label in a
    # corner.
    framed = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(framed, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x) - 1, int(y) - 1


def _rect_in_image(
    corner: tuple[int, int], width: int, height: int, image_size: tuple[int, int]
) -> Rect:
    """A width x height rect at ``corner``, shifted into the image (to its top-left when
    the image is smaller)."""
    image_height, image_width = image_size
    x = max(0, min(corner[0], image_width - width))
    y = max(0, min(corner[1], image_height - height))
    return x, y, x + width, y + height


def _placement_cost(rect: Rect, item: _Item, placed: list[LabelBox]) -> tuple[int, ...]:
    """How bad a label at ``rect`` is, compared lexicographically (lower is better)."""
    label_overlap = sum(_area(_intersection(rect, other.box)) for other in placed)
    if item.is_region:
        # A region's label names it from inside; only hiding another label is bad.
        return (label_overlap,)
    # An instance's label must never hide the instance; overlapping labels come second.
    return _mask_pixels_in(rect, item), label_overlap


def _mask_pixels_in(rect: Rect, item: _Item) -> int:
    """Number of the item's mask pixels inside ``rect``."""
    overlap = _intersection(rect, item.box)
    if _area(overlap) == 0:
        return 0
    x0, y0, x1, y1 = overlap
    box_x, box_y = item.box[:2]
    return int(np.count_nonzero(item.crop[y0 - box_y : y1 - box_y, x0 - box_x : x1 - box_x]))


def _intersection(a: Rect, b: Rect) -> Rect:
    """The rect both cover; empty (zero area) when they do not meet."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _area(rect: Rect) -> int:
    """Pixels in the rect; 0 for an empty one."""
    return max(0, rect[2] - rect[0]) * max(0, rect[3] - rect[1])


def _relative_luminance(color: Rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour, in [0, 1]."""
    channels = np.asarray(color, np.float64) / 255.0
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))
