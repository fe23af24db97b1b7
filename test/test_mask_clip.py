"""Tests of CLIP with mask class tokens (masqclip/modeling/mask_clip.py) at test_tiny sizes."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

import masqclip
from masqclip.modeling.mask_clip import MaskCLIPVisual, attention_blocked, build_clip

TINY = json.loads(
    (Path(masqclip.__file__).parent / 'model_configs' / 'test_tiny.json').read_text()
)['clip']
SIZE = TINY['vision_cfg']['image_size']
PATCH = TINY['vision_cfg']['patch_size']
GRID = SIZE // PATCH


def tiny_clip(seed: int = 0, **vision_overrides):
    cfg = copy.deepcopy(TINY)
    cfg['vision_cfg'].update(vision_overrides)
    torch.manual_seed(seed)
    return build_clip(cfg).eval()


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def random_masks(batch: int, queries: int, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, queries, GRID * 2, GRID * 2, generator=gen)


def open_patches(blocked: torch.Tensor) -> list[int]:
    """Indices of the open patch columns (CLS excluded), in 0..P-1."""
    assert not blocked[0], 'the CLS column must never be blocked'
    return (~blocked[1:]).nonzero().flatten().tolist()


# --- build_clip -------------------------------------------------------------------------------


def test_build_clip_uses_quick_gelu_and_config_sizes():
    clip = tiny_clip()
    blocks = [*clip.visual.transformer.resblocks, *clip.transformer.resblocks]
    assert len(clip.visual.transformer.resblocks) == TINY['vision_cfg']['layers']
    assert len(clip.transformer.resblocks) == TINY['text_cfg']['layers']
    assert all(isinstance(blk.mlp.gelu, QuickGELU) for blk in blocks)
    assert clip.visual.proj.shape == (TINY['vision_cfg']['width'], TINY['embed_dim'])
    assert clip.context_length == TINY['text_cfg']['context_length']


def test_build_clip_ignores_open_clip_name():
    clip = build_clip({**TINY, 'open_clip_name': 'ViT-L-14-336'})
    assert clip.visual.proj.shape[1] == TINY['embed_dim']


@pytest.mark.parametrize(
    'cfg',
    [
        {k: v for k, v in TINY.items() if k != 'text_cfg'},
        {**TINY, 'bogus': 1},
        {**TINY, 'vision_cfg': {**TINY['vision_cfg'], 'widht': 64}},
        {**TINY, 'vision_cfg': {**TINY['vision_cfg'], 'layers': [1, 1, 1, 1]}},
    ],
    ids=['missing-key', 'unknown-key', 'unknown-vision-field', 'resnet-tower'],
)
def test_build_clip_rejects_bad_configs(cfg):
    with pytest.raises(ValueError):
        build_clip(cfg)


# --- attention_blocked ------------------------------------------------------------------------


def test_blocked_mask_covering_exactly_one_patch():
    logits = -torch.ones(1, 1, SIZE, SIZE)
    logits[..., 1 * PATCH : 2 * PATCH, 2 * PATCH : 3 * PATCH] = 1.0  # row 1, column 2
    blocked = attention_blocked(logits, SIZE, PATCH)
    assert blocked.shape == (1, 1, 1 + GRID * GRID) and blocked.dtype == torch.bool
    assert open_patches(blocked[0, 0]) == [1 * GRID + 2]  # row-major, as CLIP's tokens


def test_blocked_single_positive_pixel_opens_its_patch():
    logits = -torch.ones(1, 1, SIZE, SIZE)
    logits[..., 2 * PATCH + 5, PATCH - 1] = 0.1  # one pixel at the last column of patch (2, 0)
    assert open_patches(attention_blocked(logits, SIZE, PATCH)[0, 0]) == [2 * GRID]


def test_blocked_empty_mask_leaves_only_cls_open():
    blocked = attention_blocked(-torch.ones(2, 3, 8, 8), SIZE, PATCH)
    assert not blocked[..., 0].any()
    assert blocked[..., 1:].all()


def test_blocked_low_res_mask_is_resized_bilinearly():
    # A 2x2 mask: bilinear upsampling spreads the strong top-left cell past the half-way line
    # where nearest-neighbour resizing would stop (worked out by hand for align_corners False).
    logits = torch.tensor([[3.0, -1.0], [-1.0, -1.0]]).view(1, 1, 2, 2)
    assert GRID == 4, 'the expected patches below assume a 4x4 patch grid'
    expected = [0, 1, 2, 4, 5, 6, 8, 9]
    assert open_patches(attention_blocked(logits, SIZE, PATCH)[0, 0]) == expected


def test_blocked_keeps_batch_and_query_order():
    logits = -torch.ones(2, 3, SIZE, SIZE)
    logits[1, 2, :PATCH, :PATCH] = 1.0
    blocked = attention_blocked(logits, SIZE, PATCH)
    assert open_patches(blocked[1, 2]) == [0]
    assert blocked[0, :, 1:].all() and blocked[1, :2, 1:].all()


def test_blocked_rejects_size_not_a_multiple_of_patch():
    with pytest.raises(ValueError, match='multiple'):
        attention_blocked(torch.zeros(1, 1, 4, 4), 60, PATCH)


# --- MaskCLIPVisual ---------------------------------------------------------------------------


def test_image_stream_equals_open_clip():
    clip = tiny_clip(output_tokens=True)
    x = images()
    with torch.no_grad():
        pooled, tokens = clip.visual(x)
    model = MaskCLIPVisual(clip.visual)
    _, image_embedding, patch_tokens = model.forward_features(x, random_masks(2, 5))
    torch.testing.assert_close(image_embedding, F.normalize(pooled, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(patch_tokens, tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_image(x), image_embedding, atol=1e-6, rtol=0)


def test_all_visible_mask_with_clip_queries_reproduces_cls():
    clip = tiny_clip()
    x = images()
    with torch.no_grad():
        cls = clip.encode_image(x, normalize=True)
    model = MaskCLIPVisual(clip.visual)
    visible = torch.ones(2, 4, 3, 3)
    untrained = model(x, visible)
    # With the reference's random new_q_proj the tokens must differ from CLS (trap 1) ...
    assert (untrained - cls[:, None]).abs().max() > 1e-3
    model.copy_clip_q_proj()
    # ... and with CLIP's own queries they are MaskCLIP's mask tokens, i.e. CLS itself.
    out = model(x, visible)
    assert out.shape == (2, 4, TINY['embed_dim'])
    torch.testing.assert_close(out, cls[:, None].expand_as(out), atol=1e-5, rtol=0)


def test_empty_mask_attends_to_cls_only():
    model = MaskCLIPVisual(tiny_clip().visual)
    x = images()
    empty = -torch.ones(2, 3, 4, 4)
    random_q = model(x, empty)
    assert torch.isfinite(random_q).all()
    torch.testing.assert_close(random_q, random_q[:, :1].expand_as(random_q), atol=1e-6, rtol=0)
    # A single open key gets softmax weight 1 whatever the query: the result cannot depend on
    # new_q_proj.
    model.copy_clip_q_proj()
    torch.testing.assert_close(model(x, empty), random_q, atol=1e-6, rtol=0)


def test_mask_tokens_do_not_see_each_other():
    model = MaskCLIPVisual(tiny_clip().visual)
    x = images()
    masks = random_masks(2, 3)
    changed = masks.clone()
    changed[:, 1] = -changed[:, 1]
    before, after = model(x, masks), model(x, changed)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]], atol=1e-6, rtol=0)
    assert (after[:, 1] - before[:, 1]).abs().max() > 1e-3
    torch.testing.assert_close(model(x, masks[:, [2]]), before[:, [2]], atol=1e-6, rtol=0)


def reference_masq_clip(model: MaskCLIPVisual, x: torch.Tensor, masks: torch.Tensor):
    """MasQCLIP written as upstream does: one sequence [Q mask tokens, CLS, patches] and one
    attention mask, mask-token queries from new_q_proj, plain softmax(q k^T / sqrt(d) + bias)."""
    visual = model.visual
    q_count = masks.shape[1]
    blocked = attention_blocked(masks, SIZE, PATCH)
    tokens = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    image = torch.cat([cls, tokens], dim=1) + visual.positional_embedding
    mask_tokens = (visual.class_embedding + model.mask_embeddings).expand(x.shape[0], q_count, -1)
    seq = visual.ln_pre(torch.cat([mask_tokens, image], dim=1))
    length = seq.shape[1]
    bias = torch.zeros(x.shape[0], length, length)
    bias[:, :, :q_count] = float('-inf')  # nobody attends to mask tokens
    bias[:, :q_count, q_count:] = torch.where(blocked, float('-inf'), 0.0)
    heads, width = model.num_heads, seq.shape[-1]
    for blk, q_proj in zip(visual.transformer.resblocks, model.new_q_proj, strict=True):
        h = blk.ln_1(seq)
        q, k, v = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).split(width, -1)
        q = torch.cat([q_proj(h[:, :q_count]), q[:, q_count:]], dim=1)
        q, k, v = (t.view(x.shape[0], length, heads, -1).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / (width // heads) ** 0.5 + bias[:, None]
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], length, width)
        seq = seq + blk.attn.out_proj(a)
        seq = seq + blk.mlp(blk.ln_2(seq))
    out = visual.ln_post(seq) @ visual.proj
    return F.normalize(out[:, :q_count], dim=-1), F.normalize(out[:, q_count], dim=-1)


def test_matches_single_sequence_reference():
    model = MaskCLIPVisual(tiny_clip().visual)
    with torch.no_grad():
        model.mask_embeddings.add_(0.1 * torch.randn(model.mask_embeddings.shape))
    x, masks = images(), random_masks(2, 6)
    expected_masks, expected_cls = reference_masq_clip(model, x, masks)
    out_masks, out_cls, _ = model.forward_features(x, masks)
    torch.testing.assert_close(out_masks, expected_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_cls, expected_cls, atol=1e-5, rtol=0)


def test_gradients_reach_only_new_q_proj_and_mask_embeddings():
    model = MaskCLIPVisual(tiny_clip().visual)
    model.train()
    assert not any(p.requires_grad for p in model.visual.parameters())
    out = model(images(), random_masks(2, 4))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    expected = {'mask_embeddings'} | {
        f'new_q_proj.{i}.{w}' for i in range(len(model.new_q_proj)) for w in ('weight', 'bias')
    }
    assert trained == expected
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in expected)


def test_clip_stream_builds_no_graph_even_if_unfrozen():
    model = MaskCLIPVisual(tiny_clip().visual)
    model.visual.requires_grad_(True)
    _, image_embedding, patch_tokens = model.forward_features(images(), random_masks(2, 2))
    assert image_embedding.grad_fn is None and patch_tokens.grad_fn is None


def test_state_dict_keys_and_clip_weight_loading():
    model = MaskCLIPVisual(tiny_clip(seed=0).visual)
    keys = set(model.state_dict())
    layers = TINY['vision_cfg']['layers']
    assert (
        'mask_embeddings' in keys and 'visual.transformer.resblocks.0.attn.in_proj_weight' in keys
    )
    assert {k for k in keys if k.startswith('new_q_proj.')} == {
        f'new_q_proj.{i}.{w}' for i in range(layers) for w in ('weight', 'bias')
    }
    other = tiny_clip(seed=5)
    model.load_clip_state_dict(other.state_dict())
    torch.testing.assert_close(model.mask_embeddings.data, other.visual.positional_embedding[0])
    x = images()
    with torch.no_grad():
        expected = other.encode_image(x, normalize=True)
    torch.testing.assert_close(model.encode_image(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='visual'):
        model.load_clip_state_dict({'logit_scale': torch.zeros(())})


def test_mask_embeddings_start_at_cls_position_and_reset():
    model = MaskCLIPVisual(tiny_clip().visual)
    cls_position = model.visual.positional_embedding[0]
    torch.testing.assert_close(model.mask_embeddings.data, cls_position)
    with torch.no_grad():
        model.mask_embeddings.zero_()
    model.reset_mask_embeddings()
    torch.testing.assert_close(model.mask_embeddings.data, cls_position)


@pytest.mark.parametrize(
    'overrides',
    [{'attentional_pool': True}, {'pool_type': 'avg'}, {'qk_norm': True}, {'patch_dropout': 0.5}],
    ids=['attentional-pool', 'avg-pool', 'custom-block', 'patch-dropout'],
)
def test_unsupported_towers_are_rejected(overrides):
    with pytest.raises(ValueError, match='MaskCLIPVisual cannot run'):
        MaskCLIPVisual(tiny_clip(**overrides).visual)


def test_wrong_image_size_is_rejected():
    model = MaskCLIPVisual(tiny_clip().visual)
    with pytest.raises(ValueError, match='resize'):
        model(torch.zeros(1, 3, SIZE + PATCH, SIZE), torch.zeros(1, 1, 4, 4))
