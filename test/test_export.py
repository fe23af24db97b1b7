"""Export of the image path: ONNX graph and metadata, onnxruntime parity with torch, the
fixed-size canvas, the export and engine caches, the CLI, and (GPU) TensorRT parity."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import time

import numpy as np
import onnx
import pytest
import torch

from masqclip.checkpoint import fingerprint_image_path, fingerprint_module, save_checkpoint
from masqclip.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    EngineCache,
    EngineKey,
    ExportError,
    FixedSizeImageModel,
    InputSizeError,
    build_image_model,
    ensure_onnx,
    export_onnx,
    network_input_size,
    read_onnx_metadata,
)
from masqclip.export.errors import BackendUnavailableError
from masqclip.export.onnx import hash_onnx
from masqclip.export.onnxruntime_backend import OnnxRuntimeImageModel, resolve_providers
from masqclip.export.progress import Heartbeat
from masqclip.inference.postprocess import classify_masks
from masqclip.inference.predictor import Predictor
from masqclip.inference.vocabulary import Vocabulary
from masqclip.tools import export as export_command

SIZE = (64, 96)  # (Hp, Wp): the padded input of a 96x64 frame for test_tiny
HAS_TENSORRT = importlib.util.find_spec('tensorrt') is not None
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope='session')
def tiny_onnx(tiny_model, tmp_path_factory):
    network, config = tiny_model
    path = tmp_path_factory.mktemp('export') / 'tiny.onnx'
    return export_onnx(network, config, path, SIZE, model_name='test_tiny')


CONTENT = (64, 85)  # (h, w) of a frame's content inside the SIZE canvas: the rest is padding


def _inputs(
    seed: int = 0, size: tuple[int, int] = SIZE, content: tuple[int, int] = CONTENT
) -> tuple[torch.Tensor, torch.Tensor]:
    """A black-padded random canvas and its content size, as the predictor makes them."""
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255
    images[..., content[0] :, :] = 0
    images[..., content[1] :] = 0
    return images, torch.tensor([content])


def test_network_input_size_is_the_predictors_padded_size(tiny_model):
    _, config = tiny_model
    assert network_input_size(config, 64, 96) == SIZE
    # Short side to 64, long side capped at 128, padded to multiples of 32.
    assert network_input_size(config, 480, 640) == (64, 96)
    assert network_input_size(config, 100, 400) == (32, 128)


def test_onnx_graph_names_fixed_shapes_and_metadata(tiny_model, tiny_onnx):
    network, config = tiny_model
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model)
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    queries = config['proposer']['decoder']['num_queries']
    assert dims == {
        INPUT_NAMES[0]: [1, 3, *SIZE],
        INPUT_NAMES[1]: [1, 2],
        'mask_logits': [1, queries, 16, 24],
        'objectness': [1, queries],
        'mask_embeddings': [1, queries, config['clip']['embed_dim']],
    }
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    metadata = read_onnx_metadata(tiny_onnx)
    assert metadata['model'] == 'test_tiny'
    assert metadata['input_size'] == '64x96'
    assert metadata['precision'] == 'fp32'
    assert int(metadata['opset']) == model.opset_import[0].version
    assert metadata['weights'] == fingerprint_image_path(network)
    assert metadata['checkpoint_sha256'] == ''
    assert json.loads(metadata['config']) == config


def test_fingerprint_ignores_text_weights_and_sees_image_weights(tiny_model):
    network, _ = tiny_model
    other = copy.deepcopy(network)
    with torch.no_grad():
        next(other.text.parameters()).add_(1.0)
    assert fingerprint_image_path(other) == fingerprint_image_path(network)
    with torch.no_grad():
        next(other.mask_clip.parameters()).add_(1.0)
    assert fingerprint_image_path(other) != fingerprint_image_path(network)


def test_onnxruntime_cpu_matches_torch(tiny_model, tiny_onnx):
    network, _ = tiny_model
    session = OnnxRuntimeImageModel(tiny_onnx, 'cpu')
    for seed in (0, 1):
        inputs = _inputs(seed)
        with torch.inference_mode():
            expected = network(*inputs)
        outputs = session(*inputs)
        for name, got, want in zip(OUTPUT_NAMES, outputs, expected, strict=True):
            assert got.dtype == torch.float32 and got.shape == want.shape, name
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_onnxruntime_refuses_another_input_shape(tiny_onnx):
    session = OnnxRuntimeImageModel(tiny_onnx, 'cpu')
    with pytest.raises(InputSizeError, match='64, 96'):
        session(*_inputs(size=(64, 64)))


def test_canvas_letter_pads_smaller_inputs_and_refuses_larger(tiny_model, tiny_onnx, caplog):
    network, _ = tiny_model
    calls = []

    def recording(images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append((images, sizes))
        return network(images, sizes)

    model = FixedSizeImageModel(recording, SIZE)
    small, sizes = _inputs(size=(64, 64), content=(64, 50))
    with caplog.at_level(logging.WARNING, logger='masqclip'), torch.inference_mode():
        mask_logits, objectness, embeddings = model(small, sizes)
        model(small, sizes)
    canvas, canvas_sizes = calls[0]
    assert canvas.shape[-2:] == SIZE
    assert torch.equal(canvas[..., :64], small) and not canvas[..., 64:].any()
    # The content size travels unchanged: the proposer sees all padding alike.
    assert torch.equal(canvas_sizes, sizes)
    assert mask_logits.shape[-2:] == (16, 16) and objectness.shape == (1, 10)
    assert sum('letter-padding' in r.message for r in caplog.records) == 1  # once per size
    with pytest.raises(InputSizeError, match='export again'):
        model(*_inputs(size=(96, 96)))
    strict = FixedSizeImageModel(recording, SIZE, on_mismatch='error')
    with pytest.raises(InputSizeError):
        strict(small, sizes)
    with pytest.raises(InputSizeError, match=r'\[1, 3, H, W\]'):
        model(torch.zeros(2, 3, *SIZE), torch.tensor([SIZE, SIZE]))


def test_predictor_on_onnxruntime_matches_torch(tiny_model, tiny_onnx, tmp_path, rng):
    network, config = tiny_model
    image_model = build_image_model(
        network,
        config,
        'onnxruntime',
        input_size=SIZE,
        engine_cache_dir=tmp_path,
        onnx_path=tiny_onnx,
    )
    exported = Predictor(
        image_model, network.encode_classes, fingerprint_module(network.text), config
    )
    reference = Predictor.from_network(network, config)
    vocabulary = Vocabulary.from_names(['cat', 'table', 'sky'])
    image = rng.integers(0, 256, CONTENT + (3,), dtype=np.uint8)  # padded into SIZE
    results = []
    for predictor in (exported, reference):
        predictor.set_vocabulary(vocabulary)
        results.append(predictor.predict(image))
    got, want = results
    np.testing.assert_allclose(got.proposals.embeddings, want.proposals.embeddings, atol=1e-4)
    assert (got.semantic == want.semantic).mean() > 0.99
    assert [i.label for i in got.instances] == [i.label for i in want.instances]


def test_exports_of_an_older_graph_version_are_never_reused(tiny_model, tmp_path, monkeypatch):
    """Version 1 graphs padded the proposer's input with black: the cache must not serve them
    (nor the engines built from them, which are keyed by the graph's hash)."""
    network, config = tiny_model
    with monkeypatch.context() as old:
        old.setattr('masqclip.export.onnx.FORMAT', 'masqclip_ros.image_path/1')
        old.setattr('masqclip.export.backends.EXPORT_VERSION', 1)
        stale = ensure_onnx(network, config, SIZE, cache_dir=tmp_path, model_name='test_tiny')
    current = ensure_onnx(network, config, SIZE, cache_dir=tmp_path, model_name='test_tiny')
    assert current != stale and current.is_file()
    assert read_onnx_metadata(current)['format'] == 'masqclip_ros.image_path/2'
    assert hash_onnx(current) != hash_onnx(stale)
    with pytest.raises(ExportError, match='export the model again'):
        ensure_onnx(network, config, SIZE, onnx_path=stale)


def test_export_cache_reuses_a_matching_export_and_refuses_other_weights(
    tiny_model, tmp_path, monkeypatch
):
    network, config = tiny_model
    first = ensure_onnx(network, config, SIZE, cache_dir=tmp_path, model_name='test_tiny')
    assert first.parent == tmp_path and first.is_file()

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError('a matching export was exported again')

    monkeypatch.setattr('masqclip.export.backends.export_onnx', no_export)
    assert ensure_onnx(network, config, SIZE, cache_dir=tmp_path, model_name='test_tiny') == first
    other = copy.deepcopy(network)
    with torch.no_grad():
        next(other.proposer.parameters()).add_(1.0)
    with pytest.raises(ExportError, match='weights'):
        ensure_onnx(other, config, SIZE, onnx_path=first)
    with pytest.raises(ExportError, match='input_size'):
        ensure_onnx(network, config, (64, 64), onnx_path=first)
    with pytest.raises(ExportError, match='precision'):
        ensure_onnx(network, config, SIZE, 'fp16', onnx_path=first)
    with pytest.raises(ExportError, match='not found'):
        ensure_onnx(None, config, None, onnx_path=tmp_path / 'missing.onnx')


def test_build_image_model_rejects_bad_requests(tiny_model, tmp_path):
    network, config = tiny_model
    with pytest.raises(ValueError, match='torch backend'):
        build_image_model(network, config, 'torch')
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        build_image_model(network, config, 'onnxruntime', precision='fp16', input_size=SIZE)
    with pytest.raises(InputSizeError, match='multiples of 32'):
        build_image_model(
            network, config, 'onnxruntime', input_size=(60, 96), engine_cache_dir=tmp_path
        )
    with pytest.raises(ValueError, match='CUDA device'):
        build_image_model(network, config, 'tensorrt', 'cpu', input_size=SIZE)


@pytest.mark.skipif(HAS_TENSORRT, reason='tensorrt is installed here')
def test_missing_tensorrt_says_how_to_install():
    from masqclip.export.tensorrt import import_tensorrt

    with pytest.raises(BackendUnavailableError, match='pip install tensorrt'):
        import_tensorrt()


@pytest.mark.skipif(HAS_CUDA, reason='a GPU is present')
def test_tensorrt_without_gpu_says_so():
    from masqclip.export.tensorrt import require_cuda_device

    with pytest.raises(BackendUnavailableError, match='needs an NVIDIA GPU'):
        require_cuda_device('cuda')


def test_providers_default_per_device_and_checked():
    cpu_only = ['CPUExecutionProvider']
    gpu = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert resolve_providers('cpu', None, cpu_only) == cpu_only
    assert resolve_providers('cuda', None, gpu) == [
        'CUDAExecutionProvider',
        'CPUExecutionProvider',
    ]
    assert resolve_providers(
        'cuda:0', ['TensorrtExecutionProvider', 'CUDAExecutionProvider'], gpu
    ) == ['TensorrtExecutionProvider', 'CUDAExecutionProvider']
    with pytest.raises(BackendUnavailableError, match='onnxruntime-gpu'):
        resolve_providers('cuda', None, cpu_only)
    with pytest.raises(ValueError, match='GPU execution provider'):
        resolve_providers('cuda', cpu_only, gpu)
    with pytest.raises(ValueError, match='set the device to cuda'):
        resolve_providers('cpu', ['CUDAExecutionProvider'], gpu)


KEY = EngineKey(
    onnx_sha256='a' * 64,
    tensorrt_version='10.13.0',
    gpu_name='NVIDIA H100',
    compute_capability='9.0',
    precision='fp16',
    input_shape=(1, 3, 480, 640),
)


@pytest.mark.parametrize(
    'change',
    [
        {'onnx_sha256': 'b' * 64},
        {'tensorrt_version': '11.4.0'},
        {'gpu_name': 'NVIDIA L4'},
        {'compute_capability': '8.9'},
        {'precision': 'fp32'},
        {'input_shape': (1, 3, 480, 672)},
    ],
)
def test_engine_key_changes_with_every_field(change):
    other = EngineKey(**{**KEY.__dict__, **change})
    assert other.digest() != KEY.digest()


def test_engine_key_digest_is_fixed_across_processes():
    # A fixed value, not hash(): a salted or reordered digest would orphan every cached engine
    # at the next start. Change it only with a deliberate cache-format change.
    assert KEY.digest() == 'c185266d7af6a80092f3f00e'


def test_engine_cache_store_lookup_and_mismatch(tmp_path):
    cache = EngineCache(tmp_path / 'engines')
    assert cache.lookup(KEY) is None
    path = cache.store(KEY, b'engine bytes')
    assert cache.lookup(KEY) == path and path.read_bytes() == b'engine bytes'
    other = EngineKey(**{**KEY.__dict__, 'precision': 'fp32'})
    assert cache.lookup(other) is None
    # A sidecar that disagrees with the key (a tampered or foreign file) is never used.
    sidecar = path.with_suffix('.json')
    sidecar.write_text(json.dumps({**KEY.to_dict(), 'gpu_name': 'other'}))
    assert cache.lookup(KEY) is None
    assert not list(cache.directory.glob('.*.tmp'))


def test_timing_cache_per_tensorrt_version_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    base = cache.timing_cache_path('10.13.0', 'NVIDIA H100', '9.0')
    assert base == tmp_path / 'timing-94a69129b173f28f.cache'  # the same in every process
    assert base != cache.timing_cache_path('11.4.0', 'NVIDIA H100', '9.0')
    assert base != cache.timing_cache_path('10.13.0', 'NVIDIA L4', '8.9')
    assert cache.read_timing_cache(base) == b''
    cache.write_timing_cache(base, b'timings')
    assert cache.read_timing_cache(base) == b'timings'


def test_heartbeat_logs_at_its_interval(caplog):
    with caplog.at_level(logging.INFO, logger='masqclip'):
        with Heartbeat('engine build', interval_s=0.05) as heartbeat:
            heartbeat.set_status('tactic timing 3/10')
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if 'engine build running' in r.getMessage()]
    assert len(lines) >= 3
    assert 'tactic timing 3/10' in lines[-1]


def _export_command(argv: list[str]) -> int:
    """``masqclip export ...`` as the CLI runs it (the module's parser and ``run``)."""
    parser = argparse.ArgumentParser(prog='masqclip export')
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args(argv))


def test_cli_exports_fp16_from_a_checkpoint(tiny_model, tmp_path, capsys):
    network, config = tiny_model
    checkpoint = tmp_path / 'tiny.pt'
    save_checkpoint(checkpoint, network, config)
    out = tmp_path / 'tiny_fp16.onnx'
    code = _export_command(
        [
            'onnx',
            '--checkpoint',
            str(checkpoint),
            '--frame-size',
            '96x64',
            '--precision',
            'fp16',
            '--out',
            str(out),
        ]
    )
    assert code == 0 and '[1, 3, 64, 96]' in capsys.readouterr().out
    metadata = read_onnx_metadata(out)
    assert metadata['precision'] == 'fp16'
    assert metadata['weights'] == fingerprint_image_path(network)
    assert len(metadata['checkpoint_sha256']) == 64
    # float16 inside, float32 at the boundary: the same contract, close to torch fp32.
    outputs = OnnxRuntimeImageModel(out, 'cpu')(*_inputs())
    with torch.inference_mode():
        expected = network(*_inputs())
    for got, want in zip(outputs, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


@pytest.mark.skipif(HAS_CUDA and HAS_TENSORRT, reason='TensorRT can run here')
def test_cli_tensorrt_without_gpu_or_tensorrt_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match='tensorrt backend needs'):
        _export_command(['tensorrt', '--build-only', '--model', 'test_tiny'])


def _tensorrt_fp16(network, config, cache_dir, **options):
    return build_image_model(
        network,
        config,
        'tensorrt',
        'cuda',
        'fp16',
        SIZE,
        engine_cache_dir=cache_dir,
        model_name='test_tiny',
        **options,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TENSORRT), reason='needs CUDA and TensorRT')
def test_tensorrt_fp16_matches_torch(tiny_model, tmp_path, caplog):
    network, config = tiny_model
    network = copy.deepcopy(network).cuda()
    with caplog.at_level(logging.INFO, logger='masqclip'):
        image_model = _tensorrt_fp16(network, config, tmp_path)
    assert any('warmed up' in r.getMessage() for r in caplog.records)
    text = torch.nn.functional.normalize(torch.randn(5, config['clip']['embed_dim']), dim=-1)
    ious, agree = [], []
    for seed in range(3):
        inputs = [t.cuda() for t in _inputs(seed)]
        with torch.inference_mode():
            want = [t.float().cpu() for t in network(*inputs)]
            got = [t.float().cpu() for t in image_model(*inputs)]
        masks_got, masks_want = got[0][0] > 0, want[0][0] > 0
        union = (masks_got | masks_want).flatten(1).sum(1)
        inter = (masks_got & masks_want).flatten(1).sum(1)
        ious.append((inter[union > 0] / union[union > 0]).mean())
        scores_got = classify_masks(got[2][0], text, got[1][0])
        scores_want = classify_masks(want[2][0], text, want[1][0])
        agree.append((scores_got.argmax(-1) == scores_want.argmax(-1)).float().mean())
    assert torch.stack(ious).mean() > 0.9
    assert torch.stack(agree).mean() > 0.9
    # The second build finds the cached engine.
    with caplog.at_level(logging.INFO, logger='masqclip'):
        caplog.clear()
        _tensorrt_fp16(network, config, tmp_path, warmup=0)
    assert any('cached TensorRT engine' in r.getMessage() for r in caplog.records)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason='needs CUDA')
def test_onnxruntime_cuda_io_binding_matches_torch(tiny_model, tiny_onnx):
    import onnxruntime

    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        pytest.skip('onnxruntime-gpu is not installed')
    network, _ = tiny_model
    network = copy.deepcopy(network).cuda()
    inputs = [t.cuda() for t in _inputs()]
    got = OnnxRuntimeImageModel(tiny_onnx, 'cuda')(*inputs)
    with torch.inference_mode():
        want = network(*inputs)
    for a, b in zip(got, want, strict=True):
        assert a.is_cuda
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_gpu_report_names_every_backend_and_the_command():
    from masqclip.tools.bench_gpu import markdown_report

    timing = {'fps': 50.0, 'latency_s': 0.02, 'peak_allocated_mib': 900.0}
    run = {
        'model': 'masqclip_r50_vitb16',
        'frame': '640x480',
        'input_size': [480, 640],
        'gpu': 'NVIDIA H200',
        'environment': {'torch': '2.14.1', 'cuda': '13.0'},
        'backends': {'torch_fp32': timing, 'torch_fp16': {**timing, 'fps': 100.0}},
        'torch_fp16_vs_torch_fp32_speedup': 2.0,
    }
    measured = {
        **run,
        'backends': {**run['backends'], 'tensorrt_fp16': {**timing, 'fps': 250.0}},
        'tensorrt_fp16_vs_torch_fp32_speedup': 5.0,
        'tensorrt_fp16_mask_iou_vs_torch_fp32': 0.987,
    }
    missing = {**run, 'tensorrt_unavailable': 'no tensorrt'}
    text = markdown_report([measured, missing], 'python -m masqclip.tools.bench_gpu --runs 3')
    assert text.startswith('# The image path on NVIDIA H200')
    assert '| masqclip_r50_vitb16 | 480x640 | tensorrt_fp16 | 250.0 | 20.0 | 900 |' in text
    assert '| 5.00x | 2.00x | 0.987 |' in text
    assert 'not measured: no tensorrt' in text
    assert 'python -m masqclip.tools.bench_gpu --runs 3' in text


def test_cpu_benchmark_runs_both_backends_on_a_padded_frame(tmp_path):
    from masqclip.tools.bench_cpu import measure_onnxruntime_vs_torch

    figures = measure_onnxruntime_vs_torch('test_tiny', (70, 96), repeats=1, work_dir=tmp_path)
    assert figures['input_size'] == [64, 96]  # 70x96 -> 64x88 content, padded to 64x96
    assert figures['onnxruntime_s'] > 0 and figures['torch_s'] > 0
    assert figures['max_abs_diff'] < 1e-4


def test_cli_exports_the_shipped_demo_model_by_name(tmp_path, capsys):
    from masqclip.export.engine_cache import sha256_file
    from masqclip.factory import DEMO_CHECKPOINT

    out = tmp_path / 'demo.onnx'
    assert _export_command(['onnx', '--checkpoint', 'demo', '--out', str(out)]) == 0
    metadata = read_onnx_metadata(out)
    assert metadata['model'] == 'masqclip_demo'
    assert metadata['checkpoint_sha256'] == sha256_file(DEMO_CHECKPOINT)
