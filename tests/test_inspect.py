"""scripts/inspect_model.py / flexconv_zoo.inspection (figures + a table that agrees with model.kernel_sizes())
and the training-curve plot that train.py redraws every epoch (flexconv_zoo.plots)."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.utils import reparameterize_model

import flexconv_zoo  # noqa: F401  (registers the models)
from conftest import write_image_folder
from flexconv_zoo.inspection import inspect_model, layer_stats
from flexconv_zoo.plots import plot_training_curves, update_training_plot
from flexconv_zoo.training import train_main

pytest.importorskip('matplotlib')
ROOT = Path(__file__).resolve().parents[1]
FIGURES = ('kernel_sizes', 'kernels', 'masks', 'frequency')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _table_sizes(table: str, column: int):
    """Kernel sizes of one column of the markdown table (``5x7`` / ``6``) as tuples."""
    rows = [line.split('|')[1:-1] for line in table.splitlines() if re.match(r'\| \d+ \|', line)]
    return [tuple(int(v) for v in row[column].strip().split('x')) for row in rows]


def _check_pngs(files) -> None:
    for name in FIGURES:
        data = files[name].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name  # a drawn figure, not an empty canvas


def _small_flexnet() -> torch.nn.Module:
    model = timm.create_model('flexnet8', widths=(8, 12), kernel_hidden=8, img_size=16).eval()
    with torch.no_grad():  # different learned widths per layer, one anisotropic
        for i, layer in enumerate(model.flexconv_layers()):
            layer.mask.sigma.copy_(torch.tensor([0.1 + 0.06 * i, 0.1 + 0.03 * i]))
    return model


def test_half_precision_models_are_inspected_in_float32():
    """A bfloat16 model's stats are those of its float32 copy (same rounded parameters): its own dtype would put
    the dense analysis grid on bfloat16 positions."""
    model = _small_flexnet().bfloat16()
    ref = layer_stats(copy.deepcopy(model).float(), [16, 32])
    stats = layer_stats(model, [16, 32])
    for size in (16, 32):
        assert [(s.kernel_size, s.energy_above_nyquist, s.frequency_bound) for s in stats[size]] == \
            [(s.kernel_size, s.energy_above_nyquist, s.frequency_bound) for s in ref[size]]
    assert next(model.parameters()).dtype == torch.bfloat16  # the model itself is not changed


def test_inspect_script_on_a_weights_file(one_thread, tmp_path):
    model = _small_flexnet()
    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    out = tmp_path / 'inspect'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, 'scripts/inspect_model.py', str(tmp_path / 'w.safetensors'), '--model', 'flexnet8',
           '--source-img-size', '16', '--sizes', '16', '32', '--layers', '0', '-1', '--out-dir', str(out),
           '--model-kwargs', 'widths=8,12', 'kernel_hidden=8']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_pngs({name: out / f'{name}.png' for name in FIGURES})
    table = (out / 'layers.md').read_text()
    assert table.count('\n| ') == 5 + 1  # header + one row per FlexConv (stem + 2 blocks x 2)
    printed = [line for line in proc.stdout.splitlines() if line.startswith('| ')]
    at16, at32 = _table_sizes('\n'.join(printed), 4), _table_sizes('\n'.join(printed), 5)
    assert at16 == model.kernel_sizes()
    resampled = copy.deepcopy(model)
    resampled.set_input_size(img_size=32)
    assert at32 == resampled.kernel_sizes()
    assert len(set(at16)) > 1 and at32 != at16  # the widths differ per layer and grow with the resolution


def test_inspection_of_a_sequence_model(one_thread, tmp_path):
    model = timm.create_model('flextcn2', in_chans=1, seq_len=40, kernel_hidden=8).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.flexconv_layers()):
            layer.mask.sigma.fill_(0.1 + 0.05 * i)
    result = inspect_model(model, tmp_path, layers=[1, 2])
    assert result['sizes'] == [40, 80] and result['layers'] == [1, 2]
    _check_pngs(result['files'])
    assert _table_sizes(result['table'], 4) == model.kernel_sizes()
    for a, b in zip(*result['stats'].values()):
        assert a.nyquist == (40 - 1) / 4 and b.nyquist == (80 - 1) / 4
        # the same continuous kernel: a higher limit leaves less energy above it
        assert 0.0 <= b.energy_above_nyquist <= a.energy_above_nyquist <= 1.0


def test_frequency_bound_is_the_alias_free_quantity(one_thread):
    model = timm.create_model('flexnet8', widths=(8,), kernel_hidden=8, img_size=16).eval()
    stats = layer_stats(model, [16, 32])[16]
    # the paper's MAGNet init starts far above the 17-point grid's band limit ...
    assert all(r.frequency_bound > 1.5 * r.nyquist for r in stats)
    assert max(r.energy_above_nyquist for r in stats) > 0.01
    # ... and projecting onto the alias-free set (masks included) brings the bound to the limit
    model.band_limit_(include_mask=True)
    projected = layer_stats(model, [16, 32])
    assert all(r.frequency_bound <= r.nyquist * (1 + 1e-5) for r in projected[16])
    assert all(p.energy_above_nyquist < s.energy_above_nyquist for p, s in zip(projected[16], stats))


def test_inspection_bad_input(tmp_path):
    model = timm.create_model('flexnet8', widths=(8,), kernel_hidden=8, img_size=16).eval()
    with pytest.raises(ValueError, match='two different resolutions'):
        inspect_model(model, tmp_path, sizes=[16, 16])
    with pytest.raises(ValueError, match='out of range'):
        inspect_model(model, tmp_path, layers=[7])
    with pytest.raises(ValueError, match='reparameterized'):
        inspect_model(reparameterize_model(model), tmp_path)


def test_training_curve_plot(tmp_path):
    history = [dict(epoch=e, lr=0.01 / e, train_loss=2.0 / e, val_loss=2.1 / e, train_top1=20.0 * e,
                    val_top1=19.0 * e, mean_kernel_size=5 + e) for e in (1, 2, 3)]
    (tmp_path / 'metrics.json').write_text(json.dumps(history))
    path = update_training_plot(tmp_path)
    assert path == tmp_path / 'training_curves.png' and path.read_bytes()[:8] == PNG_MAGIC
    assert update_training_plot(tmp_path / 'no_run') is None  # no metrics yet: nothing drawn, no error
    with pytest.raises(ValueError, match='empty'):
        plot_training_curves([], tmp_path / 'x.png')


@pytest.fixture(scope='module')
def tiny_images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp('tiny'), 16)


def test_train_redraws_the_curves_every_epoch_and_the_run_folder_inspects(one_thread, tiny_images, tmp_path):
    argv = ['--model', 'flexnet8', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--img-size', '16',
            '--batch-size', '8', '--val-size', '12', '--no-progress', '--data', str(tiny_images), '--epochs', '3',
            '--output', str(tmp_path), '--name', 'run', '--stop-after-steps', '11']  # stops inside epoch 2
    train_main(argv)
    run = tmp_path / 'run'
    assert len(json.loads((run / 'metrics.json').read_text())) == 1
    assert (run / 'training_curves.png').read_bytes()[:8] == PNG_MAGIC  # drawn after epoch 1, before the end
    out = tmp_path / 'inspect'
    proc = subprocess.run([sys.executable, 'scripts/inspect_model.py', str(run), '--out-dir', str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'\| kernel @16 px \| kernel @32 px \|', proc.stdout)
    assert all((out / f'{name}.png').is_file() for name in FIGURES)
