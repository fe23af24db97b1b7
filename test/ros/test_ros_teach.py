"""Teaching a class by showing it, over DDS: ~/teach from an instance published on ~/instances,
the class in get_vocabulary and ~/semantic/labels, found by name, kept by a REPLACE, saved to
teach.file and loaded again by a restarted node; a file of another model fails configure."""

import json

import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from masqclip_ros.msg import InstanceSegmentation, Vocabulary, VocabularyEntry  # noqa: E402
from masqclip_ros.srv import FindObjects, GetVocabulary, SetVocabulary, TeachClass  # noqa: E402
from ros_testing import LATCHED, RELIABLE, Client, NodeProcess, image_msg, serving  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from masqclip.checkpoint import save_checkpoint  # noqa: E402
from masqclip.inference.exemplars import save_exemplars  # noqa: E402
from masqclip.inference.vocabulary import Exemplar  # noqa: E402
from masqclip.inference.vocabulary import Vocabulary as LibraryVocabulary  # noqa: E402
from masqclip.inference.vocabulary import VocabularyEntry as LibraryEntry  # noqa: E402

pytestmark = pytest.mark.ros

NAMESPACE = '/teach'
NODE = f'{NAMESPACE}/masqclip_node'


@pytest.fixture(scope='module')
def checkpoint(tiny_model, tmp_path_factory):
    """test_tiny's weights in a file: every node started from it runs the same model (random
    weights built anew in each process would refuse the classes of the one before)."""
    network, config = tiny_model
    path = tmp_path_factory.mktemp('weights') / 'tiny.pt'
    save_checkpoint(path, network, config)
    return path


def node(log_path, checkpoint, teach_file) -> NodeProcess:
    overrides = {'model.checkpoint': str(checkpoint), 'teach.file': str(teach_file),
                 'vocabulary': '[mug, table]', 'input.reliability': 'reliable',
                 'tracking.min_score': '0.0'}  # fmt: skip
    return NodeProcess(log_path, overrides, namespace=NAMESPACE)


class Services:
    """The node's services and outputs, from the test's client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        n = client.node
        self.camera = n.create_publisher(Image, f'{NAMESPACE}/image', RELIABLE)
        self.instances: list[InstanceSegmentation] = []
        n.create_subscription(InstanceSegmentation, f'{NODE}/instances', self.instances.append,
                              RELIABLE)  # fmt: skip
        self.labels: list[Vocabulary] = []
        n.create_subscription(Vocabulary, f'{NODE}/semantic/labels', self.labels.append, LATCHED)
        self.teach = n.create_client(TeachClass, f'{NODE}/teach')
        self.get_vocabulary = n.create_client(GetVocabulary, f'{NODE}/get_vocabulary')
        self.set_vocabulary = n.create_client(SetVocabulary, f'{NODE}/set_vocabulary')
        self.find = n.create_client(FindObjects, f'{NODE}/find')

    def stream(self, first_sec: int, count: int) -> InstanceSegmentation:
        """Publish ``count`` frames, each once the one before was segmented; return the last
        one's instances."""
        self.client.spin_until(lambda: self.camera.get_subscription_count() > 0, 30, 'a match')
        for sec in range(first_sec, first_sec + count):
            self.camera.publish(image_msg(sec, seed=sec))
            self.client.spin_until(
                lambda sec=sec: any(m.header.stamp.sec == sec for m in self.instances),
                30,
                f'the instances of frame {sec}',
            )
        return self.instances[-1]

    def vocabulary(self) -> Vocabulary:
        return self.client.call(self.get_vocabulary, GetVocabulary.Request()).vocabulary


def classes(vocabulary: Vocabulary) -> list[tuple[str, int]]:
    return [(entry.name, entry.exemplar_count) for entry in vocabulary.entries]


def test_a_class_taught_from_an_instance_is_found_kept_and_reloaded_on_restart(
    tmp_path, checkpoint
) -> None:
    teach_file = tmp_path / 'taught.json'
    first = node(tmp_path / 'first.log', checkpoint, teach_file)
    with serving(first, NAMESPACE) as (process, client):
        services = Services(client)
        frame = services.stream(first_sec=10, count=3)
        shown = frame.instances[0]
        before = services.vocabulary().version
        request = TeachClass.Request(name='my toy', frame=TeachClass.Request.STAMP,
                                     stamp=frame.header.stamp,
                                     proposal_index=shown.proposal_index)  # fmt: skip
        answer = client.call(services.teach, request)
        assert answer.success, answer.message
        assert (answer.version, answer.class_id, answer.example_count) == (before + 1, 2, 1)
        assert answer.message == (
            f"taught 'my toy' (class 2, 1 example) from proposal {shown.proposal_index} of "
            'frame 12.000001000'
        )
        now = services.vocabulary()
        assert now.version == answer.version
        assert classes(now) == [('mug', 0), ('table', 0), ('my toy', 1)]
        client.spin_until(lambda: any(m.version == answer.version for m in services.labels), 20,
                          'the latched labels of the new version')  # fmt: skip
        labels = next(m for m in services.labels if m.version == answer.version)
        assert classes(labels) == classes(now)
        assert f'vocabulary version {answer.version} from teach: 3 classes' in process.log()
        assert json.loads(teach_file.read_text())['classes'][0]['name'] == 'my toy'

        found = client.call(services.find, FindObjects.Request(
            query='my toy', frame=FindObjects.Request.STAMP, stamp=frame.header.stamp,
            max_results=1))  # fmt: skip
        assert found.status == FindObjects.Response.FOUND, found.message
        assert found.matches[0].proposal_index == shown.proposal_index  # itself: cosine 1

        refused = client.call(services.teach, TeachClass.Request(name='Table', proposal_index=0))
        assert not refused.success and "'table' is a text class" in refused.message
        assert (refused.version, refused.class_id, refused.example_count) == (answer.version,
                                                                              -1, 0)  # fmt: skip

        replace = SetVocabulary.Request(mode=SetVocabulary.Request.REPLACE,
                                        entries=[VocabularyEntry(name='cup')])  # fmt: skip
        replaced = client.call(services.set_vocabulary, replace)
        assert replaced.success, replaced.message
        assert classes(services.vocabulary()) == [('cup', 0), ('my toy', 1)]

    restarted = node(tmp_path / 'second.log', checkpoint, teach_file)
    with serving(restarted, NAMESPACE) as (process, client):
        services = Services(client)
        reloaded = services.vocabulary()
        assert classes(reloaded) == [('mug', 0), ('table', 0), ('my toy', 1)]
        assert reloaded.version == 1 and '3 classes (1 taught)' in process.log()
        frame = services.stream(first_sec=20, count=1)
        found = client.call(services.find, FindObjects.Request(query='my toy', max_results=1))
        assert found.status == FindObjects.Response.FOUND, found.message
        assert found.header.stamp == frame.header.stamp


def test_a_teach_file_of_another_model_fails_configure_and_is_left_as_it_is(
    tmp_path, checkpoint
) -> None:
    teach_file = tmp_path / 'taught.json'
    foreign = Exemplar(tuple([0.5] * 4), 1, 'other-weights', 0.9)
    save_exemplars(teach_file, LibraryVocabulary((LibraryEntry('my toy', exemplar=foreign),)))
    written = teach_file.read_bytes()
    process = node(tmp_path / 'node.log', checkpoint, teach_file)
    try:
        assert process.process.wait(timeout=120) == 1, process.log()[-3000:]
    finally:
        process.stop()
    log = process.log()
    assert 'configure failed: exemplar class' in log and 'other-weights' in log, log[-3000:]
    assert 'teach it again with this model, or run the model it was taught with' in log
    assert teach_file.read_bytes() == written
