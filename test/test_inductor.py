"""The inductor backend: the AOTInductor package of the torch image path, the same outputs as
eager, loaded from the cache when intact, built in a background thread while the eager path
serves when not, and a failed build that leaves the eager path serving."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from masqclip.export import BackendUnavailableError
from masqclip.export import inductor as inductor_module
from masqclip.export.engine_cache import digest_path
from masqclip.export.inductor import InductorImageModel, package_path
from masqclip.factory import create_predictor
from masqclip.inference.transforms import PreprocessCfg
from masqclip.modeling.precision import check_precision
from masqclip.tools.benchmarking import frame_inputs

FRAME = (70, 90)  # (H, W): the tiny model pads it to a 64 x 96 canvas


class CountingImageModel:
    """An image path that counts its calls."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, images, image_sizes):
        self.calls += 1
        return self.model(images, image_sizes)


class HeldBuild:
    """Stands in for the package build and load: the build waits for ``release`` (or raises,
    with ``fail``) and writes a stand-in package; the loaded 'compiled' path is a
    ``CountingImageModel`` over ``network``."""

    def __init__(self, network, monkeypatch, fail: bool = False) -> None:
        self.release, self.fail = threading.Event(), fail
        self.compiled = CountingImageModel(network)
        monkeypatch.setattr(inductor_module, 'build_package', self.build)
        monkeypatch.setattr(inductor_module, '_load', lambda path: self.compiled)

    def build(self, image_model, sample, path):
        if not self.release.wait(30):
            raise AssertionError('the test never released the build')
        if self.fail:
            raise RuntimeError('C++ compiler not found')
        path.write_bytes(b'package')


@pytest.fixture
def plan(tiny_model):
    return PreprocessCfg.of(tiny_model[1]).plan(*FRAME)


def test_the_package_matches_eager_and_is_loaded_from_the_cache(tiny_model, plan, tmp_path):
    network, config = tiny_model
    package = package_path(tmp_path, 'test_tiny', plan.padded, 'fp32', 'weights')
    built = InductorImageModel(
        network, plan.padded, plan.resized, 'cpu', package, background=False
    )
    assert built.wait(0) and built.error is None and built.build_seconds > 0
    assert package.is_file() and digest_path(package).is_file()
    loaded = InductorImageModel(network, plan.padded, plan.resized, 'cpu', package)
    assert loaded.wait(0) and loaded.build_seconds is None  # ready at once, no build
    for seed in range(2):
        inputs = frame_inputs(config, FRAME, seed=seed)
        with torch.inference_mode():
            want, got = network(*inputs), loaded(*inputs)
        for name, a, b in zip(('mask logits', 'objectness', 'embeddings'), got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_eager_serves_until_the_package_is_built_and_for_other_canvases(
    tiny_model, plan, tmp_path, monkeypatch
):
    network, config = tiny_model
    held = HeldBuild(network, monkeypatch)
    eager = CountingImageModel(network)
    model = InductorImageModel(eager, plan.padded, plan.resized, 'cpu', tmp_path / 'p.pt2')
    inputs = frame_inputs(config, FRAME)
    with torch.inference_mode():
        model(*inputs)  # while the build is held
        assert not model.wait(0) and eager.calls == 1 and held.compiled.calls == 0
        held.release.set()
        assert model.wait(30) and model.build_seconds is not None
        model(*inputs)
        assert held.compiled.calls == 1 and eager.calls == 1
        model(*frame_inputs(config, (70, 200)))  # another canvas: eager, no rebuild
        assert eager.calls == 2 and held.compiled.calls == 1


def test_a_damaged_package_is_built_again(tiny_model, plan, tmp_path, monkeypatch, caplog):
    network, _ = tiny_model
    package = tmp_path / 'p.pt2'
    package.write_bytes(b'half a package')  # its digest was never recorded
    held = HeldBuild(network, monkeypatch)
    held.release.set()
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        model = InductorImageModel(network, plan.padded, plan.resized, 'cpu', package)
        assert model.wait(30)
    assert 'damaged AOTInductor package' in caplog.text
    assert package.read_bytes() == b'package'


def test_a_failed_build_is_logged_and_eager_keeps_serving(
    tiny_model, plan, tmp_path, monkeypatch, caplog
):
    network, config = tiny_model
    held = HeldBuild(network, monkeypatch, fail=True)
    held.release.set()
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        model = InductorImageModel(network, plan.padded, plan.resized, 'cpu', tmp_path / 'p.pt2')
        assert not model.wait(30)
    assert isinstance(model.error, RuntimeError)
    assert 'C++ compiler not found' in caplog.text and 'eager path keeps serving' in caplog.text
    with torch.inference_mode():
        mask_logits, _, _ = model(*frame_inputs(config, FRAME))
    assert mask_logits.shape[-2:] == (plan.padded[0] // 4, plan.padded[1] // 4)


def test_create_predictor_names_the_package_and_serves_at_once(
    tiny_model, tmp_path, monkeypatch, rng
):
    held = HeldBuild(tiny_model[0], monkeypatch)
    predictor = create_predictor(
        'test_tiny', backend='inductor', frame_size=FRAME, engine_cache_dir=tmp_path
    )
    result = predictor.predict(rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8))
    assert result.semantic.shape == FRAME and held.compiled.calls == 0
    held.release.set()
    built = list(tmp_path.glob('test_tiny-64x96-fp32-torch*.pt2'))
    assert predictor._image_model.wait(30) and len(built) == 1


def test_the_package_name_holds_what_the_code_depends_on(tmp_path):
    path = package_path(tmp_path, 'm', (480, 640), 'bf16', 'abc')
    assert path.name.startswith(f'm-480x640-bf16-torch{torch.__version__}-')
    assert path.name.endswith('-abc.pt2')
    assert torch.backends.cpu.get_cpu_capability().lower() in path.name


def test_inductor_is_for_the_cpu_and_takes_bf16_where_torch_does(tiny_model, plan, tmp_path):
    with pytest.raises(BackendUnavailableError, match='use the tensorrt backend'):
        InductorImageModel(tiny_model[0], plan.padded, plan.resized, 'cuda', tmp_path / 'p')
    with pytest.raises(ValueError, match='backend must be one of'):
        create_predictor('test_tiny', backend='tvm')
    with pytest.raises(ValueError, match='torch backends only'):
        check_precision('bf16', 'cpu', 'onnxruntime')
