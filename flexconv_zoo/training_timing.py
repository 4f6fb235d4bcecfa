"""Training-step and data-pipeline timings for planning a CPU training run (``scripts/time_training.py``,
``docs/campaign.md``): one Adam step of the recipe per setting (input size, batch, threads, mask width, memory
layout), and per-image vs whole-batch augmentation. Timing as in :mod:`flexconv_zoo.benchmarking`.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .benchmarking import compare, make_timer, print_table, write_json

__all__ = ['EPOCH_IMAGES', 'training_configs', 'time_training_step', 'time_data_pipeline', 'run_time_training']

EPOCH_IMAGES = 45_000  # CIFAR-10 training images after the 5,000-image hold-out


def training_configs(sizes: Sequence[int], sigmas: Sequence[float], quick: bool) -> List[Tuple]:
    """``(img_size, batch, threads, sigma, channels_last)`` rows: sizes x mask widths (the campaign's main axis)
    at batch 64 on 2 threads; unless ``quick``, batch sizes, 1 thread and channels_last too."""
    configs = [(size, 64, 2, sigma, False) for sigma in sigmas for size in sizes]
    if not quick:
        for batch in (128, 256):
            configs += [(20, batch, 2, 0.075, False), (32, batch, 2, 0.2, False)]
        configs += [(20, 64, 1, 0.075, False), (32, 64, 1, 0.2, False)]
        configs += [(size, 64, 2, 0.075, True) for size in (16, 20, 24, 32)]
        configs += [(32, 64, 2, 0.2, True)]
    return configs


def time_training_step(model_name: str, size: int, batch: int, threads: int, sigma: float, channels_last: bool,
                       steps: int) -> Dict[str, Any]:
    """One Adam step of the training recipe (its parameter groups), the minimum over ``steps`` rounds."""
    import timm
    from timm.optim import create_optimizer_v2
    from .training import param_groups
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, img_size=size)
    model.set_mask_width(sigma)
    kernel = max(k[0] for k in model.kernel_sizes())
    optimizer = create_optimizer_v2(param_groups(model, 0.0, 0.1), opt='adam', lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()

    def step():
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step()  # allocation and FFT plans
    seconds = compare({'step': step}, steps)['step']['min_s']
    return dict(model=model_name, img_size=size, batch=batch, threads=threads, sigma=sigma, max_kernel=kernel,
                channels_last=channels_last, step_s=seconds, images_per_s=batch / seconds,
                epoch_min=EPOCH_IMAGES / (batch / seconds) / 60)


def time_data_pipeline(batch: int, batches: int) -> List[Dict[str, Any]]:
    """Seconds per batch of augmented CIFAR-10 training images: per-image transforms vs whole-batch."""
    from .data import create_datasets, create_train_transform
    from .data.batch_augment import BatchAugment
    torch.set_num_threads(1)
    splits = create_datasets('cifar10', None, val_size=5000, seed=0)
    cfg = dict(input_size=(3, 32, 32), mean=splits.mean, std=splits.std)
    splits.set_transforms(create_train_transform(cfg, base_size=splits.native_size), None)
    loader = iter(torch.utils.data.DataLoader(splits.train, batch_size=batch, shuffle=True))
    images = torch.from_numpy(splits.train.base.data[splits.train.indices]).permute(0, 3, 1, 2).contiguous()
    augment = BatchAugment(size=32, padding=4, hflip=True, mean=splits.mean, std=splits.std)
    g = torch.Generator().manual_seed(0)
    pipelines = {
        'per-image v2 transforms (DataLoader)': lambda: next(loader),
        'whole-batch uint8 augment (in memory)': lambda: augment(images[torch.randint(0, len(images), (batch,),
                                                                                       generator=g)], g),
    }
    rows = []
    for name, fn in pipelines.items():
        seconds = make_timer(fn).timeit(batches).mean
        rows.append(dict(pipeline=name, s_per_batch=seconds, batch=batch, epoch_s=seconds * EPOCH_IMAGES / batch))
    return rows


def _cells(rows: Sequence[Dict], keys: Sequence[str]) -> List[List[str]]:
    return [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]


def run_time_training(model: str, steps: int, sizes: Sequence[int], sigmas: Sequence[float], quick: bool,
                      json_path: Optional[str] = None) -> Dict[str, Any]:
    """Time :func:`training_configs` (and, unless ``quick``, the data pipeline); print tables, write JSON."""
    from .layers import fftconv
    fftconv.set_autotune(False)  # train.py's deterministic FFT/direct table, as the campaign runs
    rows = []
    for size, batch, threads, sigma, cl in training_configs(sizes, sigmas, quick):
        row = time_training_step(model, size, batch, threads, sigma, cl, steps)
        print(f"{size:3d}px b{batch:<4d} t{threads} sigma {sigma:.3f} (k<={row['max_kernel']:2d}) "
              f"{'CL ' if cl else 'NCHW'} {row['step_s']:.3f} s/step {row['images_per_s']:7.1f} img/s "
              f"{row['epoch_min']:6.1f} min/epoch", flush=True)
        rows.append(row)
    print()
    keys = ['img_size', 'batch', 'threads', 'sigma', 'max_kernel', 'channels_last', 'step_s', 'images_per_s',
            'epoch_min']
    print_table(None, keys, _cells(rows, keys))
    data_rows = [] if quick else time_data_pipeline(64, 50)
    if data_rows:
        print()
        keys = ['pipeline', 'batch', 's_per_batch', 'epoch_s']
        print_table(None, keys, _cells(data_rows, keys))
    result = dict(torch=torch.__version__, cpu_count=os.cpu_count(), steps=rows, data=data_rows)
    if json_path:
        write_json(json_path, result, indent=2)
    return result
