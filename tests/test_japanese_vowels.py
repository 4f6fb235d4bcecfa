"""UEA JapaneseVowels: the .ts loader on small synthetic files of the real format, the bundled copy of the real
files, and the published ``flextcn4.japanese_vowels`` weights (reference logits and the card's test accuracy)."""
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

import flexconv_zoo  # noqa: F401
from flexconv_zoo.data import create_datasets
from flexconv_zoo.data.datasets import (
    BUNDLED_UEA_DIR, DataNotFoundError, find_japanese_vowels, load_japanese_vowels, read_ts_file,
)
from flexconv_zoo.evaluation import evaluate
from flexconv_zoo.model_card import read_card_results

REPO = Path(__file__).resolve().parent.parent
TAG = 'flextcn4.japanese_vowels'
FOLDER = REPO / 'hub_configs' / TAG
# sha256 of the uncompressed files in the aeon 1.6.0 wheel (aeon/datasets/data/JapaneseVowels/)
AEON_SHA256 = {
    'JapaneseVowels_TRAIN.ts': '68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd',
    'JapaneseVowels_TEST.ts': 'b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462',
}


def _write_ts(path: Path, lengths, labels, channels: int = 12, seed: int = 0, compress: bool = False) -> None:
    """A .ts file in the archive's layout: header, then one ``dim:dim:...:label`` line per example."""
    rng = np.random.default_rng(seed)
    lines = ['#synthetic JapaneseVowels-format file', '@problemName JapaneseVowels', '@timeStamps false',
             '@missing false', '@univariate false', f'@dimensions {channels}', '@equalLength false',
             '@classLabel true 1 2 3 4 5 6 7 8 9', '@data']
    for i, (length, label) in enumerate(zip(lengths, labels)):
        # channel c of example i holds i + c / 100 + step / 1000: every value says where it came from
        dims = [','.join(f'{i + c / 100 + t / 1000:.6f}' for t in range(length)) for c in range(channels)]
        lines.append(':'.join(dims) + f':{label}')
    text = '\n'.join(lines) + '\n'
    if compress:
        with gzip.open(path, 'wt', encoding='utf-8') as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture
def synthetic_root(tmp_path):
    folder = tmp_path / 'JapaneseVowels'
    folder.mkdir()
    train_len = [7 + i % 20 for i in range(45)]  # 7-26 steps, as the real training split
    _write_ts(folder / 'JapaneseVowels_TRAIN.ts', train_len, [i % 9 + 1 for i in range(45)])
    _write_ts(folder / 'JapaneseVowels_TEST.ts', [29, 7, 12, 20, 25, 9, 14, 18, 22], list(range(9, 0, -1)), seed=1)
    return tmp_path


def test_synthetic_files_shapes_labels_padding_and_splits(synthetic_root):
    arrays = load_japanese_vowels(synthetic_root)
    x, y = arrays['train']
    assert x.shape == (45, 12, 29) and x.dtype == np.float32 and y.dtype == np.int64
    assert y[:10].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]  # labels '1'-'9' -> speaker index 0-8
    # example 3 (10 steps) ends at the last position; in front, its first step repeated (align='end', the default)
    assert np.allclose(x[3, 5, -10:], 3 + 0.05 + np.arange(10) / 1000)
    assert np.array_equal(x[3, :, :19], np.repeat(x[3, :, 19:20], 19, axis=1))
    xt, yt = arrays['test']
    assert xt.shape == (9, 12, 29) and yt.tolist() == list(range(8, -1, -1))
    assert np.allclose(xt[0, 11], 0 + 0.11 + np.arange(29) / 1000)  # the 29-step example is not cut
    start = load_japanese_vowels(synthetic_root, align='start')['train'][0]  # padded after, repeating the last step
    assert np.allclose(start[3, 5, :10], 3 + 0.05 + np.arange(10) / 1000)
    assert np.array_equal(start[3, :, 10:], np.repeat(start[3, :, 9:10], 19, axis=1))
    assert load_japanese_vowels(synthetic_root, length=8)['train'][0][3, 0, -1] == x[3, 0, -1]  # cut in front
    with pytest.raises(ValueError, match="align must be 'end' or 'start'"):
        load_japanese_vowels(synthetic_root, align='left')

    splits = create_datasets('japanese_vowels', data_dir=synthetic_root, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 9, 9)  # a fifth of train held out
    assert splits.kind == 'sequence' and splits.in_chans == 12 and splits.num_classes == 9
    assert splits.native_size == (29,) and splits.class_names == tuple('123456789')
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert splits.source == str(synthetic_root / 'JapaneseVowels')
    seq, label = splits.test[0]
    assert seq.shape == (12, 29) and seq.dtype == torch.float32 and label == 8
    other = create_datasets('japanese_vowels', data_dir=synthetic_root, seed=1)
    assert sorted(other.val.indices) != sorted(splits.val.indices)  # the hold-out follows the seed


def test_gzipped_files_and_flat_folder(synthetic_root, tmp_path):
    flat = tmp_path / 'flat'
    flat.mkdir()
    for name in ('JapaneseVowels_TRAIN.ts', 'JapaneseVowels_TEST.ts'):
        series, labels = read_ts_file(synthetic_root / 'JapaneseVowels' / name)
        with gzip.open(flat / f'{name}.gz', 'wt', encoding='utf-8') as f, \
                open(synthetic_root / 'JapaneseVowels' / name, encoding='utf-8') as src:
            f.write(src.read())
        gz_series, gz_labels = read_ts_file(flat / f'{name}.gz')
        assert gz_labels == labels and all(np.array_equal(a, b) for a, b in zip(series, gz_series))
    assert find_japanese_vowels(flat) == (flat / 'JapaneseVowels_TRAIN.ts.gz', flat / 'JapaneseVowels_TEST.ts.gz')
    a, b = load_japanese_vowels(flat), load_japanese_vowels(synthetic_root)
    assert all(np.array_equal(a[s][i], b[s][i]) for s in ('train', 'test') for i in (0, 1))


def test_missing_folder_and_bad_files_raise_one_line_errors(synthetic_root, tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(DataNotFoundError) as err:
        create_datasets('japanese_vowels', data_dir=missing)
    message = str(err.value)
    assert '\n' not in message and str(missing) in message and 'JapaneseVowels_TRAIN.ts' in message
    assert 'pip download --no-deps aeon' in message
    (synthetic_root / 'JapaneseVowels' / 'JapaneseVowels_TEST.ts').unlink()  # half of the pair is not enough
    with pytest.raises(DataNotFoundError, match='JapaneseVowels not found'):
        load_japanese_vowels(synthetic_root)

    bad = tmp_path / 'bad'
    bad.mkdir()
    _write_ts(bad / 'JapaneseVowels_TRAIN.ts', [10, 12], [1, 10])
    _write_ts(bad / 'JapaneseVowels_TEST.ts', [10], [2])
    with pytest.raises(ValueError, match=r"class labels \['10'\] are not JapaneseVowels speakers"):
        load_japanese_vowels(bad)
    _write_ts(bad / 'JapaneseVowels_TRAIN.ts', [10, 12], [1, 2], channels=3)
    with pytest.raises(ValueError, match='12 channels, found \\[3\\]'):
        load_japanese_vowels(bad)


def test_search_order_data_dirs_then_installed_aeon_then_bundle(synthetic_root, tmp_path, monkeypatch):
    from flexconv_zoo.data import datasets
    aeon_data = tmp_path / 'site-packages' / 'aeon' / 'datasets' / 'data'
    aeon_data.mkdir(parents=True)
    (synthetic_root / 'JapaneseVowels').rename(aeon_data / 'JapaneseVowels')
    monkeypatch.setattr(datasets, '_aeon_data_dir', lambda: aeon_data)
    monkeypatch.setattr(datasets, 'default_data_dirs', lambda: [tmp_path / 'empty'])
    assert find_japanese_vowels()[0] == aeon_data / 'JapaneseVowels' / 'JapaneseVowels_TRAIN.ts'
    user = tmp_path / 'data'
    (user / 'JapaneseVowels').mkdir(parents=True)
    _write_ts(user / 'JapaneseVowels' / 'JapaneseVowels_TRAIN.ts', [8], [1])
    _write_ts(user / 'JapaneseVowels' / 'JapaneseVowels_TEST.ts', [8], [1])
    monkeypatch.setattr(datasets, 'default_data_dirs', lambda: [tmp_path / 'empty', user])
    assert find_japanese_vowels()[1] == user / 'JapaneseVowels' / 'JapaneseVowels_TEST.ts'  # data dirs come first


def test_bundled_copy_is_the_uea_archive(monkeypatch, tmp_path):
    """The copy shipped with the package is byte-identical to aeon 1.6.0's files and gives the archive's split."""
    for name, digest in AEON_SHA256.items():
        with gzip.open(BUNDLED_UEA_DIR / f'{name}.gz', 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    from flexconv_zoo.data import datasets
    monkeypatch.setattr(datasets, 'default_data_dirs', lambda: [tmp_path])
    monkeypatch.setattr(datasets, '_aeon_data_dir', lambda: None)
    assert find_japanese_vowels()[0] == BUNDLED_UEA_DIR / 'JapaneseVowels_TRAIN.ts.gz'  # the search ends there
    arrays = load_japanese_vowels(BUNDLED_UEA_DIR)
    (x, y), (xt, yt) = arrays['train'], arrays['test']
    assert x.shape == (270, 12, 29) and xt.shape == (370, 12, 29)
    assert np.bincount(y).tolist() == [30] * 9
    assert np.bincount(yt).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    assert np.isfinite(x).all() and np.isfinite(xt).all()
    lengths = [s.shape[1] for s in read_ts_file(BUNDLED_UEA_DIR / 'JapaneseVowels_TEST.ts.gz')[0]]
    assert (min(lengths), max(lengths)) == (7, 29)


@pytest.mark.skipif(not FOLDER.is_dir(), reason=f'hub_configs/{TAG} is not published')
def test_published_tag_reproduces_logits_and_card_accuracy():
    """The tag loads through timm, reproduces its reference logits, and gives the card's full test-split top-1."""
    model = timm.create_model(TAG, pretrained=True).eval()
    assert model.num_classes == 9 and model.in_chans == 12 and model.seq_len == 29
    assert model.pretrained_cfg['label_names'] == tuple('123456789')
    ref = safetensors.torch.load_file(str(FOLDER / 'reference_logits.safetensors'))
    with torch.no_grad():
        torch.testing.assert_close(model(ref['input']), ref['logits'], atol=1e-5, rtol=1e-5)
    full = [r for r in read_card_results(FOLDER) if r.split == 'test']
    assert len(full) == 1 and full[0].num_samples == 370 and full[0].input_size == 29
    splits = create_datasets('japanese_vowels', data_dir=BUNDLED_UEA_DIR)
    measured = evaluate(model, torch.utils.data.DataLoader(splits.test, batch_size=128))
    assert measured['count'] == 370
    assert abs(measured['top1'] - full[0].top1) < 0.01, (measured, full[0])
