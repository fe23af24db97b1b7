"""Integrity of the export and engine caches (damaged, truncated or half-written files are
detected by their recorded digests and rebuilt; a user's damaged file is refused), one error
type for a foreign graph, and the default model on the exported backends."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export import KEY  # the engine key of the EngineCache tests there

from masqclip.data.io import read_image
from masqclip.export import (
    OUTPUT_NAMES,
    DamagedFileError,
    EngineCache,
    ExportError,
    ForeignExportError,
    build_image_model,
    ensure_onnx,
    read_onnx_metadata,
)
from masqclip.export.engine_cache import digest_path, sha256_file, verify_digests
from masqclip.export.onnx import hash_onnx, onnx_data_path
from masqclip.export.onnxruntime_backend import OnnxRuntimeImageModel
from masqclip.factory import DEMO_CHECKPOINT, create_predictor
from masqclip.inference.vocabulary import Vocabulary

SIZE = (64, 96)  # (Hp, Wp) of test_tiny's padded input
REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / 'examples' / 'scene.png'
DEMO_VOCABULARY = REPO / 'config' / 'vocabularies' / 'demo_scenes.yaml'


def _export_files(path):
    """An export's graph, weights file and digest file."""
    return [path, onnx_data_path(path), digest_path(path)]


def _ensure_tiny(tiny_model, cache_dir):
    network, config = tiny_model
    return ensure_onnx(network, config, SIZE, cache_dir=cache_dir, model_name='test_tiny')


@pytest.fixture(scope='module')
def pristine_export(tiny_model, tmp_path_factory):
    return _ensure_tiny(tiny_model, tmp_path_factory.mktemp('pristine'))


@pytest.fixture
def cached_export(pristine_export, tmp_path):
    """A copy of the tiny model's cache entry in a cache folder of its own."""
    for part in _export_files(pristine_export):
        shutil.copy2(part, tmp_path / part.name)
    return tmp_path / pristine_export.name


@pytest.fixture
def exports(monkeypatch, pristine_export):
    """Records each export ensure_onnx makes, which restores the pristine files (an export
    takes seconds; the tests that need a real one do not use this)."""
    made = []

    def restore(network, config, path, *args, **kwargs):
        made.append(path)
        for part in _export_files(pristine_export):
            shutil.copy2(part, path.parent / part.name)
        return path

    monkeypatch.setattr('masqclip.export.backends.export_onnx', restore)
    return made


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0)) * 255
    return images, torch.tensor([SIZE])


def _flip_every_7th_float(path) -> None:
    """Flip the sign bit of every 7th float32 in place (the size and the layout stay)."""
    words = np.memmap(path, dtype=np.uint32, mode='r+', shape=(path.stat().st_size // 4,))
    words[::7] ^= np.uint32(1 << 31)
    words.flush()


def _damage_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and 'damaged' in r.getMessage()
    ]


def test_flipped_weights_in_the_cache_are_exported_again_and_match_torch(
    tiny_model, cached_export, caplog
):
    network, config = tiny_model
    _flip_every_7th_float(onnx_data_path(cached_export))
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        image_model = build_image_model(
            network,
            config,
            'onnxruntime',
            input_size=SIZE,
            engine_cache_dir=cached_export.parent,
            model_name='test_tiny',
        )
    assert any('differs from its recorded SHA-256' in m for m in _damage_warnings(caplog))
    verify_digests(cached_export)
    with torch.inference_mode():
        expected = network(*_inputs())
    for name, got, want in zip(OUTPUT_NAMES, image_model(*_inputs()), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b'\xff' * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', [_truncate, _garble])
def test_a_damaged_cached_graph_is_exported_again(
    tiny_model, cached_export, exports, caplog, damage
):
    damage(cached_export)
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        assert _ensure_tiny(tiny_model, cached_export.parent) == cached_export
    assert exports == [cached_export] and _damage_warnings(caplog)


def test_a_cache_entry_without_its_digest_reads_as_an_interrupted_write(
    tiny_model, cached_export, exports, caplog
):
    digest_path(cached_export).unlink()
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        _ensure_tiny(tiny_model, cached_export.parent)
    assert exports == [cached_export]
    assert _damage_warnings(caplog)


def test_an_intact_cache_entry_is_reused_without_a_warning(
    tiny_model, cached_export, exports, caplog
):
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        assert _ensure_tiny(tiny_model, cached_export.parent) == cached_export
    assert exports == [] and not caplog.records


def test_a_damaged_user_export_is_refused_and_left_as_it_is(tiny_model, cached_export):
    network, config = tiny_model
    data = onnx_data_path(cached_export)
    _flip_every_7th_float(data)
    damaged = sha256_file(data)
    with pytest.raises(DamagedFileError, match='refusing the ONNX export'):
        ensure_onnx(network, config, SIZE, onnx_path=cached_export)
    assert sha256_file(data) == damaged


def test_a_user_export_without_digests_is_checked_by_its_metadata(tiny_model, cached_export):
    network, config = tiny_model
    digest_path(cached_export).unlink()
    assert ensure_onnx(network, config, SIZE, onnx_path=cached_export) == cached_export
    other = SIZE[0], SIZE[1] + 32
    with pytest.raises(ExportError, match='input_size'):
        ensure_onnx(network, config, other, onnx_path=cached_export)


def test_an_exports_hash_is_the_same_from_its_record_as_from_its_bytes(cached_export):
    recorded = hash_onnx(cached_export)
    digest_path(cached_export).unlink()
    assert hash_onnx(cached_export) == recorded


ENGINE = bytes(range(256)) * 64


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _lose_the_digest(path) -> None:
    digest_path(path).unlink()


@pytest.mark.parametrize('damage', [_truncate, _flip_a_byte, _lose_the_digest])
def test_a_damaged_engine_is_not_served_and_is_rebuilt(tmp_path, caplog, damage):
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, ENGINE)
    assert cache.lookup(KEY) == path
    damage(path)
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        assert cache.lookup(KEY) is None  # build_or_load_engine builds it again
    assert any('rebuilt' in m for m in _damage_warnings(caplog))
    assert cache.store(KEY, ENGINE) == path and cache.lookup(KEY) == path


@pytest.mark.parametrize('damage', [_truncate, _lose_the_digest])
def test_a_damaged_timing_cache_starts_anew(tmp_path, caplog, damage):
    cache = EngineCache(tmp_path)
    path = cache.timing_cache_path('10.13.0', 'NVIDIA H100', '9.0')
    cache.write_timing_cache(path, ENGINE)
    assert cache.read_timing_cache(path) == ENGINE
    damage(path)
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        assert cache.read_timing_cache(path) == b''
    assert _damage_warnings(caplog)


def test_a_garbled_digest_file_reads_as_damaged(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, ENGINE)
    digest_path(path).write_text('not a digest\n')
    assert cache.lookup(KEY) is None
    with pytest.raises(DamagedFileError, match='not a list of SHA-256 digests'):
        verify_digests(path)


def test_onnxruntime_refuses_a_foreign_graph_with_the_exports_own_error(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])],
        'foreign',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / 'foreign.onnx'
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(ForeignExportError, match='not a MasQCLIP image-path export'):
        OnnxRuntimeImageModel(path, 'cpu')
    with pytest.raises(ForeignExportError, match='not written by `masqclip export onnx`'):
        ensure_onnx(None, {}, None, onnx_path=path)


@pytest.fixture(scope='module')
def demo_scene():
    image = read_image(SCENE)
    reference = create_predictor()  # the torch backend
    reference.set_vocabulary(Vocabulary.from_yaml(DEMO_VOCABULARY))
    return image, reference.predict(image)


@pytest.fixture(scope='module')
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('demo_cache')


@pytest.mark.parametrize('checkpoint', [None, 'demo'])
def test_the_default_model_runs_on_onnxruntime_as_on_torch(demo_scene, demo_cache, checkpoint):
    """No checkpoint and 'demo' both mean the shipped file: one export, named after it and
    recording its SHA-256, that segments the shipped scene as torch does."""
    image, expected = demo_scene
    predictor = create_predictor(
        checkpoint=checkpoint,
        backend='onnxruntime',
        frame_size=image.shape[:2],
        engine_cache_dir=demo_cache,
    )
    predictor.set_vocabulary(Vocabulary.from_yaml(DEMO_VOCABULARY))
    got = predictor.predict(image)
    assert expected.instances
    assert [(i.label, i.query_index, *i.box) for i in got.instances] == [
        (i.label, i.query_index, *i.box) for i in expected.instances
    ]
    np.testing.assert_allclose(
        [i.score for i in got.instances], [i.score for i in expected.instances], atol=1e-4
    )
    (export,) = demo_cache.glob('*.onnx')
    metadata = read_onnx_metadata(export)
    assert export.name.startswith('masqclip_demo-') and metadata['model'] == 'masqclip_demo'
    assert metadata['checkpoint_sha256'] == sha256_file(DEMO_CHECKPOINT)
