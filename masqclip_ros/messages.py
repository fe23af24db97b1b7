"""Building the node's output messages from a ``SegmentationResult`` (pure functions).

Nothing here needs a running node: every function takes results, headers and numbers and
returns messages, so each output is tested on hand-made results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from masqclip.inference.results import UNLABELED, UNLABELED_UINT16, Instance, SegmentationResult
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry
from masqclip.visualization import label_color
from masqclip_ros import msg as ros_msg
from masqclip_ros.conversions import array_to_image_msg
from masqclip_ros.geometry import Geometry3D
from masqclip_ros.runtime import NANOSECONDS_PER_SECOND
from masqclip_ros.tracks import track_color


def box_to_roi(box: np.ndarray, height: int, width: int) -> RegionOfInterest:
    """Convert an x0, y0, x1, y1 box (x1/y1 exclusive) to integer pixel bounds.

    :param box: float (4,) in pixels.
    :param height: image rows (the ROI is clipped to the image).
    :param width: image columns.
    :return: the region of interest; all zeros for an empty box.
    """
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        return RegionOfInterest()
    return RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0)


def instance_to_msg(
    instance: Instance,
    header: Header,
    with_mask: bool = True,
    geometry: Geometry3D | None = None,
) -> ros_msg.Instance:
    """Convert one instance; the mask is cropped to its ROI.

    :param instance: the library's instance (its mask is already cropped to its box).
    :param header: stamped onto the mask image.
    :param with_mask: fill ``mask`` (mono8, 255 inside); else leave it empty.
    :param geometry: 3D centroid and extent, when depth gave them.
    :return: the ``masqclip_ros/Instance``.
    """
    roi = box_to_roi(instance.box, *instance.image_size)
    out = ros_msg.Instance(
        label=instance.label,
        class_id=int(instance.class_id),
        score=float(instance.score),
        objectness=float(instance.objectness),
        roi=roi,
        area=instance.area,
        proposal_index=int(instance.query_index),
        track_id=int(instance.track_id),
    )
    if instance.first_seen_s is not None:
        out.first_seen = Time(**split_seconds(instance.first_seen_s))
    if with_mask and roi.width > 0:
        crop = instance.mask_crop.astype(np.uint8) * np.uint8(255)
        out.mask = array_to_image_msg(crop, 'mono8', header)
    if geometry is not None:
        out.has_3d = True
        out.centroid = Point(x=float(geometry.centroid[0]), y=float(geometry.centroid[1]),
                             z=float(geometry.centroid[2]))  # fmt: skip
        out.extent = Vector3(x=float(geometry.extent[0]), y=float(geometry.extent[1]),
                             z=float(geometry.extent[2]))  # fmt: skip
        out.depth_points = geometry.points
    return out


def split_seconds(seconds: float) -> dict[str, int]:
    """The ``sec`` and ``nanosec`` of a ``Time`` or ``Duration`` message for a time in seconds
    (>= 0), to the nearest nanosecond of the float (a stamp of today's epoch as a float is
    within 120 ns of the stamp)."""
    whole = math.floor(seconds)
    # The fraction alone: today's epoch in nanoseconds (1.7e18) is rounded to 256 ns as a float.
    carry, nanosec = divmod(round((seconds - whole) * NANOSECONDS_PER_SECOND),
                            NANOSECONDS_PER_SECOND)  # fmt: skip
    return {'sec': whole + carry, 'nanosec': nanosec}


def instances_to_msg(
    result: SegmentationResult,
    header: Header,
    vocabulary_version: int,
    geometries: Sequence[Geometry3D | None] | None = None,
    with_masks: bool = True,
) -> ros_msg.InstanceSegmentation:
    """Convert every instance of a frame.

    :param result: the frame's segmentation.
    :param header: the input image's header (copied).
    :param vocabulary_version: version the frame was segmented with.
    :param geometries: one entry per instance (None where no 3D), or None for no 3D at all.
    :param with_masks: include the ROI masks.
    :return: the ``masqclip_ros/InstanceSegmentation``.
    """
    height, width = result.image_size
    geometries = geometries or [None] * len(result.instances)
    return ros_msg.InstanceSegmentation(
        header=header,
        height=height,
        width=width,
        vocabulary_version=vocabulary_version,
        instances=[
            instance_to_msg(instance, header, with_masks, geometry)
            for instance, geometry in zip(result.instances, geometries, strict=True)
        ],
    )


def semantic_to_msg(semantic: np.ndarray, header: Header) -> Image:
    """Convert a class-index map to a mono16 image.

    :param semantic: int32 (H, W) class indices, ``UNLABELED`` (-1) where none.
    :param header: the input image's header (copied).
    :return: mono16 image, 65535 where unlabeled.
    """
    if semantic.size and semantic.max() >= UNLABELED_UINT16:
        raise ValueError(f'class index {semantic.max()} does not fit a mono16 semantic image')
    pixels = np.where(semantic == UNLABELED, UNLABELED_UINT16, semantic).astype(np.uint16)
    return array_to_image_msg(pixels, 'mono16', header)


def panoptic_to_msg(
    result: SegmentationResult, header: Header, vocabulary_version: int
) -> ros_msg.PanopticSegmentation:
    """Convert the panoptic map and its segments.

    :param result: a result with ``panoptic`` set.
    :param header: the input image's header (copied).
    :param vocabulary_version: version the frame was segmented with.
    :return: segment ids as mono16 (32SC1 when an id exceeds 65535) and the segments.
    """
    panoptic = result.panoptic
    if panoptic is None:
        raise ValueError('the result has no panoptic map; enable the panoptic task')
    if panoptic.size == 0 or panoptic.max() <= np.iinfo(np.uint16).max:
        ids = array_to_image_msg(panoptic.astype(np.uint16), 'mono16', header)
    else:
        ids = array_to_image_msg(panoptic.astype(np.int32), '32SC1', header)
    segments = [
        ros_msg.PanopticSegment(
            id=int(segment.id),
            class_id=int(segment.class_id),
            label=segment.label,
            is_thing=bool(segment.is_thing),
            score=float(segment.score),
            area=int(segment.area),
            track_id=int(segment.track_id),
        )
        for segment in result.segments
    ]
    return ros_msg.PanopticSegmentation(
        header=header, vocabulary_version=vocabulary_version, segment_ids=ids, segments=segments
    )


def vocabulary_to_msg(vocabulary: Vocabulary, version: int, stamp: Time) -> ros_msg.Vocabulary:
    """Convert the library's vocabulary.

    :param vocabulary: the classes in index order (an exemplar class with its example count).
    :param version: its version.
    :param stamp: when it came into force.
    :return: the ``masqclip_ros/Vocabulary``.
    """
    return ros_msg.Vocabulary(
        header=Header(stamp=stamp),
        entries=[
            ros_msg.VocabularyEntry(
                name=entry.name,
                synonyms=list(entry.synonyms),
                is_thing=entry.is_thing,
                exemplar_count=0 if entry.exemplar is None else entry.exemplar.count,
            )
            for entry in vocabulary.entries
        ],
        version=version,
    )


def msgs_to_entries(entries: Sequence[ros_msg.VocabularyEntry]) -> tuple[VocabularyEntry, ...]:
    """Convert message entries to the library's text classes (validation happens in
    ``Vocabulary``); ``exemplar_count`` is ignored: no message carries an exemplar.

    :param entries: ``masqclip_ros/VocabularyEntry`` messages.
    :return: the library's entries, in order.
    """
    return tuple(
        VocabularyEntry(entry.name, tuple(entry.synonyms), bool(entry.is_thing))
        for entry in entries
    )


def detections_to_msg(result: SegmentationResult, header: Header, vision_msgs: object) -> object:
    """Mirror the instances as ``vision_msgs/Detection2DArray``; class_id holds the label.

    :param result: the frame's segmentation.
    :param header: the input image's header (copied).
    :param vision_msgs: the imported ``vision_msgs.msg`` module (optional at run time).
    :return: the ``Detection2DArray``; boxes centred in pixel coordinates.
    """
    detections = []
    for instance in result.instances:
        x0, y0, x1, y1 = (float(value) for value in instance.box)
        detection = vision_msgs.Detection2D(header=header)
        detection.bbox.center.position.x = (x0 + x1) / 2.0
        detection.bbox.center.position.y = (y0 + y1) / 2.0
        detection.bbox.size_x = x1 - x0
        detection.bbox.size_y = y1 - y0
        hypothesis = vision_msgs.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = instance.label
        hypothesis.hypothesis.score = float(instance.score)
        detection.results = [hypothesis]
        detections.append(detection)
    return vision_msgs.Detection2DArray(header=header, detections=detections)


def markers_to_msg(
    instances: Sequence[Instance],
    geometries: Sequence[Geometry3D | None],
    header: Header,
    track_lifetime_s: float,
) -> MarkerArray:
    """Boxes and text labels for the instances that have 3D, and the number of instances.

    The first marker deletes the previous frame's markers. An untracked instance gets a box
    and its label in the label's colour (ids: its position). A track gets one box in its
    colour and one text '#id name' (namespace masqclip/tracks, id: the track id) that expires
    after ``track_lifetime_s``, so a track's marker goes once no new frame shows it; its
    instance's class copies are the same mask, and are left out.

    :param instances: the frame's, best first.
    :param geometries: one per instance, None where no 3D.
    :param header: the input image's header (its frame is the optical frame).
    :param track_lifetime_s: how long a track's text stays without a newer frame.
    :return: the ``MarkerArray``.
    """
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    drawn_tracks: set[int] = set()
    for index, (instance, geometry) in enumerate(zip(instances, geometries, strict=True)):
        track_id = instance.track_id
        if geometry is None or track_id in drawn_tracks:
            continue
        color = track_color(track_id) if track_id else label_color(instance.label)
        red, green, blue = (channel / 255.0 for channel in color)
        centre = Point(x=float(geometry.centroid[0]), y=float(geometry.centroid[1]),
                       z=float(geometry.centroid[2]))  # fmt: skip
        box = Marker(header=header, ns='masqclip/boxes', id=index, type=Marker.CUBE)
        box.pose.position = centre
        box.pose.orientation.w = 1.0
        # A flat object still gets a visible box.
        box.scale = Vector3(
            x=max(float(geometry.extent[0]), 0.01),
            y=max(float(geometry.extent[1]), 0.01),
            z=max(float(geometry.extent[2]), 0.01),
        )
        box.color.r, box.color.g, box.color.b, box.color.a = red, green, blue, 0.4
        if track_id:
            drawn_tracks.add(track_id)
            text = Marker(header=header, ns='masqclip/tracks', id=track_id)
            text.text = f'#{track_id} {instance.label}'
            text.lifetime = Duration(**split_seconds(track_lifetime_s))
        else:
            text = Marker(header=header, ns='masqclip/labels', id=index, text=instance.label)
        text.type = Marker.TEXT_VIEW_FACING
        text.pose.position = Point(x=centre.x, y=centre.y - box.scale.y / 2.0 - 0.05, z=centre.z)
        text.pose.orientation.w = 1.0
        text.scale.z = 0.08
        text.color.r, text.color.g, text.color.b, text.color.a = red, green, blue, 1.0
        markers += [box, text]
    markers.append(_count_marker(len(instances), header))
    return MarkerArray(markers=markers)


def _count_marker(count: int, header: Header) -> Marker:
    """'N instances' floating 1 m ahead of the camera, slightly above its axis (optical
    frame: z forward, y down), so RViz shows the count beside the 3D boxes."""
    text = Marker(header=header, ns='masqclip/summary', id=0, type=Marker.TEXT_VIEW_FACING)
    text.pose.position = Point(x=0.0, y=-0.3, z=1.0)
    text.pose.orientation.w = 1.0
    text.scale.z = 0.06
    text.color.r = text.color.g = text.color.b = text.color.a = 1.0
    text.text = f'{count} instance{"" if count == 1 else "s"}'
    return text


def diagnostics_to_msg(
    stamp: Time,
    name: str,
    hardware_id: str,
    level: bytes,
    message: str,
    values: Mapping[str, object],
) -> DiagnosticArray:
    """One diagnostic status with its key/values.

    :param stamp: now.
    :param name: status name, e.g. 'masqclip_node: segmentation'.
    :param hardware_id: the device inference runs on.
    :param level: ``DiagnosticStatus.OK`` / ``WARN`` / ``ERROR`` / ``STALE``.
    :param message: one-line summary.
    :param values: shown as key/value pairs (floats with 4 significant digits).
    :return: the ``DiagnosticArray``.
    """
    pairs = [
        KeyValue(key=key, value=f'{value:.4g}' if isinstance(value, float) else str(value))
        for key, value in values.items()
    ]
    status = DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id, values=pairs
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
