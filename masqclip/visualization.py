"""Drawing a :class:`SegmentationResult` over its image (numpy and OpenCV only, no torch).

Colours come from the label text, so a class has the same colour in every frame, run and
process, and in every tool that uses :func:`label_color`.
"""

from __future__ import annotations

import colorsys
import hashlib

import cv2
import numpy as np

from masqclip.inference.results import SegmentationResult

SHOW_MODES = ('auto', 'panoptic', 'instances', 'semantic')
"""Values of ``draw_overlay``'s ``show``."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_color(label: str) -> tuple[int, int, int]:
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


def draw_overlay(
    image_rgb: np.ndarray, result: SegmentationResult, alpha: float = 0.5, show: str = 'auto'
) -> np.ndarray:
    """Draw segmentation output over a copy of the image.

    Masks and regions are alpha-blended in their label's colour and outlined; instances
    get 'label score' above their box, panoptic segments and semantic regions their label
    at their most interior pixel.

    :param image_rgb: uint8 (H, W, 3) RGB image the result was computed on; not modified.
    :param result: the segmentation of ``image_rgb``.
    :param alpha: opacity of the colour fill, in [0, 1].
    :param show: 'panoptic', 'instances', 'semantic', or 'auto' = the panoptic map if
        present, else the instances if any, else the semantic map if present.
    :return: uint8 (H, W, 3) RGB drawing; a plain copy of the image when there is nothing
        to draw.
    """
    _check_image(image_rgb, result)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    if show not in SHOW_MODES:
        raise ValueError(f'show must be one of {SHOW_MODES}, got {show!r}')
    if show == 'auto':
        if result.panoptic is not None:
            show = 'panoptic'
        elif result.instances:
            show = 'instances'
        elif result.semantic is not None:
            show = 'semantic'
    elif show in ('panoptic', 'semantic') and getattr(result, show) is None:
        raise ValueError(f'show={show!r} but the result has no {show} map; enable that output')

    canvas = np.ascontiguousarray(image_rgb).copy()
    style = _Style(canvas.shape[0], canvas.shape[1])
    if show == 'panoptic':
        _draw_panoptic(canvas, result, alpha, style)
    elif show == 'instances':
        _draw_instances(canvas, result, alpha, style)
    elif show == 'semantic':
        _draw_semantic(canvas, result, alpha, style)
    return canvas


class _Style:
    """Line and font sizes that scale with the image."""

    def __init__(self, height: int, width: int) -> None:
        short_side = min(height, width)
        self.thickness = max(1, round(short_side / 320))
        self.font_scale = max(0.35, short_side / 900)
        self.font_thickness = max(1, round(short_side / 480))


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


def _blend(canvas: np.ndarray, where: np.ndarray, colors: np.ndarray, alpha: float) -> None:
    """Mix ``colors`` (3,) or (M, 3) into the ``where`` pixels of ``canvas`` in place."""
    mixed = canvas[where].astype(np.float32) * (1.0 - alpha) + colors * alpha
    canvas[where] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _outline(
    canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], style: _Style
) -> None:
    """Draw the outer contours of a bool mask."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(canvas, contours, -1, color, style.thickness, cv2.LINE_AA)


def _put_label(
    canvas: np.ndarray,
    text: str,
    x: int,
    y: int,
    color: tuple[int, int, int],
    style: _Style,
    centered: bool = False,
) -> None:
    """Write text on a box of ``color``; (x, y) is the box's bottom-left (or its centre)."""
    (text_w, text_h), baseline = cv2.getTextSize(
        text, _FONT, style.font_scale, style.font_thickness
    )
    box_h = text_h + baseline + 2
    if centered:
        x, y = x - text_w // 2, y + box_h // 2
    height, width = canvas.shape[:2]
    x = int(np.clip(x, 0, max(0, width - text_w - 2)))
    y = int(np.clip(y, box_h, height))
    cv2.rectangle(canvas, (x, y - box_h), (x + text_w + 2, y), color, cv2.FILLED)
    # Dark text on light colours, light text on dark ones (Rec. 601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(
        canvas,
        text,
        (x + 1, y - baseline - 1),
        _FONT,
        style.font_scale,
        ink,
        style.font_thickness,
        cv2.LINE_AA,
    )


def _interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border: a label spot inside the region."""
    # The zero frame makes the image edge count as the region's edge; without it a region
    # touching the edge gets its label in a corner.
    framed = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(framed, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x) - 1, int(y) - 1


def _draw_instances(
    canvas: np.ndarray, result: SegmentationResult, alpha: float, style: _Style
) -> None:
    """Fill, outline and label every non-empty instance, the best on top."""
    drawn = [instance for instance in result.instances if instance.mask.any()]
    # Instances come best first; paint in reverse so the best ends up on top.
    for instance in reversed(drawn):
        color = label_color(instance.label)
        _blend(canvas, instance.mask, np.array(color, np.float32), alpha)
        _outline(canvas, instance.mask, color, style)
    for instance in reversed(drawn):
        x0, y0 = int(instance.box[0]), int(instance.box[1])
        text = f'{instance.label} {instance.score:.2f}'
        _put_label(canvas, text, x0, y0, label_color(instance.label), style)


def _draw_panoptic(
    canvas: np.ndarray, result: SegmentationResult, alpha: float, style: _Style
) -> None:
    """Fill, outline and label every panoptic segment; void stays as it is."""
    panoptic = result.panoptic
    labelled = []
    for segment in result.segments:
        mask = panoptic == segment.id
        if not mask.any():
            continue
        color = label_color(segment.label)
        _blend(canvas, mask, np.array(color, np.float32), alpha)
        labelled.append((segment, mask, color))
    for _, mask, color in labelled:
        _outline(canvas, mask, color, style)
    for segment, mask, color in labelled:
        text = f'{segment.label} {segment.score:.2f}' if segment.is_thing else segment.label
        x, y = _interior_point(mask)
        _put_label(canvas, text, x, y, color, style, centered=True)


def _draw_semantic(
    canvas: np.ndarray, result: SegmentationResult, alpha: float, style: _Style
) -> None:
    """Fill, outline and label every class present in the semantic map."""
    semantic = result.semantic
    labelled = []
    for class_id in np.unique(semantic).tolist():
        if not 0 <= class_id < len(result.vocabulary):
            continue
        mask = semantic == class_id
        label = result.vocabulary[class_id]
        color = label_color(label)
        _blend(canvas, mask, np.array(color, np.float32), alpha)
        labelled.append((label, mask, color))
    for _, mask, color in labelled:
        _outline(canvas, mask, color, style)
    for label, mask, color in labelled:
        x, y = _interior_point(mask)
        _put_label(canvas, label, x, y, color, style, centered=True)
