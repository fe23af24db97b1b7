"""Contrastive CLIP pretraining on procedural scenes (masqclip/training/clip_pretrain.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from masqclip.checkpoint import load_clip_weights
from masqclip.data.synthetic import THING_NAMES
from masqclip.factory import build_model_from_config, get_model_config
from masqclip.training.clip_pretrain import (
    ZeroShotSet,
    caption_batches,
    contrastive_loss,
    main,
    zero_shot_accuracy,
)

TINY = [
    'model.name=test_tiny',
    'train.batch_size=8',
    'train.log_every=1',
    'train.device=cpu',
    'eval.every=1',
    'eval.num_things=6',
    'eval.num_stuff=4',
    'train.checkpoint_every=0',
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline='') as f:
        return list(csv.DictReader(f))


def test_two_steps_give_loadable_clip_weights_and_logs(tmp_path: Path) -> None:
    out = tmp_path / 'run'
    assert main(['--out', str(out), 'train.steps=2', *TINY]) == 0
    rows = read_csv(out / 'metrics.csv')
    assert [r['step'] for r in rows] == ['1', '2']
    assert all(math.isfinite(float(r['loss'])) for r in rows)
    evals = read_csv(out / 'eval.csv')
    assert [r['global_step'] for r in evals] == ['1', '2']  # in the loop, then the final
    assert all(0 <= float(r['zero_shot_things']) <= 1 for r in evals)
    assert (out / 'curves.png').is_file() and (out / 'last.pt').is_file()

    state = torch.load(out / 'clip.pt', weights_only=True)
    assert state['visual.proj'].dtype == torch.float16  # the recipe's weights_dtype
    config = get_model_config('test_tiny')
    network = build_model_from_config(config)
    load_clip_weights(network, out / 'clip.pt', config)
    assert torch.equal(network.mask_clip.visual.proj, state['visual.proj'].float())
    assert torch.equal(
        network.text.clip.token_embedding.weight, state['token_embedding.weight'].float()
    )
    assert float(state['logit_scale']) <= math.log(100) + 1e-3


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    fp32 = ['train.precision=fp32', 'weights_dtype=float32', 'eval.every=0']
    assert main(['--out', str(straight), 'train.steps=3', *TINY, *fp32]) == 0
    assert main(['--out', str(resumed), 'train.steps=2', *TINY, *fp32]) == 0
    assert main(['--out', str(resumed), 'train.steps=2', *TINY, *fp32]) == 2  # no overwrite
    assert main(['--out', str(resumed), '--resume', 'train.steps=3']) == 0
    assert [r['step'] for r in read_csv(resumed / 'metrics.csv')] == ['1', '2', '3']
    a = torch.load(straight / 'clip.pt', weights_only=True)
    b = torch.load(resumed / 'clip.pt', weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_bad_setting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    out = str(tmp_path / 'run')
    assert main(['--out', out, 'data.single_object_fraction=1.5', *TINY]) == 2
    assert main(['--out', out, 'train.init_logit_scale=500', *TINY]) == 2
    assert main(['--out', out, 'train.stepz=2']) == 2


def test_zero_shot_accuracy_on_hand_made_features() -> None:
    # Image features are the pixel at (0, 0); text features one-hot per class name.
    names = ('a', 'b', 'c')
    images = torch.zeros(5, 3, 2, 2)
    for i, c in enumerate([0, 1, 2, 2, 0]):
        images[i, c, 0, 0] = 1.0 + i  # scale does not matter after normalisation
    data = ZeroShotSet(images, torch.tensor([0, 1, 2, 1, 1]), names)
    calls = []

    def encode_text(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        return torch.eye(3)[[names.index(t) for t in texts]]

    accuracy = zero_shot_accuracy(lambda x: x[:, :, 0, 0], encode_text, data, batch_size=2)
    assert accuracy == 3 / 5
    assert calls == [['a', 'b', 'c']]  # raw names, no template


def test_contrastive_loss_matches_the_soft_target_formula() -> None:
    torch.manual_seed(0)
    image = F.normalize(torch.randn(4, 8), dim=-1)
    text = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(2.0)
    ids = torch.tensor([0, 1, 0, 2])
    logits = scale.exp() * image @ text.t()
    expected = 0.0
    for matrix in (logits, logits.t()):
        for i in range(4):
            positives = [j for j in range(4) if ids[j] == ids[i]]
            log_p = matrix[i].log_softmax(0)
            expected += -sum(log_p[j] for j in positives) / len(positives) / 8
    torch.testing.assert_close(contrastive_loss(image, text, scale, ids), expected)
    # Unique captions: plain CLIP, near zero for aligned pairs at CLIP's largest logit scale.
    eye = torch.eye(4)
    assert contrastive_loss(eye, eye, torch.tensor(math.log(100)), torch.arange(4)) < 1e-3


def test_caption_batches_are_reproducible_and_name_single_objects() -> None:
    seen: list[list[str]] = []

    def tokenizer(captions: list[str]) -> torch.Tensor:
        seen.append(captions)
        return torch.zeros(len(captions), 4, dtype=torch.long)

    stream = caption_batches(tokenizer, 16, 32, 1.0, 4, seed=3, start_step=0)
    first, second = next(stream), next(stream)
    again = next(caption_batches(tokenizer, 16, 32, 1.0, 4, seed=3, start_step=1))
    assert torch.equal(second.images, again.images) and seen[1] == seen[2]
    assert not torch.equal(first.images, second.images)
    assert first.images.shape == (16, 3, 32, 32)
    # All single-object: each caption is the object's class name alone.
    assert all(caption in THING_NAMES for caption in seen[0])
    ids = first.caption_ids.tolist()
    for i in range(16):
        for j in range(16):
            assert (ids[i] == ids[j]) == (seen[0][i] == seen[0][j])
    # Multi-object scenes carry the generator's caption ("<things> on <stuff>").
    mixed = caption_batches(tokenizer, 16, 32, 0.0, 4, seed=3, start_step=0)
    next(mixed)
    assert all(' on ' in caption for caption in seen[-1])
