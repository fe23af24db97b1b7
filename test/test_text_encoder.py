"""Tests of the text tower wrapper (masqclip/modeling/text_encoder.py) at test_tiny sizes."""

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import masqclip
from masqclip.modeling.mask_clip import build_clip
from masqclip.modeling.text_encoder import TextEncoder

TINY = json.loads(
    (Path(masqclip.__file__).parent / 'model_configs' / 'test_tiny.json').read_text()
)['clip']
CONTEXT = TINY['text_cfg']['context_length']


def tiny_clip(seed: int = 0, **text_overrides) -> open_clip.CLIP:
    cfg = copy.deepcopy(TINY)
    cfg['text_cfg'].update(text_overrides)
    torch.manual_seed(seed)
    return build_clip(cfg).eval()


@pytest.fixture(scope='module')
def encoder() -> TextEncoder:
    return TextEncoder(tiny_clip())


def test_encode_equals_open_clip_encode_text_and_is_unnormalised(encoder):
    texts = ['a cat', 'traffic light', 'window ', 'sky']
    with torch.no_grad():
        tokens = open_clip.tokenize(texts, context_length=CONTEXT)
        expected = encoder.clip.encode_text(tokens)
    out = encoder.encode(texts)
    assert out.shape == (4, TINY['embed_dim']) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-3)
    torch.testing.assert_close(encoder.encode(texts, batch_size=3), out, atol=1e-6, rtol=0)
    assert not out.requires_grad


def test_encode_classes_averages_unnormalised_synonyms(encoder):
    classes = [['person'], ['tree', 'bush', 'leaves'], ['wall', 'concrete wall']]
    feats = encoder.encode(['person', 'tree', 'bush', 'leaves', 'wall', 'concrete wall'])
    expected = F.normalize(torch.stack([feats[0], feats[1:4].mean(0), feats[4:6].mean(0)]), dim=-1)
    out = encoder.encode_classes(classes, batch_size=2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # The test can tell this from averaging normalised features (the usual template ensemble).
    averaged_unit = F.normalize(F.normalize(feats[1:4], dim=-1).mean(0), dim=0)
    assert (averaged_unit - out[1]).abs().max() > 1e-4


def test_encode_classes_with_templates(encoder):
    templates = ['a photo of a {}.', 'a {} in the scene']
    out = encoder.encode_classes([['cat'], ['dog', 'puppy']], templates=templates)
    feats = encoder.encode(
        ['a photo of a cat.', 'a cat in the scene']
        + [
            'a photo of a dog.',
            'a dog in the scene',
            'a photo of a puppy.',
            'a puppy in the scene',
        ]
    )
    expected = F.normalize(torch.stack([feats[:2].mean(0), feats[2:].mean(0)]), dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    raw = encoder.encode_classes([['cat'], ['dog', 'puppy']])
    assert (raw - out).abs().max() > 1e-4


def test_long_names_are_truncated_not_rejected(encoder):
    long_name = ' '.join(['extraordinarily'] * (2 * CONTEXT))
    out = encoder.encode_classes([[long_name]])
    assert out.shape == (1, TINY['embed_dim']) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ('classes', 'templates', 'match'),
    [
        ([], None, 'empty'),
        (['person'], None, 'list of names'),
        ([['person'], []], None, 'no names'),
        ([['person']], ['a photo of a person'], 'no {}'),
        ([['person']], [], 'templates is empty'),
    ],
    ids=['no-classes', 'bare-string', 'class-without-names', 'template-without-slot', 'no-tpl'],
)
def test_encode_classes_rejects_bad_input(encoder, classes, templates, match):
    with pytest.raises(ValueError, match=match):
        encoder.encode_classes(classes, templates=templates)


def test_state_dict_has_text_keys_only_and_loads_clip_weights():
    encoder = TextEncoder(tiny_clip(seed=0))
    keys = set(encoder.state_dict())
    assert all(k.startswith('clip.') for k in keys)
    assert not any(k.startswith('clip.visual') for k in keys)
    assert {'clip.token_embedding.weight', 'clip.text_projection', 'clip.logit_scale'} <= keys
    other = tiny_clip(seed=7)
    encoder.load_clip_state_dict(other.state_dict())
    with torch.no_grad():
        expected = other.encode_text(open_clip.tokenize(['grass'], context_length=CONTEXT))
    torch.testing.assert_close(encoder.encode(['grass']), expected)


def test_tokenizer_larger_than_vocabulary_is_rejected():
    with pytest.raises(ValueError, match='vocab_size'):
        TextEncoder(tiny_clip(vocab_size=1000))
