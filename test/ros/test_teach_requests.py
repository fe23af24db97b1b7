"""The node's teaching policy (masqclip_ros.teach) without a node: which proposal of a
remembered frame a TeachClass request shows (by index, by track, by a drawn mask), every
refusal with the vocabulary unchanged, the answer, and the teach.file kept across restarts; and
the exported backends knowing their model, so that teaching works there too."""

import json
import re

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.srv', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402
from masqclip_ros.srv import TeachClass  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from masqclip.inference.exemplars import ExemplarError, save_exemplars  # noqa: E402
from masqclip.inference.tracking import TrackerCfg  # noqa: E402
from masqclip.inference.vocabulary import (  # noqa: E402
    Exemplar,
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
)
from masqclip_ros.conversions import array_to_image_msg  # noqa: E402
from masqclip_ros.history import FrameHistory  # noqa: E402
from masqclip_ros.teach import ExemplarStore, taught_entries, teach_from_request  # noqa: E402
from masqclip_ros.tracks import FrameTracker, FrameTracks  # noqa: E402

H, W = 48, 64
LATEST, STAMP = TeachClass.Request.LATEST, TeachClass.Request.STAMP
MAX_PIXELS = 10_000


@pytest.fixture
def predictor(tiny_predictor):
    tiny_predictor.set_vocabulary(Vocabulary.parse('red mug, table'))
    return tiny_predictor


def header(sec: int) -> Header:
    return Header(frame_id='camera_optical', stamp=Time(sec=sec, nanosec=5))


@pytest.fixture
def frames(predictor):
    """Two frames segmented and remembered with their tracks (stamps 40 and 41); returns the
    history and the full results (the history keeps them without instances)."""
    history = FrameHistory(capacity=4)
    tracker = FrameTracker(TrackerCfg(), min_score=0.0)
    results = []
    for sec in (40, 41):
        image = np.random.default_rng(sec).integers(0, 256, (H, W, 3), dtype=np.uint8)
        result = predictor.predict(image)
        tracked = tracker.track(result, predictor.vocabulary.is_thing, Time(sec=sec), 1)
        history.remember(header(sec), tracked.result, 1, None, None, tracked.tracks)
        results.append(tracked.result)
    return history, results


def teach(predictor, history, name='my toy', **fields):
    request = TeachClass.Request(name=name, **fields)
    return teach_from_request(request, history, predictor, MAX_PIXELS)


def unit(vector) -> np.ndarray:
    return np.asarray(vector, np.float64) / np.linalg.norm(vector)


def mask_msg(mask: np.ndarray, encoding: str = 'mono8') -> Image:
    return array_to_image_msg(mask.astype(np.uint8) * np.uint8(255), encoding, header(41))


def test_a_proposal_index_teaches_that_proposal_of_the_latest_frame(predictor, frames) -> None:
    history, results = frames
    taught = teach(predictor, history, name=' My  toy ', proposal_index=3)
    assert predictor.vocabulary is taught.vocabulary
    assert taught.vocabulary.names == ('red mug', 'table', 'My toy')
    assert (taught.class_id, taught.example_count) == (2, 1)
    assert taught.message == (
        "taught 'My toy' (class 2, 1 example) from proposal 3 of frame 41.000000005"
    )
    np.testing.assert_allclose(
        taught.vocabulary.entries[2].exemplar.mean, unit(results[1].proposals.embeddings[3])
    )


def test_an_earlier_frame_by_stamp_adds_a_second_example_to_the_class(predictor, frames) -> None:
    history, results = frames
    teach(predictor, history, proposal_index=3)
    again = teach(predictor, history, 'MY TOY', frame=STAMP, stamp=Time(sec=40, nanosec=5),
                  proposal_index=1)  # fmt: skip
    assert (again.class_id, again.example_count) == (2, 2)
    assert again.message == (
        "taught 'my toy' (class 2, 2 examples) from proposal 1 of frame 40.000000005"
    )
    mean = (
        unit(results[1].proposals.embeddings[3]) + unit(results[0].proposals.embeddings[1])
    ) / 2
    np.testing.assert_allclose(again.vocabulary.entries[2].exemplar.mean, mean, atol=1e-12)


def test_a_track_teaches_its_proposal_on_that_frame(predictor, frames) -> None:
    history, results = frames
    instance = next(i for i in results[0].instances if i.track_id)
    taught = teach(predictor, history, frame=STAMP, stamp=Time(sec=40, nanosec=5),
                   track_id=instance.track_id)  # fmt: skip
    assert taught.message.endswith(
        f'from track {instance.track_id} (proposal {instance.query_index}) of frame 40.000000005'
    )
    np.testing.assert_allclose(
        taught.vocabulary.entries[2].exemplar.mean,
        unit(results[0].proposals.embeddings[instance.query_index]),
    )


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_a_drawn_mask_teaches_the_proposal_it_covers(predictor, frames, encoding) -> None:
    history, results = frames
    shown = results[1].instances[0]
    taught = teach(predictor, history, mask=mask_msg(shown.mask, encoding))
    assert taught.message.endswith('from a drawn mask of frame 41.000000005')
    np.testing.assert_allclose(
        taught.vocabulary.entries[2].exemplar.mean,
        unit(results[1].proposals.embeddings[shown.query_index]),
    )


def _gone_track_history(frames) -> FrameHistory:
    """The latest frame again, with track 7 lost on it (last seen 1.5 s before it)."""
    history, _ = frames
    tracks = FrameTracks(42.0, {}, {7: 40.5})
    history.remember(header(42), history.kept().result, 1, None, None, tracks)
    return history


def _untracked_history(frames) -> FrameHistory:
    history, _ = frames
    history.remember(header(42), history.kept().result, 1, None, None, None)
    return history


def _labelled_rgb8() -> Image:
    mask = mask_msg(np.ones((H, W), bool))
    mask.encoding = 'rgb8'
    return mask


def _short_mask() -> Image:
    mask = mask_msg(np.ones((H, W), bool))
    mask.data = mask.data[:100]
    return mask


@pytest.mark.parametrize(
    ('fields', 'message'),
    [
        ({'frame': 1, 'proposal_index': 0}, 'frame 1 is not LATEST (0) or STAMP (2)'),
        ({'frame': STAMP, 'stamp': Time(sec=-1), 'proposal_index': 0},
         'the requested stamp -1 s 0 ns is not a ROS time'),
        ({'frame': STAMP, 'stamp': Time(sec=99, nanosec=5), 'proposal_index': 0},
         'no recent frame has stamp 99.000000005; kept: 40.000000005, 41.000000005'),
        ({}, 'show the example by exactly one of proposal_index (>= 0), track_id (> 0) or mask '
             '(not empty); got none'),
        ({'proposal_index': 0, 'track_id': 1}, 'got proposal_index and track_id'),
        ({'track_id': 1, 'mask': Image(encoding='mono8')}, 'got track_id and mask'),
        ({'proposal_index': -2}, 'proposal_index -2 is no proposal: give one >= 0, or -1'),
        ({'proposal_index': 10}, "proposal index 10 is not one of the frame's 10 proposals"),
        ({'track_id': 10**6}, 'track 1000000 is unknown on this frame'),
        ({'mask': mask_msg(np.zeros((H, W), bool))}, 'the mask is empty'),
        ({'mask': mask_msg(np.ones((H, W + 1), bool))},
         'the mask is (65, 48) (width, height) but the frame is (64, 48)'),
        ({'mask': _labelled_rgb8()}, "the mask's encoding is 'rgb8': send mono8 (or 8UC1)"),
        ({'mask': _short_mask()}, 'the mask is no usable image: data has 100 bytes'),
        ({'mask': mask_msg(np.ones((200, 200), bool))},
         'image of 200x200 is larger than the limit of 10000 pixels'),
        ({'name': 'Table', 'proposal_index': 0}, "'table' is a text class"),
        ({'name': '  ', 'proposal_index': 0}, 'class name is empty'),
        ({'name': 'background', 'proposal_index': 0}, 'reserved'),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_saying_why_and_change_nothing(
    predictor, frames, fields, message
) -> None:
    history, _ = frames
    before = predictor.vocabulary
    with pytest.raises(VocabularyError) as refused:
        teach(predictor, history, **{'name': 'my toy', **fields})
    assert message in str(refused.value)
    assert predictor.vocabulary is before


@pytest.mark.parametrize(
    ('history_of', 'message'),
    [
        (_gone_track_history, 'track 7 is lost on this frame: out of view since 1.50 s'),
        (_untracked_history, 'this frame was not tracked (tracking.enabled is false)'),
        (lambda frames: FrameHistory(), 'no frame has been processed yet'),
    ],
)
def test_a_track_gone_from_the_frame_or_no_frame_at_all_is_refused(
    predictor, frames, history_of, message
) -> None:
    before = predictor.vocabulary
    with pytest.raises(VocabularyError, match=re.escape(message)):
        teach(predictor, history_of(frames), track_id=7)
    assert predictor.vocabulary is before


def test_no_file_keeps_nothing(predictor, frames) -> None:
    store = ExemplarStore()
    vocabulary = Vocabulary.parse('mug')
    assert store.load(vocabulary, predictor.model_fingerprint) is vocabulary
    assert store.save(teach(predictor, frames[0], proposal_index=0).vocabulary) is None


def test_taught_classes_are_saved_on_change_and_loaded_after_the_configured_ones(
    predictor, frames, tmp_path
) -> None:
    path = tmp_path / 'robot' / 'taught.json'
    store = ExemplarStore(str(path))
    configured = predictor.vocabulary
    assert store.load(configured, predictor.model_fingerprint) is configured  # no file yet
    assert store.save(configured) is None and not path.exists()  # nothing taught: not written
    taught = teach(predictor, frames[0], proposal_index=3).vocabulary
    assert store.save(taught) is None and path.is_file()
    path.write_text('left alone when the taught classes did not change')
    moved = Vocabulary((taught.entries[2], VocabularyEntry('floor')))
    assert store.save(moved) is None
    assert path.read_text().startswith('left alone')
    save_exemplars(path, taught)

    restarted = ExemplarStore(str(path))
    loaded = restarted.load(Vocabulary.parse('mug, floor'), predictor.model_fingerprint)
    assert loaded.names == ('mug', 'floor', 'my toy')
    assert taught_entries(loaded) == taught_entries(taught)
    assert restarted.save(loaded) is None  # as read: not written again
    restarted.save(Vocabulary.parse('mug, floor'))  # the REMOVE of the taught class
    assert json.loads(path.read_text())['classes'] == []


def exemplar_file(path, model: str) -> None:
    exemplar = Exemplar(tuple(np.ones(32) / np.sqrt(32)), 1, model, 0.9)
    save_exemplars(path, Vocabulary((VocabularyEntry('my toy', exemplar=exemplar),)))


@pytest.mark.parametrize(
    ('write', 'message'),
    [
        (lambda path: exemplar_file(path, 'other-weights'),
         'was taught with model other-weights, but this predictor runs model'),
        (lambda path: path.write_text('{"format":'), 'is not valid JSON'),
        (lambda path: path.mkdir(), 'cannot read exemplar file'),
    ],
)  # fmt: skip
def test_a_file_of_another_model_or_unreadable_is_refused_and_left_as_it_is(
    predictor, tmp_path, write, message
) -> None:
    path = tmp_path / 'taught.json'
    write(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ExemplarError, match=message):
        ExemplarStore(path).load(Vocabulary.parse('mug'), predictor.model_fingerprint)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_the_parameters_are_a_replace_over_the_classes_of_the_file(predictor, tmp_path):
    path = tmp_path / 'taught.json'
    exemplar_file(path, predictor.model_fingerprint)
    model = predictor.model_fingerprint
    appended = ExemplarStore(path).load(Vocabulary.parse('mug'), model)
    assert appended.names == ('mug', 'my toy')
    named = ExemplarStore(path).load(Vocabulary.parse('My Toy, mug'), model)
    assert named.names == ('My Toy', 'mug')
    assert named.entries[0].exemplar == appended.entries[1].exemplar
    with pytest.raises(ExemplarError, match=(
        f'the vocabulary parameters do not fit the taught classes of teach.file {path}: '
        "exemplar class 'my toy' cannot have synonyms"
    )):  # fmt: skip
        ExemplarStore(path).load(Vocabulary((VocabularyEntry('my toy', synonyms=('teddy',)),)),
                                 model)  # fmt: skip


def test_a_file_that_cannot_be_written_is_a_warning_and_the_next_change_tries_again(
    predictor, frames, tmp_path
) -> None:
    blocker = tmp_path / 'not a folder'
    blocker.write_text('')
    store = ExemplarStore(blocker / 'taught.json')
    taught = teach(predictor, frames[0], proposal_index=3).vocabulary
    warning = store.save(taught)
    assert warning.startswith(
        f'the taught classes are in force but not saved to teach.file {blocker}/taught.json: '
    )
    assert store.save(taught) == warning  # not taken for saved
    blocker.unlink()
    assert store.save(taught) is None and (blocker / 'taught.json').is_file()


def test_an_exported_backend_knows_its_model_so_classes_taught_on_it_work_on_torch(
    tiny_model, tmp_path
) -> None:
    pytest.importorskip('onnxruntime')
    from masqclip.checkpoint import save_checkpoint
    from masqclip.factory import create_predictor

    network, config = tiny_model
    checkpoint = tmp_path / 'tiny.pt'
    save_checkpoint(checkpoint, network, config)
    exported = create_predictor(checkpoint=checkpoint, backend='onnxruntime',
                                frame_size=(H, W), engine_cache_dir=tmp_path)  # fmt: skip
    on_torch = create_predictor(checkpoint=checkpoint)
    assert exported.model_fingerprint is not None
    assert exported.model_fingerprint == on_torch.model_fingerprint
    exported.set_vocabulary(Vocabulary.parse('mug'))
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    taught = exported.teach(exported.predict(image), 'my toy', proposal_index=0)
    on_torch.set_vocabulary(taught)  # the other backend takes the class
    assert on_torch.vocabulary.names == ('mug', 'my toy')
