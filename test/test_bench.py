"""The benchmark's efficiency figures hang together: FLOPs counted, rates derived from the
measured seconds, shares of the GEMM rate at the same precision. No timed assertions: the
machine is shared, and only the figures' relations are checked."""

from __future__ import annotations

import json

import pytest
import torch

from masqclip.cli import main
from masqclip.export import inductor as inductor_module
from masqclip.export.inductor import CACHE_ENV
from masqclip.modeling.precision import cpu_bf16_units
from masqclip.tools.bench_cpu import measure_efficiency
from masqclip.tools.benchmarking import efficiency_table, image_path_flops, image_path_rates


@pytest.fixture(scope='module')
def figures(tmp_path_factory) -> dict:
    work_dir = tmp_path_factory.mktemp('bench')
    return measure_efficiency('test_tiny', (70, 96), repeats=1, work_dir=work_dir, gemm_size=128)


def _expected_precisions() -> set[str]:
    return {'fp32', 'bf16'} if cpu_bf16_units() else {'fp32'}


def test_flops_are_counted_for_both_halves(figures):
    flops = figures['efficiency']['image_path_flops']
    assert flops['proposer'] > 0 and flops['mask_clip'] > 0
    assert flops['total'] == flops['proposer'] + flops['mask_clip']


def test_rates_and_shares_follow_from_the_measured_seconds(figures):
    efficiency = figures['efficiency']
    assert efficiency['input_size'] == '64x96'  # 70x96 -> 64x88 content, padded to 64x96
    assert efficiency['bf16_units'] == list(cpu_bf16_units())
    gemm_gflops = efficiency['gemm_gflops']
    assert set(gemm_gflops) == _expected_precisions()
    assert all(rate > 0 for rate in gemm_gflops.values())
    rows = {f'{r["backend"]} {r["precision"]}': r for r in efficiency['image_paths']}
    expected = {'torch fp32', 'onnxruntime fp32'}
    if cpu_bf16_units():
        expected.add('torch bf16')
    assert set(rows) == expected
    total = efficiency['image_path_flops']['total']
    for row in rows.values():
        assert row['seconds'] > 0
        assert row['gflops'] == pytest.approx(total / row['seconds'] / 1e9)
        assert row['share'] == pytest.approx(row['gflops'] / gemm_gflops[row['precision']])
        speedup = rows['torch fp32']['seconds'] / row['seconds']
        assert row['speedup_vs_torch_fp32'] == pytest.approx(speedup)
    # The onnxruntime-vs-torch figures come from the same interleaved runs.
    assert figures['torch_s'] == rows['torch fp32']['seconds']
    assert figures['onnxruntime_s'] == rows['onnxruntime fp32']['seconds']
    assert figures['max_abs_diff'] < 1e-4


def test_profile_lists_the_costliest_operators_first(figures):
    operators = figures['efficiency']['top_operators']
    assert operators and all(op['operator'].startswith('aten::') for op in operators[:3])
    shares = [op['share'] for op in operators]
    assert shares == sorted(shares, reverse=True)
    assert 0 < sum(shares) <= 1 + 1e-9
    assert all(op['calls'] >= 1 and op['self_s'] >= 0 for op in operators)


def test_table_shows_every_rate(figures):
    text = efficiency_table(figures['efficiency'])
    assert 'fp32 GEMM 128x128' in text
    assert 'image path, torch fp32' in text and 'image path, onnxruntime fp32' in text
    assert ('bf16 GEMM 128x128' in text) == bool(cpu_bf16_units())
    assert ('image path, torch bf16' in text) == bool(cpu_bf16_units())
    assert 'top operators by self time' in text
    assert 'freed CPU memory:' in text


def test_rates_by_hand():
    rows = image_path_rates(
        {'torch fp32': 2.0, 'onnxruntime fp32': 1.0, 'torch bf16': 0.5},
        200e9,
        {'fp32': 400.0, 'bf16': 1600.0},
    )
    assert rows == [
        dict(backend='torch', precision='fp32', seconds=2.0, gflops=100.0, share=0.25,
             speedup_vs_torch_fp32=1.0),
        dict(backend='onnxruntime', precision='fp32', seconds=1.0, gflops=200.0, share=0.5,
             speedup_vs_torch_fp32=2.0),
        dict(backend='torch', precision='bf16', seconds=0.5, gflops=400.0, share=0.25,
             speedup_vs_torch_fp32=4.0),
    ]  # fmt: skip


def test_flop_count_leaves_the_weights_trainable(tiny_model):
    network, _ = tiny_model
    before = [p.requires_grad for p in network.parameters()]
    images = torch.zeros(1, 3, 64, 64)
    assert image_path_flops(network.eval(), (images, torch.tensor([[64, 64]])))['total'] > 0
    assert [p.requires_grad for p in network.parameters()] == before


def test_bench_command_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    args = [
        'bench',
        '--model',
        'test_tiny',
        '--size',
        '96x70',
        '--repeats',
        '1',
        '--gemm-size',
        '256',
    ]
    assert main([*args, '--json', str(out)]) == 0
    assert 'image path, onnxruntime fp32' in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written['efficiency']['image_path_flops']['total'] > 0
    assert 'efficiency' not in written['onnxruntime']


def test_inductor_rows_and_compile_times_when_asked(tmp_path, monkeypatch):
    # The plumbing only: torch.compile stands aside here (test_inductor.py compiles for real).
    monkeypatch.setattr(inductor_module.torch, 'compile', lambda model, dynamic: model)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / 'inductor'))
    figures = measure_efficiency(
        'test_tiny',
        (70, 96),
        repeats=1,
        work_dir=tmp_path,
        gemm_size=128,
        inductor_cache_dir=tmp_path,
    )['efficiency']
    rows = {(row['backend'], row['precision']) for row in figures['image_paths']}
    assert {('inductor', p) for p in _expected_precisions()} <= rows
    assert set(figures['inductor_compile_s']) == _expected_precisions()
    assert 'inductor fp32: compiled in' in efficiency_table(figures)
