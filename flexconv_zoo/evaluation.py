"""Multi-resolution evaluation (the logic behind ``scripts/validate.py``); models come from
:func:`flexconv_zoo.checkpoints.load_model`.

A model trained at one resolution is evaluated at others the FlexConv way: ``model.set_input_size(s)``
resamples every continuous kernel for ``s`` px data and updates the model's data config, from which the eval
transform is built (:func:`flexconv_zoo.data.eval_transform_for`), so model and data always agree on the size.
"""
import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import load_model, min_input_size
from .cli import UserError, parse_model_kwargs, parse_val_fold
from .files import atomic_path, atomic_write_text
from .models import FlexConvModelMixin

__all__ = [
    'evaluate', 'validate_resolutions', 'write_results', 'plot_results', 'format_table', 'build_validate_parser',
    'validate_main',
]


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator=None, flip_tta: bool = False) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and images/s of ``model`` on ``loader``.

    With an ``accelerator`` (a prepared loader), predictions are gathered from all processes first. With
    ``flip_tta`` (images), the same pass also scores the mean logits of each image and its mirror image:
    ``flip_top1`` / ``flip_top5`` / ``flip_loss`` next to the single-view numbers (timm's headline is single-view).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {}  # running sums stay on the device: no host sync per batch
    start = time.perf_counter()

    def score(prefix: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
        for key, value in ((f'{prefix}top1', hits[:, 0].sum()), (f'{prefix}top5', hits.any(dim=1).sum()),
                           (f'{prefix}loss', F.cross_entropy(logits, y, reduction='sum'))):
            sums[key] = sums.get(key, 0) + value.double()

    for x, y in loader:
        if accelerator is None:
            x, y = x.to(device), y.to(device)
        if flip_tta and x.ndim != 4:
            raise UserError("flip test-time augmentation is for images (batch, channels, height, width).")
        logits = model(x).float()
        flipped = model(x.flip(-1)).float() if flip_tta else None
        if accelerator is not None:
            logits, y = accelerator.gather_for_metrics((logits, y))
            if flipped is not None:
                flipped = accelerator.gather_for_metrics(flipped)
        score('', logits, y)
        if flipped is not None:
            score('flip_', (logits + flipped) / 2, y)
        sums['count'] = sums.get('count', 0) + y.numel()
    seconds = time.perf_counter() - start
    model.train(was_training)
    count = int(sums.get('count', 0))
    if count == 0:
        raise UserError("The evaluation split is empty.")
    out = {k: float(v) / count * (1.0 if k.endswith('loss') else 100.0) for k, v in sums.items() if k != 'count'}
    return dict(out, count=count, seconds=seconds, images_per_s=count / max(seconds, 1e-9))


def validate_resolutions(
        model: nn.Module,
        dataset,
        img_sizes: Sequence[int],
        batch_size: int = 256,
        workers: int = 0,
        device: Optional[torch.device] = None,
        flip_tta: bool = False,
        progress: bool = True,
) -> List[Dict[str, Any]]:
    """Evaluate ``model`` on ``dataset`` (a :class:`~flexconv_zoo.data.datasets.SplitView`) at every size.

    For each size the model is set to it (kernels resampled) and the eval transform is built from the model's
    data config; the model is returned to its original size afterwards. ``progress``: a bar per size on stderr
    (a pass over 10,000 CIFAR-10 images takes minutes on a CPU).
    """
    from tqdm.auto import tqdm
    from .data import eval_transform_for
    device = device or torch.device('cpu')
    model.to(device)
    original = model.input_size
    rows = []
    try:
        for size in img_sizes:
            dataset.transform = eval_transform_for(model, size)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                                 generator=torch.Generator().manual_seed(0))
            bar = tqdm(loader, desc=f"{size} px", leave=False, disable=not progress, dynamic_ncols=True)
            metrics = evaluate(model, bar, flip_tta=flip_tta)
            rows.append(dict(img_size=int(size), **metrics))
    finally:
        model.set_input_size(original)
    return rows


# ------------------------------------------------------------------------------------------------ reporting
COLUMNS = ('img_size', 'top1', 'top5', 'loss', 'images_per_s', 'count')


def format_table(rows: Sequence[Dict[str, Any]], train_size: Optional[int] = None) -> str:
    """A fixed-width table; the training resolution is marked with ``*``."""
    flip = all('flip_top1' in r for r in rows)
    lines = [f"{'res':>6} {'top1':>7} {'top5':>7} {'loss':>7}" + (f" {'flip-TTA top1':>13}" if flip else '')
             + f" {'img/s':>9} {'images':>7}"]
    for r in rows:
        mark = '*' if train_size is not None and r['img_size'] == train_size else ' '
        lines.append(f"{r['img_size']:>5}{mark} {r['top1']:7.2f} {r['top5']:7.2f} {r['loss']:7.4f}"
                     + (f" {r['flip_top1']:13.2f}" if flip else '') + f" {r['images_per_s']:9.1f} {r['count']:7d}")
    if train_size is not None:
        lines.append(f"(* = training resolution, {train_size} px)")
    return '\n'.join(lines)


def plot_results(rows: Sequence[Dict[str, Any]], path: Path, train_size: Optional[int], title: str) -> None:
    """Top-1 / top-5 against resolution, the training resolution marked."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sizes = [r['img_size'] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(sizes, [r['top1'] for r in rows], 'o-', label='top-1')
    ax.plot(sizes, [r['top5'] for r in rows], 's--', alpha=0.6, label='top-5')
    if train_size is not None:
        ax.axvline(train_size, color='gray', linestyle=':', label=f'trained at {train_size} px')
    ax.set_xlabel('input resolution (px)')
    ax.set_ylabel('accuracy (%)')
    ax.set_xticks(sizes)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip('.') or 'png')
    plt.close(fig)


def write_results(rows: Sequence[Dict[str, Any]], out_dir: Path, meta: Dict[str, Any],
                  train_size: Optional[int]) -> Dict[str, Path]:
    """``results.csv``, ``results.json`` and ``accuracy_vs_resolution.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = dict(csv=out_dir / 'results.csv', json=out_dir / 'results.json', plot=out_dir / 'accuracy_vs_resolution.png')
    columns = COLUMNS + tuple(c for c in ('flip_top1', 'flip_top5', 'flip_loss') if all(c in r for r in rows))
    header = ','.join(columns)
    body = [','.join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns) for r in rows]
    atomic_write_text(paths['csv'], '\n'.join([header, *body]) + '\n')
    atomic_write_text(paths['json'], json.dumps(dict(meta, train_img_size=train_size, results=list(rows)), indent=2))
    plot_results(rows, paths['plot'], train_size, meta.get('title', ''))
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def build_validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a FlexConv model at one or many input resolutions (top-1/top-5/loss/images/s).")
    p.add_argument('--checkpoint', help="run folder, Hub-layout folder, .safetensors/.pth file or hf-hub:<org>/<name>")
    p.add_argument('--model', help="architecture (needed for a bare weights file)")
    p.add_argument('--pretrained', action='store_true', help="use the model's published weights (with --model)")
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE')
    p.add_argument('--source-img-size', type=int, help="resolution a bare weights file was trained at (default 32)")
    p.add_argument('--data', default='cifar10', help="data set name or ImageFolder path (default: cifar10)")
    p.add_argument('--data-dir', help="folder with the data files (default: $FLEXCONV_ZOO_DATA, ../shared/data)")
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    p.add_argument('--val-size', type=int, default=5000, help="hold-out size, as in training (for --split val)")
    p.add_argument('--val-fold', type=parse_val_fold, metavar='K/N', help="the fold held out in training, as in "
                   "training (for --split val)")
    p.add_argument('--seed', type=int, default=0, help="seed of the hold-out split, as in training")
    p.add_argument('--subset', type=int, help="evaluate on a seeded random subset of this many images")
    p.add_argument('--img-size', type=int, nargs='+', help="resolutions to evaluate (default: the training one)")
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--flip-tta', action='store_true',
                   help="also report flip test-time augmentation (mean logits of each image and its mirror image) "
                        "next to the single-view numbers")
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--device', default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument('--output', help="output folder (default: <run>/validate for a run folder, else "
                   "./validate_results/<name>)")
    return p


def _output_dir(args: argparse.Namespace, name: str) -> Path:
    if args.output:
        return Path(args.output)
    ckpt = Path(args.checkpoint) if args.checkpoint and not args.checkpoint.startswith('hf-hub:') else None
    if ckpt is not None and (ckpt / 'args.json').is_file():  # a run folder; never write into a Hub-layout folder
        return ckpt / 'validate'
    return Path('validate_results') / name


def validate_main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """``scripts/validate.py``: evaluate at every ``--img-size``, print the table, write CSV/JSON/PNG."""
    from timm.data import resolve_data_config
    from .data import create_datasets
    args = build_validate_parser().parse_args(argv)
    model = load_model(args.checkpoint, args.model, parse_model_kwargs(args.model_kwargs), args.source_img_size,
                       args.pretrained)
    train_size = int(resolve_data_config(model=model)['input_size'][-1])
    is_sequence = isinstance(model, FlexConvModelMixin) and model.size_arg == 'seq_len'
    sizes = args.img_size or [train_size]
    if is_sequence and args.img_size:
        raise UserError("--img-size applies to image models; sequence models are evaluated at their length.")
    if is_sequence and args.flip_tta:
        raise UserError("--flip-tta applies to image models: a mirrored sequence is another sequence.")
    too_small = [s for s in sizes if s < min_input_size(model)]
    if too_small:
        raise UserError(f"Resolution {too_small[0]} px is smaller than the {min_input_size(model)} px "
                        f"{type(model).__name__} accepts.")
    try:
        splits = create_datasets(args.data, args.data_dir, val_size=args.val_size, seed=args.seed,
                                 eval_subset=args.subset, val_fold=args.val_fold)
    except ValueError as e:
        raise UserError(str(e)) from None
    dataset = getattr(splits, args.split)
    if args.split == 'train' and args.subset:
        dataset.indices = dataset.indices[:args.subset]
    dataset.seed = None
    if splits.in_chans != getattr(model, 'in_chans', splits.in_chans):
        raise UserError(f"{args.data} has {splits.in_chans} channels, the model takes {model.in_chans}.")
    if splits.num_classes > getattr(model, 'num_classes', splits.num_classes):
        raise UserError(f"{args.data} has {splits.num_classes} classes, the model predicts {model.num_classes}.")
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if is_sequence:
        dataset.transform = None
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
        rows = [dict(img_size=int(splits.native_size[0]), **evaluate(model.to(device), loader))]
    else:
        rows = validate_resolutions(model, dataset, sizes, args.batch_size, args.workers, device, args.flip_tta)
    name = model.pretrained_cfg.get('architecture', type(model).__name__)
    title = f"{name} on {splits.name} ({args.split}, {rows[0]['count']} images)"
    print(title)
    print(format_table(rows, train_size))
    meta = dict(title=title, model=name, checkpoint=args.checkpoint, data=splits.name, split=args.split,
                note="images/s is the whole evaluation loop (data + model) on " + str(device))
    paths = write_results(rows, _output_dir(args, name), meta, train_size)
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['plot']}")
    return rows
