"""The shipped demo model really segments its world: evaluated on scenes and on camera-sized
sequence frames it never saw, with all 25 thing classes (7 novel: never annotated in training)
and the 4 stuff classes."""

from __future__ import annotations

import numpy as np
import pytest

from masqclip.data.coco import load_coco_panoptic
from masqclip.data.ov_split import load_split
from masqclip.data.sequences import SequenceCfg, plan_sequence, render_frame
from masqclip.data.synthetic import SyntheticPaths, write_dataset, write_scenes
from masqclip.factory import DEMO_CHECKPOINT, build_model
from masqclip.inference.transforms import PreprocessCfg, image_to_tensor
from masqclip.training.clip_pretrain import camera_view
from masqclip.training.data import camera_frame, camera_input
from masqclip.training.evaluate import evaluate

# Chance is near 0 for AP and PQ and about 1/29 for mIoU; the model scores about 35 AP,
# 48 PQ and 52 mIoU on 300 held-out scenes (docs/demo_model.md). A collapse, a mismatched
# vocabulary or broken weights fall far below these floors.
FLOORS = {
    'segm/AP': 0.15,
    'segm/AP_novel': 0.05,
    'panoptic/PQ': 0.25,
    'panoptic/PQ_st': 0.5,
    'semantic/mIoU': 0.25,
    'proposals/recall50_novel': 0.4,
}
# 640x480 frames of held-out sequences (objects partly out of view, occluded), as the ROS node
# gets them: the model before camera-frame training scored PQ 27.1, mIoU 31.0 and AP 15.5 on
# these 30 frames, the shipped one 32.1, 40.3 and 17.5 (docs/demo_model.md measures larger
# sets). The PQ and mIoU floors fail the former; AP, close between the two, only guards
# against a collapse.
CAMERA_FLOORS = {'panoptic/PQ': 0.29, 'semantic/mIoU': 0.35, 'segm/AP': 0.12}
CAMERA_SEEDS = range(41, 51)  # neither examples/sequence (10) nor the documented 11-40
CAMERA_FRAMES = (0, 50, 100)


def evaluate_demo(paths: SyntheticPaths, *tasks: str) -> dict[str, float]:
    dataset = load_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    network, config = build_model(checkpoint=DEMO_CHECKPOINT)
    return evaluate(network, config, dataset, load_split(paths.split_json), tasks)


@pytest.fixture(scope='module')
def metrics(tmp_path_factory) -> dict[str, float]:
    # Seed 9: neither the training (0), validation (1) nor test (2) scenes of the demo.
    paths = write_dataset(tmp_path_factory.mktemp('scenes'), 60, seed=9)
    return evaluate_demo(paths, 'instance', 'semantic', 'panoptic', 'proposals')


@pytest.fixture(scope='module')
def camera_metrics(tmp_path_factory) -> dict[str, float]:
    cfg = SequenceCfg()
    plans = (plan_sequence(np.random.default_rng(seed), cfg) for seed in CAMERA_SEEDS)
    frames = (render_frame(plan, k).scene for plan in plans for k in CAMERA_FRAMES)
    paths = write_scenes(tmp_path_factory.mktemp('frames'), frames, {})
    return evaluate_demo(paths, 'instance', 'semantic', 'panoptic')


@pytest.mark.parametrize('name', sorted(FLOORS))
def test_demo_model_beats_chance_by_far(metrics, name):
    assert metrics[name] > FLOORS[name], f'{name} = {metrics[name]:.3f}'


@pytest.mark.parametrize('name', sorted(CAMERA_FLOORS))
def test_demo_model_segments_camera_frames(camera_metrics, name):
    value = camera_metrics[name]
    assert value > CAMERA_FLOORS[name], f'{name} = {value:.3f}'


def test_clip_pretrains_on_what_it_receives_from_camera_frames():
    network, config = build_model(checkpoint=DEMO_CHECKPOINT)
    spec = camera_input(config)
    frame = camera_frame(np.random.default_rng(0), spec.resized, 4, 6).image
    network_input = image_to_tensor(frame, PreprocessCfg.of(config).plan(*frame.shape[:2]))
    received = network.clip_input(network_input)[0]
    assert spec.padded == (64, 96) and frame.shape == (64, 85, 3)
    np.testing.assert_allclose(camera_view(frame, spec, 64), received, atol=1e-5)
