"""Teaching a class by showing it: exemplar classes, ``Predictor.teach``, the exemplar file, and
on the demo sequence, how well one shown example labels the object in later frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from masqclip.data.coco import CocoDataset, load_coco_panoptic
from masqclip.factory import build_model
from masqclip.inference.exemplars import (
    FORMAT,
    MIN_MASK_IOU,
    THRESHOLD_POSITION,
    ExemplarError,
    example_threshold,
    load_exemplars,
    save_exemplars,
)
from masqclip.inference.predictor import Predictor
from masqclip.inference.results import Instance, Proposals, SegmentationResult
from masqclip.inference.transforms import ResizeSpec
from masqclip.inference.vocabulary import (
    BACKGROUND,
    Exemplar,
    TextEmbeddingCache,
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
)

SEQUENCE = Path(__file__).resolve().parents[1] / 'examples' / 'sequence'


@pytest.fixture
def scene(rng):
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def predictor(tiny_predictor: Predictor) -> Predictor:
    tiny_predictor.set_vocabulary(Vocabulary.parse('red mug, table'))
    return tiny_predictor


def unit(values) -> np.ndarray:
    vector = np.asarray(values, np.float64)
    return vector / np.linalg.norm(vector)


def test_an_instance_taught_becomes_a_class_that_predict_and_find_use(predictor, scene):
    result = predictor.predict(scene)
    shown = result.instances[0]
    before = predictor.vocabulary
    taught = predictor.teach(result, ' my  toy ', proposal_index=shown.query_index)
    assert predictor.vocabulary is taught and before.names == ('red mug', 'table')
    assert taught.names == ('red mug', 'table', 'my toy')
    exemplar = taught.entries[2].exemplar
    assert exemplar.count == 1 and exemplar.model == predictor.model_fingerprint
    np.testing.assert_allclose(exemplar.embedding, shown.embedding, atol=1e-6)
    # Its own embedding against itself: cosine 1, above any threshold, so the shown proposal
    # is 'my toy' (semantic and panoptic output read the same class scores).
    again = predictor.predict(scene)
    labels = {i.label for i in again.instances if i.query_index == shown.query_index}
    assert 'my toy' in labels
    best = predictor.find(again, 'My Toy', max_results=1)
    assert best[0].query_index == shown.query_index and best[0].label == 'My Toy'


def test_the_threshold_lies_between_the_example_and_the_nearest_other_object():
    """Proposals mostly inside the shown object are parts of it, not what it is not; nor is a
    proposal of the padding, which shows nothing."""
    # (Q, h, w) low-resolution logits over a 16-wide frame padded to 20: column 4 is padding.
    cells = np.full((5, 2, 5), -5.0, np.float32)
    cells[0, :, :2] = 5.0  # the shown object: the left half
    cells[1, 0, 0] = 5.0  # a part of it
    cells[2, :, 2:4] = 5.0  # another object: the right half
    # cells[3] segments nothing
    cells[4, :, 4] = 5.0  # the padding only
    embeddings = unit_rows([[1, 0, 0], [1, 0.1, 0], [0.6, 0.8, 0], [1, 0, 0.01], [1, 0, 0.02]])
    spec = ResizeSpec(original=(8, 16), resized=(8, 16), padded=(8, 20))
    proposals = Proposals(
        embeddings, np.ones(5, np.float32), cells, spec, np.ones(5), np.eye(5), {}
    )
    result = SegmentationResult((8, 16), ('mug',), proposals=proposals)
    assert example_threshold(result, 0) == pytest.approx(0.6 + THRESHOLD_POSITION * 0.4)
    # With nothing outside the object, its parts stand in: a strict threshold, not none.
    cells[2] = cells[1]
    near_part = float(embeddings[1] @ embeddings[0])
    assert example_threshold(result, 0) == pytest.approx(
        near_part + THRESHOLD_POSITION * (1 - near_part)
    )


def unit_rows(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_more_examples_refine_the_running_mean_in_place(predictor, scene):
    result = predictor.predict(scene)
    first, second, third = result.proposals.embeddings[:3]
    predictor.teach(result, 'my toy', proposal_index=0)
    predictor.set_vocabulary(predictor.vocabulary.add([VocabularyEntry('floor')]))
    predictor.teach(result, 'my toy', proposal_index=1)
    taught = predictor.teach(result, 'MY TOY', proposal_index=2)
    assert taught.names == ('red mug', 'table', 'my toy', 'floor')  # index kept
    exemplar = taught.entries[2].exemplar
    assert exemplar.count == 3
    mean = (unit(first) + unit(second) + unit(third)) / 3
    np.testing.assert_allclose(exemplar.mean, mean, atol=1e-12)
    np.testing.assert_allclose(exemplar.embedding, unit(mean), atol=1e-6)


def test_a_mask_teaches_the_proposal_it_matches(predictor, scene):
    result = predictor.predict(scene)
    shown = result.instances[0]
    mask = shown.mask.copy()
    mask[np.nonzero(mask)[0][0]] = True  # a hand-drawn mask is never exact
    taught = predictor.teach(result, 'my toy', mask=mask)
    np.testing.assert_allclose(taught.entries[-1].exemplar.embedding, shown.embedding, atol=1e-6)


def _off_by_one_column(result):
    mask = np.zeros((result.image_size[0], result.image_size[1] + 1), bool)
    mask[:4, :4] = True
    return mask


def _matching_nothing(result):
    mask = np.zeros(result.image_size, bool)
    mask[0, 0] = True  # one pixel: IoU far below MIN_MASK_IOU with any proposal
    return mask


@pytest.mark.parametrize(
    'name, source, message',
    [
        ('table', {'proposal_index': 0}, "'table' is a text class"),
        ('Background', {'proposal_index': 0}, 'reserved'),
        ('  ', {'proposal_index': 0}, 'class name is empty'),
        ('my toy', {}, 'one of them'),
        ('my toy', {'proposal_index': 0, 'mask': 'drawn'}, 'one of them'),
        ('my toy', {'proposal_index': 10}, "index 10 is not one of the frame's 10 proposals"),
        ('my toy', {'proposal_index': -1}, 'not one of'),
        ('my toy', {'proposal_index': 1.0}, 'not one of'),
        ('my toy', {'mask': lambda r: np.ones(r.image_size, np.uint8)}, 'bool numpy array'),
        ('my toy', {'mask': _off_by_one_column}, 'draw it on the frame'),
        ('my toy', {'mask': lambda r: np.zeros(r.image_size, bool)}, 'the mask is empty'),
        ('my toy', {'mask': _matching_nothing}, f'{MIN_MASK_IOU} is needed'),
    ],
)
def test_bad_teaching_is_refused_and_changes_nothing(predictor, scene, name, source, message):
    result = predictor.predict(scene)
    if callable(source.get('mask')):
        source = {**source, 'mask': source['mask'](result)}
    before = predictor.vocabulary
    with pytest.raises(VocabularyError, match=message):
        predictor.teach(result, name, **source)
    assert predictor.vocabulary is before


def test_an_example_not_from_this_models_predict_is_refused(predictor, scene):
    with pytest.raises(ExemplarError, match='did not come from predict'):
        predictor.teach(SegmentationResult((48, 64), ()), 'my toy', proposal_index=0)
    result = predictor.predict(scene)
    proposals = result.proposals
    foreign = dataclasses.replace(
        result,
        proposals=dataclasses.replace(
            proposals, embeddings=np.ones((len(proposals.embeddings), 7), np.float32)
        ),
    )
    with pytest.raises(ExemplarError, match='7-wide embedding, this model makes 32-wide'):
        predictor.teach(foreign, 'my toy', proposal_index=0)
    taught = predictor.teach(result, 'my toy', proposal_index=0)
    with pytest.raises(VocabularyError, match='refine it with its own model'):
        taught.taught('my toy', np.ones(32), 'other-weights', 0.9)


def test_exemplars_of_other_weights_are_refused(predictor, spied_predictor):
    exemplar = Exemplar.first(np.ones(32), 'other-weights', 0.9)
    vocabulary = Vocabulary((VocabularyEntry('my toy', exemplar=exemplar),))
    before = predictor.vocabulary
    with pytest.raises(ExemplarError, match='taught with model other-weights, but this predictor'):
        predictor.set_vocabulary(vocabulary)
    assert predictor.vocabulary is before
    blind, _ = spied_predictor  # built without a model fingerprint
    with pytest.raises(ExemplarError, match='does not know its model fingerprint'):
        blind.set_vocabulary(vocabulary)


def test_the_text_cache_never_encodes_an_exemplar():
    encoded = []

    def encode(classes):
        encoded.extend(classes)
        return torch.nn.functional.normalize(torch.rand(len(classes), 3), dim=-1)

    exemplar = Exemplar.first([3.0, 0.0, 4.0], 'w', 0.9)
    entries = (VocabularyEntry('mug'), VocabularyEntry('my toy', exemplar=exemplar))
    matrix = TextEmbeddingCache(encode, 'w').embed_entries(entries)
    assert encoded == [('mug',), (BACKGROUND,)]
    assert matrix.shape == (3, 3)
    assert torch.equal(matrix[1], torch.tensor([0.6, 0.0, 0.8]))


def test_exemplar_names_are_no_text_for_the_word_list(tiny_model, scene):
    network, config = tiny_model
    config = {**config, 'clip': {**config['clip'], 'known_words': ['red', 'mug']}}
    predictor = Predictor.from_network(network, config)
    predictor.set_vocabulary(Vocabulary.parse('red mug'))
    predictor.teach(predictor.predict(scene), 'my toy', proposal_index=0)
    assert predictor.unknown_words_warning(predictor.vocabulary) is None
    assert predictor.unknown_words_warning(['my  Toy', 'red mug']) is None
    assert "'cat'" in predictor.unknown_words_warning(['my cat'])


def test_records_keep_exemplar_classes():
    exemplar = Exemplar.first([1.0, 2.0, 2.0], 'w', 0.9).refined([0.0, 0.0, 1.0], 'w', 0.8)
    assert exemplar.threshold == pytest.approx(0.85)  # the running mean, as the embedding's
    vocabulary = Vocabulary.parse('mug').add([VocabularyEntry('my toy', exemplar=exemplar)])
    records = vocabulary.to_records()
    assert records[1]['exemplar'] == {
        'mean': list(exemplar.mean),
        'count': 2,
        'model': 'w',
        'threshold': exemplar.threshold,
    }
    assert Vocabulary.from_records(json.loads(json.dumps(records))) == vocabulary
    assert vocabulary.entries[1].prompts == ()


@pytest.mark.parametrize(
    'exemplar, message',
    [
        ({'mean': [0.0, 0.0], 'count': 1, 'model': 'w', 'threshold': 0.9}, 'non-zero'),
        ({'mean': [1.0, float('nan')], 'count': 1, 'model': 'w', 'threshold': 0.9}, 'finite'),
        ({'mean': ['x'], 'count': 1, 'model': 'w', 'threshold': 0.9}, 'list of numbers'),
        ({'mean': [1.0], 'count': 0, 'model': 'w', 'threshold': 0.9}, 'at least one example'),
        ({'mean': [1.0], 'count': 1, 'model': '', 'threshold': 0.9}, 'fingerprint'),
        ({'mean': [1.0], 'count': 1, 'model': 'w', 'threshold': 1.5}, 'cosine in'),
        ({'mean': [1.0], 'count': 1, 'model': 'w'}, 'exactly mean, count, model and threshold'),
    ],
)
def test_bad_exemplar_records_are_refused(exemplar, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_records([{'name': 'my toy', 'exemplar': exemplar}])


def test_an_exemplar_class_has_no_synonyms():
    exemplar = Exemplar.first([1.0], 'w', 0.9)
    with pytest.raises(VocabularyError, match='cannot have synonyms'):
        Vocabulary(()).add([VocabularyEntry('my toy', ('toy',), exemplar=exemplar)])


def test_the_exemplar_file_round_trips_and_names_its_model(predictor, scene, tmp_path):
    result = predictor.predict(scene)
    predictor.teach(result, 'my toy', proposal_index=0)
    taught = predictor.teach(result, 'my cup', proposal_index=1)
    path = tmp_path / 'taught' / 'exemplars.json'
    assert save_exemplars(path, taught) == 2
    data = json.loads(path.read_text())
    assert data['format'] == FORMAT and [c['name'] for c in data['classes']] == [
        'my toy',
        'my cup',
    ]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    entries = load_exemplars(path, predictor.model_fingerprint)
    assert entries == taught.entries[2:]
    restarted = Vocabulary.parse('red mug, table').add(entries)
    predictor.set_vocabulary(restarted)
    assert restarted == taught
    with pytest.raises(ExemplarError) as refused:
        load_exemplars(path, 'f' * 32)
    message = str(refused.value)
    assert predictor.model_fingerprint in message and 'f' * 32 in message
    assert 'teach it again' in message


@pytest.mark.parametrize(
    'content, message',
    [
        (None, 'cannot read'),
        ('{', 'not valid JSON'),
        ('{"classes": []}', 'not an exemplar file'),
        (json.dumps({'format': FORMAT, 'classes': ['mug']}), "text classes \\['mug'\\]"),
        (json.dumps({'format': FORMAT, 'classes': [{'name': 'x', 'exemplar': 1}]}), 'mapping'),
        ('{"format": "masqclip_ros/exemplars/1", "classes": []}', 'format 1.*teach .* again'),
    ],
)
def test_bad_exemplar_files_are_refused(tmp_path, content, message):
    path = tmp_path / 'exemplars.json'
    if content is not None:
        path.write_text(content)
    with pytest.raises(ExemplarError, match=message):
        load_exemplars(path, 'w')


# The test: with the shipped demo model, one example mask of an object in one frame of
# examples/sequence, taught under a new name with its text class removed from the vocabulary,
# labels that object in later frames at least about as well as its text class does (docs/teach.md).

TAUGHT_NAME = 'my toy'


def _labelled(instances: list[Instance], mask: np.ndarray, label: str) -> bool:
    """Whether the best-scoring instance matching ``mask`` (IoU >= 0.5) is called ``label``."""
    for instance in instances:  # best first
        x0, y0, x1, y1 = instance.box.astype(int)
        overlap = np.count_nonzero(instance.mask_crop & mask[y0:y1, x0:x1])
        if overlap >= 0.5 * (instance.area + np.count_nonzero(mask) - overlap):
            return instance.label == label
    return False


@dataclasses.dataclass
class TeachRates:
    """How one shown example does on later frames (``taught_and_text_rates``).

    :param taught: share of the class's later objects labelled with the taught class.
    :param text: the same with the class's text name instead.
    :param precision: share of the instances labelled with the taught class that lie at least
        half on an object of the class (parts of it count; 1.0 when none is labelled).
    """

    taught: float
    text: float
    precision: float


def _on_objects(instance: Instance, masks: list[np.ndarray]) -> bool:
    x0, y0, x1, y1 = instance.box.astype(int)
    on = np.zeros_like(instance.mask_crop)
    for mask in masks:
        on |= mask[y0:y1, x0:x1]
    return 2 * np.count_nonzero(instance.mask_crop & on) >= instance.area


def taught_and_text_rates(
    predictor: Predictor, dataset: CocoDataset, text_class: str, shown_frame: int, step: int = 1
) -> TeachRates:
    """How often the annotated objects of ``text_class`` in every ``step``-th frame after
    ``shown_frame`` get their class (the best-scoring instance matching them says so): taught
    from ``shown_frame``'s first such object as ``TAUGHT_NAME``, with ``text_class`` removed
    from the scene's vocabulary; and as ``text_class``, the scene's vocabulary as it is. And
    how many of the taught class's instances are on such an object."""
    category = next(c.id for c in dataset.categories if c.name == text_class)

    def objects(record):
        return [a for a in record.annotations if a.category_id == category]

    scene = Vocabulary.from_records(
        {'name': c.name, 'is_thing': c.is_thing} for c in dataset.categories
    )
    predictor.set_vocabulary(scene.remove([text_class]))
    shown = dataset[shown_frame]
    result = predictor.predict(shown.load_image(), tasks=('instance',))
    taught = predictor.teach(result, TAUGHT_NAME, mask=objects(shown)[0].mask())
    later = [r for r in dataset.records[shown_frame + 1 :: step] if objects(r)]
    rates, taught_on_objects = [], []
    for vocabulary, label in ((taught, TAUGHT_NAME), (scene, text_class)):
        predictor.set_vocabulary(vocabulary)
        hits = []
        for record in later:
            instances = predictor.predict(record.load_image(), tasks=('instance',)).instances
            masks = [a.mask() for a in objects(record)]
            hits += [_labelled(instances, mask, label) for mask in masks]
            if label == TAUGHT_NAME:
                taught_on_objects += [_on_objects(i, masks) for i in instances if i.label == label]
        rates.append(float(np.mean(hits)))
    return TeachRates(*rates, float(np.mean(taught_on_objects)) if taught_on_objects else 1.0)


def demo_predictor_and_sequence() -> tuple[Predictor, CocoDataset]:
    network, config = build_model(checkpoint='demo')
    dataset = load_coco_panoptic(
        SEQUENCE / 'annotations' / 'panoptic.json', SEQUENCE / 'panoptic', SEQUENCE / 'images'
    )
    return Predictor.from_network(network, config), dataset


def test_one_shown_example_labels_the_object_in_later_frames():
    # Shown in frame 1; every 12th later frame, 9 of which hold it. Measured (docs/teach.md):
    # taught 0.56, text 0.56, precision 0.74 here. Before exemplar thresholds the taught class
    # won the softmax on nearly every mask (13-16 of 16 instances per frame): taught 0.75 with
    # a precision of 0.09, which the precision bound now catches.
    rates = taught_and_text_rates(
        *demo_predictor_and_sequence(), 'purple checkered', shown_frame=0, step=12
    )
    print(rates)
    assert rates.taught >= 0.4 and rates.taught >= rates.text - 0.15, rates
    assert rates.precision >= 0.5, rates
