"""Tests of the class-agnostic Mask2Former proposer (CPU, test_tiny sizes)."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from upstream_keys import random_upstream_state_dict, upstream_proposer_shapes

from masqclip.modeling.backbone import ResNetBackbone, convert_detectron2_resnet_state_dict
from masqclip.modeling.pixel_decoder import (
    MSDeformAttn,
    deform_reference_points,
    ms_deform_attn_sample,
    position_embedding_sine,
)
from masqclip.modeling.proposer import (
    MaskProposer,
    build_proposer,
    convert_upstream_proposer_state_dict,
)
from masqclip.modeling.transformer_decoder import masked_attention_mask

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'masqclip' / 'model_configs'


def load_proposer_cfg(name: str) -> dict:
    return json.loads((CONFIG_DIR / f'{name}.json').read_text())['proposer']


@pytest.fixture(scope='module')
def tiny_cfg() -> dict:
    return load_proposer_cfg('test_tiny')


def random_images(b: int, h: int, w: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255


def test_output_shapes_non_square(tiny_cfg: dict) -> None:
    torch.manual_seed(0)
    model = build_proposer(tiny_cfg).eval()
    q = tiny_cfg['decoder']['num_queries']
    with torch.no_grad():
        out = model(random_images(2, 96, 64))
    assert out['pred_logits'].shape == (2, q, 2)
    assert out['pred_masks'].shape == (2, q, 24, 16)
    assert len(out['aux_outputs']) == tiny_cfg['decoder']['dec_layers']
    for aux in out['aux_outputs']:
        assert aux['pred_logits'].shape == (2, q, 2)
        assert aux['pred_masks'].shape == (2, q, 24, 16)
    assert torch.isfinite(out['pred_masks']).all()


def test_backbone_levels() -> None:
    backbone = ResNetBackbone('basic', [1, 1, 1, 1]).eval()
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 64, 96))
    assert list(feats) == ['res2', 'res3', 'res4', 'res5']
    for name, f in feats.items():
        stride = backbone.strides[name]
        assert f.shape == (1, backbone.out_channels[name], 64 // stride, 96 // stride)
    assert ResNetBackbone('bottleneck', [1, 1, 1, 1]).out_channels['res5'] == 2048


def test_input_size_must_be_multiple_of_32(tiny_cfg: dict) -> None:
    model = build_proposer(tiny_cfg).eval()
    with pytest.raises(ValueError, match='multiple of 32'):
        model(torch.zeros(1, 3, 100, 64))


def test_masked_attention_rule() -> None:
    # Query 0 has a partial mask; query 1 is negative everywhere (empty mask).
    logits = torch.tensor(
        [[[[1.0, -1.0], [-2.0, 0.0]], [[-1.0, -3.0], [-0.5, -2.0]]]]
    )  # [B=1, Q=2, 2, 2]
    mask = masked_attention_mask(logits, (2, 2), num_heads=3)
    assert mask.dtype == torch.bool
    assert mask.shape == (3, 2, 4)
    # sigmoid(0) == 0.5 is not below 0.5, so that pixel stays open.
    expected = torch.tensor([[False, True, True, False], [False, False, False, False]])
    for head in range(3):
        assert torch.equal(mask[head], expected)


def test_masked_attention_resizes_bilinearly() -> None:
    # Left half positive, right half negative at 4x4; resized to 2x2 the halves survive.
    logits = torch.tensor([[[[2.0, 2.0, -2.0, -2.0]] * 4]])
    mask = masked_attention_mask(logits, (2, 2), num_heads=1)
    assert torch.equal(mask[0, 0], torch.tensor([False, True, False, True]))


def test_ms_deform_attn_sample_by_hand() -> None:
    # One head, one channel; level 0 is 2x3 holding 0..5 row-major, level 1 is 1x1 holding 10.
    value = torch.cat([torch.arange(6.0), torch.tensor([10.0])]).view(1, 7, 1, 1)
    shapes = [(2, 3), (1, 1)]
    # Points on level 0: centre of (row 1, col 2) -> 5; halfway between the centres of
    # (0, 0) and (0, 1) -> 0.5; far outside -> 0 (zero padding). Level 1: its centre -> 10.
    loc0 = torch.tensor([[2.5 / 3, 0.75], [1.0 / 3, 0.25], [5.0, 5.0]])
    loc1 = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    locations = torch.stack([loc0, loc1]).view(1, 1, 1, 2, 3, 2)
    weights = torch.tensor([[0.5, 0.2, 0.1], [0.1, 0.05, 0.05]]).view(1, 1, 1, 2, 3)
    out = ms_deform_attn_sample(value, shapes, locations, weights)
    expected = 0.5 * 5 + 0.2 * 0.5 + 0.1 * 0 + (0.1 + 0.05 + 0.05) * 10
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('batch', [1, 2])
def test_ms_deform_attn_gather_matches_the_grid_sample_of_an_export(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    # Eager's weighted gather against the grid_sample path an ONNX export takes: samples
    # inside, across and far outside the levels' edges, and two exactly at the limits of the
    # gather's border clamp (pixel coordinate -1 along one axis, the level's size along the other).
    g = torch.Generator().manual_seed(batch)
    shapes = [(3, 5), (6, 4), (7, 9)]
    value = torch.randn(batch, sum(h * w for h, w in shapes), 2, 3, generator=g)
    locations = torch.rand(batch, 11, 2, 3, 4, 2, generator=g) * 2 - 0.5
    locations[0, 0, :, 0, 0] = torch.tensor([-0.5 / 5, 3.5 / 3])
    locations[0, 1, :, 0, 0] = torch.tensor([5.5 / 5, -0.5 / 3])
    weights = torch.rand(batch, 11, 2, 3, 4, generator=g)
    gathered = ms_deform_attn_sample(value, shapes, locations, weights)
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    sampled = ms_deform_attn_sample(value, shapes, locations, weights)
    torch.testing.assert_close(gathered, sampled, atol=1e-5, rtol=0)


def test_ms_deform_attn_zero_offsets_sample_reference_point() -> None:
    torch.manual_seed(0)
    d, h, w = 4, 3, 5
    attn = MSDeformAttn(d_model=d, n_levels=1, n_heads=2, n_points=3)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
    x = torch.randn(1, h * w, d)
    ref = deform_reference_points([(h, w)], x.device, x.dtype)
    out = attn(torch.randn(1, h * w, d), ref, x, [(h, w)])
    # Every point sits on its own pixel centre and the weights sum to 1 -> identity.
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_position_embedding_sine_by_hand() -> None:
    h, w, f = 3, 4, 8
    pos = position_embedding_sine(torch.zeros(2, 5, h, w), f)
    assert pos.shape == (2, 2 * f, h, w)
    i, j = 1, 2
    # Channels 0 and 1 (y) and f, f + 1 (x) use the unit frequency.
    y = (i + 1) / h * 2 * math.pi
    x = (j + 1) / w * 2 * math.pi
    assert pos[0, 0, i, j].item() == pytest.approx(math.sin(y), abs=1e-5)
    assert pos[1, 1, i, j].item() == pytest.approx(math.cos(y), abs=1e-5)
    assert pos[0, f, i, j].item() == pytest.approx(math.sin(x), abs=1e-5)
    assert pos[0, f + 1, i, j].item() == pytest.approx(math.cos(x), abs=1e-5)


@torch.no_grad()
def place_directly(model: MaskProposer, sd: dict[str, Tensor]) -> None:
    """Copy upstream tensors into the model by walking its modules."""
    bb = model.backbone

    def put(conv: nn.Conv2d, bn: nn.Module, prefix: str) -> None:
        conv.weight.copy_(sd[f'{prefix}.weight'])
        for field in ('weight', 'bias', 'running_mean', 'running_var'):
            getattr(bn, field).copy_(sd[f'{prefix}.norm.{field}'])

    put(bb.conv1, bb.bn1, 'backbone.stem.conv1')
    for stage, layer in enumerate((bb.layer1, bb.layer2, bb.layer3, bb.layer4)):
        for i, block in enumerate(layer):
            prefix = f'backbone.res{stage + 2}.{i}'
            for j in (1, 2, 3):
                if hasattr(block, f'conv{j}'):
                    put(getattr(block, f'conv{j}'), getattr(block, f'bn{j}'), f'{prefix}.conv{j}')
            if block.downsample is not None:
                put(block.downsample[0], block.downsample[1], f'{prefix}.shortcut')
    for prefix, module in (
        ('sem_seg_head.pixel_decoder.', model.pixel_decoder),
        ('sem_seg_head.predictor.', model.decoder),
    ):
        for name, tensor in module.state_dict(keep_vars=True).items():
            tensor.copy_(sd[prefix + name])


def tiny_with_decoder_projection(cfg: dict) -> dict:
    """test_tiny with hidden_dim != conv_dim, so the decoder's input_proj are convolutions."""
    cfg = copy.deepcopy(cfg)
    cfg['decoder']['hidden_dim'] = 2 * cfg['pixel_decoder']['conv_dim']
    return cfg


@pytest.mark.parametrize('variant', ['test_tiny', 'decoder_input_proj'])
def test_upstream_conversion_matches_direct_placement(tiny_cfg: dict, variant: str) -> None:
    cfg = tiny_cfg if variant == 'test_tiny' else tiny_with_decoder_projection(tiny_cfg)
    sd = random_upstream_state_dict(cfg, seed=1)
    converted = convert_upstream_proposer_state_dict(sd)
    torch.manual_seed(2)
    loaded = build_proposer(cfg).eval()
    loaded.load_state_dict(converted, strict=True)
    torch.manual_seed(3)
    direct = build_proposer(cfg).eval()
    place_directly(direct, sd)
    images = random_images(1, 64, 96)
    with torch.no_grad():
        a, b = loaded(images), direct(images)
    assert torch.equal(a['pred_logits'], b['pred_logits'])
    assert torch.equal(a['pred_masks'], b['pred_masks'])
    for aux_a, aux_b in zip(a['aux_outputs'], b['aux_outputs'], strict=True):
        assert torch.equal(aux_a['pred_masks'], aux_b['pred_masks'])


def test_upstream_conversion_reference_config_keys() -> None:
    # The full ResNet-50 model, on the meta device: only names and shapes are checked.
    cfg = load_proposer_cfg('masqclip_r50_vitl14_336')
    shapes = upstream_proposer_shapes(cfg)
    ffn_keys = [
        k for k in shapes if k.startswith('sem_seg_head.predictor.transformer_ffn_layers.')
    ]
    assert len(ffn_keys) == 9 * 6
    with torch.device('meta'):
        model = build_proposer(cfg)
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    model.load_state_dict(convert_upstream_proposer_state_dict(sd), strict=True)


def test_detectron2_resnet_names() -> None:
    t = torch.zeros(1)
    sd = {
        'stem.conv1.weight': t,
        'stem.conv1.norm.running_var': t,
        'res3.0.shortcut.weight': t,
        'res3.0.shortcut.norm.bias': t,
        'res5.2.conv3.norm.running_mean': t,
        'res4.1.conv2.weight': t,
    }
    assert set(convert_detectron2_resnet_state_dict(sd)) == {
        'conv1.weight',
        'bn1.running_var',
        'layer2.0.downsample.0.weight',
        'layer2.0.downsample.1.bias',
        'layer4.2.bn3.running_mean',
        'layer3.1.conv2.weight',
    }
    with pytest.raises(ValueError, match='unexpected detectron2 ResNet key'):
        convert_detectron2_resnet_state_dict({'fc.weight': t})


def test_conversion_without_proposer_keys_fails() -> None:
    with pytest.raises(ValueError, match='no proposer weights'):
        convert_upstream_proposer_state_dict({'masqclip.mask_embeddings': torch.zeros(4)})


class _ProposerOutputs(nn.Module):
    """Final predictions only, as a tuple (what the export path keeps)."""

    def __init__(self, proposer: MaskProposer) -> None:
        super().__init__()
        self.proposer = proposer

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.proposer(images)
        return out['pred_logits'], out['pred_masks']


def test_onnx_export_matches_onnxruntime(tiny_cfg: dict, tmp_path: Path) -> None:
    ort = pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    model = _ProposerOutputs(build_proposer(tiny_cfg).eval()).eval()
    images = random_images(1, 64, 96, seed=5)
    path = tmp_path / 'proposer.onnx'
    torch.onnx.export(
        model,
        (images,),
        str(path),
        opset_version=17,
        input_names=['images'],
        output_names=['pred_logits', 'pred_masks'],
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got_logits, got_masks = session.run(None, {'images': images.numpy()})
    with torch.no_grad():
        ref_logits, ref_masks = model(images)
    np.testing.assert_allclose(got_logits, ref_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_masks, ref_masks.numpy(), atol=1e-4, rtol=0)


def test_backbone_width_scales_every_stage() -> None:
    narrow = ResNetBackbone('basic', [1, 1, 1, 1], width=16)
    assert narrow.out_channels == {'res2': 16, 'res3': 32, 'res4': 64, 'res5': 128}
    features = narrow(torch.zeros(1, 3, 64, 64))
    assert {k: v.shape[1] for k, v in features.items()} == narrow.out_channels
    standard = ResNetBackbone('basic', [1, 1, 1, 1])
    assert sum(p.numel() for p in narrow.parameters()) * 10 < sum(
        p.numel() for p in standard.parameters()
    )
