"""Distributed training and evaluation on the CPU: two processes under torchrun (gloo, loopback
only) against one process without a launcher, on a tiny generated dataset and test_tiny.

This file is also the worker script torchrun starts (``test_distributed.py --worker PLAN``);
the single-process runs happen in the test process. Two launches: stage 1 exactly as a user
runs it (the command joins and leaves the process group itself), then every other command in
one process group the worker sets up (torch cannot re-create a process group in a process
reliably, and a launch per command would cost seconds each). The two must agree: the same
global batch and seed give the same weights and logged losses, gathered evaluation metrics
equal one process's, and a resumed two-process run continues at the right step.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from masqclip.checkpoint import read_checkpoint
from masqclip.data.coco import ImageRecord
from masqclip.data.synthetic import SceneCfg, write_dataset
from masqclip.evaluation import InstancePredictions, SegmentationEvaluator
from masqclip.training import cli, distributed, engine, evaluate, run
from masqclip.training.data import load_category_split, load_dataset

WORKER = '--worker'
TIMEOUT_S = 240
# Float tolerance between one process and two: the same sums, added in another order.
ATOL, RTOL = 2e-6, 1e-4


def common_overrides(root: Path, batch: int = 2) -> list[str]:
    return [
        f'data.root={root}',
        'data.annotations=annotations/instances_seen18.json',
        'data.images=images',
        'data.image_size=64',
        'data.num_workers=0',
        'data.split=split.json',
        f'train.batch_size={batch}',
        'train.log_every=1',
        'train.device=cpu',
        'train.num_threads=1',
        'eval.annotations=',
    ]


def stage1_argv(root: Path, out: Path) -> list[str]:
    # A teacher step, then a student step on the teacher's pseudo-masks (threshold 0: the
    # random teacher's masks are kept, so pseudo-labelling really runs on both ranks).
    return [
        'stage1',
        '--out',
        str(out),
        *common_overrides(root),
        'model.name=test_tiny',
        'train.steps=1',
        'student.steps=1',
        'student.batch_size=2',
        'student.num_points=64',
        'student.score_threshold=0.0',
        'loss.num_points=64',
        'matcher.num_points=64',
    ]


def stage2_argv(root: Path, out: Path, init: Path, batch: int, *extra: str) -> list[str]:
    return [
        'stage2',
        '--out',
        str(out),
        *common_overrides(root, batch),
        f'model.init={init}',
        *extra,
    ]


def eval_argv(root: Path, checkpoint: Path, out: Path) -> list[str]:
    return [
        '--checkpoint',
        str(checkpoint),
        '--data-root',
        str(root),
        '--annotations',
        'annotations/instances_instances25.json',
        '--split',
        'split.json',
        '--tasks',
        'instance,proposals',
        '--out',
        str(out),
    ]


def imperfect_instances(record: ImageRecord, class_index: dict[int, int]) -> InstancePredictions:
    """The ground truth as predictions, spoiled a little so the AP is neither 0 nor 1: a
    wrong class on odd images, a confident shifted false positive on even ones.

    :param class_index: category id -> class index.
    """
    keep = [i for i, a in enumerate(record.annotations) if not a.is_crowd]
    masks = record.masks()[keep]
    classes = np.array([class_index[record.annotations[i].category_id] for i in keep])
    scores = np.linspace(0.9, 0.5, len(keep))
    if record.image_id % 2:
        classes[0] = (classes[0] + 1) % len(class_index)
    else:
        masks = np.concatenate([masks, np.roll(masks[:1], 9, axis=2)])
        classes = np.append(classes, classes[0])
        scores = np.append(scores, 0.95)
    return InstancePredictions(masks, scores, classes.astype(np.int64))


def imperfect_metrics(root: Path) -> dict[str, float]:
    """``imperfect_instances`` scored over the dataset, each rank adding its share of the
    images and ``evaluate.merged_metrics`` gathering them, as ``evaluate_segmentation`` does."""
    data = {
        'root': str(root),
        'format': 'instances',
        'annotations': 'annotations/instances_instances25.json',
        'images': 'images',
        'split': 'split.json',
    }
    dataset = load_dataset(data)
    evaluator = SegmentationEvaluator(dataset.categories, load_category_split(data))
    class_index = {c.id: i for i, c in enumerate(dataset.categories)}
    for record in distributed.shard(dataset.records):
        evaluator.add(record, instances=imperfect_instances(record, class_index))
    return distributed.broadcast_from_main(evaluate.merged_metrics(evaluator))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def worker(plan_file: str) -> None:
    """One rank: run each (command, argv) of the plan, recording the exit statuses."""
    plan = json.loads(Path(plan_file).read_text())
    if plan['shared_group']:
        # A hang (one rank failing) ends in a minute instead of gloo's default 30.
        dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
    statuses = []
    rank = os.environ['RANK']
    for command, argv in plan['commands']:
        if command == 'gather':
            metrics = imperfect_metrics(Path(argv[0]))
            Path(argv[1], f'gathered_rank{rank}.json').write_text(json.dumps(metrics))
            statuses.append(0)
        else:
            statuses.append((cli.main if command == 'train' else evaluate.main)(argv))
    if plan['shared_group']:
        dist.destroy_process_group()
    Path(plan['status_dir'], f'{plan["name"]}_rank{rank}.json').write_text(json.dumps(statuses))


def launch_two_processes(name: str, commands: list, shared_group: bool, status_dir: Path) -> str:
    """Run the commands on 2 CPU processes under torchrun (loopback only); returns the output.

    :param shared_group: the worker sets up one process group for all the commands (else
        each command joins and leaves it, as from the command line: one command only).
    """
    plan = status_dir / f'{name}.json'
    plan.write_text(
        json.dumps(
            {
                'name': name,
                'commands': commands,
                'shared_group': shared_group,
                'status_dir': str(status_dir),
            }
        )
    )
    env = dict(os.environ, GLOO_SOCKET_IFNAME='lo', OMP_NUM_THREADS='1')
    launch = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nnodes=1',
        '--nproc-per-node=2',
        '--master-addr=127.0.0.1',
        f'--master-port={free_port()}',
        __file__,
        WORKER,
        str(plan),
    ]
    process = subprocess.Popen(
        launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun stops its workers on SIGTERM
        output, _ = process.communicate(timeout=30)
        pytest.fail(f'the 2-process run {name} hung:\n{output[-4000:]}')
    (status_dir / f'{name}_output.txt').write_text(output)
    assert process.returncode == 0, output[-4000:]
    return output


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline='') as f:
        return list(csv.DictReader(f))


def weights(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_checkpoint(path)['model'].items() if k.startswith(prefix)}


def stage2_start(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a stage-2 run started from: its network built again as the run built it
    (the same seed; the stage-1 file holds the proposer only, the rest is initialised)."""
    recipe = yaml.safe_load((run_dir / run.CONFIG_FILE).read_text())
    torch.manual_seed(int(recipe['train']['seed']))
    network, _ = engine.build_network(recipe['model'])
    return network.state_dict()


def assert_same_training(
    one: Path, two: Path, start: dict[str, torch.Tensor] | None, prefix: str
) -> None:
    """Equal weights (within float tolerance) and logged losses; the training moved the
    weights far more than the tolerance, so a different batch would show."""
    a, b = weights(one / 'model.pt', prefix), weights(two / 'model.pt', prefix)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=RTOL, msg=key)
    if start is not None:
        initial = {k: v for k, v in start.items() if k.startswith(prefix)}
        moved = max(float((a[k] - initial[k]).abs().max()) for k in a)
        assert moved > 20 * ATOL
    rows_one, rows_two = read_csv(one / 'metrics.csv'), read_csv(two / 'metrics.csv')
    assert [r['global_step'] for r in rows_two] == [r['global_step'] for r in rows_one]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        for key in [k for k in r1 if k.startswith('loss') or k == 'grad_norm']:
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-4, abs=1e-6), key


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('data')
    write_dataset(root, 4, SceneCfg(64, 64, min_objects=1, max_objects=3))
    one, two = tmp_path_factory.mktemp('one'), tmp_path_factory.mktemp('two')
    stage1 = one / 'stage1' / 'model.pt'

    # One process, no launcher.
    assert cli.main(stage1_argv(root, one / 'stage1')) == 0
    eval_step = ('eval.annotations=annotations/instances_instances25.json', 'eval.max_images=2')
    assert cli.main(stage2_argv(root, one / 'stage2', stage1, 2, 'train.steps=2', *eval_step)) == 0
    assert cli.main(stage2_argv(root, one / 'stage2_b4', stage1, 4, 'train.steps=2')) == 0
    assert evaluate.main(eval_argv(root, stage1, one / 'eval.json')) == 0

    # Two processes, stage 1 as from the command line.
    launch_two_processes('stage1', [('train', stage1_argv(root, two / 'stage1'))], False, two)
    # The resumed run splits its global batch of 4 into 2 ranks x 2 accumulation steps of 1
    # image; the last command cannot split 3 images over 2 ranks.
    commands = [
        ('train', stage2_argv(root, two / 'stage2', stage1, 2, 'train.steps=2', *eval_step)),
        (
            'train',
            stage2_argv(
                root, two / 'resumed', stage1, 4, 'train.steps=1', 'train.grad_accum_steps=2'
            ),
        ),
        ('train', ['stage2', '--out', str(two / 'resumed'), '--resume', 'train.steps=2']),
        ('eval', eval_argv(root, stage1, two / 'eval.json')),
        ('gather', [str(root), str(two)]),
        ('train', stage2_argv(root, two / 'odd', stage1, 3)),
    ]
    launch_two_processes('rest', commands, True, two)
    return {'root': root, 'one': one, 'two': two, 'stage1': stage1}


def test_both_ranks_finish_every_command(runs: dict[str, Path]) -> None:
    for rank in (0, 1):
        assert json.loads((runs['two'] / f'stage1_rank{rank}.json').read_text()) == [0]
        statuses = json.loads((runs['two'] / f'rest_rank{rank}.json').read_text())
        assert statuses == [0, 0, 0, 0, 0, 2], rank
    assert (
        'distributed: 2 processes, backend gloo' in (runs['two'] / 'stage1_output.txt').read_text()
    )
    output = (runs['two'] / 'rest_output.txt').read_text()
    # The batch that does not split is refused on both ranks, with what to change.
    assert output.count('train.batch_size=3 is the global batch') == 2
    assert not (runs['two'] / 'odd' / 'last.pt').exists()


def test_stage1_matches_one_process(runs: dict[str, Path]) -> None:
    one, two = runs['one'] / 'stage1', runs['two'] / 'stage1'
    assert_same_training(one, two, None, 'proposer.')
    for name in ('teacher.pt', 'student1.pt', 'last.pt', 'curves.png'):
        assert (two / name).is_file(), name
    rows = read_csv(two / 'metrics.csv')
    assert [r['phase'] for r in rows] == ['teacher', 'student1']
    # Both ranks' pseudo-labels, averaged: the same number as one process on the whole batch.
    assert float(rows[1]['pseudo_masks']) == pytest.approx(
        float(read_csv(one / 'metrics.csv')[1]['pseudo_masks'])
    )
    # The teacher phase changed the weights the student phase started from.
    teacher = weights(two / 'teacher.pt', 'proposer.')
    student = weights(two / 'model.pt', 'proposer.')
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)


def test_stage2_matches_one_process(runs: dict[str, Path]) -> None:
    one = runs['one'] / 'stage2'
    assert_same_training(one, runs['two'] / 'stage2', stage2_start(one), 'mask_clip.')
    # The evaluation during training: gathered from both ranks, logged once by rank 0.
    eval_one = read_csv(runs['one'] / 'stage2' / 'eval.csv')
    eval_two = read_csv(runs['two'] / 'stage2' / 'eval.csv')
    assert [r['global_step'] for r in eval_two] == ['2']
    for key, value in eval_one[0].items():
        assert float(eval_two[0][key]) == pytest.approx(float(value), abs=1e-6, nan_ok=True), key


def test_evaluation_gathered_from_both_ranks_equals_one_process(runs: dict[str, Path]) -> None:
    one = json.loads((runs['one'] / 'eval.json').read_text())
    two = json.loads((runs['two'] / 'eval.json').read_text())
    assert two.keys() == one.keys()
    assert {'segm/AP', 'segm/AP_novel', 'proposals/recall50'} <= one.keys()
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_gathered_evaluator_states_score_as_one(runs: dict[str, Path]) -> None:
    # The tiny random model scores 0 everywhere: here the predictions are the ground truth,
    # spoiled a little, so that a lost or doubled shard would change the numbers.
    one = imperfect_metrics(runs['root'])
    assert 0.1 < one['segm/AP'] < 0.95
    assert one['segm/AP_base'] != one['segm/AP_novel']
    for rank in (0, 1):
        two = json.loads((runs['two'] / f'gathered_rank{rank}.json').read_text())
        assert two.keys() == one.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, abs=1e-12, nan_ok=True), (rank, key)


def test_resumed_two_process_run_continues_at_the_right_step(runs: dict[str, Path]) -> None:
    resumed = runs['two'] / 'resumed'
    assert [r['step'] for r in read_csv(resumed / 'metrics.csv')] == ['1', '2']
    assert int(read_checkpoint(resumed / 'last.pt')['step']) == 2
    # 1 step, then 1 more after the resume, on 2 ranks x 2 accumulation steps of 1 image: the
    # same as 2 uninterrupted steps of 4 images in one process.
    one = runs['one'] / 'stage2_b4'
    assert_same_training(one, resumed, stage2_start(one), 'mask_clip.')


if __name__ == '__main__' and sys.argv[1:2] == [WORKER]:
    worker(sys.argv[2])
