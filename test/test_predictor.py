"""The predictor's contract: numpy in, ``SegmentationResult`` out, bad input rejected clearly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from masqclip.inference.predictor import Predictor, PredictorCfg
from masqclip.inference.results import UNLABELED
from masqclip.inference.transforms import InvalidImageError, plan_resize
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry, VocabularyError


@pytest.fixture
def predictor(tiny_predictor: Predictor) -> Predictor:
    tiny_predictor.set_vocabulary(
        Vocabulary(
            (
                VocabularyEntry('red mug'),
                VocabularyEntry('table'),
                VocabularyEntry('floor', is_thing=False),
            )
        )
    )
    return tiny_predictor


def test_result_contract(predictor, rng):
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    result = predictor.predict(image)
    assert result.image_size == (70, 90)
    assert result.vocabulary == ('red mug', 'table', 'floor')
    assert result.semantic.dtype == np.int32 and result.semantic.shape == (70, 90)
    assert set(np.unique(result.semantic)) <= {0, 1, 2}
    assert result.panoptic.dtype == np.int32 and result.panoptic.shape == (70, 90)
    assert {s.id for s in result.segments} == set(np.unique(result.panoptic)) - {0}
    assert result.instances, 'the tiny model proposes something on noise'
    scores = [i.score for i in result.instances]
    assert scores == sorted(scores, reverse=True)
    for instance in result.instances:
        assert instance.mask.dtype == bool and instance.mask.shape == (70, 90)
        assert instance.box.dtype == np.float32 and instance.box.shape == (4,)
        ys, xs = np.nonzero(instance.mask)
        np.testing.assert_array_equal(
            instance.box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        )
        assert instance.label == result.vocabulary[instance.class_id]
        assert instance.embedding.dtype == np.float32
        assert np.linalg.norm(instance.embedding) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= instance.score <= instance.objectness <= 1.0
        # panoptic is on, so stuff classes never come out as instances
        assert instance.label != 'floor'
    proposals = result.proposals
    num_queries = predictor.model_config['proposer']['decoder']['num_queries']
    assert proposals.embeddings.shape == (num_queries, 32)
    assert proposals.objectness.shape == (num_queries,)
    assert proposals.mask_logits.shape[0] == num_queries
    assert set(result.timings) >= {'preprocess', 'image_model', 'classify'}


def test_bgr_input_equals_rgb(predictor, rng):
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb = predictor.predict(image, color='rgb')
    bgr = predictor.predict(np.ascontiguousarray(image[..., ::-1]), color='bgr')
    np.testing.assert_array_equal(rgb.semantic, bgr.semantic)
    np.testing.assert_array_equal(rgb.panoptic, bgr.panoptic)
    np.testing.assert_allclose(rgb.proposals.embeddings, bgr.proposals.embeddings)
    swapped = predictor.predict(np.ascontiguousarray(image[..., ::-1]), color='rgb')
    assert not np.allclose(rgb.proposals.embeddings, swapped.proposals.embeddings)


@pytest.mark.parametrize('height, width', [(37, 53), (301, 17), (16, 16), (600, 129)])
def test_odd_sizes_give_outputs_at_the_input_size(predictor, rng, height, width):
    result = predictor.predict(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert result.semantic.shape == result.panoptic.shape == (height, width)
    assert all(i.mask.shape == (height, width) for i in result.instances)


@pytest.mark.parametrize(
    'image, message',
    [
        (np.zeros((1, 1, 3), np.uint8), 'at least 16'),
        (np.zeros((64, 64), np.uint8), 'H x W x 3'),
        (np.zeros((64, 64, 4), np.uint8), 'H x W x 3'),
        (np.zeros((64, 64, 3), np.float32), 'uint8'),
        ([[0, 1, 2]], 'numpy array'),
        (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3)), 'downscale'),
    ],
)
def test_bad_images_are_rejected_with_a_reason(predictor, image, message):
    with pytest.raises(InvalidImageError, match=message):
        predictor.predict(image)


def test_tasks_subset_and_bad_options(predictor, rng):
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = predictor.predict(image, tasks=['semantic'])
    assert result.instances == [] and result.panoptic is None and result.semantic is not None
    with pytest.raises(ValueError, match='unknown tasks'):
        predictor.predict(image, tasks=['depth'])
    with pytest.raises(ValueError, match='color'):
        predictor.predict(image, color='hsv')
    with pytest.raises(ValueError, match='score_threshold'):
        PredictorCfg(score_threshold=1.5)


def test_score_threshold_and_min_area_filter_instances(tiny_model, rng):
    network, config = tiny_model
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    vocabulary = Vocabulary.parse('mug, table')
    everything = Predictor.from_network(network, config)
    everything.set_vocabulary(vocabulary)
    all_instances = everything.predict(image).instances
    threshold = float(np.median([i.score for i in all_instances]))
    strict = Predictor.from_network(network, config, score_threshold=threshold, min_area_px=200)
    strict.set_vocabulary(vocabulary)
    kept = strict.predict(image).instances
    assert all(i.score >= threshold and i.mask.sum() >= 200 for i in kept)
    assert len(kept) < len(all_instances)


def test_empty_vocabulary_labels_nothing(tiny_predictor, rng):
    result = tiny_predictor.predict(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert result.instances == [] and result.segments == []
    assert (result.semantic == UNLABELED).all() and (result.panoptic == 0).all()


def test_vocabulary_change_and_find_never_rerun_the_image_model(spied_predictor, rng):
    predictor, counting = spied_predictor
    predictor.set_vocabulary(Vocabulary.parse('mug, table'))
    result = predictor.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    predictor.set_vocabulary(Vocabulary.parse('cat, dog, bird'))
    matches = predictor.find(result, 'the red mug', max_results=3)
    assert counting.calls == 1
    assert predictor.vocabulary.names == ('cat', 'dog', 'bird')
    assert 0 < len(matches) <= 3
    assert all(m.label == 'the red mug' and m.class_id == 0 for m in matches)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


def test_negative_queries_take_probability_from_the_query(predictor, rng):
    result = predictor.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    plain = predictor.find(result, 'red mug', max_results=100)
    # A negative identical to the query takes exactly its share of the softmax.
    contested = predictor.find(result, 'red mug', ['red mug'], max_results=100)
    plain_by_query = {m.query_index: m.score for m in plain}
    assert contested and all(m.score < plain_by_query[m.query_index] for m in contested)
    with pytest.raises(VocabularyError):
        predictor.find(result, '   ')


def test_find_drops_duplicate_masks(predictor, rng):
    result = predictor.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    matches = predictor.find(result, 'table', max_results=100)
    for i, a in enumerate(matches):
        for b in matches[i + 1 :]:
            iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
            assert iou <= predictor.cfg.find_overlap_iou


def test_resize_plan_follows_shortest_edge_with_cap():
    spec = plan_resize(480, 640, min_size=800, max_size=1333, size_divisibility=32)
    assert spec.resized == (800, 1067) and spec.padded == (800, 1088)
    spec = plan_resize(100, 1000, min_size=800, max_size=1333, size_divisibility=32)
    assert spec.resized == (133, 1333) and spec.padded == (160, 1344)


def test_padding_is_pixel_mean_for_the_proposer_and_black_for_clip(tiny_model, rng):
    """The reference normalises, then pads with zeros: the proposer sees the pixel-mean colour
    in the padding; CLIP gets the raw image padded with black (method.md 1.2)."""
    network, config = tiny_model
    predictor = Predictor.from_network(network, config)
    image = rng.integers(0, 256, (64, 85, 3), dtype=np.uint8)  # padded to 64x96, not resized
    content = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    black = torch.zeros(1, 3, 64, 96)
    black[..., :85] = content
    mean = network.proposer.pixel_mean.expand(1, 3, 64, 96).clone()
    mean[..., :85] = content
    with torch.inference_mode():
        proposals = network.proposer(mean)
        want_logits = proposals['pred_masks'][0]
        want_objectness = proposals['pred_logits'].softmax(-1)[0, :, 0]
        want_embeddings = network.mask_clip(network.clip_input(black), proposals['pred_masks'])
    got = predictor.predict(image).proposals
    torch.testing.assert_close(torch.from_numpy(got.mask_logits), want_logits)
    torch.testing.assert_close(torch.from_numpy(got.objectness), want_objectness)
    torch.testing.assert_close(torch.from_numpy(got.embeddings), want_embeddings[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_fp16_predictor_matches_cpu_fp32(tiny_model, rng):
    network, config = tiny_model
    vocabulary = Vocabulary.from_names(['red mug', 'table', 'floor'])
    image = rng.integers(0, 256, (64, 85, 3), dtype=np.uint8)
    results = []
    for device, precision in (('cpu', 'fp32'), ('cuda', 'fp16')):
        predictor = Predictor.from_network(copy.deepcopy(network), config, device, precision)
        predictor.set_vocabulary(vocabulary)
        results.append(predictor.predict(image))
    want, got = results
    np.testing.assert_allclose(got.proposals.objectness, want.proposals.objectness, atol=2e-2)
    np.testing.assert_allclose(got.proposals.embeddings, want.proposals.embeddings, atol=2e-2)
    assert (got.semantic == want.semantic).mean() > 0.95


def test_find_names_an_empty_negative_query(predictor, rng):
    result = predictor.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(VocabularyError, match='negative query 2 is empty'):
        predictor.find(result, 'red mug', ['blue mug', '   '])


def test_thing_segments_name_the_query_of_their_instance(tiny_model, rng):
    network, config = tiny_model
    # No thresholds: the random tiny model's scores are low, and every proposal competes.
    predictor = Predictor.from_network(
        network, config, object_mask_threshold=0.0, overlap_threshold=0.0
    )
    predictor.set_vocabulary(Vocabulary.parse('red mug, table'))
    result = predictor.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    things = [s for s in result.segments if s.is_thing]
    instance_queries = {(i.query_index, i.class_id) for i in result.instances}
    assert things, 'the tiny model should make some thing segment'
    assert all((s.query_index, s.class_id) in instance_queries for s in things)
    assert all(s.query_index == -1 for s in result.segments if not s.is_thing)
