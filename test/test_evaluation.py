"""Tests of masqclip.evaluation: PQ, mIoU and mask AP on hand-made and generated data."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from masqclip.data import (
    Category,
    CategorySplit,
    CocoDataset,
    ImageRecord,
    SceneCfg,
    load_coco_panoptic,
    load_semantic_dataset,
    write_dataset,
)
from masqclip.data.io import write_panoptic_png
from masqclip.data.synthetic import DEFAULT_SPLIT
from masqclip.evaluation import InstancePredictions, SegmentationEvaluator, confusion_matrix
from masqclip.inference.results import Instance, PanopticSegment, SegmentationResult

# Class 0 'cup' (thing), class 1 'wall' (stuff); dataset ids differ from the indices.
CATEGORIES = [Category(11, 'cup', True), Category(22, 'wall', False)]


def _panoptic_record(
    tmp_path: Path, ids: np.ndarray, segments: list[tuple[int, int, int]]
) -> ImageRecord:
    """Write a one-image panoptic dataset; segments are (id, category id, iscrowd)."""
    (tmp_path / 'pan').mkdir(exist_ok=True)
    write_panoptic_png(tmp_path / 'pan' / 'x.png', ids)
    data = {
        'images': [{'id': 1, 'file_name': 'x.jpg', 'height': ids.shape[0], 'width': ids.shape[1]}],
        'annotations': [
            {
                'image_id': 1,
                'file_name': 'x.png',
                'segments_info': [
                    {'id': s, 'category_id': c, 'iscrowd': crowd, 'area': int((ids == s).sum())}
                    for s, c, crowd in segments
                ],
            }
        ],
        'categories': [
            {'id': c.id, 'name': c.name, 'isthing': int(c.is_thing)} for c in CATEGORIES
        ],
    }
    (tmp_path / 'pan.json').write_text(json.dumps(data))
    return load_coco_panoptic(tmp_path / 'pan.json', tmp_path / 'pan', tmp_path)[0]


def _half_image(tmp_path: Path) -> tuple[ImageRecord, np.ndarray]:
    """4 x 8 image: left half a cup (segment 1), right half wall (segment 2)."""
    ids = np.full((4, 8), 2, np.int32)
    ids[:, :4] = 1
    return _panoptic_record(tmp_path, ids, [(1, 11, 0), (2, 22, 0)]), ids


def test_perfect_prediction_scores_one(tmp_path: Path) -> None:
    record, ids = _half_image(tmp_path)
    mask = ids == 1
    result = SegmentationResult(
        image_size=(4, 8),
        vocabulary=('cup', 'wall'),
        instances=[Instance.from_mask('cup', 0, 0.9, 1.0, mask, np.zeros(2, np.float32), 0)],
        semantic=np.where(mask, 0, 1).astype(np.int32),
        panoptic=(ids * 7).astype(np.int32),  # any ids: matching is by overlap
        segments=[
            PanopticSegment(7, 0, 'cup', True, 0.9, 16),
            PanopticSegment(14, 1, 'wall', False, 0.9, 16),
        ],
    )
    evaluator = SegmentationEvaluator(CATEGORIES, CategorySplit(('cup',), ('wall',)))
    evaluator.add_result(record, result)
    metrics = evaluator.evaluate(per_category=True)
    for key in (
        'panoptic/PQ',
        'panoptic/SQ',
        'panoptic/RQ',
        'panoptic/PQ_th',
        'panoptic/PQ_st',
        'panoptic/PQ_base',
        'panoptic/PQ_novel',
        'semantic/mIoU',
        'semantic/pACC',
        'semantic/mIoU_novel',
        'segm/AP',
        'segm/AP50',
        'segm/AP_base',
        'panoptic/PQ-wall',
        'semantic/IoU-cup',
        'segm/AP-cup',
    ):
        assert metrics[key] == pytest.approx(1.0), key
    # 'wall' is stuff: it has no AP, and the novel split (wall only) has none either.
    assert 'segm/AP-wall' not in metrics and math.isnan(metrics['segm/AP_novel'])


def test_pq_half_overlapping_segments(tmp_path: Path) -> None:
    record, _ = _half_image(tmp_path)
    pred = np.full((4, 8), 2, np.int32)
    pred[:, :6] = 1  # cup covers its 16 pixels and 8 of the wall: IoU 16/24, a match
    evaluator = SegmentationEvaluator(CATEGORIES, CategorySplit(('cup',), ('wall',)))
    evaluator.add(record, panoptic=pred, segments={1: 0, 2: 1})
    m = evaluator.evaluate()
    # The wall prediction keeps 8 of 16 pixels: IoU exactly 0.5 is no match (fp + fn).
    assert m['panoptic/PQ_th'] == pytest.approx(2 / 3)
    assert m['panoptic/SQ_th'] == pytest.approx(2 / 3)
    assert m['panoptic/RQ_th'] == pytest.approx(1.0)
    assert m['panoptic/PQ_st'] == 0.0 and m['panoptic/RQ_st'] == 0.0
    assert m['panoptic/PQ'] == pytest.approx(1 / 3)
    assert m['panoptic/PQ_base'] == pytest.approx(2 / 3) and m['panoptic/PQ_novel'] == 0.0


def test_pq_void_and_crowd_handling(tmp_path: Path) -> None:
    ids = np.zeros((4, 8), np.int32)  # columns 0-1 void
    ids[:, 2:4] = 3  # a crowd of cups
    ids[:, 4:6] = 1  # a cup
    ids[:, 6:] = 2  # wall
    record = _panoptic_record(tmp_path, ids, [(1, 11, 0), (2, 22, 0), (3, 11, 1)])
    pred = ids.copy()
    pred[:, 0:2] = 5  # a cup on void only: not a false positive
    pred[:, 2:4] = 6  # a cup on the cup crowd: not a false positive
    pred[0, 4] = 1
    segments = {1: 0, 2: 1, 5: 0, 6: 0}
    evaluator = SegmentationEvaluator(CATEGORIES)
    evaluator.add(record, panoptic=pred, segments=segments)
    assert evaluator.evaluate()['panoptic/PQ'] == pytest.approx(1.0)

    # The cup also spreading over void: void pixels are left out of its union (IoU 1).
    pred = ids.copy()
    pred[:, :2] = 1
    pred[:, 2:4] = 0
    evaluator = SegmentationEvaluator(CATEGORIES)
    evaluator.add(record, panoptic=pred, segments={1: 0, 2: 1})
    assert evaluator.evaluate()['panoptic/PQ'] == pytest.approx(1.0)

    # A wall prediction on the cup crowd is another class's crowd: a false positive;
    # and a cup half on void, half on the wall, is one too.
    pred = ids.copy()
    pred[:, 2:4] = 8
    pred[:, 1:2] = 9
    pred[:, 6:7] = 9
    evaluator = SegmentationEvaluator(CATEGORIES)
    evaluator.add(record, panoptic=pred, segments={1: 0, 2: 1, 8: 1, 9: 0})
    m = evaluator.evaluate(per_category=True)
    wall_iou = 4 / 8  # wall keeps 4 of its 8 pixels: no match
    assert wall_iou == 0.5 and m['panoptic/PQ-wall'] == 0.0
    # cup: 1 tp (IoU 1), 1 fp -> PQ = 1 / (1 + 0.5)
    assert m['panoptic/PQ-cup'] == pytest.approx(1 / 1.5)


def test_pq_rejects_unlisted_segment(tmp_path: Path) -> None:
    record, ids = _half_image(tmp_path)
    evaluator = SegmentationEvaluator(CATEGORIES)
    with pytest.raises(ValueError, match='not in the segments'):
        evaluator.add(record, panoptic=ids, segments={1: 0})
    with pytest.raises(ValueError, match='differ in size'):
        evaluator.add(record, semantic=np.zeros((3, 3), np.int32))


def test_miou_hand_computed_confusion(tmp_path: Path) -> None:
    (tmp_path / 'img').mkdir()
    (tmp_path / 'lbl').mkdir()
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / 'lbl' / 'a.png'), gt)
    cv2.imwrite(str(tmp_path / 'img' / 'a.jpg'), np.zeros((2, 4, 3), np.uint8))
    record = load_semantic_dataset(tmp_path / 'img', tmp_path / 'lbl')[0]
    pred = np.array([[0, 1, 1, 1], [2, -1, 0, 2]])
    # rows = gt 0, 1, 2; columns = pred 0, 1, 2, none
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(confusion_matrix(record.load_labels(), pred, 3), expected)
    categories = [Category(i, n) for i, n in enumerate(('a', 'b', 'c'))]
    evaluator = SegmentationEvaluator(categories, CategorySplit(('a', 'b'), ('c',)))
    evaluator.add(record, semantic=pred)
    m = evaluator.evaluate(per_category=True)
    iou = [1 / 2, 2 / 3, 1 / 2]  # tp / (gt + pred - tp)
    assert m['semantic/IoU-b'] == pytest.approx(2 / 3)
    assert m['semantic/mIoU'] == pytest.approx(sum(iou) / 3)
    assert m['semantic/mIoU_base'] == pytest.approx((iou[0] + iou[1]) / 2)
    assert m['semantic/mIoU_novel'] == pytest.approx(iou[2])
    assert m['semantic/pACC'] == pytest.approx(4 / 6)
    assert m['semantic/mACC'] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m['semantic/fwIoU'] == pytest.approx(sum(iou) / 3)


@pytest.fixture(scope='module')
def generated(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    paths = write_dataset(tmp_path_factory.mktemp('eval'), 6, SceneCfg(min_objects=2), seed=5)
    return load_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)


def _perfect(evaluator: SegmentationEvaluator, record: ImageRecord) -> dict:
    """Ground truth turned into predictions (class indices, scores 1)."""
    index = {c.id: i for i, c in enumerate(evaluator.categories)}
    masks = record.masks()
    things = [i for i, a in enumerate(record.annotations) if a.is_thing]
    ids = record.panoptic_ids()
    segments = {a.id: index[a.category_id] for a in record.annotations}
    semantic = np.zeros(ids.shape, np.int32)
    for a, m in zip(record.annotations, masks, strict=True):
        semantic[m] = index[a.category_id]
    classes = np.array([segments[record.annotations[i].id] for i in things])
    instances = InstancePredictions(masks[things], np.ones(len(things)), classes)
    return {'panoptic': ids, 'segments': segments, 'semantic': semantic, 'instances': instances}


def _degraded(evaluator: SegmentationEvaluator, record: ImageRecord, seed: int) -> dict:
    """Perfect predictions with some segments, pixels and classes made wrong."""
    rng = np.random.default_rng(seed)
    pred = _perfect(evaluator, record)
    num_classes = len(evaluator.categories)
    first = next(iter(pred['segments']))
    pred['segments'][first] = int(rng.integers(num_classes))
    noise = rng.random(pred['semantic'].shape) < 0.2
    pred['semantic'][noise] = rng.integers(0, num_classes, int(noise.sum()))
    inst = pred['instances']
    classes = inst.class_ids.copy()
    classes[rng.random(len(classes)) < 0.4] = rng.integers(0, 25)
    pred['instances'] = InstancePredictions(inst.masks, rng.random(len(classes)), classes)
    return pred


def _split_evaluator(generated: CocoDataset) -> SegmentationEvaluator:
    return SegmentationEvaluator(generated.categories, DEFAULT_SPLIT)


def test_ap_perfect_then_shuffled(generated: CocoDataset) -> None:
    perfect, shuffled = _split_evaluator(generated), _split_evaluator(generated)
    rng = np.random.default_rng(0)
    for record in generated.records:
        inst = _perfect(perfect, record)['instances']
        perfect.add(record, instances=inst)
        wrong = inst.class_ids.copy()
        rng.shuffle(wrong)
        wrong[0] = (wrong[0] + 1) % 25  # at least one class is surely wrong per image
        shuffled.add(record, instances=InstancePredictions(inst.masks, inst.scores, wrong))
    good = perfect.evaluate()
    assert good['segm/AP'] == pytest.approx(1.0) and good['segm/AP50'] == pytest.approx(1.0)
    assert good['segm/AP_base'] == pytest.approx(1.0)
    assert good['segm/AP_novel'] == pytest.approx(1.0)
    bad = shuffled.evaluate()
    assert bad['segm/AP'] < 0.9 and bad['segm/AP50'] < 0.9


def test_ap_split_means_per_category(generated: CocoDataset) -> None:
    evaluator = _split_evaluator(generated)
    novel = {i for i, c in enumerate(evaluator.categories) if c.name in evaluator.split.novel}
    for record in generated.records:
        inst = _perfect(evaluator, record)['instances']
        # Novel objects are missed, base ones found: AP_base 1, AP_novel 0.
        keep = np.array([c not in novel for c in inst.class_ids], bool)
        evaluator.add(
            record,
            instances=InstancePredictions(
                inst.masks[keep], inst.scores[keep], inst.class_ids[keep]
            ),
        )
    m = evaluator.evaluate(per_category=True)
    assert m['segm/AP_base'] == pytest.approx(1.0)
    assert m['segm/AP_novel'] == 0.0
    present = [v for k, v in m.items() if k.startswith('segm/AP-') and not math.isnan(v)]
    assert m['segm/AP'] == pytest.approx(sum(present) / len(present))
    assert 0.0 < m['segm/AP'] < 1.0


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key], key


def test_merge_equals_single_evaluator(generated: CocoDataset) -> None:
    records = generated.records
    preds = [_degraded(_split_evaluator(generated), r, i) for i, r in enumerate(records)]
    single = _split_evaluator(generated)
    for record, pred in zip(records, preds, strict=True):
        single.add(record, **pred)
    expected = single.evaluate(per_category=True)
    assert 0.0 < expected['panoptic/PQ'] < 1.0 and 0.0 < expected['semantic/mIoU'] < 1.0

    # Two "ranks" with interleaved images, added in reverse, one sent through pickle.
    rank0, rank1 = _split_evaluator(generated), _split_evaluator(generated)
    for i in reversed(range(len(records))):
        (rank0 if i % 2 else rank1).add(records[i], **preds[i])
    rank1 = pickle.loads(pickle.dumps(rank1))
    rank1.merge(rank0)
    _assert_same(rank1.evaluate(per_category=True), expected)

    with pytest.raises(ValueError, match='both evaluators hold'):
        rank1.merge(rank0)
    with pytest.raises(ValueError, match='added twice'):
        single.add(records[0], **preds[0])


def test_evaluator_input_errors(generated: CocoDataset) -> None:
    with pytest.raises(ValueError, match='not among the categories'):
        SegmentationEvaluator(CATEGORIES, CategorySplit(('red solid',), ()))
    evaluator = SegmentationEvaluator(CATEGORIES)
    with pytest.raises(ValueError, match='not among the evaluator categories'):
        evaluator.add(generated.records[0], semantic=np.zeros((64, 64), np.int32))
