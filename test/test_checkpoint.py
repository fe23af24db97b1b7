"""Checkpoints of this project, CLIP weights from files, and the upstream conversion."""

from __future__ import annotations

import copy

import pytest
import torch
from upstream_keys import random_upstream_state_dict

from masqclip.checkpoint import (
    CheckpointError,
    convert_upstream_checkpoint,
    load_clip_weights,
    save_checkpoint,
)
from masqclip.factory import ModelConfigError, build_model, build_model_from_config
from masqclip.modeling.mask_clip import build_clip
from masqclip.modeling.proposer import convert_upstream_proposer_state_dict


def images(seed: int = 0, height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        for x, y in zip(a(images()), b(images()), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_checkpoint_round_trip_names_its_architecture(tiny_model, tmp_path):
    network, config = tiny_model
    path = tmp_path / 'model.pt'
    save_checkpoint(path, network, config, step=7)
    loaded, loaded_config = build_model(None, checkpoint=path)
    assert loaded_config == config
    assert_same_outputs(network, loaded)
    assert not (tmp_path / 'model.pt.tmp').exists()


def test_missing_corrupt_and_mismatched_checkpoints_say_what_to_do(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match='not found.*README'):
        build_model(None, checkpoint=tmp_path / 'absent.pt')
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'\x00garbage' * 100)
    with pytest.raises(CheckpointError, match='not a readable'):
        build_model(None, checkpoint=corrupt)
    network, config = tiny_model
    other = copy.deepcopy(config)
    other['proposer']['decoder']['num_queries'] = 12
    path = tmp_path / 'other.pt'
    save_checkpoint(path, build_model_from_config(other), other)
    with pytest.raises(CheckpointError, match='does not fit'):
        build_model('test_tiny', checkpoint=path)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelConfigError, match='test_tiny'):
        build_model('resnet_9000')


def test_clip_weights_from_a_file_load_into_both_towers(tmp_path):
    config = build_model('test_tiny')[1]
    torch.manual_seed(123)
    clip = build_clip(config['clip'])
    state_dict = clip.state_dict()
    state_dict['input_resolution'] = torch.tensor(64)  # OpenAI archive metadata is skipped
    path = tmp_path / 'clip.pt'
    torch.save(state_dict, path)
    network = build_model_from_config(config)
    load_clip_weights(network, path, config)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            network.mask_clip.encode_image(x), clip.encode_image(x, normalize=True)
        )
        tokens = network.text.tokenizer(['a red mug'])
        torch.testing.assert_close(network.text.clip.encode_text(tokens), clip.encode_text(tokens))
    torch.testing.assert_close(
        network.mask_clip.mask_embeddings.data, clip.visual.positional_embedding[0]
    )


def test_clip_weights_of_another_architecture_are_rejected(tmp_path):
    config = build_model('test_tiny')[1]
    other = copy.deepcopy(config['clip'])
    other['vision_cfg']['width'] = 32
    path = tmp_path / 'clip.pt'
    torch.save(build_clip(other).state_dict(), path)
    with pytest.raises(CheckpointError, match='do not fit'):
        load_clip_weights(build_model_from_config(config), path, config)


def upstream_masq_state_dict(config: dict, clip_visual: dict, seed: int) -> dict:
    """A whole upstream MasQ-Tuning state dict with upstream names at ``config``'s sizes."""
    upstream = random_upstream_state_dict(config['proposer'], seed)
    del upstream['masqclip.visual.proj'], upstream['masqclip.mask_embeddings']
    generator = torch.Generator().manual_seed(seed + 1)
    # OpenAI CLIP's visual names are open_clip's (method.md 5.3), under 'masqclip.visual.'.
    for key, value in clip_visual.items():
        upstream[f'masqclip.visual.{key}'] = value
    width = config['clip']['vision_cfg']['width']
    for layer in range(config['clip']['vision_cfg']['layers']):
        prefix = f'masqclip.visual.transformer.resblocks.{layer}.attn.new_q_proj.'
        upstream[prefix + 'weight'] = torch.randn(width, width, generator=generator) * 0.05
        upstream[prefix + 'bias'] = torch.randn(width, generator=generator) * 0.05
    upstream['masqclip.mask_embeddings'] = torch.randn(width, generator=generator)
    return upstream


def test_upstream_conversion_loads_strictly_and_matches_direct_placement(tiny_model):
    config = tiny_model[1]
    torch.manual_seed(5)
    clip = build_clip(config['clip'])
    clip_sd = clip.state_dict()
    visual = {k.removeprefix('visual.'): v for k, v in clip_sd.items() if k.startswith('visual.')}
    upstream = upstream_masq_state_dict(config, visual, seed=3)

    converted = build_model_from_config(config)
    converted.load_state_dict(convert_upstream_checkpoint(upstream, clip_sd), strict=True)

    # The same tensors placed module by module, without the conversion's renaming.
    direct = build_model_from_config(config)
    proposer_sd = {k: v for k, v in upstream.items() if not k.startswith('masqclip.')}
    direct.proposer.load_state_dict(convert_upstream_proposer_state_dict(proposer_sd))
    direct.mask_clip.visual.load_state_dict(visual)
    with torch.no_grad():
        for layer, q_proj in enumerate(direct.mask_clip.new_q_proj):
            prefix = f'masqclip.visual.transformer.resblocks.{layer}.attn.new_q_proj.'
            q_proj.weight.copy_(upstream[prefix + 'weight'])
            q_proj.bias.copy_(upstream[prefix + 'bias'])
        direct.mask_clip.mask_embeddings.copy_(upstream['masqclip.mask_embeddings'])
    direct.text.load_clip_state_dict(clip_sd)
    assert_same_outputs(converted.eval(), direct.eval())
    assert 'criterion.empty_weight' in upstream


def random_clip_file(config: dict, path, seed: int = 9):
    torch.manual_seed(seed)
    clip = build_clip(config['clip'])
    torch.save(clip.state_dict(), path)
    return clip


def test_clip_weights_and_q_proj_init_fill_a_proposer_only_checkpoint(tiny_model, tmp_path):
    """A stage-1 checkpoint holds the proposer: CLIP and the q-projection init fill the rest."""
    network, config = tiny_model
    checkpoint = tmp_path / 'stage1.pt'
    save_checkpoint(checkpoint, network, config, parts=('proposer.',))
    clip = random_clip_file(config, tmp_path / 'clip.pt')
    rebuilt, _ = build_model(
        None, checkpoint=checkpoint, clip_weights=tmp_path / 'clip.pt', q_proj_init='clip'
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.mask_clip.encode_image(x), clip.encode_image(x, normalize=True)
        )
    width = config['clip']['vision_cfg']['width']
    first_block = clip.visual.transformer.resblocks[0].attn.in_proj_weight[:width]
    torch.testing.assert_close(rebuilt.mask_clip.new_q_proj[0].weight.data, first_block)
    # mask_embeddings start at the loaded CLIP's CLS position embedding (the reference init).
    assert torch.equal(rebuilt.mask_clip.mask_embeddings, clip.visual.positional_embedding[0])
    for name, tensor in network.proposer.state_dict().items():  # the proposer is the checkpoint's
        torch.testing.assert_close(rebuilt.proposer.state_dict()[name], tensor)


def test_clip_weights_never_replace_what_a_checkpoint_stores(tiny_model, tmp_path):
    network, config = tiny_model
    tuned = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():  # tuned values, unlike any init
        tuned.mask_clip.mask_embeddings.copy_(
            torch.randn(tuned.mask_clip.mask_embeddings.shape, generator=generator)
        )
        for q_proj in tuned.mask_clip.new_q_proj:
            q_proj.weight.add_(torch.randn(q_proj.weight.shape, generator=generator))
            q_proj.bias.add_(1.0)
    checkpoint = tmp_path / 'model.pt'
    save_checkpoint(checkpoint, tuned, config)
    random_clip_file(config, tmp_path / 'clip.pt')
    for q_proj_init in ('random', 'clip'):
        rebuilt, _ = build_model(
            None, checkpoint=checkpoint, clip_weights=tmp_path / 'clip.pt', q_proj_init=q_proj_init
        )
        for name, tensor in tuned.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[name], tensor), (q_proj_init, name)


def test_a_checkpoint_without_the_proposer_is_refused(tiny_model, tmp_path):
    network, config = tiny_model
    checkpoint = tmp_path / 'clip_only.pt'
    save_checkpoint(checkpoint, network, config, parts=('mask_clip.', 'text.'))
    with pytest.raises(CheckpointError, match='does not fit'):
        build_model(None, checkpoint=checkpoint)


def test_half_precision_gzip_checkpoint_loads_into_float32(tiny_model, tmp_path):
    network, config = tiny_model
    plain, packed = tmp_path / 'model.pt', tmp_path / 'model.pt.gz'
    save_checkpoint(plain, network, config)
    save_checkpoint(packed, network, config, dtype=torch.float16)
    assert packed.stat().st_size < plain.stat().st_size / 2
    loaded, _ = build_model(None, checkpoint=packed)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        for x, y in zip(network(images()), loaded(images()), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0.05)
