"""Tests of masqclip.data.sequences: moving sequences, their tracking / depth ground truth and
the shipped example sequence."""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import json
import shlex
from pathlib import Path

import cv2
import motmetrics as mm
import numpy as np
import pycocotools.mask as mask_util
import pytest

from masqclip.cli import main as cli_main
from masqclip.data import load_coco_instances, load_coco_panoptic, sequences, synthetic
from masqclip.data.io import read_panoptic_png, read_raw_labels

EXAMPLE = Path(__file__).resolve().parents[1] / 'examples' / 'sequence'
# Small and fast: 160 x 120 frames, objects fast enough to leave and come back in 8 s.
SMALL = sequences.SequenceCfg(
    synthetic.SceneCfg(120, 160, min_objects=5, max_objects=6), seconds=8.0, speed=(0.6, 1.0)
)


@pytest.fixture(scope='module')
def plan() -> sequences.SequencePlan:
    return sequences.plan_sequence(np.random.default_rng(4), SMALL)


@pytest.fixture(scope='module')
def frames(plan: sequences.SequencePlan) -> list[sequences.SequenceFrame]:
    return [sequences.render_frame(plan, k) for k in range(SMALL.num_frames)]


def _objects(frame: sequences.SequenceFrame) -> list[synthetic.SceneSegment]:
    return [s for s in frame.scene.segments if s.is_thing]


def _presence(frames: list[sequences.SequenceFrame]) -> dict[int, np.ndarray]:
    """Track id -> bool (frames,): annotated in that frame."""
    ids = {s.track_id for f in frames for s in _objects(f)}
    return {t: np.array([any(s.track_id == t for s in _objects(f)) for f in frames]) for t in ids}


def test_track_pixels_show_their_class(frames: list[sequences.SequenceFrame]) -> None:
    palette = np.array([*synthetic.COLOURS.values(), synthetic.SECONDARY], np.float32)
    checked = 0
    for frame in frames[::4]:
        for segment in _objects(frame):
            pixels = frame.scene.image[frame.scene.panoptic == segment.id].astype(np.float32)
            nearest = np.linalg.norm(pixels[:, None] - palette[None], axis=2).argmin(1)
            colour, pattern = synthetic.THING_NAMES[segment.category_id - 1].split(' ')
            own = list(synthetic.COLOURS).index(colour)
            secondary = len(palette) - 1
            assert set(np.unique(nearest)) <= {own, secondary}, (segment, frame.index)
            share = float((nearest == own).mean())
            if pattern == 'solid':
                assert share == 1.0
            elif len(pixels) > 600:  # big enough to show both halves of its pattern
                assert 0.05 < share < 0.95, (segment, pattern, share)
            checked += 1
    assert checked > 50


def test_track_ids_are_stable_and_survive_leaving_the_frame(
    plan: sequences.SequencePlan, frames: list[sequences.SequenceFrame]
) -> None:
    classes = {t.track_id: t.look.thing + 1 for t in plan.tracks}
    stuff = len(plan.background.stuff)
    for frame in frames:
        for segment in _objects(frame):
            assert segment.category_id == classes[segment.track_id]
            assert segment.id == stuff + segment.track_id  # panoptic ids are stable too
    returns = 0
    for track_id, present in _presence(frames).items():
        for k in np.flatnonzero(present[1:] & ~present[:-1]) + 1:
            if present[:k].any():  # it was seen, went away and is back
                returns += 1
                mask = frames[k].scene.panoptic == stuff + track_id
                # It comes back from outside the frame or from behind a nearer object.
                border = mask[0].any() | mask[-1].any() | mask[:, 0].any() | mask[:, -1].any()
                hidden = frames[k - 1].depth[mask] < round(1000 * _track(plan, track_id).depth)
                assert border or hidden.mean() > 0.5
    assert returns >= 2


def _track(plan: sequences.SequencePlan, track_id: int) -> sequences.Track:
    return next(t for t in plan.tracks if t.track_id == track_id)


def test_depth_follows_the_segments_and_the_occlusion_order(
    plan: sequences.SequencePlan, frames: list[sequences.SequenceFrame]
) -> None:
    background = round(1000 * SMALL.background_depth)
    occluded_pixels = 0
    for frame in frames[::3]:
        scene = frame.scene
        stuff = np.isin(scene.panoptic, [s.id for s in scene.segments if not s.is_thing])
        assert (frame.depth[stuff] == background).all()
        for segment in _objects(frame):
            track = _track(plan, segment.track_id)
            millimetres = round(1000 * track.depth)
            visible = scene.panoptic == segment.id
            assert (frame.depth[visible] == millimetres).all()
            # The object drawn alone: wherever it is hidden, something nearer covers it.
            alone = sequences.render_frame(dataclasses.replace(plan, tracks=(track,)), frame.index)
            hidden = (alone.scene.panoptic == segment.id) & ~visible
            assert (frame.depth[hidden] < millimetres).all()
            occluded_pixels += int(hidden.sum())
    assert occluded_pixels > 1000


def test_visibility_and_void_slivers(frames: list[sequences.SequenceFrame]) -> None:
    min_pixels = SMALL.scene.min_area * SMALL.scene.height * SMALL.scene.width
    for frame in frames:
        assert set(frame.visibility) == {s.track_id for s in _objects(frame)}
        assert all(0 < v <= 1 for v in frame.visibility.values())
        ids, areas = np.unique(frame.scene.panoptic, return_counts=True)
        area = dict(zip(ids.tolist(), areas.tolist(), strict=True))
        assert all(area[s.id] >= min_pixels for s in _objects(frame))
    assert any(0 in f.scene.panoptic for f in frames)  # some frames have void slivers


@pytest.fixture(scope='module')
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('sequence')
    argv = ['synth', str(out), '--sequence', '--seconds', '3', '--fps', '5']
    assert cli_main([*argv, '--size', '160x120', '--seed', '2', '--min-objects', '5']) == 0
    return out


def test_written_sequence_reads_as_coco_tracks_and_depth(written: Path) -> None:
    panoptic = load_coco_panoptic(
        written / 'annotations' / 'panoptic.json', written / 'panoptic', written / 'images'
    )
    instances = json.loads((written / 'annotations' / 'instances.json').read_text())
    assert len(panoptic) == 15 and instances['videos'][0]['fps'] == 5
    assert [im['frame_index'] for im in instances['images']] == list(range(15))
    assert sorted(p.name for p in (written / 'images').iterdir())[0] == '000001.jpg'
    depth_of = {t['id']: round(1000 * t['depth_m']) for t in instances['tracks']}
    by_image: dict[int, list[dict]] = {}
    for a in instances['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
    for record in panoptic.records:
        image = record.load_image()
        assert image.shape == (120, 160, 3)
        depth = read_raw_labels(written / 'depth' / Path(record.panoptic_path).name)
        assert depth.dtype == np.uint16
        annotations = by_image.get(record.image_id, [])
        masks = mask_util.decode([a['segmentation'] for a in annotations]).transpose(2, 0, 1)
        assert masks.sum(0).max(initial=0) <= 1  # the masks of one frame never overlap
        for a, mask in zip(annotations, masks.astype(bool), strict=True):
            assert (depth[mask] == depth_of[a['track_id']]).all()
    assert len(load_coco_instances(written / 'annotations' / 'instances.json', written)) == 15
    info = json.loads((written / 'camera_info.json').read_text())
    assert (info['width'], info['height'], info['distortion_model']) == (160, 120, 'plumb_bob')
    k = np.array(info['k']).reshape(3, 3)
    assert k[0, 0] == pytest.approx(80 / np.tan(np.radians(30))) and k[2, 2] == 1
    assert len(info['d']) == 5 and len(info['p']) == 12
    seqinfo = configparser.ConfigParser()
    seqinfo.read(written / 'seqinfo.ini')
    assert seqinfo['Sequence']['seqLength'] == '15'


BOX = ['X', 'Y', 'Width', 'Height']


def _box_iou_distances(gt: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """motmetrics distances, 1 - IoU, NaN below IoU 0.5. (motmetrics 1.4.0's own
    ``iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed.)"""
    if not len(gt) or not len(hyp):
        return np.empty((len(gt), len(hyp)))
    iou = np.array(mask_util.iou(hyp.tolist(), gt.tolist(), [0] * len(gt))).T
    return np.where(iou >= 0.5, 1 - iou, np.nan)


def _track_scores(gt, hyp) -> dict:
    """IDF1, MOTA and id switches of hypotheses against ground truth (rows of MOT files)."""
    accumulator = mm.MOTAccumulator(auto_id=False)
    hyp_frames = dict(iter(hyp.groupby('FrameId')))
    for frame, truth in gt.groupby('FrameId'):
        guess = hyp_frames.get(frame, hyp.iloc[:0])
        distances = _box_iou_distances(truth[BOX].to_numpy(float), guess[BOX].to_numpy(float))
        accumulator.update(truth.Id.to_numpy(), guess.Id.to_numpy(), distances, frameid=frame)
    summary = mm.metrics.create().compute(accumulator, metrics=['idf1', 'mota', 'num_switches'])
    return summary.iloc[0].to_dict()


# motmetrics 1.4.0's loadtxt subtracts a tuple from a frame, which pandas 3 deprecates.
@pytest.mark.filterwarnings('ignore:Operation with tuple is deprecated')
def test_mot_ground_truth_parses_and_a_perfect_tracker_scores_idf1_1() -> None:
    gt = mm.io.loadtxt(EXAMPLE / 'gt' / 'gt.txt', fmt='mot16')
    instances = json.loads((EXAMPLE / 'annotations' / 'instances.json').read_text())
    assert len(gt) == len(instances['annotations'])
    first = instances['annotations'][0]
    row = gt.loc[(first['image_id'], first['track_id'])]
    # loadtxt turns MOT's 1-based boxes into 0-based ones: the COCO box of the same mask.
    assert [row.X, row.Y, row.Width, row.Height] == first['bbox']
    assert row.ClassId == first['category_id']

    gt = gt.reset_index()
    perfect = gt.assign(Id=gt.Id + 100)  # a perfect tracker, with ids of its own
    scores = _track_scores(gt, perfect)
    assert scores['idf1'] == 1.0 and scores['mota'] == 1.0 and scores['num_switches'] == 0
    # The metric is live: swapping two tracks' ids halfway costs IDF1.
    late = gt.FrameId > gt.FrameId.max() // 2
    a, b = sorted(gt.Id[late].unique())[:2]
    swapped = gt.assign(Id=gt.Id.where(~late, gt.Id.replace({a: b, b: a})))
    assert _track_scores(gt, swapped)['idf1'] < 1.0


def _size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())


def test_example_sequence_is_small_and_regenerates() -> None:
    instances = json.loads((EXAMPLE / 'annotations' / 'instances.json').read_text())
    panoptic = json.loads((EXAMPLE / 'annotations' / 'panoptic.json').read_text())
    video = instances['videos'][0]
    assert 15 <= video['num_frames'] / video['fps'] <= 20
    assert (video['width'], video['height']) == (640, 480)
    assert _size_bytes(EXAMPLE) < 5_000_000
    names = sorted(p.name for p in (EXAMPLE / 'images').iterdir())
    assert len(names) == video['num_frames'] and names[0] == '000001.jpg'

    # The recorded command, parsed as the CLI does, draws the same frames again.
    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    args = parser.parse_args(shlex.split(instances['info']['command'])[2:])
    assert args.sequence
    cfg = sequences.cfg_from_args(args)
    plan = sequences.plan_sequence(np.random.default_rng(args.seed), cfg)
    for index in (0, video['num_frames'] // 2, video['num_frames'] - 1):
        frame = sequences.render_frame(plan, index)
        stem = f'{index + 1:06d}'
        stored = read_panoptic_png(EXAMPLE / 'panoptic' / f'{stem}.png')
        np.testing.assert_array_equal(frame.scene.panoptic, stored)
        depth = read_raw_labels(EXAMPLE / 'depth' / f'{stem}.png')
        np.testing.assert_array_equal(frame.depth, depth)
        segments = panoptic['annotations'][index]['segments_info']
        assert [(s.id, s.category_id, s.track_id) for s in frame.scene.segments] == [
            (s['id'], s['category_id'], s.get('track_id')) for s in segments
        ]
        jpeg = cv2.cvtColor(cv2.imread(str(EXAMPLE / 'images' / f'{stem}.jpg')), cv2.COLOR_BGR2RGB)
        assert np.abs(jpeg.astype(int) - frame.scene.image).mean() < 4  # JPEG, not lossless
