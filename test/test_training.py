"""Tests of the training code: matching, losses, pseudo-labels, stage-2 assignment, recipes,
batch splitting (accumulation, and the sums DDP relies on), and short end-to-end runs of both
stages on a generated dataset (CPU, test_tiny). Several processes: test_distributed.py."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from masqclip.data.synthetic import SceneCfg, write_dataset
from masqclip.factory import build_model
from masqclip.training import cli, engine
from masqclip.training.data import StreamSampler
from masqclip.training.losses import (
    CriterionCfg,
    MatcherCfg,
    SetCriterion,
    dice_loss,
    hungarian_match,
    sigmoid_ce_loss,
)
from masqclip.training.masq_tuning import (
    assign_proposals,
    classification_loss,
    classification_weight,
)
from masqclip.training.pseudo_labels import PseudoLabelCfg, select_pseudo_masks, teacher_masks
from masqclip.training.recipe import RecipeError, apply_overrides, load_recipe
from masqclip.training.stage2 import trainable_parameters

BIG = 20.0  # a mask logit far from the boundary


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def logits_of(masks: torch.Tensor) -> torch.Tensor:
    return torch.where(masks, BIG, -BIG)


# --- matching and losses ---------------------------------------------------------------------


def test_hungarian_match_finds_the_matching_masks() -> None:
    gt = torch.stack([box_mask(16, 16, 0, 8, 0, 8), box_mask(16, 16, 8, 16, 8, 16)])
    # Query 2 predicts gt 0, query 0 predicts gt 1, query 1 is empty.
    pred = torch.stack([gt[1], torch.zeros(16, 16, dtype=torch.bool), gt[0]])
    logits = torch.zeros(1, 3, 2)
    rows, cols = hungarian_match(logits, logits_of(pred)[None], [gt], MatcherCfg(num_points=256))[
        0
    ]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {2: 0, 0: 1}


def test_hungarian_match_uses_class_cost_between_equal_masks() -> None:
    gt = box_mask(8, 8, 0, 4, 0, 4)[None]
    pred = torch.stack([gt[0], gt[0]])[None]
    logits = torch.tensor([[[0.0, 3.0], [3.0, 0.0]]])  # query 1 is confident "object"
    rows, cols = hungarian_match(logits, logits_of(pred), [gt], MatcherCfg(num_points=64))[0]
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_hungarian_match_without_targets() -> None:
    rows, cols = hungarian_match(
        torch.zeros(1, 4, 2),
        torch.zeros(1, 4, 8, 8),
        [torch.zeros(0, 8, 8, dtype=torch.bool)],
        MatcherCfg(),
    )[0]
    assert rows.numel() == 0 and cols.numel() == 0


def test_dice_and_bce_values_on_a_hand_made_case() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # sigmoid 0.5 everywhere: dice = 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4; BCE = ln 2.
    assert dice_loss(logits, targets, 1.0).item() == pytest.approx(0.4)
    assert sigmoid_ce_loss(logits, targets, 1.0).item() == pytest.approx(0.693147, abs=1e-5)
    # Normalised by the number of masks.
    two = dice_loss(logits.repeat(2, 1), targets.repeat(2, 1), 4.0)
    assert two.item() == pytest.approx(0.2)


def test_criterion_class_loss_weights_no_object() -> None:
    gt = [box_mask(16, 16, 0, 8, 0, 8)[None]]
    masks = logits_of(torch.stack([gt[0][0], torch.zeros(16, 16, dtype=torch.bool)]))[None]
    logits = torch.zeros(1, 2, 2)  # p = 0.5 for both classes: CE = ln 2 per query
    cfg = CriterionCfg(num_points=256, deep_supervision=False)
    loss, parts = SetCriterion(MatcherCfg(num_points=256), cfg)(
        {'pred_logits': logits, 'pred_masks': masks, 'aux_outputs': []}, gt
    )
    # Weighted mean: (1 * ln2 + 0.1 * ln2) / (1 + 0.1) = ln 2.
    assert parts['loss_ce'] == pytest.approx(0.693147, abs=1e-5)
    assert loss.item() == pytest.approx(
        2.0 * parts['loss_ce'] + 5.0 * parts['loss_mask'] + 5.0 * parts['loss_dice'], rel=1e-5
    )
    # The matched mask is right: its inverse costs far more (the points concentrate on the
    # boundary, where even a right mask's interpolated logits are uncertain).
    inverse = {'pred_logits': logits, 'pred_masks': -masks, 'aux_outputs': []}
    _, worse = SetCriterion(MatcherCfg(num_points=256), cfg)(inverse, gt)
    assert worse['loss_mask'] > 5 * parts['loss_mask']
    assert worse['loss_dice'] > 2 * parts['loss_dice']


def test_criterion_deep_supervision_adds_aux_losses() -> None:
    torch.manual_seed(0)  # the point sampling is random: keep the test deterministic
    gt = [box_mask(16, 16, 0, 8, 0, 8)[None]]
    out = {'pred_logits': torch.zeros(1, 3, 2), 'pred_masks': torch.zeros(1, 3, 4, 4)}
    out['aux_outputs'] = [dict(out), dict(out)]
    matcher = MatcherCfg(num_points=64)
    single, _ = SetCriterion(matcher, CriterionCfg(num_points=64, deep_supervision=False))(out, gt)
    deep, _ = SetCriterion(matcher, CriterionCfg(num_points=64))(out, gt)
    # Three equal predictions: three terms of the same expected value (the sampled points,
    # hence the dice, differ a little between them).
    assert deep.item() == pytest.approx(3 * single.item(), rel=0.05)


def split_outputs(outputs: dict, b: int) -> dict:
    """Image b's share of a proposer output dict (auxiliary predictions included)."""
    one = {k: outputs[k][b : b + 1] for k in ('pred_logits', 'pred_masks')}
    one['aux_outputs'] = [split_outputs(aux, b) for aux in outputs.get('aux_outputs', [])]
    return one


def test_criterion_on_split_batch_equals_whole_batch() -> None:
    # Two images with different numbers of targets: per-micro-batch means would differ from
    # the whole batch's; sums over the micro-batches' mean counts do not.
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 2, requires_grad=True)
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    outputs = {'pred_logits': logits, 'pred_masks': masks}
    outputs['aux_outputs'] = [{'pred_logits': logits * 0.5, 'pred_masks': masks * 2}]
    targets = [
        box_mask(16, 16, 0, 8, 0, 8)[None],
        torch.stack([box_mask(16, 16, 0, 4, 0, 16), box_mask(16, 16, 8, 16, 0, 8)]),
    ]
    cfg = CriterionCfg(num_points=32)
    criterion = SetCriterion(MatcherCfg(num_points=32), cfg)

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (11, 12)]

    whole, whole_parts = criterion(outputs, targets, generators())
    (grad_whole,) = torch.autograd.grad(whole, masks, retain_graph=True)
    per_image = [criterion.counts([t], 4) for t in targets]
    mean_counts = {k: (per_image[0][k] + per_image[1][k]) / 2 for k in per_image[0]}
    assert mean_counts == {'masks': 1.5, 'class_weight': pytest.approx((3 + 0.1 * 5) / 2)}
    halves = [
        criterion(split_outputs(outputs, b), [targets[b]], [generators()[b]], mean_counts)
        for b in (0, 1)
    ]
    split = (halves[0][0] + halves[1][0]) / 2  # what DDP's gradient averaging computes
    (grad_split,) = torch.autograd.grad(split, masks)
    assert split.item() == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close(grad_split, grad_whole)
    for key, value in whole_parts.items():
        assert (halves[0][1][key] + halves[1][1][key]) / 2 == pytest.approx(value, rel=1e-5)


def test_classification_loss_on_split_batch_equals_whole_batch() -> None:
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    embeddings = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    labels = torch.tensor([[0, 3, 3, 3, 3], [1, 2, 0, 3, 3]])  # 1 vs 3 assigned, 3 = background
    whole = classification_loss(embeddings, text, labels, 0.1)
    weights = [classification_weight(labels[b : b + 1], 3, 0.1) for b in (0, 1)]
    assert weights == [pytest.approx(1.4), pytest.approx(3.2)]
    mean_weight = sum(weights) / 2
    halves = [
        classification_loss(embeddings[b : b + 1], text, labels[b : b + 1], 0.1, mean_weight)
        for b in (0, 1)
    ]
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-6)
    # Each half's own weighted mean, averaged, is a different (wrong) number.
    own = [classification_loss(embeddings[b : b + 1], text, labels[b : b + 1]) for b in (0, 1)]
    assert ((own[0] + own[1]) / 2).item() != pytest.approx(whole.item(), rel=1e-3)


@pytest.mark.parametrize(('world', 'accum'), [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_stream_sampler_global_batch_does_not_depend_on_the_split(world: int, accum: int) -> None:
    global_batch, steps, start_step = 6, 3, 2
    micro = global_batch // (world * accum)
    per_rank = []
    for rank in range(world):
        sampler = StreamSampler(5, 0, start_step * global_batch, rank, world)
        stream = iter(sampler)
        per_rank.append([next(stream) for _ in range(steps * accum * micro)])
    for step in range(steps):
        chunk = slice(step * accum * micro, (step + 1) * accum * micro)
        seen = sorted(item for items in per_rank for item in items[chunk])
        positions = range(
            (start_step + step) * global_batch, (start_step + step + 1) * global_batch
        )
        whole = iter(StreamSampler(5, 0, positions[0]))
        assert seen == sorted(next(whole) for _ in positions)
        assert sorted(p for _, p in seen) == list(positions)


def test_per_device_batch_and_precision_errors() -> None:
    assert engine.per_device_batch({'batch_size': 8, 'grad_accum_steps': 4}) == 2
    assert engine.per_device_batch({'batch_size': 8}) == 8  # recipes without the key
    with pytest.raises(RecipeError, match=r'student.batch_size=6 is the global batch.* = 4'):
        engine.per_device_batch({'batch_size': 6, 'grad_accum_steps': 4}, 'student')
    with pytest.raises(RecipeError, match='grad_accum_steps must be >= 1'):
        engine.per_device_batch({'batch_size': 6, 'grad_accum_steps': 0})
    with pytest.raises(RecipeError, match='fp16 runs on CUDA only'):
        engine.autocast(torch.device('cpu'), 'fp16')
    with pytest.raises(RecipeError, match='must be one of'):
        engine.autocast(torch.device('cpu'), 'fp8')
    assert not engine.make_grad_scaler(torch.device('cpu'), 'bf16').is_enabled()


# --- pseudo-labels -----------------------------------------------------------------------------


def test_teacher_scores_are_objectness_times_mean_inside_sigmoid() -> None:
    masks = torch.full((1, 2, 4, 4), -5.0)
    masks[0, 0, :2, :2] = 2.0
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    scores, binary = teacher_masks(logits, masks, (4, 4))
    p_obj = torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + 1)
    assert scores[0, 0].item() == pytest.approx((p_obj * torch.tensor(2.0).sigmoid()).item())
    assert scores[0, 1].item() == 0.0  # an empty mask scores 0
    assert binary[0, 0].sum() == 4


def test_select_pseudo_masks_thresholds_overlap_and_nms() -> None:
    h = w = 32
    gt = box_mask(h, w, 0, 16, 0, 16)[None]
    masks = torch.stack(
        [
            box_mask(h, w, 0, 16, 0, 16),  # 0: on the annotation -> dropped
            box_mask(h, w, 16, 32, 16, 32),  # 1: free, best score -> kept
            box_mask(h, w, 16, 32, 18, 32),  # 2: duplicate of 1 -> removed by NMS
            box_mask(h, w, 0, 10, 20, 32),  # 3: free, distinct -> kept
            box_mask(h, w, 20, 32, 0, 10),  # 4: free but score too low -> dropped
        ]
    )
    scores = torch.tensor([0.95, 0.9, 0.85, 0.82, 0.5])
    cfg = PseudoLabelCfg(num_points=4096)
    kept = select_pseudo_masks(scores, masks, gt, cfg, torch.Generator().manual_seed(0))
    assert kept.tolist() == [1, 3]
    # Without annotations every confident mask passes the overlap test.
    kept = select_pseudo_masks(scores, masks, gt[:0], cfg, torch.Generator().manual_seed(0))
    assert kept.tolist() == [0, 1, 3]
    # A lower score threshold admits mask 4.
    lower = PseudoLabelCfg(score_threshold=0.4, num_points=4096)
    assert select_pseudo_masks(scores, masks, gt, lower).tolist() == [1, 3, 4]


# --- stage 2 -----------------------------------------------------------------------------------


def test_assign_proposals_many_to_one_and_background() -> None:
    gt = torch.stack([box_mask(32, 32, 0, 16, 0, 16), box_mask(32, 32, 16, 32, 0, 32)])
    labels = torch.tensor([3, 5])
    proposals = torch.stack(
        [
            box_mask(32, 32, 0, 16, 0, 16),  # exactly gt 0
            box_mask(32, 32, 0, 16, 0, 14),  # dice 0.93 with gt 0 -> also class 3
            box_mask(32, 32, 0, 16, 0, 6),  # dice 0.55 with gt 0 -> background
            box_mask(32, 32, 16, 32, 0, 30),  # gt 1 -> class 5
            torch.zeros(32, 32, dtype=torch.bool),
        ]
    )[None]
    # Low-resolution logits are bilinearly resized to the CLIP size before binarising.
    out = assign_proposals(logits_of(proposals), [gt], [labels], num_classes=7, size=64)
    assert out.tolist() == [[3, 3, 7, 5, 7]]
    # No ground truth: all background.
    none = assign_proposals(logits_of(proposals), [gt[:0]], [labels[:0]], 7, 64)
    assert (none == 7).all()


def test_classification_loss_weights_background() -> None:
    text = torch.eye(3)  # classes 0, 1, background
    embeddings = torch.eye(3)[None, [0, 2]]  # query 0 looks like class 0, query 1 background
    labels = torch.tensor([[0, 2]])
    loss = classification_loss(embeddings, text, labels, background_weight=0.1)
    log_p = torch.log_softmax(torch.tensor([100.0, 0.0, 0.0]), 0)[0]
    assert loss.item() == pytest.approx(-log_p.item(), abs=1e-6)
    wrong = classification_loss(embeddings, text, torch.tensor([[1, 2]]), 0.1)
    # Wrong class on query 0: about 100 nats, weighted 1 / 1.1 against the background term.
    assert wrong.item() == pytest.approx(100.0 / 1.1, rel=1e-3)


def test_stage2_gradients_reach_only_the_mask_tokens(tiny_model) -> None:
    torch.manual_seed(0)
    network, _ = build_model('test_tiny')
    params = trainable_parameters(network)
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        masks = network.proposer(images)['pred_masks']
    embeddings = network.mask_clip(network.clip_input(images), masks)
    text = torch.nn.functional.normalize(torch.randn(3, embeddings.shape[-1]), dim=-1)
    labels = torch.zeros(1, masks.shape[1], dtype=torch.int64)
    classification_loss(embeddings, text, labels).backward()
    with_grad = {n for n, p in network.named_parameters() if p.grad is not None}
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in network.named_parameters() if any(p is q for q in params)}
    assert trainable == (
        {
            f'mask_clip.new_q_proj.{i}.{k}'
            for i in range(len(network.mask_clip.new_q_proj))
            for k in ('weight', 'bias')
        }
        | {'mask_clip.mask_embeddings'}
    )
    assert with_grad == trainable
    assert all(
        network.mask_clip.new_q_proj[i].weight.grad.abs().sum() > 0
        for i in range(len(network.mask_clip.new_q_proj))
    )


# --- recipes -----------------------------------------------------------------------------------


def test_overrides_are_typed_by_the_recipe() -> None:
    recipe = apply_overrides(
        load_recipe('stage2'),
        [
            'train.steps=7',
            'train.lr=1e-3',
            'train.lr_decay_at=[0.5, 0.8]',
            'data.root=007',
            'loss.background_weight=1',
            'eval.tasks=[instance, panoptic]',
        ],
    )
    assert recipe['train']['steps'] == 7
    assert recipe['train']['lr'] == 1e-3
    assert recipe['train']['lr_decay_at'] == [0.5, 0.8]
    assert recipe['data']['root'] == '007'  # strings stay as typed
    assert recipe['loss']['background_weight'] == 1.0
    assert isinstance(recipe['loss']['background_weight'], float)
    with pytest.raises(RecipeError, match='expected an integer'):
        apply_overrides(recipe, ['train.steps=many'])
    with pytest.raises(RecipeError, match='not key=value'):
        apply_overrides(recipe, ['train.steps'])


def test_recipe_typo_lists_close_matches(capsys) -> None:
    with pytest.raises(RecipeError, match=r"'train.stpes'.*did you mean train.steps"):
        apply_overrides(load_recipe('stage1'), ['train.stpes=3'])
    with pytest.raises(RecipeError, match='did you mean.*train.lr'):
        apply_overrides(load_recipe('stage1'), ['lr=3'])
    assert cli.main(['stage1', 'train.stpes=3', '--out', 'unused']) == 2
    assert 'did you mean train.steps' in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys) -> None:
    status = cli.main(['stage1', '--out', str(tmp_path / 'run'), 'model.name=test_tiny'])
    assert status == 2
    assert 'set data.root=DIR' in capsys.readouterr().err
    status = cli.main(
        ['stage1', '--out', str(tmp_path / 'run'), f'data.root={tmp_path / "nowhere"}']
    )
    assert status == 2
    assert 'does not exist' in capsys.readouterr().err


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic')
    write_dataset(root, 4, SceneCfg(64, 64, min_objects=1, max_objects=3))
    return root


def tiny_overrides(root: Path) -> list[str]:
    return [
        f'data.root={root}',
        'data.annotations=annotations/instances_seen18.json',
        'data.images=images',
        'data.image_size=64',
        'data.num_workers=0',
        'data.split=split.json',
        'train.batch_size=2',
        'train.log_every=1',
        'train.device=cpu',
        'eval.annotations=annotations/instances_instances25.json',
        'eval.max_images=2',
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline='') as f:
        return list(csv.DictReader(f))


def run_stage1(out: Path, root: Path, student_steps: int, *extra: str) -> int:
    # One teacher step, then student steps on the teacher's pseudo-masks (score threshold 0
    # so the random teacher's masks are kept).
    return cli.main(
        [
            'stage1',
            '--out',
            str(out),
            'model.name=test_tiny',
            'train.steps=1',
            f'student.steps={student_steps}',
            'student.batch_size=2',
            'student.num_points=64',
            'student.score_threshold=0.0',
            'loss.num_points=64',
            'matcher.num_points=64',
            *tiny_overrides(root),
            *extra,
        ]
    )


@pytest.fixture(scope='module')
def stage1_run(dataset_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('stage1')
    assert run_stage1(out, dataset_root, 1) == 0
    return out


def test_stage1_run_writes_checkpoints_csv_and_plot(stage1_run: Path) -> None:
    for name in (
        'config.yaml',
        'teacher.pt',
        'student1.pt',
        'last.pt',
        'model.pt',
        'metrics.csv',
        'eval.csv',
        'curves.png',
    ):
        assert (stage1_run / name).is_file(), name
    rows = read_csv(stage1_run / 'metrics.csv')
    assert [(r['phase'], r['global_step']) for r in rows] == [('teacher', '1'), ('student1', '2')]
    # The student's mean pseudo-masks per image over its batch of 2: a whole number of masks
    # in all, at least one (threshold 0 keeps the random teacher's), at most 2 x 10 queries.
    added = 2 * float(rows[1]['pseudo_masks'])
    assert added == round(added) and 1 <= added <= 2 * 10
    assert 'proposals/recall50_novel' in read_csv(stage1_run / 'eval.csv')[0]
    network, config = build_model(None, checkpoint=stage1_run / 'model.pt')
    assert config['proposer']['decoder']['num_queries'] == 10
    assert load_recipe(stage1_run / 'config.yaml')['train']['steps'] == 1


def test_stage1_resumes_exactly_inside_the_student_phase(
    stage1_run: Path, dataset_root: Path, tmp_path: Path
) -> None:
    # The fixture's run (a teacher step, a student step) resumed for a second student step
    # restores the student's optimiser and data stream: the same weights as three steps in a row.
    resumed = tmp_path / 'resumed'
    shutil.copytree(stage1_run, resumed)
    argv = ['stage1', '--out', str(resumed), '--resume', 'student.steps=2', 'eval.annotations=']
    assert cli.main(argv) == 0
    rows = read_csv(resumed / 'metrics.csv')
    assert [(r['phase'], r['step'], r['global_step']) for r in rows] == [
        ('teacher', '1', '1'),
        ('student1', '1', '2'),
        ('student1', '2', '3'),
    ]
    straight = tmp_path / 'straight'
    assert run_stage1(straight, dataset_root, 2, 'eval.annotations=') == 0
    a, _ = build_model(None, checkpoint=straight / 'model.pt')
    b, _ = build_model(None, checkpoint=resumed / 'model.pt')
    for (name, x), y in zip(a.proposer.named_parameters(), b.proposer.parameters(), strict=True):
        torch.testing.assert_close(y, x, msg=name)
    for straight_row, row in zip(read_csv(straight / 'metrics.csv'), rows, strict=True):
        assert float(row['loss']) == pytest.approx(float(straight_row['loss']), rel=1e-5)


def run_stage2(out: Path, root: Path, stage1: Path, *extra: str) -> int:
    return cli.main(
        [
            'stage2',
            '--out',
            str(out),
            f'model.init={stage1 / "model.pt"}',
            *tiny_overrides(root),
            *extra,
        ]
    )


def test_stage2_run_and_exact_resume(stage1_run: Path, dataset_root: Path, tmp_path: Path) -> None:
    straight = tmp_path / 'straight'
    assert (
        run_stage2(straight, dataset_root, stage1_run, 'train.steps=2', 'eval.tasks=[instance]')
        == 0
    )
    for name in ('config.yaml', 'last.pt', 'model.pt', 'metrics.csv', 'eval.csv', 'curves.png'):
        assert (straight / name).is_file(), name
    assert 'segm/AP_novel' in read_csv(straight / 'eval.csv')[0]
    tuned, _ = build_model(None, checkpoint=straight / 'model.pt')
    start, _ = build_model(None, checkpoint=stage1_run / 'model.pt')
    assert not torch.equal(
        tuned.mask_clip.new_q_proj[0].weight, start.mask_clip.new_q_proj[0].weight
    )
    assert torch.equal(
        tuned.proposer.decoder.class_embed.weight, start.proposer.decoder.class_embed.weight
    )

    # One step, then resume for the second: the same weights as two steps in a row.
    resumed = tmp_path / 'resumed'
    assert run_stage2(resumed, dataset_root, stage1_run, 'train.steps=1', 'eval.annotations=') == 0
    assert run_stage2(resumed, dataset_root, stage1_run) == 2  # refuses to start over
    assert cli.main(['stage2', '--out', str(resumed), '--resume', 'train.steps=2']) == 0
    assert [r['step'] for r in read_csv(resumed / 'metrics.csv')] == ['1', '2']
    again, _ = build_model(None, checkpoint=resumed / 'model.pt')
    for a, b in zip(tuned.mask_clip.parameters(), again.mask_clip.parameters(), strict=True):
        torch.testing.assert_close(a, b)

    # The same 2 images per step, in 2 micro-batches of 1: the same weights and losses.
    accumulated = tmp_path / 'accumulated'
    assert (
        run_stage2(
            accumulated,
            dataset_root,
            stage1_run,
            'train.steps=2',
            'train.grad_accum_steps=2',
            'eval.annotations=',
        )
        == 0
    )
    summed, _ = build_model(None, checkpoint=accumulated / 'model.pt')
    for a, b in zip(tuned.mask_clip.parameters(), summed.mask_clip.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    for straight_row, row in zip(
        read_csv(straight / 'metrics.csv'), read_csv(accumulated / 'metrics.csv'), strict=True
    ):
        for key in ('loss', 'grad_norm', 'assigned'):
            assert float(row[key]) == pytest.approx(float(straight_row[key]), rel=1e-4), key
