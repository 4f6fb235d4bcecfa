"""scripts/predict.py: top-k predictions of a pretrained FlexNet for image files and CIFAR-10 test images."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.data.datasets import CIFAR10_CLASSES
from flexconv_zoo.cli import run_cli
from flexconv_zoo.prediction import predict_main

ROOT = Path(__file__).resolve().parents[1]
ALIAS_FREE = ROOT / 'hub_configs' / 'flexnet16.cifar10_16px_alias_free'

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate(((32, 32), (40, 28))):  # any size: the eval transform resizes and crops
        path = root / f'img{i}.png'
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize('img_size', [None, 32])
def test_predicts_files_at_any_resolution(images, img_size, capsys):
    extra = ['--img-size', str(img_size)] if img_size else []
    rows = predict_main([*images, '--checkpoint', str(ALIAS_FREE), '--topk', '4', *extra])
    assert [r['source'] for r in rows] == images
    for row in rows:
        names = [name for name, _ in row['top']]
        probs = [p for _, p in row['top']]
        assert len(names) == 4 and set(names) <= set(CIFAR10_CLASSES) and len(set(names)) == 4
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
    out = capsys.readouterr().out
    assert f"at {img_size or 16}x{img_size or 16} px" in out  # the model ran at the requested resolution


def test_predicts_cifar10_test_images_with_their_labels(capsys):
    rows = predict_main(['--checkpoint', str(ALIAS_FREE), '--count', '10'])
    assert len(rows) == 10 and all(r['label'] in CIFAR10_CLASSES for r in rows)
    correct = sum(r['top'][0][0] == r['label'] for r in rows)
    assert correct >= 5  # 71.25 % test top-1 at 16 px (its model card); 10 images spread over the 10 classes
    assert f"top-1 correct: {correct}/10" in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['missing.png'], 'does not exist'),
    (['--topk', '0'], 'at least 1'),
    (['--img-size', '1'], 'smaller than'),
    (['--checkpoint', str(ROOT / 'hub_configs' / 'flextcn2.mnist1d')], 'sequence model'),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert run_cli(predict_main, [*argv, *(['--checkpoint', str(ALIAS_FREE)] if '--checkpoint' not in argv else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and message in err and '\n' not in err
    assert 'None' not in err  # the message names what was given


def test_unreadable_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not a png')
    assert run_cli(predict_main, [str(bad), '--checkpoint', str(ALIAS_FREE)]) == 2
    assert 'Cannot read image' in capsys.readouterr().err


def test_script_runs_from_a_checkout(images):
    proc = subprocess.run([sys.executable, 'scripts/predict.py', images[0], '--checkpoint', str(ALIAS_FREE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(images[0]).name in proc.stdout and '%' in proc.stdout
