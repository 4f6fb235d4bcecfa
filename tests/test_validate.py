"""scripts/validate.py: multi-resolution table, CSV/JSON/PNG outputs, checkpoint kinds, bad input."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.cli import run_cli
from flexconv_zoo.evaluation import validate_main
from flexconv_zoo.training import train_main

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures('one_thread')



@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny flexnet8 trained one epoch at 16 px on 3 classes of 20x20 images: (run folder, data folder)."""
    root = tmp_path_factory.mktemp('val')
    data = root / 'data'
    rng = np.random.default_rng(1)
    for split, n in (('train', 16), ('test', 10)):
        for c in range(3):
            (data / split / f'k{c}').mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(data / split / f'k{c}' / f'{i}.png')
    train_main(['--model', 'flexnet8', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--img-size', '16',
                '--data', str(data), '--epochs', '1', '--batch-size', '8', '--val-size', '6', '--no-progress',
                '--output', str(root / 'runs'), '--name', 'r16', '--alias-free'])
    return root / 'runs' / 'r16', data


def test_validate_writes_table_csv_json_and_plot(trained, capsys):
    run, data = trained
    rows = validate_main(['--checkpoint', str(run), '--data', str(data), '--img-size', '12', '16', '24', '32'])
    out = capsys.readouterr().out
    assert '16*' in out and 'training resolution, 16 px' in out
    folder = run / 'validate'
    with open(folder / 'results.csv') as f:
        table = list(csv.DictReader(f))
    assert [int(r['img_size']) for r in table] == [12, 16, 24, 32]
    assert all(int(r['count']) == 30 for r in table)
    assert all(0 <= float(r['top1']) <= float(r['top5']) <= 100 for r in table)
    meta = json.loads((folder / 'results.json').read_text())
    assert meta['train_img_size'] == 16 and [r['img_size'] for r in meta['results']] == [12, 16, 24, 32]
    assert [r['top1'] for r in meta['results']] == pytest.approx([r['top1'] for r in rows])
    png = (folder / 'accuracy_vs_resolution.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000


def test_bare_file_and_hub_folder_agree_with_run_folder(trained, tmp_path):
    run, data = trained
    common = ['--data', str(data), '--img-size', '16', '24']
    from_run = validate_main(['--checkpoint', str(run), *common, '--output', str(tmp_path / 'a')])
    from_best = validate_main(['--checkpoint', str(run / 'best'), *common, '--output', str(tmp_path / 'b')])
    from_file = validate_main(['--checkpoint', str(run / 'model.safetensors'), '--model', 'flexnet8',
                               '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--source-img-size', '16',
                               *common, '--output', str(tmp_path / 'c')])
    for other in (from_best, from_file):  # one epoch: best == final
        assert [r['loss'] for r in other] == pytest.approx([r['loss'] for r in from_run], rel=1e-5)


def test_hub_folder_results_go_to_the_working_directory(trained, tmp_path, monkeypatch):
    """A Hub-layout folder is what gets pushed: validate.py writes its results beside, never into it."""
    import shutil
    run, data = trained
    folder = tmp_path / 'flexnet8.test'
    shutil.copytree(run / 'best', folder)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(tmp_path)
    validate_main(['--checkpoint', str(folder), '--data', str(data), '--img-size', '16'])
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [p.name for p in (tmp_path / 'validate_results').glob('*/results.csv')] == ['results.csv']


@pytest.mark.parametrize('case', ['unknown_model', 'missing_data', 'corrupt_checkpoint', 'too_small', 'no_run'])
def test_bad_input_is_one_line_error(case, trained, tmp_path, capsys):
    run, data = trained
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'config.json').write_text((run / 'config.json').read_text())
    (bad / 'model.safetensors').write_bytes(b'{"truncated')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'results.csv').write_text('keep me\n')
    base = ['--data', str(data), '--output', str(out)]
    argv = {
        'unknown_model': ['--model', 'flexnet99', '--checkpoint', str(run / 'model.safetensors'), *base],
        'missing_data': ['--checkpoint', str(run), '--data', str(tmp_path / 'nothing'), '--output', str(out)],
        'corrupt_checkpoint': ['--checkpoint', str(bad), *base],
        'too_small': ['--checkpoint', str(run), '--img-size', '16', '1', *base],
        'no_run': ['--checkpoint', str(tmp_path), *base],
    }[case]
    assert run_cli(validate_main, argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err
    assert sorted(p.name for p in out.iterdir()) == ['results.csv']
    assert (out / 'results.csv').read_text() == 'keep me\n'  # nothing overwritten


def test_script_paper_protocol_one_command(trained, tmp_path):
    """train at 16 px, test at 32 px: one command, exit code 0, table on stdout."""
    run, data = trained
    proc = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'validate.py'), '--checkpoint', str(run),
                           '--data', str(data), '--img-size', '16', '32', '--output', str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ' 16* ' in proc.stdout and ' 32  ' in proc.stdout
    assert (tmp_path / 'accuracy_vs_resolution.png').is_file()


def test_flip_tta_next_to_single_view(trained, capsys):
    import torch
    from flexconv_zoo.data import create_datasets, eval_transform_for
    from flexconv_zoo.checkpoints import load_model
    from flexconv_zoo.evaluation import evaluate
    run, data = trained
    model = load_model(str(run), None, {}, None, False)
    test = create_datasets(str(data), None, val_size=6).test
    test.transform = eval_transform_for(model, 16)
    loader = torch.utils.data.DataLoader(test, batch_size=7)
    plain, tta = evaluate(model, loader), evaluate(model, loader, flip_tta=True)
    assert tta['top1'] == plain['top1'] and tta['loss'] == pytest.approx(plain['loss'])  # single view unchanged
    model.eval()
    with torch.no_grad():  # reference: mean logits of each image and its mirror image
        hits = [((model(x) + model(x.flip(-1))) / 2).argmax(1).eq(y) for x, y in loader]
    assert tta['flip_top1'] == pytest.approx(100 * torch.cat(hits).float().mean().item())
    rows = validate_main(['--checkpoint', str(run), '--data', str(data), '--img-size', '16', '24', '--flip-tta'])
    assert all('flip_top1' in r for r in rows) and 'flip-TTA top1' in capsys.readouterr().out
    with open(run / 'validate' / 'results.csv') as f:
        assert 'flip_top1' in f.readline()
