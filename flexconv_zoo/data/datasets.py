"""Data sets for FlexNet / FlexTCN, all offline.

Images (uint8 ``(N, H, W, C)`` arrays, decoded once and cached):
  * ``cifar10``: ``cifar10_jpg_q75.tar.gz`` (the offline JPEG copy, decoded once into a ``.npz`` cache),
    the standard ``cifar-10-batches-py`` folder (torchvision ``CIFAR10(download=False)``) or an ImageFolder tree
    ``cifar10/{train,test}/<class>/*``.
  * ``fashion_mnist``: the original idx files (Debian package ``dataset-fashion-mnist`` installs them under
    ``/usr/share/datasets/fashion-mnist/``).
  * any ImageFolder tree: ``<dir>/{train,val|test}/<class>/*`` or ``<dir>/<class>/*``.
Sequences (float ``(N, C, L)`` tensors):
  * ``mnist1d``: regenerated offline with the ``mnist1d`` package (4,000 / 1,000 sequences of length 40).
  * ``speech_commands`` (20 MFCC x 161 steps, needs torchaudio) and ``speech_commands_raw`` (16,000 samples):
    the 10-word subset of Speech Commands v0.02 (``<dir>/SpeechCommands/speech_commands_v0.02/<word>/*.wav``).
  * ``character_trajectories``: UEA ``CharacterTrajectories_{TRAIN,TEST}.ts``, padded to 182 steps.
  * ``japanese_vowels``: UEA JapaneseVowels (9 speakers, 12 LPC channels, 7-29 steps padded to 29), its own
    270 / 370 train / test split; a copy ships with the package (``flexconv_zoo/data/uea``).
  Speech Commands and CharacterTrajectories use the paper's 70/15/15 stratified split of all examples.

Splits: ``train`` / ``val`` / ``test``. Where the data come with a train/test split, ``val`` is a fixed,
seeded hold-out of ``val_size`` training examples used for model selection; ``test`` is only reported.
"""
import gzip
import hashlib
import importlib.util
import io
import os
import re
import sys
import tarfile
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    'DataSplits', 'ArrayDataset', 'SplitView', 'create_datasets', 'DataNotFoundError', 'DataError', 'default_data_dirs',
    'default_cache_dir', 'load_cifar10_tarball', 'load_cifar10_batches', 'load_image_folder', 'load_fashion_mnist',
    'load_mnist1d', 'load_speech_commands', 'load_character_trajectories', 'load_japanese_vowels',
    'find_japanese_vowels', 'read_ts_file', 'stratified_split',
    'holdout_split', 'kfold_split', 'DATASETS', 'CIFAR10_CLASSES', 'SPEECH_COMMANDS_WORDS',
]

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
SPEECH_COMMANDS_WORDS = ('yes', 'no', 'up', 'down', 'left', 'right', 'on', 'off', 'stop', 'go')
CIFAR10_TARBALL = 'cifar10_jpg_q75.tar.gz'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not where they were looked for; the message says where to put them."""


class DataError(DataNotFoundError):
    """A data file is there but unusable (truncated, damaged, an inconsistent folder tree); the message names the
    file and what to do. A :class:`DataNotFoundError`, so every script reports it as one ``error:`` line."""


def default_data_dirs() -> List[Path]:
    """Folders searched for data: ``$FLEXCONV_ZOO_DATA``, ``../shared/data`` next to the repo, ``./data``."""
    dirs = []
    if os.environ.get('FLEXCONV_ZOO_DATA'):
        dirs.append(Path(os.environ['FLEXCONV_ZOO_DATA']))
    repo = Path(__file__).resolve().parents[2]
    dirs += [repo.parent / 'shared' / 'data', repo / 'shared' / 'data', Path.cwd() / 'data']
    return list(dict.fromkeys(dirs))


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: ``$FLEXCONV_ZOO_CACHE`` or ``~/.cache/flexconv_zoo``."""
    return Path(os.environ.get('FLEXCONV_ZOO_CACHE', Path.home() / '.cache' / 'flexconv_zoo'))


# ---------------------------------------------------------------------------------------------- datasets
@dataclass
class ArrayDataset:
    """Examples held in memory: uint8 images ``(N, H, W, C)`` or float sequences ``(N, C, L)``."""
    data: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def raw(self, index: int):
        """Example ``index`` as a CHW uint8 image tensor (images) or a float ``(C, L)`` tensor (sequences)."""
        from torchvision import tv_tensors
        x = torch.from_numpy(np.ascontiguousarray(self.data[index]))
        if x.dtype == torch.uint8:
            return tv_tensors.Image(x.permute(2, 0, 1)), int(self.targets[index])
        return x.float(), int(self.targets[index])


class SplitView(Dataset):
    """A split (a subset of indices) of a base data set with its own transform.

    With ``seed`` set, the random augmentation of example ``i`` in epoch ``e`` depends only on
    ``(seed, e, i)``: the same in every process, with any number of workers, and after a resume.
    """

    def __init__(self, base, indices: Sequence[int], transform: Optional[Callable] = None,
                 seed: Optional[int] = None):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.base.targets)[self.indices]

    def __getitem__(self, index: int):
        x, y = self.base.raw(int(self.indices[index]))
        if self.transform is None:
            return x, y
        if self.seed is None:
            return self.transform(x), y
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._sample_seed(index))
            return self.transform(x), y

    def _sample_seed(self, index: int) -> int:
        digest = hashlib.blake2b(f'{self.seed}/{self.epoch}/{index}'.encode(), digest_size=8).digest()
        return int.from_bytes(digest, 'little') & ((1 << 63) - 1)


class _FolderImages:
    """ImageFolder examples of any size, decoded on access (PIL)."""

    def __init__(self, samples: List[Tuple[str, int]]):
        self.samples = samples
        self.targets = np.array([t for _, t in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int):
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                return TF.to_image(img.convert('RGB')), target
        except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated or broken files
            raise DataError(f"Cannot decode image {path} ({type(e).__name__}: {e}): replace or delete it.") from None


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set and what a model needs to know about it."""
    name: str
    train: SplitView
    val: SplitView
    test: SplitView
    num_classes: int
    in_chans: int
    kind: str  # 'image' or 'sequence'
    native_size: Tuple[int, ...]  # (H, W) of images (None for mixed sizes) or (L,) of sequences
    class_names: Tuple[str, ...] = ()
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    source: str = ''

    def set_transforms(self, train: Optional[Callable], eval: Optional[Callable]) -> None:
        self.train.transform = train
        self.val.transform = eval
        self.test.transform = eval


# ---------------------------------------------------------------------------------------------- splits
def holdout_split(num: int, holdout: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(num)`` into ``(keep, holdout)`` index arrays (both sorted)."""
    if not 0 <= holdout < num:
        raise ValueError(f"Cannot hold out {holdout} of {num} examples for validation.")
    perm = np.random.default_rng(seed).permutation(num)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def kfold_split(targets: np.ndarray, fold: int, folds: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(keep, holdout)`` for cross-validation: the ``fold``-th of ``folds`` stratified, seeded folds of
    ``range(len(targets))``. Each class is dealt round-robin over the folds from a seeded shuffle, so the folds
    partition the examples and every class is spread over them as evenly as its count allows."""
    if not (folds >= 2 and 0 <= fold < folds):
        raise ValueError(f"Fold {fold} of {folds} does not exist: folds must be >= 2 and 0 <= fold < folds.")
    targets = np.asarray(targets)
    if len(targets) < folds:
        raise ValueError(f"Cannot split {len(targets)} examples into {folds} folds.")
    order = np.random.default_rng(seed).permutation(len(targets))
    order = order[np.argsort(targets[order], kind='stable')]  # grouped by class, shuffled within
    hold = np.zeros(len(targets), dtype=bool)
    hold[order[fold::folds]] = True
    return np.flatnonzero(~hold), np.flatnonzero(hold)


def stratified_split(targets: np.ndarray, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                     seed: int = 0) -> List[np.ndarray]:
    """Split indices per class by ``fractions`` (the paper's 70/15/15); seeded and sorted."""
    rng = np.random.default_rng(seed)
    parts: List[List[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        cuts = np.round(bounds * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


# ---------------------------------------------------------------------------------------------- helpers
def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write through a temporary file; an interrupted write (Ctrl-C, full disk) leaves nothing behind, and the
    temporary files of killed processes are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f'.{path.name}.*.tmp.npz'):
        match = re.fullmatch(rf'\.{re.escape(path.name)}\.(\d+)\.tmp\.npz', old.name)
        if match and not _pid_alive(int(match.group(1))):
            old.unlink(missing_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp.npz')
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier, interrupted write of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _read_cache(path: Path, keys: Sequence[str]) -> Optional[Dict[str, np.ndarray]]:
    """The arrays of a decode cache, or None when it is missing or damaged (then it is deleted and rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:  # allow_pickle=False: arrays only
            return {k: z[k] for k in keys}
    except Exception as e:  # BadZipFile, EOFError, ValueError, KeyError, zlib.error for a truncated file
        print(f"warning: decode cache {path} is damaged ({type(e).__name__}: {e}); rebuilding it", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def _file_digest(path: Path) -> str:
    """A content key for caches derived from ``path`` (0.05 s for the 19 MB CIFAR-10 tarball)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _find(candidates: Sequence[Path]) -> Optional[Path]:
    return next((p for p in candidates if p.exists()), None)


def _search_dirs(data_dir: Optional[Path]) -> List[Path]:
    return [Path(data_dir)] if data_dir is not None else default_data_dirs()


# ---------------------------------------------------------------------------------------------- CIFAR-10
def load_cifar10_tarball(path: Path, cache_dir: Optional[Path] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Decode ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` from the tarball once; later calls read the
    uint8 ``.npz`` cache, keyed by the tarball's content. Labels follow the sorted class folder names (the
    canonical CIFAR-10 order)."""
    from tqdm.auto import tqdm
    path = Path(path)
    keys = ('train_x', 'train_y', 'test_x', 'test_y')
    cache = Path(cache_dir or default_cache_dir()) / f'{path.name.split(".")[0]}_{_file_digest(path)}.npz'
    cached = _read_cache(cache, keys)
    if cached is not None:
        return {s: (cached[f'{s}_x'], cached[f'{s}_y']) for s in ('train', 'test')}
    from PIL import Image
    print(f"decoding {path} once into {cache} (under a minute)", file=sys.stderr, flush=True)
    found: Dict[str, List[Tuple[str, str, bytes]]] = {'train': [], 'test': []}
    pattern = re.compile(r'(?:^|/)(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png))$', re.IGNORECASE)
    try:
        with tarfile.open(path) as tar:
            for member in tqdm(tar, desc='reading', unit=' files', leave=False):
                match = pattern.search(member.name) if member.isfile() else None
                if match:
                    split, cls, name = match.groups()
                    found[split].append((cls, name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"Cannot read {path} ({type(e).__name__}: {e}): the file is truncated or damaged; copy it "
                        f"again.") from None
    classes = sorted({cls for items in found.values() for cls, _, _ in items})
    if not found['train'] or not found['test']:
        raise DataNotFoundError(f"{path} does not hold train/<class>/*.jpg and test/<class>/*.jpg images.")
    out = {}
    with tqdm(total=sum(map(len, found.values())), desc='decoding', unit=' img', leave=False) as bar:
        for split, items in found.items():
            items.sort(key=lambda t: (t[0], t[1]))
            images = []
            for cls, name, data in items:
                try:
                    images.append(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')))
                except (OSError, ValueError, SyntaxError) as e:
                    raise DataError(f"Cannot decode {split}/{cls}/{name} in {path} ({type(e).__name__}: {e}): the "
                                    f"tarball is damaged; copy it again.") from None
                bar.update(1)
            out[split] = (np.stack(images), np.array([classes.index(c) for c, _, _ in items], dtype=np.int64))
    _atomic_savez(cache, **{f'{s}_{k}': v for s, (x, y) in out.items() for k, v in (('x', x), ('y', y))})
    return out


def load_cifar10_batches(root: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The standard ``cifar-10-batches-py`` folder (``root`` is its parent), via torchvision, no download."""
    from torchvision.datasets import CIFAR10
    return {split: (ds.data, np.asarray(ds.targets, dtype=np.int64))
            for split, ds in (('train', CIFAR10(str(root), train=True, download=False)),
                              ('test', CIFAR10(str(root), train=False, download=False)))}


def _find_cifar10(data_dir: Optional[Path]) -> Tuple[str, Path]:
    for d in _search_dirs(data_dir):
        if (d / CIFAR10_TARBALL).is_file():
            return 'tarball', d / CIFAR10_TARBALL
        if (d / 'cifar-10-batches-py' / 'data_batch_1').is_file():
            return 'batches', d
        if (d / 'cifar10' / 'train').is_dir():
            return 'folder', d / 'cifar10'
    where = ', '.join(str(d) for d in _search_dirs(data_dir))
    raise DataNotFoundError(
        f"CIFAR-10 not found in {where}: put {CIFAR10_TARBALL}, the extracted cifar-10-batches-py folder or an "
        f"ImageFolder tree cifar10/{{train,test}}/<class>/ there, or pass --data-dir.")


# ---------------------------------------------------------------------------------------------- ImageFolder
def _folder_samples(root: Path, classes: Sequence[str]) -> List[Tuple[str, int]]:
    """``(path, class index)`` of every image under ``root/<class>/`` (torchvision's ImageFolder scan); empty
    classes are allowed here and reported by the caller with a message that says what to do."""
    from torchvision.datasets.folder import make_dataset
    return make_dataset(str(root), {cls: i for i, cls in enumerate(classes)}, extensions=IMAGE_EXTENSIONS,
                        allow_empty=True)


def load_image_folder(root: Path) -> Tuple[Dict[str, _FolderImages], Tuple[str, ...]]:
    """``root/{train,val|test}/<class>/*`` (or ``root/<class>/*``, all used for training).

    Returns ``({'train': ..., 'test': ...?}, class_names)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(
            f"Data folder {root} does not exist: create it as an ImageFolder tree {root}/train/<class>/*.png "
            f"(and {root}/test/<class>/*.png).")
    train_root = root / 'train' if (root / 'train').is_dir() else root
    classes = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir()))
    if not classes:
        raise DataNotFoundError(f"No class folders in {train_root}: expected {train_root}/<class>/<image files>.")
    splits = {'train': _FolderImages(_folder_samples(train_root, classes))}
    if not len(splits['train']):
        raise DataNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {train_root}/<class>/.")
    empty = sorted(set(classes) - {classes[t] for t in splits['train'].targets})
    if empty:  # would be a class the model is asked to predict but never sees
        raise DataError(f"Class folder(s) {', '.join(str(train_root / c) for c in empty)} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder(s).")
    test_root = _find([root / 'test', root / 'val']) if train_root != root else None
    if test_root is not None:
        unknown = sorted(p.name for p in test_root.iterdir() if p.is_dir() and p.name not in classes
                         and _folder_samples(test_root, [p.name]))
        if unknown:  # their images would silently drop out of the evaluation
            raise DataError(f"{test_root} has class folder(s) {', '.join(unknown)} that {train_root} lacks: add "
                            f"training images for them or move them out of {test_root}.")
        splits['test'] = _FolderImages(_folder_samples(test_root, classes))
    return splits, classes


def _folder_image_size(images: _FolderImages) -> Optional[Tuple[int, int]]:
    from PIL import Image
    sizes = set()
    for path, _ in images.samples[:32]:
        with Image.open(path) as img:
            sizes.add(img.size[::-1])
    return sizes.pop() if len(sizes) == 1 else None


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Optional[Path] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The original idx files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) as ``(N, 28, 28, 1)``."""
    dirs = [Path(root)] if root is not None else [FASHION_MNIST_DIR] + [d / 'fashion-mnist' for d in default_data_dirs()]
    out = {}
    for d in dirs:
        files = {}
        for split, prefix in (('train', 'train'), ('test', 't10k')):
            files[split] = [_find([d / f'{prefix}-{kind}-ubyte.gz', d / f'{prefix}-{kind}-ubyte'])
                            for kind in ('images-idx3', 'labels-idx1')]
        if all(p is not None for pair in files.values() for p in pair):
            for split, (img, lbl) in files.items():
                out[split] = (_read_idx(img)[..., None], _read_idx(lbl).astype(np.int64))
            return out
    raise DataNotFoundError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, dirs))}: install them with "
        f"`apt-get install dataset-fashion-mnist` (-> {FASHION_MNIST_DIR}) or pass --data-dir <folder with "
        f"train-images-idx3-ubyte.gz ...>.")


# ---------------------------------------------------------------------------------------------- MNIST-1D
def load_mnist1d(cache_dir: Optional[Path] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The standard MNIST-1D (4,000 train / 1,000 test sequences of 40 steps), regenerated offline."""
    cache = Path(cache_dir or default_cache_dir()) / 'mnist1d_default.npz'
    arrays = _read_cache(cache, ('train_x', 'train_y', 'test_x', 'test_y'))
    if arrays is None:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as e:
            raise DataNotFoundError("MNIST-1D needs the mnist1d package: pip install 'flexconv_zoo[data]'") from e
        d = make_dataset(get_dataset_args())  # never get_dataset(): it downloads first, without a timeout
        arrays = dict(train_x=d['x'], train_y=d['y'], test_x=d['x_test'], test_y=d['y_test'])
        _atomic_savez(cache, **arrays)
    return {s: (arrays[f'{s}_x'].astype(np.float32)[:, None, :], arrays[f'{s}_y'].astype(np.int64))
            for s in ('train', 'test')}


# ---------------------------------------------------------------------------------------------- Speech Commands
def _read_wav(path: Path) -> np.ndarray:
    """16-bit PCM mono wav -> float32 in [-1, 1]."""
    with wave.open(str(path), 'rb') as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM.")
        return np.frombuffer(w.readframes(w.getnframes()), dtype='<i2').astype(np.float32) / 32768.0


def _mfcc(audio: torch.Tensor) -> torch.Tensor:
    """The paper's features: 20 MFCCs (log-mel, 64 mels, n_fft 200, hop 100) -> ``(N, 20, 161)``."""
    try:
        import torchaudio
    except ImportError as e:
        raise DataNotFoundError(
            "speech_commands (MFCC) needs torchaudio (pip install torchaudio); speech_commands_raw does not.") from e
    mfcc = torchaudio.transforms.MFCC(log_mels=True, n_mfcc=20, melkwargs=dict(n_fft=200, n_mels=64))
    return mfcc(audio).squeeze(1) if audio.dim() == 3 else mfcc(audio)


def load_speech_commands(root: Optional[Path] = None, mfcc: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """All clips of the 10 command words, zero-padded to 16,000 samples: ``(N, 1, 16000)`` (raw) or
    ``(N, 20, 161)`` (MFCC). ``root`` holds ``SpeechCommands/speech_commands_v0.02/<word>/*.wav``
    (torchaudio's layout), ``speech_commands_v0.02/<word>/`` or the word folders themselves."""
    words_dir = None
    for d in _search_dirs(root):
        words_dir = _find([d / 'SpeechCommands' / 'speech_commands_v0.02', d / 'speech_commands_v0.02', d])
        if words_dir is not None and all((words_dir / w).is_dir() for w in SPEECH_COMMANDS_WORDS):
            break
        words_dir = None
    if words_dir is None:
        raise DataNotFoundError(
            f"Speech Commands v0.02 not found in {', '.join(map(str, _search_dirs(root)))}: extract "
            f"speech_commands_v0.02.tar.gz to <data-dir>/SpeechCommands/speech_commands_v0.02/ (word folders "
            f"{', '.join(SPEECH_COMMANDS_WORDS)}) and pass --data-dir <data-dir>.")
    xs, ys = [], []
    for label, word in enumerate(SPEECH_COMMANDS_WORDS):
        for path in sorted((words_dir / word).glob('*.wav')):
            audio = _read_wav(path)[:16000]
            xs.append(np.pad(audio, (0, 16000 - len(audio))))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs))[:, None, :]
    if mfcc:
        x = _mfcc(x)
    return x.numpy().astype(np.float32), np.array(ys, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- UEA .ts
def read_ts_file(path: Path) -> Tuple[List[np.ndarray], List[str]]:
    """A UEA/UCR ``.ts`` file (or ``.ts.gz``): per example a ``(C, L_i)`` float array and its class label string."""
    series, labels, in_data = [], [], False
    with (gzip.open if str(path).endswith('.gz') else open)(path, 'rt', encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            if not in_data:
                in_data = line.lower().startswith('@data')
                continue
            *dims, label = line.split(':')
            rows = [[float('nan') if v in ('?', 'NaN') else float(v) for v in d.split(',')] for d in dims]
            length = max(len(r) for r in rows)
            series.append(np.array([r + [float('nan')] * (length - len(r)) for r in rows], dtype=np.float32))
            labels.append(label.strip())
    if not series:
        raise ValueError(f"{path} holds no @data section with examples.")
    return series, labels


def _pad_repeat_last(series: List[np.ndarray], length: int) -> np.ndarray:
    """Pad every ``(C, L_i)`` series to ``length`` by repeating its last valid value (missing values too)."""
    out = np.empty((len(series), series[0].shape[0], length), dtype=np.float32)
    for i, s in enumerate(series):
        valid = int(np.max(np.nonzero(~np.isnan(s).all(0))[0], initial=-1)) + 1
        s = s[:, :max(valid, 1)]
        s = np.nan_to_num(s, nan=0.0)
        out[i, :, :s.shape[1]] = s[:, :length]
        out[i, :, s.shape[1]:] = s[:, -1:]
    return out


def load_character_trajectories(root: Optional[Path] = None, length: int = 182) -> Tuple[np.ndarray, np.ndarray]:
    """CharacterTrajectories (UEA, 20 classes, 3 channels): TRAIN and TEST files together, padded to 182."""
    names = ('CharacterTrajectories_TRAIN.ts', 'CharacterTrajectories_TEST.ts')
    for d in _search_dirs(root):
        folder = _find([d / 'CharacterTrajectories', d])
        if folder is not None and all((folder / n).is_file() for n in names):
            series, labels = [], []
            for n in names:
                s, lbl = read_ts_file(folder / n)
                series += s
                labels += lbl
            classes = sorted(set(labels), key=lambda c: (len(c), c))
            return _pad_repeat_last(series, length), np.array([classes.index(c) for c in labels], dtype=np.int64)
    raise DataNotFoundError(
        f"CharacterTrajectories not found in {', '.join(map(str, _search_dirs(root)))}: put "
        f"CharacterTrajectories/{names[0]} and {names[1]} (UEA archive, .ts format) there and pass --data-dir.")


JAPANESE_VOWELS_FILES = ('JapaneseVowels_TRAIN.ts', 'JapaneseVowels_TEST.ts')
JAPANESE_VOWELS_CLASSES = tuple(str(speaker) for speaker in range(1, 10))  # the files' labels: speakers 1-9
JAPANESE_VOWELS_LENGTH = 29  # the longest example (test split); training examples have 7-26 steps
BUNDLED_UEA_DIR = Path(__file__).resolve().parent / 'uea'  # gzipped copies of the aeon 1.6.0 files


def _aeon_data_dir() -> Optional[Path]:
    """``aeon/datasets/data`` of an installed aeon, located without importing it (aeon's imports are heavy)."""
    try:
        spec = importlib.util.find_spec('aeon')
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) / 'datasets' / 'data' if locations else None


def find_japanese_vowels(root: Optional[Path] = None) -> Tuple[Path, Path]:
    """The UEA JapaneseVowels ``(TRAIN, TEST)`` files, ``.ts`` or ``.ts.gz``.

    With ``root``, only ``root/JapaneseVowels/`` and ``root`` are searched. Otherwise: ``JapaneseVowels/`` in
    :func:`default_data_dirs`, an installed ``aeon`` package's ``datasets/data/JapaneseVowels``, then the copy
    bundled with flexconv_zoo.
    """
    if root is not None:
        folders = [Path(root) / 'JapaneseVowels', Path(root)]
    else:
        aeon = _aeon_data_dir()
        folders = [f for d in default_data_dirs() for f in (d / 'JapaneseVowels', d)]
        folders += ([aeon / 'JapaneseVowels'] if aeon is not None else []) + [BUNDLED_UEA_DIR]
    for folder in folders:
        for suffix in ('', '.gz'):
            files = tuple(folder / (name + suffix) for name in JAPANESE_VOWELS_FILES)
            if all(f.is_file() for f in files):
                return files
    raise DataNotFoundError(
        f"JapaneseVowels not found in {', '.join(map(str, folders))}: put {JAPANESE_VOWELS_FILES[0]} and "
        f"{JAPANESE_VOWELS_FILES[1]} (UEA .ts format, e.g. aeon/datasets/data/JapaneseVowels/ from "
        f"`pip download --no-deps aeon==1.6.0`) in <dir>/JapaneseVowels/, or omit --data-dir to use the bundled copy.")


def load_japanese_vowels(root: Optional[Path] = None, length: int = JAPANESE_VOWELS_LENGTH,
                         align: str = 'end') -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """UEA JapaneseVowels (Kudo et al. 1999): 9 speakers, 12 LPC cepstrum channels, 7-29 steps.

    Returns ``{'train': (x, y), 'test': (x, y)}`` with the archive's own split (270 / 370 examples), ``x`` float32
    ``(N, 12, length)``, ``y`` the speaker index 0-8 (labels ``'1'``-``'9'`` in the files). ``align='end'`` puts
    every utterance's last step at the last position and pads in front by repeating its first step, so that a
    causal model read at its last step (FlexTCN) sees the whole utterance; ``align='start'`` pads after the
    utterance by repeating its last step (as CharacterTrajectories). Files are found by :func:`find_japanese_vowels`.
    """
    if align not in ('end', 'start'):
        raise ValueError(f"align must be 'end' or 'start', got {align!r}.")
    out = {}
    for split, path in zip(('train', 'test'), find_japanese_vowels(root)):
        series, labels = read_ts_file(path)
        unknown = sorted(set(labels) - set(JAPANESE_VOWELS_CLASSES))
        if unknown:
            raise ValueError(f"{path}: class labels {unknown} are not JapaneseVowels speakers 1-9.")
        if any(s.shape[0] != 12 for s in series):
            raise ValueError(f"{path}: JapaneseVowels examples have 12 channels, found "
                             f"{sorted({s.shape[0] for s in series})}.")
        y = np.array([JAPANESE_VOWELS_CLASSES.index(label) for label in labels], dtype=np.int64)
        out[split] = (_pad_repeat_last(series, length) if align == 'start' else _pad_repeat_first(series, length), y)
    return out


def _pad_repeat_first(series: List[np.ndarray], length: int) -> np.ndarray:
    """Right-align every ``(C, L_i)`` series in ``length`` steps (its last ``length`` if longer), padding in front
    by repeating its first step: :func:`_pad_repeat_last` on the time-reversed series."""
    flipped = [np.ascontiguousarray(s[:, :max(1, int(np.max(np.nonzero(~np.isnan(s).all(0))[0], initial=-1)) + 1)]
                                    [:, ::-1]) for s in series]  # trailing all-missing steps dropped first
    return np.ascontiguousarray(_pad_repeat_last(flipped, length)[:, :, ::-1])

# ---------------------------------------------------------------------------------------------- factory
DATASETS = ('cifar10', 'fashion_mnist', 'mnist1d', 'speech_commands', 'speech_commands_raw',
            'character_trajectories', 'japanese_vowels')


def _subset(indices: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    return np.sort(np.random.default_rng(seed + 1).choice(indices, size=limit, replace=False))


def _from_train_test(name: str, train, test, val_size: int, seed: int, val_fold: Optional[Tuple[int, int]] = None,
                     **info) -> DataSplits:
    if val_fold is not None:
        keep, hold = kfold_split(train.targets, *val_fold, seed=seed)
    else:
        keep, hold = holdout_split(len(train), min(val_size, len(train) // 5) if val_size else 0, seed)
    return DataSplits(name, SplitView(train, keep, seed=seed), SplitView(train, hold),
                      SplitView(test, np.arange(len(test))), **info)


def _from_all(name: str, data: ArrayDataset, seed: int, **info) -> DataSplits:
    tr, va, te = stratified_split(data.targets, (0.7, 0.15, 0.15), seed)
    return DataSplits(name, SplitView(data, tr, seed=seed), SplitView(data, va), SplitView(data, te), **info)


def create_datasets(
        name: str,
        data_dir: Optional[os.PathLike] = None,
        cache_dir: Optional[os.PathLike] = None,
        val_size: int = 5000,
        seed: int = 0,
        train_subset: Optional[int] = None,
        eval_subset: Optional[int] = None,
        val_fold: Optional[Tuple[int, int]] = None,
) -> DataSplits:
    """Train / val / test splits of data set ``name`` (one of :data:`DATASETS`, or the path of an ImageFolder).

    Args:
        name: Data set name or an ImageFolder directory.
        data_dir: Folder holding the files (default: :func:`default_data_dirs`).
        cache_dir: Where decoded arrays are cached (default: :func:`default_cache_dir`).
        val_size: Training examples held out for validation (at most a fifth of them) where the data come with
            only a train/test split.
        seed: Seed of the hold-out split and of the per-example augmentation.
        train_subset, eval_subset: Use a seeded random subset of at most this many train / val+test examples.
        val_fold: ``(fold, folds)``: hold out that stratified fold of the training examples instead of ``val_size``
            of them (:func:`kfold_split`; cross-validation on small sets), where the data come with a test split.
    """
    data_dir = Path(data_dir) if data_dir is not None else None
    splits = _load(name, data_dir, cache_dir, val_size, seed, val_fold)
    splits.train.indices = _subset(splits.train.indices, train_subset, seed)
    splits.val.indices = _subset(splits.val.indices, eval_subset, seed)
    splits.test.indices = _subset(splits.test.indices, eval_subset, seed)
    return splits


def _load(name: str, data_dir: Optional[Path], cache_dir, val_size: int, seed: int,
          val_fold: Optional[Tuple[int, int]] = None) -> DataSplits:
    key = name.lower().replace('-', '_')
    if key == 'cifar10':
        kind, path = _find_cifar10(data_dir)
        if kind == 'folder':
            return _image_folder_splits(path, val_size, seed, name='cifar10', val_fold=val_fold)
        arrays = load_cifar10_tarball(path, cache_dir) if kind == 'tarball' else load_cifar10_batches(path)
        return _from_train_test('cifar10', ArrayDataset(*arrays['train']), ArrayDataset(*arrays['test']), val_size,
                                seed, val_fold=val_fold, num_classes=10, in_chans=3, kind='image',
                                native_size=(32, 32), class_names=CIFAR10_CLASSES, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                source=str(path))
    if key == 'fashion_mnist':
        arrays = load_fashion_mnist(data_dir)
        return _from_train_test('fashion_mnist', ArrayDataset(*arrays['train']), ArrayDataset(*arrays['test']),
                                val_size, seed, val_fold=val_fold, num_classes=10, in_chans=1, kind='image',
                                native_size=(28, 28), mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    if key == 'mnist1d':
        arrays = load_mnist1d(cache_dir)
        return _from_train_test('mnist1d', ArrayDataset(*arrays['train']), ArrayDataset(*arrays['test']),
                                min(val_size, 500), seed, val_fold=val_fold, num_classes=10, in_chans=1,
                                kind='sequence', native_size=(40,))
    if val_fold is not None and key in ('speech_commands', 'speech_commands_raw', 'character_trajectories'):
        raise ValueError(f"{name} is split 70/15/15 into train/val/test as in the paper: a --val-fold hold-out needs "
                         f"a data set with its own test split.")
    if key in ('speech_commands', 'speech_commands_raw'):
        x, y = load_speech_commands(data_dir, mfcc=key == 'speech_commands')
        return _from_all(key, ArrayDataset(x, y), seed, num_classes=10, in_chans=x.shape[1], kind='sequence',
                         native_size=(x.shape[2],), class_names=SPEECH_COMMANDS_WORDS)
    if key == 'character_trajectories':
        x, y = load_character_trajectories(data_dir)
        return _from_all(key, ArrayDataset(x, y), seed, num_classes=int(y.max()) + 1, in_chans=3, kind='sequence',
                         native_size=(x.shape[2],))
    if key == 'japanese_vowels':
        arrays = load_japanese_vowels(data_dir)
        return _from_train_test(key, ArrayDataset(*arrays['train']), ArrayDataset(*arrays['test']), val_size, seed,
                                val_fold=val_fold, num_classes=9, in_chans=12, kind='sequence',
                                native_size=(JAPANESE_VOWELS_LENGTH,), class_names=JAPANESE_VOWELS_CLASSES,
                                source=str(find_japanese_vowels(data_dir)[0].parent))
    if os.sep in name or '/' in name or Path(name).exists():
        return _image_folder_splits(Path(name), val_size, seed, val_fold=val_fold)
    raise ValueError(f"Unknown data set {name!r}: use one of {', '.join(DATASETS)} or an ImageFolder path.")


def _image_folder_splits(root: Path, val_size: int, seed: int, name: Optional[str] = None,
                         val_fold: Optional[Tuple[int, int]] = None) -> DataSplits:
    parts, classes = load_image_folder(root)
    train = parts['train']
    info = dict(num_classes=len(classes), in_chans=3, kind='image', native_size=_folder_image_size(train),
                class_names=classes, source=str(root))
    if 'test' in parts:
        return _from_train_test(name or root.name, train, parts['test'], val_size, seed, val_fold=val_fold, **info)
    if val_fold is not None:
        raise ValueError(f"{root} has no test split: a --val-fold hold-out needs a data set with its own test split.")
    tr, va, te = stratified_split(train.targets, (0.7, 0.15, 0.15), seed)
    return DataSplits(name or root.name, SplitView(train, tr, seed=seed), SplitView(train, va),
                      SplitView(train, te), **info)
