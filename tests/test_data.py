"""Data sets and resolution-aware transforms (flexconv_zoo.data)."""
import gzip
import io
import tarfile
import wave

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.data import (
    DataNotFoundError, create_datasets, create_eval_transform, create_train_transform, eval_transform_for,
    model_input_size,
)
from flexconv_zoo.data.datasets import (
    SPEECH_COMMANDS_WORDS, holdout_split, load_cifar10_tarball, load_fashion_mnist, read_ts_file, stratified_split,
)

CFG = dict(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)


def _image(h: int, w: int, chans: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (chans, h, w), dtype=torch.uint8)


@pytest.mark.parametrize('hw', [(32, 32), (20, 20), (40, 24), (17, 50), (8, 8)])
@pytest.mark.parametrize('size', [(16, 16), (12, 20)])
def test_transforms_give_requested_size(hw, size):
    cfg = dict(CFG, input_size=(3, *size))
    img = _image(*hw)
    for tf in (create_train_transform(cfg, base_size=(32, 32)), create_train_transform(cfg),
               create_eval_transform(cfg)):
        out = tf(img)
        assert out.shape == (3, *size) and out.dtype == torch.float32
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())  # PIL input too
    assert create_eval_transform(cfg)(pil).shape == (3, *size)


def test_eval_transform_normalises_with_config_stats():
    img = torch.full((3, 16, 16), 255, dtype=torch.uint8)
    out = create_eval_transform(CFG)(img)
    assert torch.allclose(out, torch.full_like(out, (1.0 - 0.5) / 0.25))


def test_grey_images_get_one_channel_stats():
    cfg = dict(CFG, input_size=(1, 14, 14))
    assert create_eval_transform(cfg)(_image(28, 28, chans=1)).shape == (1, 14, 14)


def test_eval_transform_and_model_size_cannot_disagree():
    model = timm.create_model('flexnet8', img_size=16, widths=(8,), kernel_hidden=8)
    assert model_input_size(model) == (3, 16, 16)  # the cfg follows img_size at creation
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))  # a stale config
    with pytest.raises(ValueError, match='set_input_size'):
        model_input_size(model)  # config advertises 32 px, kernels are on the 16 px grid
    model.set_input_size(img_size=16)
    cfg = resolve_data_config(model=model)
    assert create_eval_transform(cfg, model=model).input_size == (3, 16, 16)
    with pytest.raises(ValueError, match='disagrees'):
        create_eval_transform(dict(cfg, input_size=(3, 32, 32)), model=model)


def test_eval_transform_for_sets_model_and_transform_together():
    model = timm.create_model('flexnet8', img_size=16, widths=(8,), kernel_hidden=8)
    tf = eval_transform_for(model, 24)
    assert tf.input_size == (3, 24, 24)
    assert tuple(model.pretrained_cfg['input_size']) == (3, 24, 24)
    assert all(layer.grid == (25, 25) for layer in model.flexconv_layers())
    assert tf(_image(32, 32)).shape == (3, 24, 24)


def test_holdout_and_stratified_splits():
    keep, hold = holdout_split(100, 20, seed=3)
    assert len(hold) == 20 and len(keep) == 80 and not set(keep) & set(hold)
    assert np.array_equal(hold, holdout_split(100, 20, seed=3)[1])
    assert not np.array_equal(hold, holdout_split(100, 20, seed=4)[1])
    targets = np.repeat(np.arange(4), [20, 40, 60, 80])
    tr, va, te = stratified_split(targets, (0.7, 0.15, 0.15), seed=0)
    assert len(tr) + len(va) + len(te) == 200 and not set(tr) & set(va) | set(tr) & set(te) | set(va) & set(te)
    for cls, n in zip(range(4), [20, 40, 60, 80]):
        assert (targets[tr] == cls).sum() == round(0.7 * n)
        assert (targets[va] == cls).sum() == round(0.85 * n) - round(0.7 * n)


def _write_folder(root, classes=('a', 'b'), n=5, size=(20, 24)):
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')


def test_image_folder_splits_and_seeded_augmentation(tmp_path):
    _write_folder(tmp_path, n=10)
    splits = create_datasets(str(tmp_path), val_size=4, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 20)
    assert splits.class_names == ('a', 'b') and splits.native_size == (20, 24)
    splits.set_transforms(create_train_transform(CFG, base_size=(20, 24)), create_eval_transform(CFG))
    a, b = splits.train[3][0], splits.train[3][0]
    assert torch.equal(a, b)  # same (seed, epoch, index): same augmentation
    splits.train.set_epoch(1)
    assert not torch.equal(a, splits.train[3][0])
    assert splits.test[0][0].shape == (3, 16, 16)


def test_missing_data_gives_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match='does not exist'):
        create_datasets(str(tmp_path / 'nope'))
    with pytest.raises(DataNotFoundError, match='cifar10_jpg_q75.tar.gz'):
        create_datasets('cifar10', data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match='dataset-fashion-mnist'):
        create_datasets('fashion_mnist', data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match='speech_commands_v0.02'):
        create_datasets('speech_commands_raw', data_dir=tmp_path)
    with pytest.raises(ValueError, match='Unknown data set'):
        create_datasets('imagenet22k')


def test_cifar10_tarball_is_decoded_once_into_cache(tmp_path):
    rng = np.random.default_rng(0)
    tar_path = tmp_path / 'cifar10_jpg_q75.tar.gz'
    with tarfile.open(tar_path, 'w:gz') as tar:
        for split, n in (('train', 6), ('test', 2)):
            for cls in ('cat', 'airplane'):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, 'JPEG', quality=75)
                    info = tarfile.TarInfo(f'cifar10/{split}/{cls}/{i:04d}.jpg')
                    info.size = buf.getbuffer().nbytes
                    buf.seek(0)
                    tar.addfile(info, buf)
    cache = tmp_path / 'cache'
    first = load_cifar10_tarball(tar_path, cache)
    assert first['train'][0].shape == (12, 32, 32, 3) and first['train'][0].dtype == np.uint8
    assert list(first['train'][1]) == [0] * 6 + [1] * 6  # sorted class names: airplane, cat
    assert len(list(cache.glob('*.npz'))) == 1
    second = load_cifar10_tarball(tar_path, cache)
    assert np.array_equal(first['test'][0], second['test'][0])
    splits = create_datasets('cifar10', data_dir=tmp_path, cache_dir=cache, val_size=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 4)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (('train', 30), ('t10k', 10)):
        _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
    arrays = load_fashion_mnist(tmp_path)
    assert arrays['train'][0].shape == (30, 28, 28, 1) and list(arrays['test'][1]) == list(range(10))
    splits = create_datasets('fashion_mnist', data_dir=tmp_path, val_size=5)
    assert splits.in_chans == 1 and (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 10)


def test_mnist1d_offline(tmp_path):
    splits = create_datasets('mnist1d', cache_dir=tmp_path, val_size=500)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    x, y = splits.train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and 0 <= y < 10


def _write_wav(path, samples):
    with wave.open(str(path), 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.asarray(samples) * 32767).astype('<i2').tobytes())


def test_speech_commands_raw_synthetic_files(tmp_path):
    root = tmp_path / 'SpeechCommands' / 'speech_commands_v0.02'
    rng = np.random.default_rng(0)
    for word in SPEECH_COMMANDS_WORDS + ('_background_noise_', 'marvin'):  # extra folders are ignored
        (root / word).mkdir(parents=True)
        for i in range(20):
            _write_wav(root / word / f'clip{i}_nohash_0.wav', rng.uniform(-0.5, 0.5, 8000 + 400 * i))
    splits = create_datasets('speech_commands_raw', data_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (140, 30, 30)
    assert np.bincount(splits.val.targets).tolist() == [3] * 10  # stratified
    x, _ = splits.train[0]
    assert x.shape == (1, 16000) and x.abs().max() <= 0.5 + 1e-4


def test_character_trajectories_ts_files(tmp_path):
    folder = tmp_path / 'CharacterTrajectories'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (('TRAIN', 12), ('TEST', 8)):
        lines = ['# synthetic', '@problemName CharacterTrajectories', '@classLabel true 1 2 3 4', '@data']
        for i in range(n):
            length = 60 + 5 * i
            dims = [','.join(f'{v:.3f}' for v in rng.normal(size=length)) for _ in range(3)]
            lines.append(':'.join(dims) + f':{i % 4 + 1}')
        (folder / f'CharacterTrajectories_{split}.ts').write_text('\n'.join(lines) + '\n')
    series, labels = read_ts_file(folder / 'CharacterTrajectories_TRAIN.ts')
    assert len(series) == 12 and series[0].shape == (3, 60) and labels[:2] == ['1', '2']
    splits = create_datasets('character_trajectories', data_dir=tmp_path)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20 and splits.num_classes == 4
    x, _ = splits.train.base.raw(0)
    assert x.shape == (3, 182)
    assert torch.equal(x[:, 59:], x[:, 59:60].expand(-1, 123))  # padded by repeating the last step


# ------------------------------------------------------------------------------------------------ issue 12
def _write_tarball(path, classes=('cat', 'airplane'), seed=0):
    """A tiny CIFAR-10-like tarball; the images of ``classes[i]`` are drawn i-th, so swapping the names gives a
    tarball of exactly the same size and other content."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, 'w') as tar:
        for split, n in (('train', 3), ('test', 1)):
            for cls in classes:
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, 'PNG')
                    info = tarfile.TarInfo(f'cifar10/{split}/{cls}/{i:04d}.png')
                    info.size = buf.getbuffer().nbytes
                    buf.seek(0)
                    tar.addfile(info, buf)


def test_decode_cache_is_keyed_by_content_and_rebuilt_when_damaged(tmp_path, capsys):
    from flexconv_zoo.data.datasets import _file_digest, load_cifar10_tarball
    tar_path, cache = tmp_path / 'cifar10_jpg_q75.tar.gz', tmp_path / 'cache'
    _write_tarball(tar_path)
    first = load_cifar10_tarball(tar_path, cache)
    assert 'decoding' in capsys.readouterr().err  # a minute-long step says what it does
    size = tar_path.stat().st_size
    _write_tarball(tar_path, classes=('airplane', 'cat'))  # same name and size, other content
    assert tar_path.stat().st_size == size
    swapped = load_cifar10_tarball(tar_path, cache)
    assert not np.array_equal(swapped['train'][0], first['train'][0])
    npz = cache / f'cifar10_jpg_q75_{_file_digest(tar_path)}.npz'
    npz.write_bytes(npz.read_bytes()[:1000])  # truncated cache: rebuilt, never a BadZipFile
    again = load_cifar10_tarball(tar_path, cache)
    assert np.array_equal(again['train'][0], swapped['train'][0]) and 'rebuilding' in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith('.')) == []  # no temporary files


def test_interrupted_decode_leaves_no_temporary_file(tmp_path, monkeypatch):
    from flexconv_zoo.data import datasets
    tar_path, cache = tmp_path / 'cifar10_jpg_q75.tar.gz', tmp_path / 'cache'
    _write_tarball(tar_path)
    real_savez = np.savez

    def interrupted(file, **arrays):
        real_savez(file, **arrays)
        raise KeyboardInterrupt  # Ctrl-C after the big write, before the rename

    monkeypatch.setattr(datasets.np, 'savez', interrupted)
    with pytest.raises(KeyboardInterrupt):
        datasets.load_cifar10_tarball(tar_path, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(datasets.np, 'savez', real_savez)
    dead = 4_000_000  # a killed process's leftover (no such pid) is cleaned up by the next decode
    stale = cache / f'.cifar10_jpg_q75_{datasets._file_digest(tar_path)}.npz.{dead}.tmp.npz'
    stale.write_bytes(b'x' * 100)
    datasets.load_cifar10_tarball(tar_path, cache)
    assert [p.name for p in cache.iterdir()] == [stale.name[1:].split(f'.{dead}')[0]]


def test_truncated_tarball_and_image_errors_name_the_file(tmp_path):
    from flexconv_zoo.data.datasets import DataError, load_cifar10_tarball
    tar_path = tmp_path / 'cifar10_jpg_q75.tar.gz'
    _write_tarball(tar_path)
    gz = tmp_path / 'copy.tar.gz'
    with tarfile.open(gz, 'w:gz') as tar:
        tar.add(tar_path, arcname='inner.tar')
    gz.write_bytes(gz.read_bytes()[:len(gz.read_bytes()) // 2])
    with pytest.raises(DataError, match=f'Cannot read {gz}.*truncated or damaged'):
        load_cifar10_tarball(gz, tmp_path / 'cache')
    _write_folder(tmp_path / 'folder', n=3)
    bad = tmp_path / 'folder' / 'train' / 'a' / '1.png'
    bad.write_bytes(bad.read_bytes()[:60])
    splits = create_datasets(str(tmp_path / 'folder'), val_size=0)
    with pytest.raises(DataError, match=f'Cannot decode image {bad}'):
        [splits.train[i] for i in range(len(splits.train))]


def test_image_folder_class_mismatches_are_errors(tmp_path):
    from flexconv_zoo.data.datasets import DataError
    _write_folder(tmp_path / 'empty', n=3)
    (tmp_path / 'empty' / 'train' / 'zz_empty').mkdir()
    with pytest.raises(DataError, match='zz_empty hold no images'):
        create_datasets(str(tmp_path / 'empty'))
    _write_folder(tmp_path / 'extra', n=3)
    (tmp_path / 'extra' / 'test' / 'c').mkdir()
    Image.new('RGB', (24, 20)).save(tmp_path / 'extra' / 'test' / 'c' / '0.png')
    with pytest.raises(DataError, match='class folder.s. c that'):
        create_datasets(str(tmp_path / 'extra'))


# ---------------------------------------------------------------------------------------------- batch augment
@pytest.mark.parametrize('n_images, batch_size, num_processes', [(20, 4, 2), (18, 4, 2), (9, 4, 3), (3, 2, 4)])
def test_in_memory_batches_give_every_process_the_same_number_of_batches(n_images, batch_size, num_processes):
    """An odd split (20 images / 4 = 5 batches over 2 processes) gives every process ceil(5 / 2) = 3 batches, or the
    processes' collectives and learning-rate schedules would not match; the padding wraps around the epoch's
    permutation, as Accelerate's even_batches does."""
    from flexconv_zoo.data.batch_augment import BatchAugment, InMemoryBatches
    images = np.random.default_rng(0).integers(0, 256, (n_images, 6, 6, 3), dtype=np.uint8)
    make = lambda rank=0, n=1: InMemoryBatches(images, np.arange(n_images), batch_size, BatchAugment(6),  # noqa: E731
                                               seed=1, rank=rank, num_processes=n)
    order = torch.cat([y for _, y in make().batches(epoch=3)])  # one process: the epoch's permutation
    total = -(-n_images // batch_size)
    per_process = -(-total // num_processes)
    shards = [list(make(r, num_processes).batches(epoch=3)) for r in range(num_processes)]
    assert [len(s) for s in shards] == [per_process] * num_processes
    assert [len(make(r, num_processes)) for r in range(num_processes)] == [per_process] * num_processes
    for g in range(per_process * num_processes):
        _, y = shards[g % num_processes][g // num_processes]
        if g < total:  # the natural batches, the last one possibly short
            assert y.tolist() == order[g * batch_size:(g + 1) * batch_size].tolist()
        else:  # padding: the permutation again from its start
            first = (g - total) * batch_size
            assert y.tolist() == [order[(first + k) % n_images].item() for k in range(batch_size)]
    resumed = list(make(1, num_processes).batches(epoch=3, start=per_process - 1))  # a resume sees the same batch
    assert torch.equal(resumed[0][0], shards[1][-1][0]) and torch.equal(resumed[0][1], shards[1][-1][1])
