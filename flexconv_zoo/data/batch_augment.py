"""Whole-batch augmentation of in-memory uint8 images: the fast training input path (``train.py --batch-augment``).

The per-image torchvision pipeline decodes nothing (the images are already uint8 arrays) but still spends most of
its time in Python, image by image. Here a batch is cropped, flipped, resized and normalised with a handful of
tensor operations, and every random draw comes from a generator seeded by ``(seed, epoch, batch)``, so a batch is
the same after a resume, whatever came before it. The recipe is the CIFAR one of ``create_train_transform``:
random crop with zero padding and horizontal flip at the native size, then a resize to the training size.
"""
import hashlib
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['BatchAugment', 'InMemoryBatches']


def _seed(*parts: int) -> int:
    digest = hashlib.blake2b('/'.join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') & ((1 << 63) - 1)


class BatchAugment:
    """Random crop (zero padding), horizontal flip, resize and normalisation of a ``(B, C, H, W)`` uint8 batch.

    Args:
        size: Output size (square int or ``(H, W)``); the crop happens at the input's own size first.
        padding: Zero padding of the random crop (0: no crop).
        hflip: Flip half of the images horizontally.
        mean, std: Per-channel normalisation of the ``[0, 1]`` scaled images.
    """

    def __init__(self, size, padding: int = 4, hflip: bool = True, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,)):
        self.size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        self.padding, self.hflip = int(padding), bool(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"BatchAugment takes a (B, C, H, W) uint8 batch, got {images.dtype} "
                             f"{tuple(images.shape)}.")
        b, _, h, w = images.shape
        x = images
        if self.padding > 0:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
            rows = (dy + torch.arange(h)).view(b, 1, h, 1)
            cols = (dx + torch.arange(w)).view(b, 1, 1, w)
            x = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]
        if self.hflip:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        x = x.float().div_(255)
        if (h, w) != self.size:
            x = F.interpolate(x, size=self.size, mode='bilinear', antialias=True, align_corners=False)
        return (x - self.mean) / self.std


class InMemoryBatches:
    """Training batches drawn from uint8 images held in memory, augmented a whole batch at a time.

    The order of an epoch is a permutation seeded by ``(seed, epoch)``; with ``num_processes > 1`` process ``rank``
    takes batches ``rank, rank + n, ...`` (Accelerate's sharding of a prepared DataLoader). Every process gets the
    same number of batches, ``ceil(batches / n)``: the missing ones continue from the start of the epoch's
    permutation (Accelerate's ``even_batches``), so collectives pair up and every process plans the same
    learning-rate schedule. ``batches(epoch, start)`` starts at batch ``start`` without drawing the skipped ones.

    Args:
        images: ``(N, H, W, C)`` uint8 array (the layout of the data sets' ``ArrayDataset``).
        targets: ``(N,)`` integer labels.
        batch_size: Per-process batch size; the last, smaller batch of an epoch is kept.
        augment: Applied to every batch; ``set_size`` changes its output size (progressive resolution).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, batch_size: int, augment: BatchAugment,
                 seed: int = 0, rank: int = 0, num_processes: int = 1, device: Optional[torch.device] = None):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"InMemoryBatches takes (N, H, W, C) uint8 images, got {images.dtype} {images.shape}.")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.batch_size, self.augment, self.seed = int(batch_size), augment, int(seed)
        self.rank, self.num_processes = int(rank), int(num_processes)
        self.device = device

    def __len__(self) -> int:
        """Batches per process and epoch."""
        return -(-self._global_batches() // self.num_processes)

    def _global_batches(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def set_size(self, size) -> None:
        self.augment.size = (int(size), int(size)) if isinstance(size, int) else tuple(size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.targets), generator=torch.Generator().manual_seed(_seed(self.seed, epoch)))
        total = self._global_batches()
        for i in range(start, len(self)):
            global_batch = i * self.num_processes + self.rank
            if global_batch < total:
                idx = order[global_batch * self.batch_size:(global_batch + 1) * self.batch_size]
            else:  # padding of an uneven split: wrap around the permutation (modulo: fewer images than batches)
                first = (global_batch - total) * self.batch_size
                idx = order[(first + torch.arange(self.batch_size)) % len(order)]
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, global_batch))
            x, y = self.augment(self.images[idx], g), self.targets[idx]
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y
