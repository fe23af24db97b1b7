"""masqclip_node in its own process, driven over real DDS on loopback by a client node."""

import contextlib
import threading
import time

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from masqclip_ros.msg import (  # noqa: E402
    InstanceSegmentation,
    PanopticSegmentation,
    Vocabulary,
    VocabularyEntry,
)
from masqclip_ros.srv import FindObjects, GetVocabulary, SetVocabulary  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_testing import (  # noqa: E402
    FOCAL_PX,
    LATCHED,
    RGBD_NODE,
    CameraRig,
    Client,
    H,
    NodeProcess,
    W,
    image_msg,
    scene,
    serving,
    stamped,
)
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from masqclip_ros.conversions import array_to_image_msg, image_msg_to_array  # noqa: E402

pytestmark = pytest.mark.ros

DEPTH_M = 1.25
NODE = '/masqclip_node'
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Rig(CameraRig):
    """The client side: the camera, subscriptions recording every output, service clients."""

    def __init__(self, process: NodeProcess, client: Client) -> None:
        super().__init__(process, client, first_sec=100, depth_m=DEPTH_M)
        n = client.node
        self.got: dict[str, list] = {}
        for name, kind, qos in [
            ('instances', InstanceSegmentation, QOS),
            ('semantic', Image, QOS),
            ('panoptic', PanopticSegmentation, QOS),
            ('overlay', Image, QOS),
            ('markers', MarkerArray, QOS),
            ('semantic/labels', Vocabulary, LATCHED),
        ]:
            self.got[name] = []
            n.create_subscription(kind, f'{NODE}/{name}', self.got[name].append, qos)
        self.got['detections'] = []
        vision_msgs = pytest.importorskip('vision_msgs.msg')
        n.create_subscription(
            vision_msgs.Detection2DArray, f'{NODE}/detections', self.got['detections'].append, QOS
        )
        self.got['diagnostics'] = []
        n.create_subscription(DiagnosticArray, '/diagnostics', self.got['diagnostics'].append, 10)
        self.set_vocabulary = n.create_client(SetVocabulary, f'{NODE}/set_vocabulary')
        self.get_vocabulary = n.create_client(GetVocabulary, f'{NODE}/get_vocabulary')
        self.find = n.create_client(FindObjects, f'{NODE}/find')
        self.change_state = n.create_client(ChangeState, f'{NODE}/change_state')
        self.get_state = n.create_client(GetState, f'{NODE}/get_state')

    def wait_for(self, name: str, check, timeout: float = 20.0, resend: bool = True):
        """Spin (re-sending a frame every 0.5 s) until a ``name`` message satisfies ``check``."""
        last = [0.0]

        def done() -> bool:
            if resend and time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                self.send()
            return any(check(m) for m in self.got[name])

        self.client.spin_until(done, timeout, f'{name} ({self.process.log()[-1500:]})')
        return next(m for m in self.got[name] if check(m))

    def vocabulary_version(self) -> int:
        return self.client.call(self.get_vocabulary, GetVocabulary.Request()).vocabulary.version


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    # Every instance tracked: test_tiny's random weights score about 0.3.
    overrides = {**RGBD_NODE, 'input.warn_after_s': '1.0', 'diagnostics.period_s': '0.5',
                 'tracking.min_score': '0.0'}  # fmt: skip
    process = NodeProcess(tmp_path_factory.mktemp('node') / 'node.log', overrides)
    with serving(process, '/') as (_, client):
        rig = Rig(process, client)
        rig.wait_matched()
        yield rig


def test_every_output_copies_the_image_header(rig: Rig) -> None:
    sec = rig.send()
    stamp_of = {name: (lambda m: m.header.stamp.sec == sec) for name in rig.got}
    for name in ('instances', 'semantic', 'panoptic', 'overlay', 'detections'):
        rig.wait_for(name, stamp_of[name], resend=False)
        msg = next(m for m in rig.got[name] if stamp_of[name](m))
        assert msg.header.frame_id == 'camera_optical', name
        assert msg.header.stamp.nanosec == 1000, name
    overlay = next(m for m in rig.got['overlay'] if m.header.stamp.sec == sec)
    assert (overlay.encoding, overlay.height, overlay.width) == ('rgb8', H, W)
    semantic_msg = next(m for m in rig.got['semantic'] if m.header.stamp.sec == sec)
    semantic = image_msg_to_array(semantic_msg)
    assert semantic.shape == (H, W) and semantic.dtype == np.uint16
    assert set(np.unique(semantic).tolist()) <= {0, 1, 2, 65535}
    panoptic = next(m for m in rig.got['panoptic'] if m.header.stamp.sec == sec)
    assert panoptic.segment_ids.header.stamp.sec == sec
    instances = next(m for m in rig.got['instances'] if m.header.stamp.sec == sec)
    assert (instances.height, instances.width) == (H, W)
    assert instances.instances, 'test_tiny proposes masks on any image'
    for inst in instances.instances:
        assert inst.label in ('mug', 'table', 'wall') and 0.0 <= inst.score <= 1.0
        assert inst.mask.height == inst.roi.height and inst.mask.width == inst.roi.width


def test_3d_from_a_depth_plane_and_markers(rig: Rig) -> None:
    def with_3d(msg) -> bool:
        return any(inst.has_3d for inst in msg.instances)

    msg = rig.wait_for('instances', with_3d)
    for inst in msg.instances:
        if not inst.has_3d:
            continue
        # A fronto-parallel plane: every point has z = DEPTH_M and the box is flat.
        assert inst.centroid.z == pytest.approx(DEPTH_M, abs=1e-5)
        assert inst.extent.z == pytest.approx(0.0, abs=1e-5)
        u = inst.roi.x_offset + inst.roi.width / 2
        # The centroid's x lies within the ROI's back-projection.
        x0 = (inst.roi.x_offset - (W / 2 - 0.5)) * DEPTH_M / FOCAL_PX
        x1 = (inst.roi.x_offset + inst.roi.width - 1 - (W / 2 - 0.5)) * DEPTH_M / FOCAL_PX
        assert x0 - 1e-6 <= inst.centroid.x <= x1 + 1e-6, u
    markers = rig.wait_for('markers', lambda m: len(m.markers) > 1)
    assert markers.markers[1].pose.position.z == pytest.approx(DEPTH_M, abs=1e-5)


def test_every_service_and_vocabulary_change_while_streaming(rig: Rig) -> None:
    call = rig.client.call
    before = call(rig.get_vocabulary, GetVocabulary.Request()).vocabulary
    assert [e.name for e in before.entries] == ['mug', 'table', 'wall'] and before.version >= 1

    stop = threading.Event()
    # Frames keep streaming from a second thread while the vocabulary changes.
    streamer = threading.Thread(target=lambda: [rig.send() or time.sleep(0.1)
                                                for _ in iter(stop.is_set, True)])  # fmt: skip
    streamer.start()
    try:
        request = SetVocabulary.Request(mode=SetVocabulary.Request.REPLACE)
        request.entries = [VocabularyEntry(name='red mug', synonyms=['red cup']),
                           VocabularyEntry(name='floor', is_thing=False)]  # fmt: skip
        answer = call(rig.set_vocabulary, request)
        assert answer.success, answer.message
        assert answer.version == before.version + 1 and answer.encode_time_s >= 0.0
        new = rig.wait_for(
            'instances', lambda m: m.vocabulary_version == answer.version, resend=False
        )
        assert {inst.label for inst in new.instances} <= {'red mug', 'floor'}
        labels = rig.wait_for(
            'semantic/labels', lambda m: m.version == answer.version, resend=False
        )
        assert [e.name for e in labels.entries] == ['red mug', 'floor']

        add = SetVocabulary.Request(mode=SetVocabulary.Request.ADD,
                                    entries=[VocabularyEntry(name='bottle')])  # fmt: skip
        assert call(rig.set_vocabulary, add).version == answer.version + 1
        remove = SetVocabulary.Request(mode=SetVocabulary.Request.REMOVE,
                                       entries=[VocabularyEntry(name='floor')])  # fmt: skip
        removed = call(rig.set_vocabulary, remove)
        assert removed.success and removed.version == answer.version + 2
        now = call(rig.get_vocabulary, GetVocabulary.Request()).vocabulary
        # Indices stay stable on ADD; REMOVE closes the gap.
        assert [e.name for e in now.entries] == ['red mug', 'bottle']

        replace, remove_mode = SetVocabulary.Request.REPLACE, SetVocabulary.Request.REMOVE
        cup = VocabularyEntry(name='cup')
        garbage = [
            (replace, [VocabularyEntry(name='  ')], 'empty'),
            (replace, [cup, cup], 'twice'),
            (replace, [VocabularyEntry(name=f'c{i}') for i in range(5000)], 'more than'),
            (replace, [], 'no class in the vocabulary'),
            (remove_mode, [VocabularyEntry(name='unicorn')], 'not in'),
            (7, [cup], 'mode'),
            (replace, [VocabularyEntry(name='a\x07b')], 'control'),
        ]
        for mode, entries, words in garbage:
            refused = call(rig.set_vocabulary, SetVocabulary.Request(mode=mode, entries=entries))
            assert not refused.success and words in refused.message, refused.message
            assert refused.version == removed.version
        assert rig.vocabulary_version() == removed.version

        # The latched vocabulary topic is a REPLACE too.
        rig.vocabulary_pub.publish(Vocabulary(entries=[VocabularyEntry(name='mug'),
                                                  VocabularyEntry(name='table')]))  # fmt: skip
        rig.client.spin_until(lambda: rig.vocabulary_version() == removed.version + 1, 20,
                              'the vocabulary topic to take effect')  # fmt: skip
    finally:
        stop.set()
        streamer.join()


def find(rig: Rig, query: str, **fields) -> FindObjects.Response:
    return rig.client.call(rig.find, FindObjects.Request(query=query, **fields))


def test_find_present_absent_negated_and_frames(rig: Rig) -> None:
    sec = rig.send()
    rig.wait_for('instances', lambda m: m.header.stamp.sec == sec, resend=False)
    present = find(rig, 'red mug', frame=FindObjects.Request.LATEST, min_score=0.0)
    assert present.status == FindObjects.Response.FOUND, present.message
    assert present.header.stamp.sec >= sec and present.header.frame_id == 'camera_optical'
    scores = [m.score for m in present.matches]
    assert scores == sorted(scores, reverse=True) and len(scores) <= 10
    best = present.matches[0]
    assert best.label == 'red mug' and best.class_id == -1 and best.mask.width == best.roi.width
    assert best.has_3d and best.centroid.z == pytest.approx(DEPTH_M, abs=1e-5)

    stamp = present.header.stamp
    same = dict(frame=FindObjects.Request.STAMP, stamp=stamp, max_results=1)
    alone = find(rig, 'red mug', **same)
    # The query's own text as a negative competes for the query's probability mass, so no
    # score can rise (random test_tiny weights give scores so small that float32 may tie).
    # Nor can it fall to zero: it at most halves what the query alone gets, and with
    # min_score 0 any proposal scoring above 0 is a match, so one still is.
    negated = find(rig, 'red mug', negative_queries=['red mug'], **same)
    assert alone.header.stamp == negated.header.stamp == stamp
    assert negated.status == FindObjects.Response.FOUND, negated.message
    assert 0.0 < negated.matches[0].score <= alone.matches[0].score

    absent = find(rig, 'unicorn', frame=FindObjects.Request.STAMP, stamp=stamp, min_score=1.0)
    assert absent.status == FindObjects.Response.NOT_FOUND and not absent.matches

    bare = find(rig, 'red mug', **same, return_masks=False, return_3d=False)
    assert bare.matches[0].mask.width == 0 and not bare.matches[0].has_3d

    stamp.sec += 100000
    gone = find(rig, 'red mug', frame=FindObjects.Request.STAMP, stamp=stamp)
    assert gone.status == FindObjects.Response.NO_FRAME and 'kept' in gone.message

    waited = find(rig, 'red mug', frame=FindObjects.Request.NEXT, timeout_s=0.3)
    assert waited.status == FindObjects.Response.TIMEOUT, waited.message

    future = rig.find.call_async(FindObjects.Request(query='mug', frame=FindObjects.Request.NEXT,
                                                     timeout_s=10.0))  # fmt: skip
    last = [0.0]

    def next_done() -> bool:
        if time.monotonic() - last[0] > 0.3:
            last[0] = time.monotonic()
            rig.send()
        return future.done()

    rig.client.spin_until(next_done, 15, 'find NEXT')
    assert future.result().status == FindObjects.Response.FOUND
    assert future.result().header.stamp.sec > sec

    for bad in (
        dict(query=''),
        dict(query='mug', min_score=2.0),
        dict(query='mug', max_results=0),
    ):
        refused = rig.client.call(rig.find, FindObjects.Request(**bad))
        assert refused.status == FindObjects.Response.ERROR and refused.message


def moving_square(sec: int) -> Image:
    """The test scene with a red square that moves 2 pixels to the right a second."""
    pixels = scene()
    x = 10 + 2 * (sec % 10)
    pixels[15:31, x : x + 16] = (200, 30, 30)
    return array_to_image_msg(pixels, 'rgb8', stamped(sec))


def test_track_ids_last_across_frames_and_find_takes_a_track_id(rig: Rig) -> None:
    sent = []
    for _ in range(4):  # each frame segmented before the next goes: none is dropped
        rig.sec += 1
        rig.image_pub.publish(moving_square(rig.sec))
        rig.wait_for('instances', lambda m, sec=rig.sec: m.header.stamp.sec == sec, resend=False)
        sent.append(rig.sec)
    frames = [next(m for m in rig.got['instances'] if m.header.stamp.sec == s) for s in sent]
    tracked = [{i.track_id: i for i in m.instances if i.track_id} for m in frames]
    assert all(tracked), 'test_tiny proposes masks on any image, and all are tracked'
    for before, after in zip(tracked, tracked[1:], strict=False):
        kept = before.keys() & after.keys()
        assert kept, 'consecutive frames share tracks'
        for track_id in kept:
            assert after[track_id].first_seen == before[track_id].first_seen
    track_id = min(tracked[1])
    panoptic = rig.wait_for('panoptic', lambda m: m.header.stamp.sec == sent[-1], resend=False)
    assert {s.track_id for s in panoptic.segments if s.track_id} <= tracked[-1].keys()

    at_second = dict(frame=FindObjects.Request.STAMP, stamp=stamped(sent[1]).stamp)
    found = find(rig, '', track_id=track_id, **at_second)
    assert found.status == FindObjects.Response.FOUND, found.message
    [match] = found.matches
    assert (match.track_id, match.label) == (track_id, tracked[1][track_id].label)
    assert match.roi == tracked[1][track_id].roi and match.mask.width == match.roi.width
    unknown = find(rig, '', track_id=10**6, **at_second)
    assert unknown.status == FindObjects.Response.NOT_FOUND and not unknown.matches
    assert unknown.message.startswith('track 1000000 is unknown on this frame')
    by_query = find(rig, 'red mug', min_score=0.0, max_results=100, **at_second)
    assert {m.track_id for m in by_query.matches} & tracked[1].keys()

    def tracks_shown(msg: DiagnosticArray) -> bool:
        values = {kv.key: kv.value for kv in msg.status[0].values}
        return int(values.get('tracks active', 0)) > 0 and 'tracks lost' in values

    rig.wait_for('diagnostics', tracks_shown, resend=False)


def test_silence_warning_names_topic_and_qos(rig: Rig) -> None:
    # The node ran for a while before the first image (warn_after_s is 1 s).
    rig.client.spin_until(lambda: rig.logged('no image received'), 20, 'the silence warning')
    warning = next(log for log in rig.rosout if 'no image received' in log.msg)
    assert '/image' in warning.msg and 'reliable' in warning.msg


@contextlib.contextmanager
def node_in_namespace(tmp_path, namespace: str, overrides: dict[str, str]):
    """A node of its own under ``namespace`` (away from the module's node and publishers),
    active, with a client; yields (process, client)."""
    process = NodeProcess(
        tmp_path / 'node.log',
        {'diagnostics.period_s': '0.3', **overrides},
        name='masqclip_ns',
        namespace=namespace,
    )
    with serving(process, namespace) as running:
        yield running


def first_output(client: Client, topic: str, send) -> InstanceSegmentation:
    """Spin, calling ``send()`` every 0.5 s, until ``topic`` delivers an output."""
    outputs, sent = [], [0.0]
    client.node.create_subscription(InstanceSegmentation, topic, outputs.append, QOS)

    def answered() -> bool:
        if time.monotonic() - sent[0] > 0.5:
            sent[0] = time.monotonic()
            send()
        return bool(outputs)

    client.spin_until(answered, 30, f'an output on {topic}')
    return outputs[0]


def test_auto_reliability_follows_a_reliable_camera_started_later(tmp_path) -> None:
    parameters = {'input.reliability': 'auto', 'depth.enabled': 'true'}
    with node_in_namespace(tmp_path, '/auto', parameters) as (process, client):
        # No publisher yet: best effort matches any camera that comes.
        assert 'segmenting /auto/image (best_effort' in process.log()
        camera = client.node.create_publisher(Image, '/auto/image', QOS)  # reliable
        client.spin_until(lambda: '/auto/image: publishers changed, subscription now reliable'
                          in process.log(), 20, 'the switch to reliable')  # fmt: skip
        # The depth stream follows its own publishers (another driver may publish it).
        assert '/auto/depth: publishers changed' not in process.log()
        client.node.create_publisher(Image, '/auto/depth', QOS)
        client.spin_until(lambda: '/auto/depth: publishers changed, subscription now reliable'
                          in process.log(), 20, 'the depth switch to reliable')  # fmt: skip
        output = first_output(
            client, '/auto/masqclip_ns/instances', lambda: camera.publish(image_msg(7))
        )
        assert output.header.stamp.sec == 7


def test_compressed_input(tmp_path) -> None:
    with node_in_namespace(tmp_path, '/jpeg', {'input.compressed': 'true'}) as (process, client):
        camera = client.node.create_publisher(CompressedImage, '/jpeg/image/compressed', QOS)
        ok, jpeg = cv2.imencode('.jpg', image_msg_to_array(image_msg(9))[..., ::-1])
        assert ok
        message = CompressedImage(header=stamped(9), format='jpeg', data=jpeg.tobytes())
        topic = '/jpeg/masqclip_ns/instances'
        output = first_output(client, topic, lambda: camera.publish(message))
        assert output.header.stamp.sec == 9 and (output.height, output.width) == (H, W)
        # The decoder's warnings go to the node's rate-limited log (they were Python warnings
        # on stderr).
        mislabelled = CompressedImage(header=stamped(10), format='png', data=jpeg.tobytes())
        warning = (
            "[jpeg.masqclip_ns]: compressed image: format 'png' says PNG but the data is JPEG"
        )
        sent = [0.0]

        def warned() -> bool:
            if time.monotonic() - sent[0] > 0.5:
                sent[0] = time.monotonic()
                camera.publish(mislabelled)
            return warning in process.log()

        client.spin_until(warned, 15, f'the format warning in the node log\n{process.log()}')


def bad_image(kind: str) -> Image:
    good = image_msg(1, 'rgb8')
    if kind == 'encoding':
        good.encoding = 'yuv422_yuy2'
    elif kind == 'step':
        good.step = good.step - 1
    elif kind == 'short':
        good.data = good.data[: len(good.data) // 2]
    elif kind == 'zero':
        good.height, good.width, good.step, good.data = 0, 0, 0, b''
    elif kind == 'huge':
        good.height, good.width, good.step = 100000, 100000, 300000
    return good


@pytest.mark.parametrize(
    ('kind', 'words'),
    [
        ('encoding', 'unsupported camera encoding'),
        ('step', 'shorter than one row'),
        ('short', 'expected height x step'),
        ('zero', 'empty image'),
        ('huge', 'larger than the limit'),
    ],
)
def test_malformed_images_are_rejected_with_a_reason(rig: Rig, kind: str, words: str) -> None:
    rig.image_pub.publish(bad_image(kind))
    rig.client.spin_until(lambda: rig.logged(words), 15, f'a log saying {words!r}')
    assert any('rejected image on /image' in log.msg for log in rig.rosout)


ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '32FC1', 'yuv422', '']


@st.composite
def malformed_images(draw) -> Image:
    msg = Image()
    msg.encoding = draw(st.sampled_from(ENCODINGS) | st.text(max_size=12))
    msg.height = draw(st.integers(0, 70) | st.integers(0, 2**32 - 1))
    msg.width = draw(st.integers(0, 70) | st.integers(0, 2**32 - 1))
    msg.step = draw(st.integers(0, 300) | st.integers(0, 2**32 - 1))
    msg.is_bigendian = draw(st.booleans())
    msg.data = draw(st.binary(max_size=2048))
    return msg


def test_fuzz_thousands_of_malformed_images_and_the_node_keeps_serving(rig: Rig) -> None:
    sent = [0]

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(malformed_images())
    def publish(msg: Image) -> None:
        rig.image_pub.publish(msg)
        sent[0] += 1
        if sent[0] % 200 == 0:
            rig.client.executor.spin_once(timeout_sec=0)

    publish()
    assert sent[0] >= 1000
    assert rig.process.alive(), rig.process.log()[-3000:]
    # Still answering services and still segmenting good frames.
    assert rig.vocabulary_version() >= 1
    sec = rig.send()
    rig.wait_for('instances', lambda m: m.header.stamp.sec >= sec)

    def rejected() -> int:
        for array in reversed(rig.got['diagnostics']):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if 'rejected (malformed)' in values:
                    return int(values['rejected (malformed)'])
        return 0

    rig.client.spin_until(lambda: rejected() > 100, 15, 'diagnostics counting the rejections')


def test_lifecycle_deactivate_and_activate(rig: Rig) -> None:
    call = rig.client.call
    state = call(rig.get_state, GetState.Request()).current_state
    assert state.label == 'active'
    off = call(rig.change_state, ChangeState.Request(transition=Transition(
        id=Transition.TRANSITION_DEACTIVATE)))  # fmt: skip
    assert off.success
    rig.client.spin_until(lambda: rig.image_pub.get_subscription_count() == 0, 10, 'unsubscribe')
    # Services still answer from the loaded model.
    assert rig.vocabulary_version() >= 1
    on = call(rig.change_state, ChangeState.Request(transition=Transition(
        id=Transition.TRANSITION_ACTIVATE)))  # fmt: skip
    assert on.success
    rig.wait_matched()
    sec = rig.send()
    rig.wait_for('instances', lambda m: m.header.stamp.sec >= sec)


@pytest.fixture
def r50_checkpoint(tmp_path):
    """masqclip_r50_vitb16 with random weights, seeded: unseeded, about one draw in forty
    makes every mask logit negative, so nothing is segmented and find has nothing to find."""
    from masqclip.checkpoint import save_checkpoint
    from masqclip.factory import build_model

    torch.manual_seed(0)
    network, config = build_model('masqclip_r50_vitb16')
    path = tmp_path / 'r50_seed0.pt'
    save_checkpoint(path, network, config)
    return path


def test_find_answers_during_the_next_frames_image_pass(tmp_path, r50_checkpoint) -> None:
    """find scores a stored frame while the next one is segmented, and get_vocabulary reads
    the vocabulary: neither may wait for the image pass (masqclip_r50_vitb16 makes one take
    seconds on a CPU). get_vocabulary used to wait for the whole pass."""
    overrides = {'model.config': "''", 'model.checkpoint': str(r50_checkpoint),
                 'input.reliability': 'reliable'}  # fmt: skip
    with node_in_namespace(tmp_path, '/busy', overrides) as (process, client):
        node = client.node
        camera = node.create_publisher(Image, '/busy/image', QOS)
        outputs: dict[int, float] = {}  # stamp seconds -> arrival time
        node.create_subscription(InstanceSegmentation, '/busy/masqclip_ns/instances',
                                 lambda m: outputs.setdefault(m.header.stamp.sec,
                                                              time.monotonic()), QOS)  # fmt: skip
        find_service = node.create_client(FindObjects, '/busy/masqclip_ns/find')
        vocabulary_service = node.create_client(GetVocabulary, '/busy/masqclip_ns/get_vocabulary')
        client.spin_until(lambda: camera.get_subscription_count() > 0, 30, 'the image match')

        def publish_frame(sec: int) -> float:
            """Publish a VGA frame stamped ``sec``; return when it was sent."""
            camera.publish(array_to_image_msg(scene(480, 640, seed=sec), 'rgb8', stamped(sec)))
            return time.monotonic()

        started = publish_frame(1)
        client.spin_until(lambda: 1 in outputs, 120, f'frame 1\n{process.log()[-2000:]}')
        first_pass = outputs[1] - started
        if first_pass < 0.5:
            pytest.skip(f'an image pass took {first_pass:.2f} s: too fast to tell waiting apart')
        warm = find_latest(client, find_service, 'red mug')  # encodes the query's text
        assert warm.status == FindObjects.Response.FOUND, warm.message
        assert client.call(vocabulary_service, GetVocabulary.Request()).vocabulary.version == 1

        started = publish_frame(2)
        # Let the frame reach the inference thread, then ask while its pass runs.
        client.spin_until(lambda: time.monotonic() > started + 0.1 * first_pass, 10, 'a pause')
        answers = {query: timed_call(client, find_service, FindObjects.Request(query=query))
                   for query in ('red mug', 'a query never asked')}  # fmt: skip
        answers['get_vocabulary'] = timed_call(client, vocabulary_service, GetVocabulary.Request())
        client.spin_until(lambda: 2 in outputs, 120, f'frame 2\n{process.log()[-2000:]}')
        second_pass = outputs[2] - started
        for what, (answer, asked, answered) in answers.items():
            if what == 'get_vocabulary':
                assert answer.vocabulary.version == 1 and answer.vocabulary.entries
            else:
                assert answer.status == FindObjects.Response.FOUND, answer.message
                assert answer.header.stamp.sec == 1, 'LATEST is the last frame processed'
            assert answered < outputs[2], f'{what!r} was answered after the image pass ended'
            # Generous: scoring takes milliseconds, an image pass seconds.
            assert answered - asked < 0.3 * second_pass, (what, answered - asked, second_pass)


def find_latest(client: Client, service, query: str) -> FindObjects.Response:
    return client.call(service, FindObjects.Request(query=query), timeout=60)


def timed_call(client: Client, service, request) -> tuple[object, float, float]:
    """Call a service; returns (answer, time asked, time answered)."""
    asked = time.monotonic()
    answer = client.call(service, request, timeout=60)
    return answer, asked, time.monotonic()
