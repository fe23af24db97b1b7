"""Contrastive CLIP pretraining on procedural scenes: the CLIP half of the demo model.

No CLIP weights can be downloaded here, so the demo model's CLIP is trained from scratch on
scenes from ``masqclip.data.synthetic``, generated on the fly (about 0.5 ms each at 64 px, so
no loader workers competing for the CPU). About half of the images hold a single object and
are captioned with its name alone, the form the vocabulary's raw class names take at test
time (method.md 1.6); the others carry the generator's caption, e.g. "red striped, blue
dotted on grass and sky", which also teaches the stuff names. The loss is CLIP's symmetric
InfoNCE with its learnable temperature; identical captions in a batch count as positives of
one another (see ``contrastive_loss``). A share of the images are camera views
(``CameraViews``): frames like the ROS node's, as the model's CLIP receives them. Settings:
``masqclip/recipes/demo_clip.yaml``; what was measured with them: design/demo-notes.md and
docs/demo_model.md.

Files in the run folder: ``config.yaml``, ``last.pt`` (resumable), ``metrics.csv``,
``eval.csv`` (zero-shot accuracy), ``curves.png`` (``run.py``); the weights, a plain open_clip
state dict that ``build_model(name, clip_weights=PATH)`` loads, go to ``weights_file``
(default ``<run folder>/clip.pt``). It trains in one process (not under torchrun).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor

from masqclip.checkpoint import cast_floating, write_atomically
from masqclip.data.synthetic import CATEGORIES, STUFF_NAMES, THING_NAMES, SceneCfg, generate_scene
from masqclip.factory import get_model_config
from masqclip.inference.transforms import ResizeSpec
from masqclip.modeling.mask_clip import build_clip
from masqclip.modeling.masqclip import CLIP_MEAN, CLIP_STD
from masqclip.training import distributed, engine
from masqclip.training.data import camera_frame, camera_input, clip_view
from masqclip.training.recipe import RecipeError, require
from masqclip.training.run import Run, resolve_recipe, setup_process

logger = logging.getLogger('masqclip')

SECTIONS = ('model', 'data', 'train', 'eval')
DEFAULT_RECIPE = 'demo_clip'
WEIGHTS_FILE = 'clip.pt'
# CLIP caps the logit scale (inverse temperature) at 100 so the logits cannot blow up.
MAX_LOGIT_SCALE = math.log(100.0)
# The evaluation scenes come from their own random stream, never a training step's.
_EVAL_STREAM = 2**31 - 1


@dataclass
class CaptionBatch:
    """Images with their captions.

    :param images: float [B, 3, S, S], CLIP-normalised.
    :param tokens: int64 [B, context_length] token ids of the captions.
    :param caption_ids: int64 [B]; equal values mark identical captions.
    """

    images: Tensor
    tokens: Tensor
    caption_ids: Tensor

    def to(self, device: torch.device) -> CaptionBatch:
        """The batch on ``device``."""
        return CaptionBatch(
            self.images.to(device), self.tokens.to(device), self.caption_ids.to(device)
        )


@dataclass(frozen=True)
class ZeroShotSet:
    """Held-out images for a zero-shot classification test.

    :param images: float [N, 3, S, S], CLIP-normalised.
    :param labels: int64 [N], indices into ``class_names``.
    :param class_names: the vocabulary, used raw (no prompt template).
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class CameraViews:
    """Camera frames among the training images, seen as the model's CLIP sees them.

    A 640x480 frame reaches CLIP as the padded network input squashed to CLIP's square
    (``MasQCLIP.clip_input``; the demo model: an 85 x 64 frame on a black 96 x 64 canvas,
    squashed to 64 x 64). A CLIP trained on square scenes alone misreads fill patterns
    squashed so (docs/demo_model.md). The frames come from ``data.camera_frame``.

    :param fraction: the share of the training images that are camera views.
    :param spec: how a camera frame maps onto the network input (``data.camera_input``).
    """

    fraction: float
    spec: ResizeSpec


def normalise(images: Tensor) -> Tensor:
    """CLIP's normalisation of float [N, 3, S, S] RGB in 0-1, as ``MasQCLIP.clip_input``."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def images_to_tensor(images: Sequence[np.ndarray]) -> Tensor:
    """Stack uint8 RGB images into CLIP's input, normalised as ``MasQCLIP.clip_input`` does.

    :param images: N uint8 (S, S, 3) RGB arrays.
    :return: float [N, 3, S, S].
    """
    return normalise(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0)


def camera_view(frame: np.ndarray, spec: ResizeSpec, size: int) -> Tensor:
    """A camera frame as CLIP's normalised input (``data.clip_view``, then ``normalise``).

    :param frame: uint8 (h, w, 3) RGB, at the network input's size ``spec.resized``.
    :param size: the side of CLIP's input.
    :return: float [3, size, size].
    """
    return normalise(clip_view(frame, spec, size)[None] / 255.0)[0]


def caption_scene(
    rng: np.random.Generator,
    image_size: int,
    single_fraction: float,
    max_objects: int,
    camera: CameraViews | None = None,
) -> tuple[Tensor, str]:
    """Draw one training image and its caption.

    :param rng: the random generator.
    :param image_size: the side of CLIP's square input.
    :param single_fraction: probability of a single-object image captioned with the object's
        name alone; otherwise 1 to ``max_objects`` objects with the generator's caption.
    :param max_objects: most objects in a multi-object image.
    :param camera: with probability ``camera.fraction`` the image is a camera view (whose
        objects may all be out of view: the caption then names the stuff); None = never.
    :return: float [3, S, S] CLIP's (normalised) input and its caption.
    """
    single = rng.random() < single_fraction
    objects = 1 if single else max_objects
    if camera is not None and rng.random() < camera.fraction:
        scene = camera_frame(rng, camera.spec.resized, 1, objects)
        image = camera_view(scene.image, camera.spec, image_size)
    else:
        scene = generate_scene(rng, SceneCfg(image_size, image_size, 1, objects))
        image = images_to_tensor([scene.image])[0]
    things = [CATEGORIES[s.category_id - 1].name for s in scene.segments if s.is_thing]
    if single and len(things) == 1:
        return image, things[0]
    return image, scene.caption


def caption_batches(
    tokenizer: Callable[[list[str]], Tensor],
    batch_size: int,
    image_size: int,
    single_fraction: float,
    max_objects: int,
    seed: int,
    start_step: int,
    camera: CameraViews | None = None,
) -> Iterator[CaptionBatch]:
    """An endless stream of captioned image batches, starting at ``start_step``.

    Step k's batch is drawn from ``np.random.default_rng([seed, k])``, so a resumed run sees
    exactly the batches an uninterrupted one would.

    :param tokenizer: list of N captions -> int64 [N, context_length].
    :return: iterator of batches (see ``caption_scene`` for the other parameters).
    """
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        drawn = [
            caption_scene(rng, image_size, single_fraction, max_objects, camera)
            for _ in range(batch_size)
        ]
        captions = [caption for _, caption in drawn]
        ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
        yield CaptionBatch(
            torch.stack([image for image, _ in drawn]),
            tokenizer(captions),
            torch.tensor([ids[c] for c in captions]),
        )
        step += 1


def contrastive_loss(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor, caption_ids: Tensor
) -> Tensor:
    """CLIP's symmetric InfoNCE, with identical captions as positives of one another.

    A batch of 25 classes holds each single-object name a few times; plain InfoNCE would ask
    an image to prefer its own copy of "red striped" over another, identical one, which is
    pure noise. The target of each row is therefore uniform over the same-caption entries
    (one-hot when captions are unique, i.e. plain CLIP).

    :param image_features: float [B, D], L2-normalised.
    :param text_features: float [B, D], L2-normalised.
    :param logit_scale: float scalar, the log of the temperature's inverse.
    :param caption_ids: int64 [B]; equal values mark identical captions.
    :return: float scalar, the mean of the image->text and text->image cross-entropies.
    """
    logits = logit_scale.exp() * image_features.float() @ text_features.float().t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def make_zero_shot_sets(
    image_size: int,
    num_things: int,
    num_stuff: int,
    seed: int,
    num_camera: int = 0,
    camera: ResizeSpec | None = None,
) -> dict[str, ZeroShotSet]:
    """Held-out images: single objects among the 25 thing names, single stuff among 4, and
    camera views of a single object (partly out of view or not) among the 25.

    :param image_size: the side of the square images.
    :param num_things: scenes with exactly one object; 0 = none.
    :param num_stuff: scenes of one stuff region and no object; 0 = none.
    :param seed: the run's seed (the images come from a stream training never draws from).
    :param num_camera: camera views with exactly one object in view; 0 = none.
    :param camera: how a camera frame maps onto the network input (needed for camera views).
    :return: ``{'things': ..., 'stuff': ..., 'camera': ...}``, the sets asked for.
    """
    rng = np.random.default_rng([seed, _EVAL_STREAM])
    sets: dict[str, ZeroShotSet] = {}
    plans = (
        ('things', num_things, SceneCfg(image_size, image_size, 1, 1), THING_NAMES),
        ('stuff', num_stuff, SceneCfg(image_size, image_size, 0, 0, 1, 1), STUFF_NAMES),
        ('camera', num_camera, camera, THING_NAMES),
    )
    for name, count, cfg, names in plans:
        images, labels = [], []
        while len(images) < count:
            if name == 'camera':
                scene = camera_frame(rng, cfg.resized, 1, 1)
                image = camera_view(scene.image, cfg, image_size)
            else:
                scene = generate_scene(rng, cfg)
                image = images_to_tensor([scene.image])[0]
            wanted = [s for s in scene.segments if s.is_thing == (name != 'stuff')]
            if len(wanted) != 1:
                continue
            images.append(image)
            labels.append(names.index(CATEGORIES[wanted[0].category_id - 1].name))
        if count:
            sets[name] = ZeroShotSet(torch.stack(images), torch.tensor(labels), names)
    return sets


@torch.no_grad()
def zero_shot_accuracy(
    encode_image: Callable[[Tensor], Tensor],
    encode_text: Callable[[list[str]], Tensor],
    data: ZeroShotSet,
    batch_size: int = 256,
) -> float:
    """Fraction of images whose nearest class-name embedding is their own class.

    :param encode_image: float [n, 3, S, S] -> float [n, D] image features.
    :param encode_text: N names -> float [N, D] text features.
    :param data: the images, labels and class names.
    :param batch_size: images per forward pass.
    :return: accuracy in [0, 1].
    """
    text = F.normalize(encode_text(list(data.class_names)).float(), dim=-1)
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        image = F.normalize(encode_image(data.images[i : i + batch_size]).float(), dim=-1)
        predicted = (image @ text.t()).argmax(1).cpu()
        correct += int((predicted == data.labels[i : i + batch_size]).sum())
    return correct / max(1, len(data.labels))


def parameter_groups(clip: open_clip.CLIP) -> list[dict[str, Any]]:
    """Weight decay on matrices only: gains, biases, embeddings' 1-D parts and the logit scale
    are left undecayed, as CLIP does (decay would pull the logit scale towards 1)."""
    decay, no_decay = [], []
    for name, param in clip.named_parameters():
        if param.ndim < 2 or 'logit_scale' in name or 'ln_' in name or name.endswith('bias'):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}]


def make_optimizer(clip: open_clip.CLIP, train: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups`` with the recipe's rate, betas, eps and decay; each group
    records ``base_lr`` for the engine's schedule."""
    lr = float(train['lr'])
    groups = [dict(g, lr=lr, base_lr=lr) for g in parameter_groups(clip)]
    betas = tuple(float(b) for b in train['betas'])
    if len(betas) != 2:
        raise RecipeError(f'train.betas must be two numbers, got {train["betas"]}')
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=betas,
        eps=float(train['eps']),
        weight_decay=float(train['weight_decay']),
    )


def save_clip_weights(path: Path, clip: open_clip.CLIP, dtype: str) -> None:
    """Write the open_clip state dict (atomically), optionally as float16 to halve the file.

    :param dtype: 'float32' or 'float16'; loading casts back to the model's dtype.
    """
    if dtype not in ('float32', 'float16'):
        raise RecipeError(f"weights_dtype must be 'float32' or 'float16', got {dtype!r}")
    write_atomically(path, cast_floating(clip.state_dict(), getattr(torch, dtype)))


def train_clip(recipe: dict, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) contrastive CLIP pretraining on procedural scenes.

    :param recipe: the resolved recipe (see ``masqclip/recipes/demo_clip.yaml``).
    :param run_dir: the run folder.
    :param resume: continue from ``run_dir/last.pt``.
    :return: the path of the CLIP weights (an open_clip state dict).
    """
    require(recipe, *SECTIONS)
    model_cfg, data, train, eval_cfg = (recipe[k] for k in SECTIONS)
    for key in ('single_object_fraction', 'camera_fraction'):
        if not 0.0 <= float(data[key]) <= 1.0:
            raise RecipeError(f'data.{key} must be between 0 and 1')
    if distributed.launched():
        raise RuntimeError('CLIP pretraining runs in one process: start it without torchrun')
    device = setup_process(train)
    config = get_model_config(model_cfg['name'])
    seed = int(train['seed'])
    torch.manual_seed(seed)
    clip = build_clip(config['clip'])
    init_scale = float(train['init_logit_scale'])
    if not 1.0 <= init_scale <= 100.0:
        raise RecipeError('train.init_logit_scale must be between 1 and 100 (CLIP: 14.3)')
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(init_scale))
    image_size = int(clip.visual.image_size[0])
    tokenizer = SimpleTokenizer(context_length=clip.context_length)
    camera = CameraViews(float(data['camera_fraction']), camera_input(config))
    eval_sets = make_zero_shot_sets(
        image_size,
        int(eval_cfg['num_things']),
        int(eval_cfg['num_stuff']),
        seed,
        int(eval_cfg['num_camera']),
        camera.spec,
    )

    def encode_text(names: list[str]) -> Tensor:
        return clip.encode_text(tokenizer(names).to(device))

    def evaluate_now() -> dict[str, float]:
        was_training = clip.training
        clip.eval()
        metrics = {
            f'zero_shot_{name}': zero_shot_accuracy(
                lambda x: clip.encode_image(x.to(device)), encode_text, data
            )
            for name, data in eval_sets.items()
        }
        clip.train(was_training)
        return metrics

    run = Run(
        recipe,
        run_dir,
        resume,
        network=clip,
        config=config,
        phases=[engine.Phase('clip', int(train['steps']), train)],
        device=device,
        evaluate=evaluate_now if eval_sets else None,
    )
    clip.to(device).train()
    batches = caption_batches(
        tokenizer,
        int(train['batch_size']),
        image_size,
        float(data['single_object_fraction']),
        int(data['max_objects']),
        seed,
        run.steps_done(0),
        camera,
    )

    def step_fn(batch: CaptionBatch) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        image = clip.encode_image(batch.images, normalize=True)
        text = clip.encode_text(batch.tokens, normalize=True)
        loss = contrastive_loss(image, text, clip.logit_scale, batch.caption_ids)
        return loss, {
            'loss': float(loss.detach()),
            'logit_scale': float(clip.logit_scale.detach().exp()),
        }

    run.fit(0, batches, step_fn, make_optimizer(clip, train))
    with torch.no_grad():
        clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    weights = (
        Path(recipe['weights_file']) if recipe.get('weights_file') else (run_dir / WEIGHTS_FILE)
    )
    save_clip_weights(weights, clip, str(recipe['weights_dtype']))
    run.finish()
    logger.info('CLIP pretraining done: %s', weights)
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masqclip train-clip``: ``[--recipe R] [--out DIR] [--resume] [key=value]``."""
    from masqclip.training.cli import add_stage_arguments

    add_stage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Pretrain the demo CLIP contrastively on procedural scenes."""
    recipe, run_dir = resolve_recipe(
        args.recipe or DEFAULT_RECIPE, args.overrides, args.out, args.resume
    )
    if recipe.get('stage') != 'clip':
        raise RecipeError(
            f'this recipe is for {recipe.get("stage")!r}, not CLIP pretraining: '
            f'use --recipe {DEFAULT_RECIPE} or a copy of it'
        )
    weights = train_clip(recipe, run_dir, resume=args.resume)
    print(f'CLIP pretraining done: weights in {weights}, metrics and curves in {run_dir}')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``masqclip train-clip`` as a function: returns the exit status."""
    from masqclip.training.cli import run_command

    parser = argparse.ArgumentParser(
        prog='masqclip train-clip', description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run_command(parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
