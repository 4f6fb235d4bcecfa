"""Model loading and multi-resolution evaluation (the logic behind ``scripts/validate.py``).

A model trained at one resolution is evaluated at others the FlexConv way: ``model.set_input_size(img_size=s)``
resamples every continuous kernel for ``s`` px data and updates the model's data config, from which the eval
transform is built (:func:`flexconv_zoo.data.eval_transform_for`), so model and data always agree on the size.
"""
import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'UserError', 'parse_model_kwargs', 'run_cli', 'load_model', 'load_weights', 'evaluate', 'validate_resolutions',
    'write_results', 'plot_results', 'format_table', 'build_validate_parser', 'validate_main', 'min_input_size',
    'atomic_write_text',
]


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main``; user errors become one ``error: ...`` line on stderr and exit code 2."""
    from .data import DataNotFoundError
    from .loading import PretrainedWeightsError
    try:
        main(argv)
    except (UserError, DataNotFoundError, PretrainedWeightsError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def parse_model_kwargs(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["widths=8,8", "kernel_hidden=16", "conv_method=fft"]`` -> ``{'widths': (8, 8), ...}``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise UserError(f"--model-kwargs expects key=value items, got {item!r}.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ models
def min_input_size(model: nn.Module) -> int:
    """Smallest spatial size the model accepts (its data config's ``min_input_size``, else 2)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return int(max(cfg.get('min_input_size', (0, 2, 2))[1:]))


def _check_model_name(name: str) -> None:
    import timm
    if not timm.is_model(name):
        known = ', '.join(timm.list_models(['flexnet*', 'flextcn*']))
        raise UserError(f"Unknown model {name!r} (FlexConv models: {known}).")


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """The package's one weight reader (:func:`flexconv_zoo.loading.read_weights`), errors as user errors."""
    from .loading import PretrainedWeightsError, read_weights
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    try:
        return read_weights(path)
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None


def _weights_file(folder: Path) -> Optional[Path]:
    for name in ('model.safetensors', 'pytorch_model.bin', 'model.pth'):
        if (folder / name).is_file():
            return folder / name
    return None


def load_weights(model: nn.Module, path: Path, strict_head: bool = True) -> List[str]:
    """Load a checkpoint file (this package's, timm's or the original FlexConv code's) into ``model``.

    A classifier of another size is dropped (fine-tuning on new classes) unless ``strict_head``.
    Returns the names of the parameters that were not in the checkpoint.
    """
    from .loading import PretrainedWeightsError, check_finite
    from .models import checkpoint_filter_fn
    state_dict = checkpoint_filter_fn(_read_state_dict(Path(path)), model)
    try:
        check_finite(state_dict, str(path))
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head.fc')
    if mismatched and (strict_head or any(not k.startswith(classifier) for k in mismatched)):
        raise UserError(f"Checkpoint {path} does not fit the model: {mismatched[0]} has shape "
                        f"{tuple(state_dict[mismatched[0]].shape)}, the model {tuple(own[mismatched[0]].shape)}.")
    for k in mismatched:
        state_dict.pop(k)
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        raise UserError(f"Checkpoint {path} does not fit the model: unexpected key {result.unexpected_keys[0]}.")
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing:
        raise UserError(f"Checkpoint {path} does not fit the model: missing key {missing[0]}.")
    return list(result.missing_keys)


def _num_classes_in(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    weight = state_dict.get('head.fc.weight')
    return int(weight.shape[0]) if weight is not None else None


def _sync_to_config(model: nn.Module) -> None:
    """After loading an export, sample the kernels for the size its data config advertises."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if 'input_size' in cfg and hasattr(model, 'set_input_size'):
        size = tuple(cfg['input_size'][1:])
        if len(size) == 2 and size[0] == 1 and hasattr(model, 'seq_len'):
            model.set_input_size(seq_len=size[1])
        else:
            model.set_input_size(img_size=size)


def _create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model``; with ``pretrained=True`` the weights come through :mod:`flexconv_zoo.loading`."""
    import timm
    from .loading import PretrainedWeightsError
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise UserError(f"Cannot build {name} with {sorted(kwargs)}: {e}") from None
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None


def _from_run_folder(folder: Path) -> nn.Module:
    """A run folder without an export (e.g. a killed run): build from args.json + the newest checkpoint."""
    from .training import latest_checkpoint
    args = json.loads((folder / 'args.json').read_text())
    ckpt = latest_checkpoint(folder)
    if ckpt is None or _weights_file(ckpt) is None:
        raise UserError(f"Run folder {folder} has neither exported weights (config.json) nor a checkpoint.")
    info = json.loads((folder / 'run_info.json').read_text())
    model = _create(args['model'], **info['model_kwargs'])
    load_weights(model, _weights_file(ckpt))
    model.set_input_size(**info['input_size_kwargs'])
    return model


def load_model(
        checkpoint: Optional[str],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        source_img_size: Optional[int] = None,
        pretrained: bool = False,
) -> nn.Module:
    """Build a model with weights from ``checkpoint``, set to the input size its weights were exported at.

    ``checkpoint`` may be a run folder (``scripts/train.py`` output), a Hub-layout folder (``config.json`` +
    ``model.safetensors``), ``hf-hub:<org>/<name>``, or a ``.safetensors`` / ``.pth`` file (then ``model_name``
    is needed, and ``source_img_size`` gives the resolution it was trained at, default 32).
    """
    model_kwargs = dict(model_kwargs or {})
    if model_name:
        _check_model_name(model_name)
    if checkpoint is None:
        if not model_name:
            raise UserError("Give --checkpoint (a file, folder or hf-hub: id) or --model with --pretrained.")
        if not pretrained:
            raise UserError(f"No weights for {model_name}: give --checkpoint or --pretrained.")
        return _hub_model(model_name, model_kwargs)
    if checkpoint.startswith('hf-hub:'):
        return _hub_model(checkpoint, model_kwargs)
    path = Path(checkpoint)
    if path.is_dir():
        if (path / 'config.json').is_file():
            from .loading import PretrainedWeightsError, read_config
            try:  # read here first: timm's local-dir: reader reports a malformed file without its name
                cfg = read_config(path / 'config.json')
            except PretrainedWeightsError as e:
                raise UserError(str(e)) from None
            if model_name and cfg.get('architecture') not in (None, model_name):
                raise UserError(f"{path} holds a {cfg.get('architecture')}, not a {model_name}.")
            if _weights_file(path) is None:
                raise UserError(f"{path} has a config.json but no model.safetensors.")
            model = _create(f'local-dir:{path}', pretrained=True, **model_kwargs)
            _sync_to_config(model)
            return model
        if (path / 'args.json').is_file():
            return _from_run_folder(path)
        raise UserError(f"{path} is neither a run folder nor a Hub-layout folder (config.json + model.safetensors).")
    if not path.exists():
        raise UserError(f"Checkpoint {path} does not exist.")
    if not model_name:
        raise UserError(f"{path} is a bare weights file: say which architecture with --model.")
    state_dict = _read_state_dict(path)
    num_classes = model_kwargs.pop('num_classes', None) or _num_classes_in(state_dict) or 10
    if source_img_size:
        model_kwargs['img_size'] = source_img_size
    model = _create(model_name, num_classes=num_classes, **model_kwargs)
    load_weights(model, path)
    if source_img_size:
        model.set_input_size(img_size=source_img_size)
    return model


def _hub_model(name: str, model_kwargs: Dict[str, Any]) -> nn.Module:
    """A published model (``<model>[.<tag>]`` or ``hf-hub:<org>/<name>``) through the package's one loader."""
    import timm
    from .loading import PretrainedWeightsError
    try:
        model = timm.create_model(name, pretrained=True, **model_kwargs)
    except TypeError as e:
        raise UserError(f"Cannot build {name}: {e}") from None
    except PretrainedWeightsError as e:  # says which file and what to do
        raise UserError(str(e)) from None
    except Exception as e:  # hf-hub: names fetch their config.json through timm (unknown repo, offline, ...)
        raise UserError(
            f"Cannot load pretrained weights for {name} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}). "
            f"Offline, set HF_HUB_OFFLINE=1 with a filled HF cache, or pass a local folder / file with --checkpoint."
        ) from None
    _sync_to_config(model)
    return model


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator=None, max_batches: Optional[int] = None,
             flip_tta: bool = False) -> Dict[str, float]:
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

    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
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
    from timm.data import resolve_data_config
    from tqdm.auto import tqdm
    from .data import eval_transform_for
    device = device or torch.device('cpu')
    model.to(device)
    original = tuple(resolve_data_config(model=model)['input_size'][1:])
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
        model.set_input_size(img_size=original)
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
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


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
    p.add_argument('--seed', type=int, default=0, help="seed of the hold-out split, as in training")
    p.add_argument('--subset', type=int, help="evaluate on a seeded random subset of this many images")
    p.add_argument('--img-size', type=int, nargs='+', help="resolutions to evaluate (default: the training one)")
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--flip-tta', action='store_true',
                   help="also report flip test-time augmentation (mean logits of each image and its mirror image) "
                        "next to the single-view numbers")
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--device', default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument('--output', help="output folder (default: <run>/validate or ./validate_results/<name>)")
    return p


def _output_dir(args: argparse.Namespace, name: str) -> Path:
    if args.output:
        return Path(args.output)
    ckpt = Path(args.checkpoint) if args.checkpoint and not args.checkpoint.startswith('hf-hub:') else None
    if ckpt is not None and ckpt.is_dir():
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
    is_sequence = hasattr(model, 'seq_len')
    sizes = args.img_size or [train_size]
    if is_sequence and args.img_size:
        raise UserError("--img-size applies to image models; sequence models are evaluated at their length.")
    if is_sequence and args.flip_tta:
        raise UserError("--flip-tta applies to image models: a mirrored sequence is another sequence.")
    too_small = [s for s in sizes if s < min_input_size(model)]
    if too_small:
        raise UserError(f"Resolution {too_small[0]} px is smaller than the {min_input_size(model)} px "
                        f"{type(model).__name__} accepts.")
    splits = create_datasets(args.data, args.data_dir, val_size=args.val_size, seed=args.seed,
                             eval_subset=args.subset)
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
