#!/usr/bin/env python
"""Time a FlexNet training step across the settings a CPU training campaign can choose (docs/campaign.md).

    python scripts/time_training.py --json docs/campaign_timing.json            # ~10 min on 2 busy cores

Each row: one Adam training step (forward + backward + update, the recipe's parameter groups) of ``--model`` at an
input size, batch size, thread count, mask width and memory layout, timed after warm-up; images/s and the
extrapolated time of a 45,000-image epoch. Mask widths are given in the continuous kernel coordinates
(``sigma``: 0.075 at init, about 0.2 mid-run, 0.466 = the whole grid), so the cropped kernel shrinks with the
input size exactly as it does in a progressive-resolution run. A second table times the data pipeline: per-image
torchvision transforms through a DataLoader vs the whole-batch uint8 augmentation of ``flexconv_zoo.data``.
Times are minima over the timed steps (the least disturbed by other processes on a shared machine).
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import timm  # noqa: E402
import flexconv_zoo  # noqa: E402,F401  (registers the models)
from flexconv_zoo.layers import fftconv  # noqa: E402
from flexconv_zoo.training import param_groups  # noqa: E402

EPOCH_IMAGES = 45_000


def time_step(model_name: str, size: int, batch: int, threads: int, sigma: float, channels_last: bool,
              steps: int) -> Dict[str, float]:
    from timm.optim import create_optimizer_v2
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
    criterion = nn.CrossEntropyLoss()
    times = []
    for i in range(steps + 2):
        tic = time.perf_counter()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:  # the first two steps pay for allocation and FFT plans
            times.append(time.perf_counter() - tic)
    step = min(times)
    return dict(model=model_name, img_size=size, batch=batch, threads=threads, sigma=sigma, max_kernel=kernel,
                channels_last=channels_last, step_s=step, images_per_s=batch / step,
                epoch_min=EPOCH_IMAGES / (batch / step) / 60)


def time_data(batch: int, batches: int) -> List[Dict[str, float]]:
    """Seconds per batch of augmented CIFAR-10 training images: per-image transforms vs whole-batch."""
    from flexconv_zoo.data import create_datasets, create_train_transform
    from flexconv_zoo.data.batch_augment import BatchAugment
    torch.set_num_threads(1)
    splits = create_datasets('cifar10', None, val_size=5000, seed=0)
    cfg = dict(input_size=(3, 32, 32), mean=splits.mean, std=splits.std)
    splits.set_transforms(create_train_transform(cfg, base_size=splits.native_size), None)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=batch, shuffle=True)
    rows = []
    it = iter(loader)
    tic = time.perf_counter()
    for _ in range(batches):
        next(it)
    rows.append(dict(pipeline='per-image v2 transforms (DataLoader)', s_per_batch=(time.perf_counter() - tic) / batches))
    images = torch.from_numpy(splits.train.base.data[splits.train.indices]).permute(0, 3, 1, 2).contiguous()
    augment = BatchAugment(size=32, padding=4, hflip=True, mean=splits.mean, std=splits.std)
    g = torch.Generator().manual_seed(0)
    tic = time.perf_counter()
    for _ in range(batches):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        augment(images[idx], g)
    rows.append(dict(pipeline='whole-batch uint8 augment (in memory)', s_per_batch=(time.perf_counter() - tic) / batches))
    for row in rows:
        row.update(batch=batch, epoch_s=row['s_per_batch'] * EPOCH_IMAGES / batch)
    return rows


def print_table(rows: List[Dict], keys: List[str]) -> None:
    print('| ' + ' | '.join(keys) + ' |')
    print('|' + '---|' * len(keys))
    for r in rows:
        print('| ' + ' | '.join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + ' |')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='flexnet16')
    p.add_argument('--steps', type=int, default=3, help="timed steps per row (after 2 warm-up steps)")
    p.add_argument('--json', help="write the rows here")
    p.add_argument('--quick', action='store_true', help="only the 2-thread batch-64 rows")
    p.add_argument('--sizes', type=int, nargs='+', default=[16, 20, 24, 32])
    p.add_argument('--sigmas', type=float, nargs='+', default=[0.075, 0.2, 0.466])
    args = p.parse_args()
    fftconv.set_autotune(False)  # train.py's deterministic FFT/direct table, as the campaign runs
    configs = []
    for sigma in args.sigmas:  # sizes x mask widths, the campaign's main axis
        for size in args.sizes:
            configs.append((size, 64, 2, sigma, False))
    if not args.quick:
        for batch in (128, 256):
            configs += [(20, batch, 2, 0.075, False), (32, batch, 2, 0.2, False)]
        configs += [(20, 64, 1, 0.075, False), (32, 64, 1, 0.2, False)]
        configs += [(size, 64, 2, 0.075, True) for size in (16, 20, 24, 32)]
        configs += [(32, 64, 2, 0.2, True)]
    rows = []
    for size, batch, threads, sigma, cl in configs:
        row = time_step(args.model, size, batch, threads, sigma, cl, args.steps)
        print(f"{size:3d}px b{batch:<4d} t{threads} sigma {sigma:.3f} (k<={row['max_kernel']:2d}) "
              f"{'CL ' if cl else 'NCHW'} {row['step_s']:.3f} s/step {row['images_per_s']:7.1f} img/s "
              f"{row['epoch_min']:6.1f} min/epoch", flush=True)
        rows.append(row)
    print()
    print_table(rows, ['img_size', 'batch', 'threads', 'sigma', 'max_kernel', 'channels_last', 'step_s',
                       'images_per_s', 'epoch_min'])
    data_rows = [] if args.quick else time_data(64, 50)
    if data_rows:
        print()
        print_table(data_rows, ['pipeline', 'batch', 's_per_batch', 'epoch_s'])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(torch=torch.__version__, cpu_count=os.cpu_count(), steps=rows, data=data_rows), f, indent=2)


if __name__ == '__main__':
    main()
