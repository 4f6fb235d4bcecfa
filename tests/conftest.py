"""Shared test settings."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # scripts/ and tests/ helpers import from the checkout


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='module')
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_image_folder(root: Path, size: int, splits=(('train', 24), ('test', 8)), classes: int = 3) -> Path:
    """An ImageFolder tree ``root/{train,test}/class<c>/<i>.png`` of ``size`` px images, each class with its own
    dominant colour channel (so a tiny model learns something in a few steps)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in splits:
        for c in range(classes):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(folder / f'{i}.png')
    return root


def write_cifar_tarball(root: Path, classes=('airplane', 'bird', 'cat'), splits=(('train', 12), ('test', 4))) -> Path:
    """``root/cifar10_jpg_q75.tar.gz`` in the layout of the offline CIFAR-10 copy (``cifar10/<split>/<class>/*.jpg``,
    32 px JPEG q75), each class with its own dominant colour channel."""
    import io
    import tarfile
    from PIL import Image
    rng = np.random.default_rng(0)
    with tarfile.open(root / 'cifar10_jpg_q75.tar.gz', 'w:gz') as tar:
        for split, n in splits:
            for c, cls in enumerate(classes):
                for i in range(n):
                    img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                    img[..., c % 3] += 150
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, 'JPEG', quality=75)
                    info = tarfile.TarInfo(f'cifar10/{split}/{cls}/{i:04d}.jpg')
                    info.size = buf.getbuffer().nbytes
                    buf.seek(0)
                    tar.addfile(info, buf)
    return root
