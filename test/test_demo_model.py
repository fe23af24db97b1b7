"""The shipped demo model really segments its world: evaluated on scenes it never saw, with
all 25 thing classes (7 novel: never annotated in training) and the 4 stuff classes."""

from __future__ import annotations

import pytest

from masqclip.data.coco import load_coco_panoptic
from masqclip.data.ov_split import load_split
from masqclip.data.synthetic import write_dataset
from masqclip.factory import DEMO_CHECKPOINT, build_model
from masqclip.training.evaluate import evaluate

# Chance is near 0 for AP and PQ and about 1/29 for mIoU; the model scores about 32 AP,
# 46 PQ and 47 mIoU on 300 held-out scenes (README). A collapse, a mismatched vocabulary or
# broken weights fall far below these floors.
FLOORS = {
    'segm/AP': 0.15,
    'segm/AP_novel': 0.05,
    'panoptic/PQ': 0.25,
    'panoptic/PQ_st': 0.5,
    'semantic/mIoU': 0.25,
    'proposals/recall50_novel': 0.4,
}


@pytest.fixture(scope='module')
def metrics(tmp_path_factory) -> dict[str, float]:
    # Seed 9: neither the training (0), validation (1) nor test (2) scenes of the demo.
    paths = write_dataset(tmp_path_factory.mktemp('scenes'), num_images=60, seed=9)
    dataset = load_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    network, config = build_model(checkpoint=DEMO_CHECKPOINT)
    tasks = ('instance', 'semantic', 'panoptic', 'proposals')
    return evaluate(network, config, dataset, load_split(paths.split_json), tasks)


@pytest.mark.parametrize('name', sorted(FLOORS))
def test_demo_model_beats_chance_by_far(metrics, name):
    assert metrics[name] > FLOORS[name], f'{name} = {metrics[name]:.3f}'
