"""Upstream MasQCLIP (detectron2) checkpoint key names and shapes at any config's sizes.

Written from the upstream layout (method.md 5.2), independently of the conversion code, so
tests can check that conversion against names it did not generate.
"""

import torch
from torch import Tensor


def upstream_proposer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Upstream detectron2 MasQCLIP key names and shapes, written from the upstream layout."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_frozen_bn(prefix: str, out_c: int, in_c: int, k: int) -> None:
        shapes[f'{prefix}.weight'] = (out_c, in_c, k, k)
        for field in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.norm.{field}'] = (out_c,)

    bb, pd, dec = cfg['backbone'], cfg['pixel_decoder'], cfg['decoder']
    bottleneck = bb['block'] == 'bottleneck'
    expansion = 4 if bottleneck else 1
    conv_frozen_bn('backbone.stem.conv1', 64, 3, 7)
    in_c = 64
    res_channels = []
    for stage, n_blocks in enumerate(bb['layers']):
        width = 64 * 2**stage
        out_c = width * expansion
        for i in range(n_blocks):
            p = f'backbone.res{stage + 2}.{i}'
            if bottleneck:
                conv_frozen_bn(f'{p}.conv1', width, in_c, 1)
                conv_frozen_bn(f'{p}.conv2', width, width, 3)
                conv_frozen_bn(f'{p}.conv3', out_c, width, 1)
            else:
                conv_frozen_bn(f'{p}.conv1', out_c, in_c, 3)
                conv_frozen_bn(f'{p}.conv2', out_c, out_c, 3)
            if in_c != out_c:
                conv_frozen_bn(f'{p}.shortcut', out_c, in_c, 1)
            in_c = out_c
        res_channels.append(out_c)

    c, m = pd['conv_dim'], pd['mask_dim']
    heads, points, ffn = pd['num_heads'], pd['num_points'], pd['dim_feedforward']
    p = 'sem_seg_head.pixel_decoder.'
    for i, ch in enumerate(reversed(res_channels[1:])):
        shapes.update(
            {
                f'{p}input_proj.{i}.0.weight': (c, ch, 1, 1),
                f'{p}input_proj.{i}.0.bias': (c,),
                f'{p}input_proj.{i}.1.weight': (c,),
                f'{p}input_proj.{i}.1.bias': (c,),
            }
        )
    shapes[f'{p}transformer.level_embed'] = (3, c)
    for layer in range(pd['num_encoder_layers']):
        q = f'{p}transformer.encoder.layers.{layer}.'
        for name, out_f, in_f in (
            ('self_attn.sampling_offsets', heads * 3 * points * 2, c),
            ('self_attn.attention_weights', heads * 3 * points, c),
            ('self_attn.value_proj', c, c),
            ('self_attn.output_proj', c, c),
            ('linear1', ffn, c),
            ('linear2', c, ffn),
        ):
            shapes[f'{q}{name}.weight'] = (out_f, in_f)
            shapes[f'{q}{name}.bias'] = (out_f,)
        for norm in ('norm1', 'norm2'):
            shapes[f'{q}{norm}.weight'] = (c,)
            shapes[f'{q}{norm}.bias'] = (c,)
    shapes[f'{p}mask_features.weight'] = (m, c, 1, 1)
    shapes[f'{p}mask_features.bias'] = (m,)
    for name, in_c, k in (('adapter_1', res_channels[0], 1), ('layer_1', c, 3)):
        shapes[f'{p}{name}.weight'] = (c, in_c, k, k)
        shapes[f'{p}{name}.norm.weight'] = (c,)
        shapes[f'{p}{name}.norm.bias'] = (c,)

    d, n_q, dffn = dec['hidden_dim'], dec['num_queries'], dec['dim_feedforward']
    p = 'sem_seg_head.predictor.'
    shapes[f'{p}query_feat.weight'] = (n_q, d)
    shapes[f'{p}query_embed.weight'] = (n_q, d)
    shapes[f'{p}level_embed.weight'] = (3, d)
    if c != d:
        for i in range(3):
            shapes[f'{p}input_proj.{i}.weight'] = (d, c, 1, 1)
            shapes[f'{p}input_proj.{i}.bias'] = (d,)
    for i in range(dec['dec_layers']):
        for layers, attn in (
            ('transformer_self_attention_layers', 'self_attn'),
            ('transformer_cross_attention_layers', 'multihead_attn'),
        ):
            q = f'{p}{layers}.{i}.'
            shapes[f'{q}{attn}.in_proj_weight'] = (3 * d, d)
            shapes[f'{q}{attn}.in_proj_bias'] = (3 * d,)
            shapes[f'{q}{attn}.out_proj.weight'] = (d, d)
            shapes[f'{q}{attn}.out_proj.bias'] = (d,)
            shapes[f'{q}norm.weight'] = (d,)
            shapes[f'{q}norm.bias'] = (d,)
        q = f'{p}transformer_ffn_layers.{i}.'
        shapes.update(
            {
                f'{q}linear1.weight': (dffn, d),
                f'{q}linear1.bias': (dffn,),
                f'{q}linear2.weight': (d, dffn),
                f'{q}linear2.bias': (d,),
                f'{q}norm.weight': (d,),
                f'{q}norm.bias': (d,),
            }
        )
    shapes[f'{p}decoder_norm.weight'] = (d,)
    shapes[f'{p}decoder_norm.bias'] = (d,)
    shapes[f'{p}class_embed.weight'] = (2, d)
    shapes[f'{p}class_embed.bias'] = (2,)
    for i, out_f in enumerate((d, d, m)):
        shapes[f'{p}mask_embed.layers.{i}.weight'] = (out_f, d)
        shapes[f'{p}mask_embed.layers.{i}.bias'] = (out_f,)
    return shapes


def random_upstream_state_dict(cfg: dict, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in upstream_proposer_shapes(cfg).items():
        t = torch.randn(shape, generator=g) * 0.2
        # FrozenBN variances must be positive.
        sd[key] = t.abs() + 0.5 if key.endswith('running_var') else t
    # Keys of the rest of a MasQ-Tuning checkpoint, which the conversion must drop.
    sd['criterion.empty_weight'] = torch.ones(49)
    sd['masqclip.mask_embeddings'] = torch.zeros(1024)
    sd['masqclip.visual.proj'] = torch.zeros(4, 3)
    return sd
