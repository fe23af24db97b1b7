"""Message builders and depth geometry on hand-made results (no node, no DDS)."""

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from masqclip.inference.results import (  # noqa: E402
    UNLABELED,
    Instance,
    PanopticSegment,
    SegmentationResult,
)
from masqclip.inference.vocabulary import Exemplar, Vocabulary, VocabularyEntry  # noqa: E402
from masqclip.visualization import label_color  # noqa: E402
from masqclip_ros import messages  # noqa: E402
from masqclip_ros.conversions import image_msg_to_array  # noqa: E402
from masqclip_ros.geometry import (  # noqa: E402
    GeometryError,
    Intrinsics,
    intrinsics_from_k,
    mask_geometry,
)
from masqclip_ros.tracks import track_color  # noqa: E402

pytestmark = pytest.mark.ros

H, W = 12, 16


def make_instance(label: str, class_id: int, box: tuple[int, int, int, int]) -> Instance:
    mask = np.zeros((H, W), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    mask[y0, x0] = False  # not a full rectangle: the crop must keep the shape
    instance = Instance.from_mask(label, class_id, 0.9, 0.95, mask, np.ones(4, np.float32) / 2, 3)
    assert instance.box.tolist() == list(box)
    return instance


def make_result() -> SegmentationResult:
    semantic = np.full((H, W), UNLABELED, np.int32)
    semantic[:6] = 1
    panoptic = np.zeros((H, W), np.int32)
    panoptic[:6] = 1
    panoptic[6:, :4] = 2
    return SegmentationResult(
        image_size=(H, W),
        vocabulary=('mug', 'table'),
        instances=[make_instance('mug', 0, (2, 3, 7, 9))],
        semantic=semantic,
        panoptic=panoptic,
        segments=[
            PanopticSegment(1, 1, 'table', False, 0.8, 96),
            PanopticSegment(2, 0, 'mug', True, 0.7, 24),
        ],
    )


def header() -> Header:
    out = Header(frame_id='camera_optical')
    out.stamp.sec, out.stamp.nanosec = 42, 7
    return out


def test_instances_keep_header_roi_and_mask_crop() -> None:
    result = make_result()
    msg = messages.instances_to_msg(result, header(), vocabulary_version=3)
    assert msg.header == header() and (msg.height, msg.width) == (H, W)
    assert msg.vocabulary_version == 3 and len(msg.instances) == 1
    inst = msg.instances[0]
    assert (inst.label, inst.class_id, inst.proposal_index) == ('mug', 0, 3)
    assert (inst.roi.x_offset, inst.roi.y_offset, inst.roi.width, inst.roi.height) == (2, 3, 5, 6)
    crop = image_msg_to_array(inst.mask)
    expected = result.instances[0].mask[3:9, 2:7].astype(np.uint8) * 255
    np.testing.assert_array_equal(crop, expected)
    assert inst.area == result.instances[0].mask.sum() and not inst.has_3d
    bare = messages.instances_to_msg(result, header(), 3, with_masks=False).instances[0]
    assert bare.mask.width == 0 and bare.roi.width == 5


def test_instances_and_thing_segments_carry_their_track() -> None:
    result = make_result()
    first_seen_s = 1_700_000_000.25
    tracked = replace(result.instances[0], track_id=17, first_seen_s=first_seen_s)
    result.instances = [tracked, result.instances[0]]
    result.segments[1] = replace(result.segments[1], track_id=17, first_seen_s=first_seen_s)
    instances = messages.instances_to_msg(result, header(), 3).instances
    assert [(i.track_id, i.first_seen.sec, i.first_seen.nanosec) for i in instances] == [
        (17, 1_700_000_000, 250_000_000), (0, 0, 0)
    ]  # fmt: skip
    segments = messages.panoptic_to_msg(result, header(), 3).segments
    assert [s.track_id for s in segments] == [0, 17]


def test_seconds_split_into_the_nearest_nanosecond() -> None:
    assert messages.split_seconds(2.5) == {'sec': 2, 'nanosec': 500_000_000}
    assert messages.split_seconds(3.9999999999) == {'sec': 4, 'nanosec': 0}
    # A stamp of today's epoch as a float is within 120 ns of the stamp.
    split = messages.split_seconds(1_700_000_000 + 123_456_789e-9)
    assert split['sec'] == 1_700_000_000 and abs(split['nanosec'] - 123_456_789) < 120


def test_box_to_roi_clips_and_handles_empty_boxes() -> None:
    roi = messages.box_to_roi(np.array([-3.0, 2.5, 40.0, 7.2]), H, W)
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == (0, 2, W, 6)
    assert messages.box_to_roi(np.zeros(4), H, W).width == 0


def test_semantic_is_mono16_with_65535_for_unlabeled() -> None:
    result = make_result()
    msg = messages.semantic_to_msg(result.semantic, header())
    assert msg.encoding == 'mono16' and msg.header == header()
    pixels = image_msg_to_array(msg)
    assert (pixels[:6] == 1).all() and (pixels[6:] == 65535).all()


def test_panoptic_ids_and_segments() -> None:
    result = make_result()
    msg = messages.panoptic_to_msg(result, header(), 5)
    assert msg.segment_ids.encoding == 'mono16' and msg.vocabulary_version == 5
    np.testing.assert_array_equal(image_msg_to_array(msg.segment_ids), result.panoptic)
    assert [(s.id, s.label, s.is_thing, s.area) for s in msg.segments] == [
        (1, 'table', False, 96),
        (2, 'mug', True, 24),
    ]
    result.panoptic[0, 0] = 70000
    assert messages.panoptic_to_msg(result, header(), 5).segment_ids.encoding == '32SC1'


def test_vocabulary_round_trip() -> None:
    vocabulary = Vocabulary.from_records(
        [{'name': 'red mug', 'synonyms': ['cup']}, {'name': 'wall', 'is_thing': False}]
    )
    stamp = Time(sec=1)
    msg = messages.vocabulary_to_msg(vocabulary, 4, stamp)
    assert msg.version == 4 and msg.header.stamp == stamp
    assert Vocabulary(messages.msgs_to_entries(msg.entries)) == vocabulary


def test_taught_classes_carry_their_example_count_and_come_back_as_text_entries() -> None:
    exemplar = Exemplar(tuple(np.ones(4) / 2), 3, 'weights-a', 0.9)
    vocabulary = Vocabulary((VocabularyEntry('mug'), VocabularyEntry('my toy', exemplar=exemplar)))
    msg = messages.vocabulary_to_msg(vocabulary, 2, Time(sec=1))
    assert [(e.name, e.exemplar_count) for e in msg.entries] == [('mug', 0), ('my toy', 3)]
    # No message carries an exemplar: a REPLACE keeps the one of the class it names.
    assert all(e.exemplar is None for e in messages.msgs_to_entries(msg.entries))


def test_detections_mirror_uses_label_as_class_id() -> None:
    vision_msgs = pytest.importorskip('vision_msgs.msg')
    msg = messages.detections_to_msg(make_result(), header(), vision_msgs)
    assert msg.header == header() and len(msg.detections) == 1
    det = msg.detections[0]
    assert det.results[0].hypothesis.class_id == 'mug'
    assert det.results[0].hypothesis.score == pytest.approx(0.9)
    assert (det.bbox.center.position.x, det.bbox.center.position.y) == (4.5, 6.0)
    assert (det.bbox.size_x, det.bbox.size_y) == (5.0, 6.0)


CAMERA = Intrinsics(fx=100.0, fy=120.0, cx=7.5, cy=5.5, width=W, height=H)


def test_centroid_and_extent_of_a_fronto_parallel_plane() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    mask = np.zeros((H, W), bool)
    mask[2:10, 4:12] = True  # u in 4..11, v in 2..9
    geometry = mask_geometry(mask, depth, CAMERA, min_points=10)
    assert geometry is not None and geometry.points == 64
    # Mean u = 7.5 = cx, mean v = 5.5 = cy: the patch is centred on the optical axis.
    np.testing.assert_allclose(geometry.centroid, [0.0, 0.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(geometry.extent, [7 * 2.0 / 100, 7 * 2.0 / 120, 0.0], atol=1e-9)


def test_centroid_of_a_tilted_plane_matches_the_geometry() -> None:
    # The plane Z = 1 + 0.5 Y (a floor seen at a slant): Z = 1 / (1 - 0.5 (v - cy) / fy).
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = (1.0 / (1.0 - 0.5 * (v - CAMERA.cy) / CAMERA.fy)).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[1:11, 9:15] = True
    geometry = mask_geometry(mask, depth, CAMERA, min_points=10)
    z = depth[mask].astype(np.float64)
    x = (u[mask] - CAMERA.cx) * z / CAMERA.fx
    y = (v[mask] - CAMERA.cy) * z / CAMERA.fy
    np.testing.assert_allclose(geometry.centroid, [x.mean(), y.mean(), z.mean()], rtol=1e-5)
    # Every back-projected point lies on the plane, so the centroid does too.
    assert geometry.centroid[2] == pytest.approx(1 + 0.5 * geometry.centroid[1], rel=1e-5)


def test_background_pixels_and_invalid_depth_are_ignored() -> None:
    depth = np.full((H, W), 1.5, np.float32)
    mask = np.zeros((H, W), bool)
    mask[2:10, 4:12] = True
    depth[2, 4:12] = 9.0  # the mask's top row sees the wall behind the object
    depth[9, 4:12] = np.nan
    geometry = mask_geometry(mask, depth, CAMERA, min_points=10)
    assert geometry.points == 48
    assert geometry.centroid[2] == pytest.approx(1.5) and geometry.extent[2] == 0.0
    depth[:] = np.nan
    assert mask_geometry(mask, depth, CAMERA) is None


def test_half_size_depth_and_scaled_intrinsics() -> None:
    depth = np.full((H // 2, W // 2), 3.0, np.float32)
    mask = np.zeros((H, W), bool)
    mask[2:10, 4:12] = True
    geometry = mask_geometry(mask, depth, CAMERA.scaled_to(H * 2, W * 2), min_points=10)
    np.testing.assert_allclose(geometry.centroid, [0.0, 0.0, 3.0], atol=1e-9)


def test_uncalibrated_camera_info_is_rejected() -> None:
    assert intrinsics_from_k([100, 0, 7.5, 0, 120, 5.5, 0, 0, 1], H, W) == CAMERA
    with pytest.raises(GeometryError, match='not calibrated'):
        intrinsics_from_k([0.0] * 9, H, W)
    with pytest.raises(GeometryError, match='empty'):
        intrinsics_from_k([100, 0, 7.5, 0, 120, 5.5, 0, 0, 1], 0, W)


def test_markers_for_instances_with_3d() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    mug = make_instance('mug', 0, (2, 3, 7, 9))
    table = make_instance('table', 1, (8, 1, 12, 4))
    geometry = mask_geometry(mug.mask, depth, CAMERA, min_points=10)
    msg = messages.markers_to_msg([mug, table], [geometry, None], header(), 1.0)
    assert [m.action for m in msg.markers] == [Marker.DELETEALL] + [Marker.ADD] * 3
    box, text, count = msg.markers[1:]
    assert count.ns == 'masqclip/summary' and count.text == '2 instances'
    assert messages.markers_to_msg([mug], [None], header(), 1.0).markers[-1].text == '1 instance'
    assert box.type == Marker.CUBE and text.text == 'mug' and box.header == header()
    assert (text.ns, text.id) == ('masqclip/labels', 0)
    assert text.lifetime.sec == text.lifetime.nanosec == 0  # replaced with the next frame
    assert box.pose.position.z == pytest.approx(2.0)
    assert round(box.color.r * 255) == label_color('mug')[0]


def test_one_marker_per_track_that_expires_on_its_own() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    mug = replace(make_instance('mug', 0, (2, 3, 7, 9)), track_id=7)
    copy = replace(mug, label='table', class_id=1, score=0.5)  # the same proposal, another class
    geometry = mask_geometry(mug.mask, depth, CAMERA, min_points=10)
    msg = messages.markers_to_msg([mug, copy], [geometry, geometry], header(), 1.5)
    box, text, count = msg.markers[1:]
    assert (text.ns, text.id, text.text) == ('masqclip/tracks', 7, '#7 mug')
    assert (text.lifetime.sec, text.lifetime.nanosec) == (1, 500_000_000)
    assert round(box.color.g * 255) == track_color(7)[1] and count.text == '2 instances'


def test_diagnostics_formats_values() -> None:
    msg = messages.diagnostics_to_msg(
        Time(sec=3), 'masqclip_node', 'cpu', DiagnosticStatus.WARN, 'slow', {'rate': 1 / 3}
    )
    status = msg.status[0]
    assert status.level == DiagnosticStatus.WARN and status.values[0].value == '0.3333'
