"""scripts/benchmark.py runs end to end on a tiny configuration: tables printed, JSON rows complete (no timings
are asserted; they belong to the benchmark itself)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs scripts/benchmark.py end to end: in the slow set CI also runs
def test_benchmark_smoke_run_writes_tables_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, 'scripts/benchmark.py', '--threads', '1', '--models', 'flexnet8', '--memory-models',
           'flexnet8', '--batch-size', '2', '--img-size', '8', '--rounds', '1', '--sections', 'models,memory',
           '--json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '## Models: training step' in proc.stdout and '## Peak training memory' in proc.stdout
    result = json.loads(out.read_text())
    assert [(r['model'], r['regime']) for r in result['models']] == [('flexnet8', 'initial'), ('flexnet8', 'trained')]
    # trained widths (set_mask_width) give larger kernels than the initial masks
    initial, trained = (max(max(s) for s in r['kernel_sizes']) for r in result['models'])
    assert trained > initial
    for r in result['models']:
        for key in ('train_vs_resnet44', 'eval_vs_resnet44', 'eval_vs_fixed', 'eval_uncached_vs_cached'):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    rows = {(r['regime'], r['variant'], r['grad_checkpointing'], r['recompute_spectra']) for r in result['memory']}
    assert rows == {(g, *v) for g in ('initial', 'trained') for v in (('plain', False, False),
                                                                        ('recompute spectra', False, True),
                                                                        ('grad ckpt', True, False))}
    assert all(r['peak_mib'] > 0 and r['vs_resnet44'] > 0 for r in result['memory'])
    assert all(r['train_vs_plain'] > 0 for r in result['memory'] if r['variant'] != 'plain')
    assert result['env']['torch'] and 'channels_last' in result['env']


def _benchmark_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_script', ROOT / 'scripts' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dispatch_options_pick_the_batch_and_the_kernel_sizes(capsys):
    script = _benchmark_script()
    args = script.parse_args(['--dispatch-batch', '64', '--dispatch-2d', '5', '7'])
    assert (args.dispatch_batch, args.dispatch_2d, args.dispatch_1d) == (64, [5, 7], [])
    assert script.parse_args([]).dispatch_batch == 16  # the CPU default
    with pytest.raises(SystemExit) as exc:
        script.parse_args(['--dispatch-batch', '0'])
    assert exc.value.code == 2 and '--dispatch-batch 0' in capsys.readouterr().err


def test_dispatch_section_times_both_paths_and_reports_the_training_pick(tmp_path):
    out = tmp_path / 'dispatch.json'
    cmd = [sys.executable, 'scripts/benchmark.py', '--threads', '1', '--sections', 'dispatch', '--img-size', '8',
           '--dispatch-batch', '16', '--dispatch-2d', '3', '7', '--rounds', '1', '--json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())['dispatch']
    assert [(r['kernel'], r['input']) for r in rows] == [(3, [16, 48, 8, 8]), (7, [16, 48, 8, 8])]
    assert [r['auto'] for r in rows] == ['direct', 'fft']  # a training step of 16: the FFT from 7x7 (the table)
    assert all(r['fft_s'] > 0 and r['direct_s'] > 0 and r['fastest'] in ('fft', 'direct') for r in rows)
