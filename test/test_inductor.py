"""The inductor backend: the torch image path compiled by TorchInductor, serving eagerly until
the compile (in a background thread) is ready, the same outputs as eager, and a failed compile
that leaves the eager path serving."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest
import torch

from masqclip.export import BackendUnavailableError
from masqclip.export import inductor as inductor_module
from masqclip.export.inductor import CACHE_ENV, InductorImageModel
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


class HeldCompile:
    """Stands in for torch.compile: the 'compiled' path (``network`` itself) waits for
    ``release`` before its first call ends (the compile) and counts its calls; ``fail`` makes
    the compile raise instead."""

    def __init__(self, network, fail: bool = False) -> None:
        self.network, self.fail = network, fail
        self.release, self.calls = threading.Event(), 0

    def __call__(self, model, dynamic):
        assert dynamic is False  # one canvas size, static shapes

        def compiled(images, image_sizes):
            if not self.release.wait(30):
                raise AssertionError('the test never released the compile')
            if self.fail:
                raise RuntimeError('C++ compiler not found')
            self.calls += 1
            return self.network(images, image_sizes)

        return compiled


@pytest.fixture
def plan(tiny_model):
    return PreprocessCfg.of(tiny_model[1]).plan(*FRAME)


@pytest.fixture(autouse=True)
def keep_inductor_cache_setting():
    # The backend points the process's inductor cache at the engine folder: undo it after.
    saved = os.environ.get(CACHE_ENV)
    yield
    if saved is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = saved


def test_the_compiled_path_matches_eager_and_is_cached_with_the_engines(
    tiny_model, plan, tmp_path
):
    network, config = tiny_model
    compiled = InductorImageModel(
        network, plan.padded, plan.resized, 'cpu', tmp_path, background=False
    )
    assert compiled.wait(0) and compiled.error is None and compiled.compile_seconds > 0
    assert any((tmp_path / 'inductor').iterdir())  # the cache, beside the other engines
    for seed in range(2):
        inputs = frame_inputs(config, FRAME, seed=seed)
        with torch.inference_mode():
            want, got = network(*inputs), compiled(*inputs)
        for name, a, b in zip(('mask logits', 'objectness', 'embeddings'), got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_eager_serves_until_the_compile_is_ready_and_for_other_canvases(
    tiny_model, plan, tmp_path, monkeypatch
):
    network, config = tiny_model
    held = HeldCompile(network)
    monkeypatch.setattr(inductor_module.torch, 'compile', held)
    eager = CountingImageModel(network)
    model = InductorImageModel(eager, plan.padded, plan.resized, 'cpu', tmp_path)
    inputs = frame_inputs(config, FRAME)
    with torch.inference_mode():
        model(*inputs)  # while the compile is held
        assert not model.wait(0) and eager.calls == 1 and held.calls == 0
        held.release.set()
        assert model.wait(30)
        compile_calls = held.calls  # the compile's own sample run
        model(*inputs)
        assert held.calls == compile_calls + 1 and eager.calls == 1
        model(*frame_inputs(config, (70, 200)))  # another canvas: eager, no recompile
        assert eager.calls == 2 and held.calls == compile_calls + 1


def test_a_failed_compile_is_logged_and_eager_keeps_serving(
    tiny_model, plan, tmp_path, monkeypatch, caplog
):
    network, config = tiny_model
    held = HeldCompile(network, fail=True)
    held.release.set()
    monkeypatch.setattr(inductor_module.torch, 'compile', held)
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        model = InductorImageModel(network, plan.padded, plan.resized, 'cpu', tmp_path)
        assert not model.wait(30)
    assert isinstance(model.error, RuntimeError)
    assert 'C++ compiler not found' in caplog.text and 'eager path keeps serving' in caplog.text
    with torch.inference_mode():
        mask_logits, _, _ = model(*frame_inputs(config, FRAME))
    assert mask_logits.shape[-2:] == (plan.padded[0] // 4, plan.padded[1] // 4)


def test_create_predictor_builds_it_for_the_frame_size_and_serves_at_once(
    tiny_model, tmp_path, monkeypatch, rng
):
    held = HeldCompile(tiny_model[0])
    monkeypatch.setattr(inductor_module.torch, 'compile', held)
    predictor = create_predictor(
        'test_tiny', backend='inductor', frame_size=FRAME, engine_cache_dir=tmp_path
    )
    result = predictor.predict(rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8))
    assert result.semantic.shape == FRAME and held.calls == 0
    held.release.set()


def test_inductor_is_for_the_cpu_and_takes_bf16_where_torch_does(tiny_model, plan, tmp_path):
    with pytest.raises(BackendUnavailableError, match='use the tensorrt backend'):
        InductorImageModel(tiny_model[0], plan.padded, plan.resized, 'cuda', tmp_path)
    with pytest.raises(ValueError, match='backend must be one of'):
        create_predictor('test_tiny', backend='tvm')
    with pytest.raises(ValueError, match='torch backends only'):
        check_precision('bf16', 'cpu', 'onnxruntime')
