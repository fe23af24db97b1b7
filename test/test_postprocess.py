"""Score fusion and semantic / panoptic / instance post-processing on hand-built inputs."""

import math

import pytest
import torch

from masqclip.inference.postprocess import (
    PanopticSegmentInfo,
    classify_masks,
    cropped_mask,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from masqclip.inference.results import UNLABELED

BIG = 30.0  # a mask logit whose float32 sigmoid is exactly 1 (inside) or ~1e-13 (outside)


def _column_masks(width: int, spans: list[tuple[int, int]], height: int = 2) -> torch.Tensor:
    """(Q, height, width) logits: +BIG on columns [start, stop) of each query, -BIG elsewhere."""
    logits = torch.full((len(spans), height, width), -BIG)
    for query, (start, stop) in enumerate(spans):
        logits[query, :, start:stop] = BIG
    return logits


# classify_masks -----------------------------------------------------------------------------


def test_classify_masks_includes_background_in_softmax_and_multiplies_objectness() -> None:
    eye = torch.eye(3)
    text = eye  # classes 0, 1, then background (last)
    masks = torch.stack([eye[0], eye[2], torch.nn.functional.normalize(eye[0] + eye[1], dim=0)])
    objectness = torch.tensor([0.5, 1.0, 0.8])

    scores = classify_masks(masks, text, objectness, logit_scale=2.0)

    assert scores.shape == (3, 2)
    denominator = math.exp(2.0) + 2.0
    expected_first = [0.5 * math.exp(2.0) / denominator, 0.5 / denominator]
    # The background-like proposal scores low for every class: the softmax includes
    # background, which is dropped only after the product.
    expected_second = [1.0 / denominator, 1.0 / denominator]
    cos = 1.0 / math.sqrt(2.0)
    third_denominator = 2.0 * math.exp(2.0 * cos) + 1.0
    expected_third = [0.8 * math.exp(2.0 * cos) / third_denominator] * 2
    expected = torch.tensor([expected_first, expected_second, expected_third])
    torch.testing.assert_close(scores, expected)


def test_an_exemplar_row_wins_only_above_its_threshold() -> None:
    """An exemplar's logit is the mask's best text logit plus scale x (cos - threshold): near
    as an image embedding is to every mask, it wins only where the mask is nearer than that."""
    text = torch.eye(3)  # text class 0, exemplar 1, background (text)
    thresholds = torch.tensor([math.nan, 0.9, math.nan])
    near = torch.nn.functional.normalize(torch.tensor([[0.2, 1.0, 0.1]]), dim=1)  # cos 0.97
    far = torch.nn.functional.normalize(torch.tensor([[0.6, 0.7, 0.1]]), dim=1)  # cos 0.75
    masks = torch.cat([near, far])
    scores = classify_masks(masks, text, torch.ones(2), 10.0, thresholds)
    logits = 10.0 * masks @ text.T
    best_text = logits[:, [0, 2]].amax(dim=1)
    logits[:, 1] = best_text + 10.0 * (masks[:, 1] - 0.9)
    assert torch.allclose(scores, logits.softmax(dim=1)[:, :2])
    assert scores[0].argmax() == 1 and scores[1].argmax() == 0
    no_exemplar = torch.full((3,), math.nan)
    assert torch.equal(
        classify_masks(masks, text, torch.ones(2), 10.0, no_exemplar),
        classify_masks(masks, text, torch.ones(2), 10.0),
    )
    with pytest.raises(ValueError, match='exemplar_thresholds must have shape'):
        classify_masks(masks, text, torch.ones(2), 10.0, thresholds[:2])


def test_classify_masks_default_scale_is_100() -> None:
    text = torch.eye(3)
    masks = torch.eye(3)[:1]
    scores = classify_masks(masks, text, torch.ones(1))
    expected = math.exp(100.0) / (math.exp(100.0) + 2.0)
    assert scores[0, 0].item() == pytest.approx(expected)


def test_classify_masks_empty_vocabulary_and_no_queries() -> None:
    masks = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    background_only = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    assert classify_masks(masks, background_only, torch.rand(4)).shape == (4, 0)
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert classify_masks(masks[:0], text, torch.rand(0)).shape == (0, 2)


def test_classify_masks_rejects_bad_shapes() -> None:
    masks = torch.randn(4, 8)
    with pytest.raises(ValueError, match='background'):
        classify_masks(masks, torch.randn(0, 8), torch.rand(4))
    with pytest.raises(ValueError, match='widths differ'):
        classify_masks(masks, torch.randn(3, 6), torch.rand(4))
    with pytest.raises(ValueError, match='objectness'):
        classify_masks(masks, torch.randn(3, 8), torch.rand(5))


# semantic_inference -------------------------------------------------------------------------


def test_semantic_two_queries_two_classes() -> None:
    logits = _column_masks(4, [(0, 2), (2, 4)])
    # Query 0 (left) is class 1, query 1 (right) is class 0; tiny scores still label:
    # semantic inference has no threshold.
    scores = torch.tensor([[0.01, 0.02], [0.03, 0.001]])
    semantic = semantic_inference(scores, logits)
    assert semantic.dtype == torch.int64
    assert semantic.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


def test_semantic_sums_over_queries() -> None:
    # Two weak class-0 queries together beat one stronger class-1 query on the same pixel.
    logits = torch.zeros(3, 1, 1)
    scores = torch.tensor([[0.4, 0.0], [0.4, 0.0], [0.0, 0.7]])
    assert semantic_inference(scores, logits).item() == 0
    scores[2, 1] = 0.9
    assert semantic_inference(scores, logits).item() == 1


def test_semantic_chunked_equals_unchunked() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 10, generator=generator)
    logits = torch.randn(7, 9, 11, generator=generator) * 3
    reference = torch.einsum('qc,qhw->chw', scores, logits.sigmoid()).argmax(dim=0)
    for chunk in (1, 3, 10, 64):
        assert torch.equal(semantic_inference(scores, logits, class_chunk=chunk), reference)


def test_semantic_without_classes_or_queries_is_unlabeled() -> None:
    no_classes = semantic_inference(torch.rand(3, 0), torch.randn(3, 4, 5))
    assert no_classes.shape == (4, 5)
    assert no_classes.dtype == torch.int64
    assert (no_classes == UNLABELED).all()
    no_queries = semantic_inference(torch.rand(0, 6), torch.randn(0, 4, 5))
    assert (no_queries == UNLABELED).all()


def test_semantic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match='class_chunk'):
        semantic_inference(torch.rand(2, 3), torch.randn(2, 4, 4), class_chunk=0)
    with pytest.raises(ValueError, match='queries'):
        semantic_inference(torch.rand(2, 3), torch.randn(3, 4, 4))


# panoptic_inference -------------------------------------------------------------------------


def test_panoptic_threshold_and_void() -> None:
    logits = _column_masks(6, [(0, 2), (2, 4)])
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.2]])  # query 1 is below 0.3
    panoptic, segments = panoptic_inference(scores, logits, torch.tensor([True, False]))
    assert panoptic.dtype == torch.int32
    assert panoptic.tolist() == [[1, 1, 0, 0, 0, 0]] * 2
    assert segments == [
        PanopticSegmentInfo(
            id=1, class_id=0, is_thing=True, score=pytest.approx(0.9), area=4, query_index=0
        )
    ]


def test_panoptic_score_is_strictly_above_threshold() -> None:
    logits = _column_masks(2, [(0, 2)])
    panoptic, segments = panoptic_inference(
        torch.tensor([[0.5]]), logits, torch.tensor([True]), object_mask_threshold=0.5
    )
    assert segments == []
    assert not panoptic.any()


def test_panoptic_drops_queries_that_lose_most_of_their_mask() -> None:
    # Query 1 covers columns 0..3 but query 0 (stronger) wins columns 0..2: it keeps 1/4.
    logits = _column_masks(6, [(0, 3), (0, 4), (4, 6)])
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.6], [0.8, 0.0]])
    is_thing = torch.tensor([True, True])
    panoptic, segments = panoptic_inference(scores, logits, is_thing, overlap_threshold=0.3)
    # The dropped middle query leaves no gap in the ids, and its pixel becomes void; each
    # segment names the query it came from.
    assert [(s.id, s.class_id, s.query_index) for s in segments] == [(1, 0, 0), (2, 0, 2)]
    assert panoptic[0].tolist() == [1, 1, 1, 0, 2, 2]

    _, segments = panoptic_inference(scores, logits, is_thing, overlap_threshold=0.2)
    assert [(s.id, s.class_id, s.area) for s in segments] == [(1, 0, 6), (2, 1, 2), (3, 0, 4)]


def test_panoptic_overlap_ratio_counts_the_pixels_a_query_wins() -> None:
    # Query 1 is confident on columns 0..3 and loses 0..2 to query 0, but it also wins
    # columns 4..6 with sigmoid < 0.5. As in Mask2Former, the ratio is won pixels (4) over
    # confident pixels (4), so it stays, with only its confident pixel as its segment.
    logits = _column_masks(8, [(0, 3), (0, 4)])
    logits[1, :, 4:7] = -0.5
    scores = torch.tensor([[0.9], [0.6]])
    panoptic, segments = panoptic_inference(scores, logits, torch.tensor([True]))
    assert panoptic[0].tolist() == [1, 1, 1, 2, 0, 0, 0, 0]
    assert [(s.id, s.area) for s in segments] == [(1, 6), (2, 2)]


def test_panoptic_merges_stuff_of_one_class_but_not_things() -> None:
    logits = _column_masks(8, [(0, 2), (2, 4), (4, 6), (6, 8)])
    # Queries 0 and 2 are stuff class 1; queries 1 and 3 are thing class 0.
    scores = torch.tensor([[0.1, 0.5], [0.7, 0.1], [0.0, 0.8], [0.9, 0.0]])
    is_thing = torch.tensor([True, False])
    panoptic, segments = panoptic_inference(scores, logits, is_thing)
    assert panoptic[0].tolist() == [1, 1, 2, 2, 1, 1, 3, 3]
    assert segments == [
        PanopticSegmentInfo(1, 1, False, pytest.approx(0.8), 8, query_index=-1),  # merged
        PanopticSegmentInfo(2, 0, True, pytest.approx(0.7), 4, query_index=1),
        PanopticSegmentInfo(3, 0, True, pytest.approx(0.9), 4, query_index=3),
    ]
    assert sorted(panoptic.unique().tolist()) == [1, 2, 3]


def test_panoptic_edge_cases() -> None:
    for scores, logits, is_thing in [
        (torch.rand(3, 0), torch.randn(3, 4, 5), torch.zeros(0, dtype=torch.bool)),
        (torch.rand(0, 2), torch.randn(0, 4, 5), torch.ones(2, dtype=torch.bool)),
        (torch.full((2, 2), 0.9), torch.full((2, 4, 5), -BIG), torch.ones(2, dtype=torch.bool)),
    ]:
        panoptic, segments = panoptic_inference(scores, logits, is_thing)
        assert panoptic.shape == (4, 5)
        assert panoptic.dtype == torch.int32
        assert not panoptic.any()
        assert segments == []
    with pytest.raises(ValueError, match='is_thing'):
        panoptic_inference(torch.rand(2, 3), torch.randn(2, 4, 4), torch.ones(2, dtype=torch.bool))


# instance_inference -------------------------------------------------------------------------


def test_instance_index_arithmetic() -> None:
    # Flat indices 5 and 2 are (query 2, class 1) and (query 1, class 0). Dividing by N + 1
    # (the MaskCLIP bug, trap 17) would give (1, 2) and (0, 2) instead.
    scores = torch.tensor([[0.1, 0.2], [0.3, 0.05], [0.01, 0.9]])
    logits = _column_masks(6, [(0, 2), (2, 4), (4, 6)])
    result = instance_inference(scores, logits, max_instances=2)
    assert result.query_indices.tolist() == [2, 1]
    assert result.class_ids.tolist() == [1, 0]
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.3]))
    assert torch.equal(result.paste_masks(2, 6), logits[[2, 1]] > 0)
    assert result.scores.dtype == torch.float32
    assert result.class_ids.dtype == result.query_indices.dtype == torch.int64
    assert result.paste_masks(2, 6).dtype == torch.bool
    assert result.boxes.tolist() == [[4, 0, 6, 2], [2, 0, 4, 2]]


def test_instance_score_is_class_score_times_mean_sigmoid_inside() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0, 1.0]]])
    result = instance_inference(torch.tensor([[0.5]]), logits)
    assert result.paste_masks(1, 4).tolist() == [[[True, False, False, True]]]
    sigmoid = torch.sigmoid(torch.tensor([2.0, 1.0]))
    assert result.scores.item() == pytest.approx(0.5 * sigmoid.mean().item())


def test_instance_sorted_by_final_score_with_empty_mask_last() -> None:
    logits = torch.stack(
        [torch.full((2, 2), 0.1), torch.full((2, 2), BIG), torch.full((2, 2), -BIG)]
    )
    scores = torch.tensor([[0.9], [0.6], [0.95]])
    result = instance_inference(scores, logits)
    # Query 2 has the best class score but an empty mask (score 0); query 0's barely
    # positive mask (sigmoid 0.525) drops it below query 1.
    assert result.query_indices.tolist() == [1, 0, 2]
    expected = [0.6, 0.9 * torch.sigmoid(torch.tensor(0.1)).item(), 0.0]
    torch.testing.assert_close(result.scores, torch.tensor(expected))
    assert not result.paste_masks(2, 2)[2].any() and result.mask_crops[2].numel() == 0


def test_instance_keep_classes_before_top_k() -> None:
    scores = torch.tensor([[0.1, 0.2], [0.3, 0.05], [0.01, 0.9]])
    logits = _column_masks(6, [(0, 2), (2, 4), (4, 6)])
    things = torch.tensor([True, False])
    result = instance_inference(scores, logits, keep_classes=things)
    assert result.class_ids.tolist() == [0, 0, 0]
    assert result.query_indices.tolist() == [1, 0, 2]
    # The single best pair is stuff; restricting before the top-k still finds the best thing.
    best_thing = instance_inference(scores, logits, 1, keep_classes=things)
    assert best_thing.query_indices.tolist() == [1] and best_thing.class_ids.tolist() == [0]
    with pytest.raises(ValueError, match='keep_classes'):
        instance_inference(scores, logits, keep_classes=torch.tensor([True]))


def test_instance_edge_cases() -> None:
    logits = torch.randn(3, 4, 5)
    assert instance_inference(torch.rand(3, 2), logits).scores.numel() == 6
    empty = instance_inference(torch.rand(3, 2), logits, max_instances=0)
    assert empty.paste_masks(4, 5).shape == (0, 4, 5) and empty.boxes.shape == (0, 4)
    for scores, masks in [(torch.rand(3, 0), logits), (torch.rand(0, 2), logits[:0])]:
        result = instance_inference(scores, masks)
        assert result.scores.shape == (0,)
        assert result.paste_masks(4, 5).shape == (0, 4, 5)
    with pytest.raises(ValueError, match='max_instances'):
        instance_inference(torch.rand(3, 2), logits, max_instances=-1)


# cropped_mask -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('pixels', 'box'),
    [([(5, 3)], [3, 5, 4, 6]), ([], [0, 0, 0, 0]), ([(1, 2), (3, 8), (6, 0)], [0, 1, 9, 7])],
)
def test_cropped_mask_box_is_tight_with_exclusive_ends(pixels, box) -> None:
    logits = torch.full((8, 10), -3.0)
    for y, x in pixels:
        logits[y, x] = 2.0
    quality, got_box, crop = cropped_mask(logits)
    assert got_box.dtype == torch.float32 and got_box.tolist() == box
    assert crop.sum() == len(pixels)
    assert quality == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() if pixels else 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(6, 5, generator=generator)
    logits = torch.randn(6, 12, 13, generator=generator) * 4
    is_thing = torch.tensor([True, False, True, False, False])
    cuda = torch.device('cuda')
    assert torch.equal(
        semantic_inference(scores.to(cuda), logits.to(cuda), class_chunk=2).cpu(),
        semantic_inference(scores, logits),
    )
    panoptic_gpu, segments_gpu = panoptic_inference(
        scores.to(cuda), logits.to(cuda), is_thing.to(cuda), 0.2, 0.2
    )
    panoptic_cpu, segments_cpu = panoptic_inference(scores, logits, is_thing, 0.2, 0.2)
    assert torch.equal(panoptic_gpu.cpu(), panoptic_cpu)
    assert [(s.id, s.class_id, s.area) for s in segments_gpu] == [
        (s.id, s.class_id, s.area) for s in segments_cpu
    ]
    gpu = instance_inference(scores.to(cuda), logits.to(cuda), 10, is_thing.to(cuda))
    cpu = instance_inference(scores, logits, 10, is_thing)
    assert torch.equal(gpu.query_indices.cpu(), cpu.query_indices)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores)
    assert torch.equal(gpu.boxes.cpu(), cpu.boxes)
