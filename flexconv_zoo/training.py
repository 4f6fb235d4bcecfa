"""Training and fine-tuning of FlexConv models with Accelerate (the logic behind ``scripts/train.py``).

One code path for CPU, one or many GPUs and bf16/fp16: ``python scripts/train.py ...``,
``accelerate launch scripts/train.py ...`` or ``torchrun --nproc_per_node N scripts/train.py ...``.

Defaults are the paper's recipe (GUIDE §2): Adam, lr 0.01 (mask parameters x0.1, no weight decay), batch 64,
5 warm-up epochs then a per-step cosine to 1e-6, random crop (pad 4) + flip. ``--batch-size`` is per process.

Run folder ``<output>/<name>/``: ``args.json``, ``run_info.json``, ``checkpoints/step_XXXXXXXX/`` (Accelerate
``save_state``: model, optimizer, scheduler, EMA, RNG, data position; written to a temporary folder and renamed),
``metrics.csv`` / ``metrics.json`` per epoch, and at the end the weights in timm's Hub layout
(``model.safetensors`` + ``config.json``; ``best/`` = best validation epoch, ``ema/`` with ``--ema``).
``--resume <run folder>`` continues a killed run exactly where its newest checkpoint left it.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .evaluation import UserError, atomic_write_text, evaluate, load_weights, min_input_size, parse_model_kwargs
from .plots import update_training_plot
from .progressive import parse_size_schedule, size_at_epoch

__all__ = ['build_train_parser', 'train_main', 'latest_checkpoint', 'checkpoint_folders', 'param_groups',
           'rebase_input_size', 'EpochSampler', 'TrainState']

# Options a resumed run may change; everything else comes from the run's args.json.
RESUME_OVERRIDES = ('stop_after_steps', 'workers', 'progress', 'checkpoint_every', 'keep_checkpoints',
                    'mixed_precision', 'cpu', 'data_dir', 'track_test', 'channels_last', 'ema_warmup')
# data_dir: the same files on another machine; channels_last: a memory layout, the same function (a speed choice);
# ema_warmup: the schedule of the weight average, which never feeds back into training


# ------------------------------------------------------------------------------------------------ CLI
def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train or fine-tune a FlexConv model with Accelerate.")
    g = p.add_argument_group('model')
    g.add_argument('--model', default='flexnet16', help="timm model name (default: flexnet16)")
    g.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help="extra model arguments, e.g. widths=16,16 kernel_hidden=16")
    g.add_argument('--pretrained', action='store_true', help="start from the model's published weights")
    g.add_argument('--initial-checkpoint', help="start from a run folder, Hub-layout folder or weights file")
    g.add_argument('--source-img-size', type=int,
                   help="resolution a bare --initial-checkpoint file was trained at (default: --img-size)")
    g.add_argument('--img-size', type=int, help="training resolution (default: the data's native size)")
    g.add_argument('--img-size-schedule', nargs='+', metavar='SIZE:FRACTION',
                   help="progressive resolution: train at SIZE from FRACTION of the epochs on, e.g. 20:0 32:0.6; the "
                        "kernels are resampled at each switch and one learning-rate schedule spans the whole run")
    g = p.add_argument_group('data')
    g.add_argument('--data', default='cifar10', help="cifar10, fashion_mnist, mnist1d, speech_commands[_raw], "
                   "character_trajectories or an ImageFolder path")
    g.add_argument('--data-dir', help="folder with the data files (default: $FLEXCONV_ZOO_DATA, ../shared/data)")
    g.add_argument('--val-size', type=int, default=5000,
                   help="training images held out for model selection (0: train on all of them, no best/)")
    g.add_argument('--train-subset', type=int, help="train on a seeded subset of this many examples")
    g.add_argument('--eval-subset', type=int, help="validate/test on seeded subsets of this many examples")
    g.add_argument('--no-augment', action='store_true', help="no random crop / flip")
    g.add_argument('--workers', type=int, default=0, help="data loader workers per process")
    g.add_argument('--batch-augment', action='store_true',
                   help="in-memory uint8 images (CIFAR-10, Fashion-MNIST) augmented a whole batch at a time: the same "
                        "crop + flip recipe without per-image Python work (flexconv_zoo.data.batch_augment)")
    g = p.add_argument_group('optimisation (defaults: the paper recipe)')
    g.add_argument('--epochs', type=int, default=350)
    g.add_argument('--batch-size', type=int, default=64, help="per process")
    g.add_argument('--opt', default='adam', help="timm optimizer name")
    g.add_argument('--lr', type=float, default=0.01)
    g.add_argument('--mask-lr-scale', type=float, default=0.1, help="learning-rate factor of the mask parameters")
    g.add_argument('--weight-decay', type=float, default=0.0, help="(never on masks, norms and biases)")
    g.add_argument('--sched', default='cosine', help="timm scheduler name")
    g.add_argument('--warmup-epochs', type=float, default=5.0, help="linear warm-up (capped at a tenth of the run)")
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=1e-6)
    g.add_argument('--smoothing', type=float, default=0.0, help="label smoothing")
    g.add_argument('--alias-free', type=float, nargs='?', const=0.1, default=0.0, metavar='WEIGHT',
                   help="add the alias-free regulariser (weight 0.1 when given without a value)")
    g.add_argument('--alias-free-mask', action='store_true',
                   help="count the Gaussian masks' frequency in the alias-free regulariser and --alias-free-init "
                        "(the original code's 'gabor+mask' target)")
    g.add_argument('--alias-free-init', action='store_true',
                   help="project the kernel nets onto the alias-free set of the training grid before training "
                        "(model.band_limit_()), so the regulariser starts at zero")
    g.add_argument('--clip-grad', type=float, help="clip the gradient norm")
    g.add_argument('--grad-accum', type=int, default=1, help="gradient accumulation steps")
    g.add_argument('--ema', action='store_true', help="keep an EMA of the weights (timm ModelEmaV3)")
    g.add_argument('--ema-decay', type=float, default=0.999)
    g.add_argument('--ema-warmup', action='store_true',
                   help="ramp the EMA decay up from 0 (timm's 1 - (1 + step)^-2/3, capped at --ema-decay): the average "
                        "follows the weights early in training instead of mixing in the random start")
    g.add_argument('--mixed-precision', default='no', choices=('no', 'bf16', 'fp16'))
    g.add_argument('--grad-checkpointing', action='store_true',
                   help="recompute each block in the backward (model.set_grad_checkpointing): less memory, slower "
                        "steps; as with any checkpointed BN network, BN statistics see each batch twice")
    g.add_argument('--channels-last', action='store_true',
                   help="image models: model and training batches in torch.channels_last memory format (as timm's "
                        "train.py; same function, faster direct convolutions with oneDNN/cuDNN); an error for "
                        "sequence models")
    g.add_argument('--cpu', action='store_true', help="train on the CPU even when a GPU is present")
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--autotune', action='store_true',
                   help="pick FFT/direct convolutions by timing (faster, but runs and resumes are no longer bitwise "
                        "reproducible); default: the fixed, deterministic table")
    g = p.add_argument_group('run folder')
    g.add_argument('--output', default='runs', help="parent folder of run folders")
    g.add_argument('--name', help="run folder name (default: <model>-<data>-<size>px-<time>)")
    g.add_argument('--resume', help="continue the run in this folder from its newest checkpoint")
    g.add_argument('--checkpoint-every', type=int, default=500, help="optimizer steps between checkpoints (0: epochs only)")
    g.add_argument('--keep-checkpoints', type=int, default=2)
    g.add_argument('--stop-after-steps', type=int,
                   help="checkpoint and stop after this many optimizer steps (a resumable pause; simulates a kill)")
    g.add_argument('--no-progress', dest='progress', action='store_false', help="no progress bar")
    g.add_argument('--track-test', action='store_true',
                   help="also evaluate the test split after every epoch, for learning curves only: model selection "
                        "stays on the validation split")
    return p


# ------------------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Loop position and running metrics, saved with every checkpoint."""
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    global_step: int = 0  # optimizer updates
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    epoch_seconds: float = 0.0
    best_top1: float = -1.0
    best_epoch: int = -1
    img_size: Optional[int] = None  # resolution the weights are defined at (changes in progressive runs)
    history: List[Dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def start_epoch(self) -> None:
        self.batch_in_epoch, self.loss_sum, self.correct, self.seen, self.epoch_seconds = 0, 0.0, 0.0, 0, 0.0


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation that depends only on ``(seed, epoch)``: identical on every process and after a resume."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())


# ------------------------------------------------------------------------------------------------ run folder
def checkpoint_folders(run_dir: Path) -> List[Path]:
    """Complete checkpoint folders of a run, newest first (incomplete ones are temporary names, never matched)."""
    return sorted((Path(run_dir) / 'checkpoints').glob('step_*[0-9]'), reverse=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint folder of a run."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


_CUSTOM_STATE = re.compile(r'^custom_checkpoint_(\d+)\.pkl$')


def _read_checkpoint_files(folder: Path) -> Dict[str, Any]:
    """Read every file of a checkpoint without executing code: safetensors, and ``torch.load(weights_only=True)``
    (Accelerate's numpy/RNG allow-list) for the pickles. Raises on a damaged or unsafe file, naming it; nothing is
    restored until the whole folder has been read."""
    from accelerate.utils import load
    from safetensors.torch import load_file
    contents = {}
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == '.safetensors':
                contents[path.name] = load_file(str(path))
            elif path.is_file():
                contents[path.name] = load(str(path), map_location='cpu')  # weights_only=True
        except Exception as e:  # truncated zip, bad header, a pickle that names a forbidden global, ...
            msg = ' '.join(str(e).split())
            raise ValueError(f"{path.name}: {type(e).__name__}: {msg[:300]}") from None
    if 'model.safetensors' not in contents or 'optimizer.bin' not in contents:
        raise ValueError("model.safetensors or optimizer.bin is missing")
    return contents


def _load_checkpoint(accelerator, folder: Path, custom_objects: Sequence[Any]) -> None:
    """Restore a checkpoint written by :func:`_save_checkpoint` (or by Accelerate's ``register_for_checkpointing``).

    Accelerate's ``load_state`` unpickles registered objects with ``weights_only=False`` (arbitrary code from the
    run folder), so it only restores model, optimizer and RNG here, from a view of the folder without the
    ``custom_checkpoint_*.pkl`` files; those plain state dicts are read with ``weights_only=True``.
    """
    import tempfile
    contents = _read_checkpoint_files(folder)
    custom = {int(m.group(1)): name for name in contents if (m := _CUSTOM_STATE.match(name))}
    if sorted(custom) != list(range(len(custom_objects))):
        raise ValueError(f"holds {len(custom)} training-state files, this run needs {len(custom_objects)} "
                         f"(was it written with other options, e.g. --ema?)")
    with tempfile.TemporaryDirectory(prefix='flexconv_resume_') as view:
        for path in folder.iterdir():
            if path.name not in custom.values():
                os.symlink(path.resolve(), Path(view) / path.name)
        accelerator.load_state(view)
    for index, obj in enumerate(custom_objects):
        obj.load_state_dict(contents[custom[index]])


def _save_checkpoint(accelerator, run_dir: Path, state: TrainState, keep: int,
                     custom_objects: Sequence[Any] = ()) -> Path:
    """``save_state`` into a temporary folder, then rename it: a checkpoint folder is complete or absent.

    ``custom_objects`` (scheduler, loop state, EMA) go to ``custom_checkpoint_<i>.pkl`` exactly as Accelerate's
    ``register_for_checkpointing`` writes them; they are not registered so that loading stays safe.
    """
    from accelerate.checkpointing import save_custom_state
    root = run_dir / 'checkpoints'
    final = root / f'step_{state.global_step:08d}_e{state.epoch:04d}b{state.batch_in_epoch:06d}'
    tmp = root / f'.tmp_{final.name}'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    for index, obj in enumerate(custom_objects):
        save_custom_state(obj, str(tmp), index)  # written by the main process only
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob('step_*[0-9]'))[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_metrics(run_dir: Path, history: List[Dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / 'metrics.csv', buf.getvalue())
    atomic_write_text(run_dir / 'metrics.json', json.dumps(history, indent=2))


def _export(model: nn.Module, folder: Path, class_names: Sequence[str], extra: Dict[str, Any]) -> None:
    """Weights + config in timm's Hub layout, written to a temporary folder and moved into place."""
    from timm.models import save_for_hf
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f'.export_{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    model_config = dict(label_names=list(class_names)) if class_names else {}
    save_for_hf(model, str(tmp), model_config=model_config, model_args=_source_args(model), safe_serialization=True)
    cfg = json.loads((tmp / 'config.json').read_text())
    cfg.update(extra)
    atomic_write_text(tmp / 'config.json', json.dumps(cfg, indent=2))
    for name in ('model.safetensors', 'config.json'):
        os.replace(tmp / name, folder / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _source_args(model: nn.Module) -> Dict[str, Any]:
    """FlexConv metadata for ``config.json``'s ``model_args``: the resolution the kernels are defined on."""
    if hasattr(model, 'seq_len'):
        return dict(seq_len=int(model.seq_len))
    return dict(img_size=list(model.img_size))


# ------------------------------------------------------------------------------------------------ setup
def _check_writable(folder: Path, option: str) -> None:
    """Fail before any data is read or step is trained when the run folder cannot be written (read-only mount,
    no permission, a file in the way); probes with an anonymous temporary file that leaves nothing behind."""
    import tempfile
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{option} {folder} is not writable ({e.strerror or e}): pick a writable folder with "
                        f"{option}.") from None


def _validate_args(args: argparse.Namespace) -> None:
    """Reject values that would crash later with a traceback or silently train something else."""
    from .data import DATASETS

    def bad(option: str, value: Any, need: str) -> UserError:
        return UserError(f"{option} {value} is invalid: it must be {need}.")

    positive = dict(epochs='--epochs', batch_size='--batch-size', grad_accum='--grad-accum',
                    keep_checkpoints='--keep-checkpoints', train_subset='--train-subset',
                    eval_subset='--eval-subset', stop_after_steps='--stop-after-steps')
    for key, option in positive.items():
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise bad(option, value, "a positive integer")
    for key, option in dict(val_size='--val-size', workers='--workers', checkpoint_every='--checkpoint-every').items():
        if getattr(args, key) < 0:
            raise bad(option, getattr(args, key), "0 or more")
    for key, option in dict(img_size='--img-size', source_img_size='--source-img-size').items():
        value = getattr(args, key, None)
        if value is not None and value < 2:  # 0 used to mean "the data's size" through `or`
            raise UserError(f"{option} {value} is invalid: FlexConv models need at least 2 px; leave it out to "
                            f"train at the data's own size.")
    floats = dict(lr=('--lr', 0.0, False), warmup_lr=('--warmup-lr', 0.0, True), min_lr=('--min-lr', 0.0, True),
                  mask_lr_scale=('--mask-lr-scale', 0.0, True), weight_decay=('--weight-decay', 0.0, True),
                  warmup_epochs=('--warmup-epochs', 0.0, True), alias_free=('--alias-free', 0.0, True))
    for key, (option, low, inclusive) in floats.items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise bad(option, value, f"a finite number {'>=' if inclusive else '>'} {low:g}")
    try:
        stages = parse_size_schedule(getattr(args, 'img_size_schedule', None))
    except ValueError as e:
        raise UserError(str(e)) from None
    if stages and args.img_size is not None and args.img_size != stages[0].img_size:
        raise UserError(f"--img-size {args.img_size} disagrees with --img-size-schedule, which starts at "
                        f"{stages[0].img_size} px: leave --img-size out.")
    if not 0 <= args.smoothing < 1:
        raise bad('--smoothing', args.smoothing, "in [0, 1)")
    if not 0 <= args.ema_decay <= 1:
        raise bad('--ema-decay', args.ema_decay, "in [0, 1]")
    if args.clip_grad is not None and not (math.isfinite(args.clip_grad) and args.clip_grad > 0):
        raise bad('--clip-grad', args.clip_grad, "a finite number > 0")
    data = str(args.data)
    if data.lower().replace('-', '_') not in DATASETS and not Path(data).exists():
        where = 'an ImageFolder path that does not exist' if (os.sep in data or '/' in data) else 'not a data set'
        raise UserError(f"--data {data} is {where}: use one of {', '.join(DATASETS)} or the path of an ImageFolder "
                        f"tree <dir>/{{train,test}}/<class>/*.")
    if args.resume:
        _check_writable(Path(args.resume) / 'checkpoints', '--resume')
    else:
        _check_writable(Path(args.output), '--output')


def _resolve_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if not args.resume:
        _validate_args(args)
        return args
    run_dir = Path(args.resume)
    if not (run_dir / 'args.json').is_file() or latest_checkpoint(run_dir) is None:
        raise UserError(f"{run_dir} is not a run folder to resume (it needs args.json and checkpoints/step_*).")
    try:
        saved = json.loads((run_dir / 'args.json').read_text())
    except ValueError as e:
        raise UserError(f"Cannot read {run_dir / 'args.json'} ({e}): restore it from a backup or start a new "
                        f"run.") from None
    given = {k: v for k, v in vars(args).items() if k in RESUME_OVERRIDES and v != parser.get_default(k)}
    defaults = vars(parser.parse_args([]))  # options added since the run started keep their defaults
    merged = argparse.Namespace(**{**defaults, **saved, **given})
    merged.resume = str(run_dir)
    merged.stop_after_steps = args.stop_after_steps  # a pause of the earlier session does not carry over
    _validate_args(merged)
    return merged


def _default_name(args: argparse.Namespace, size: Any) -> str:
    data = Path(args.data).name if os.sep in args.data else args.data
    return f"{args.model}-{data}-{size}px-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_dir(args: argparse.Namespace, accelerator, size: Any) -> Path:
    from accelerate.utils import broadcast_object_list
    if args.resume:
        return Path(args.resume)
    name = [args.name or _default_name(args, size)]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    run_dir = Path(args.output) / name[0]
    if (run_dir / 'args.json').exists():
        raise UserError(f"Run folder {run_dir} already exists: continue it with --resume {run_dir} or pick --name.")
    return run_dir


def _build_model(args: argparse.Namespace, splits) -> tuple:
    """Create the model (optionally with weights) and set it to the training size. Returns
    ``(model, creation kwargs, set_input_size kwargs)`` (the latter two rebuild it from a checkpoint)."""
    import timm
    from .evaluation import _check_model_name, _create, _hub_model, _weights_file
    _check_model_name(args.model)
    kwargs = dict(num_classes=splits.num_classes, in_chans=splits.in_chans, **parse_model_kwargs(args.model_kwargs))
    sequence = splits.kind == 'sequence'
    if sequence:
        if getattr(args, 'img_size_schedule', None):
            raise UserError(f"--img-size-schedule is for image models; {args.model} on {splits.name} trains at the "
                            f"sequence length.")
        kwargs['seq_len'] = int(splits.native_size[0])
        input_kwargs = dict(seq_len=kwargs['seq_len'])
    else:
        stages = parse_size_schedule(getattr(args, 'img_size_schedule', None))
        size = args.img_size if args.img_size is not None else (splits.native_size[0] if splits.native_size else None)
        size = stages[0].img_size if stages else size
        size = size or timm.models.get_pretrained_cfg(args.model).input_size[-1]
        if size < 2:
            raise UserError(f"--img-size {size} is smaller than the 2 px {args.model} accepts.")
        input_kwargs = dict(img_size=int(size))
    init = Path(args.initial_checkpoint) if args.initial_checkpoint else None
    if init is not None and init.is_dir():
        if not (init / 'config.json').is_file() or _weights_file(init) is None:
            raise UserError(f"{init} holds no exported weights (config.json + model.safetensors): pass a finished run "
                            f"folder, a Hub-layout folder or a weights file.")
        try:
            model_args = json.loads((init / 'config.json').read_text()).get('model_args', {})
        except ValueError as e:
            raise UserError(f"Cannot read {init / 'config.json'}: {e}") from None
        kwargs.update({k: v for k, v in model_args.items() if k not in ('num_classes', 'in_chans')})
        init = _weights_file(init)
    elif not sequence:
        kwargs['img_size'] = args.source_img_size or input_kwargs['img_size']
    if args.pretrained:
        model = _hub_model(args.model, kwargs)
        if model.num_classes != splits.num_classes:
            model.reset_classifier(splits.num_classes)
    else:
        model = _create(args.model, **kwargs)
    if init is not None:
        load_weights(model, init, strict_head=False)
    if not sequence and input_kwargs['img_size'] < min_input_size(model):
        raise UserError(f"--img-size {input_kwargs['img_size']} is smaller than the {min_input_size(model)} px "
                        f"{args.model} accepts.")
    rebase_input_size(model, **input_kwargs)  # kernels and data config agree on the training size
    kwargs.update(input_kwargs)  # the weights are now defined at the training size
    if not (args.pretrained or args.initial_checkpoint) and splits.mean is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(splits.mean), std=tuple(splits.std))
    return model, kwargs, input_kwargs


@torch.no_grad()
def rebase_input_size(model: nn.Module, rescale: bool = True, **size: Any) -> None:
    """Move a FlexConv model to a new training size without changing its function.

    ``model.set_input_size(**size)`` resamples every continuous kernel on the new grid and scales it by
    ``(src / tgt)^D`` (the paper's protocol); that factor is then folded into each kernel net's output layer and
    the new size becomes the model's source size. Fine-tuning then trains, regularises (alias-free Nyquist) and
    exports the weights at the new size. No-op when the size does not change. ``rescale=False`` only declares
    the size, for weights that are already defined at it (a checkpoint of a progressive run about to be loaded).
    """
    from .layers.resolution import sampling_rate_scale
    model.set_input_size(**size)
    for layer in getattr(model, 'flexconv_layers', lambda: ())() if rescale else ():
        scale = sampling_rate_scale(layer.source_grid, layer.grid)
        if scale == 1.0:
            continue
        output = layer.kernel_net.output
        output.weight.mul_(scale)
        if output.bias is not None:
            output.bias.mul_(scale)
    if hasattr(model, 'set_source_size'):
        model.set_source_size(next(iter(size.values())))
    if 'img_size' in size:
        try:  # timm >= 1.0.31 records supported resizes for export (save_for_hf's model_args)
            from timm.models._input import update_model_input_size
        except ImportError:
            return
        update_model_input_size(model, img_size=size['img_size'])


def param_groups(model: nn.Module, weight_decay: float, mask_lr_scale: float) -> List[Dict[str, Any]]:
    """Three groups: weights (``weight_decay``), norms/biases (no decay), masks (``lr x mask_lr_scale``, no decay).

    timm's schedulers honour ``lr_scale`` in every step.
    """
    masks = set(model.mask_parameter_names()) if hasattr(model, 'mask_parameter_names') else set()
    decay, no_decay, mask = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in masks:
            mask.append(param)
        elif param.ndim <= 1 or name.endswith('.bias'):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0),
              dict(params=mask, weight_decay=0.0, lr_scale=mask_lr_scale)]
    return [g for g in groups if g['params']]


def _transforms(model: nn.Module, splits, augment: bool):
    from timm.data import resolve_data_config
    from .data import create_train_transform, create_eval_transform
    if splits.kind == 'sequence':
        return None, None
    cfg = resolve_data_config(model=model)
    train = create_train_transform(cfg, base_size=splits.native_size, padding=4 if augment else 0,
                                   hflip=0.5 if augment else 0.0)
    return train, create_eval_transform(cfg, model=model)


def _set_autotune(enabled: bool) -> None:
    """Timing-based conv choices differ between runs; Adam turns such float noise into visible weight changes."""
    from .layers import fftconv
    if hasattr(fftconv, 'set_autotune'):
        fftconv.set_autotune(enabled)


def _loader(dataset, batch_size: int, workers: int, sampler=None, seed: int = 0):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=False,
        generator=torch.Generator().manual_seed(seed), persistent_workers=False)


class _LoaderBatches:
    """Training batches from a DataLoader (per-image transforms), sharded by Accelerate; the interface of
    :class:`~flexconv_zoo.data.batch_augment.InMemoryBatches`."""

    def __init__(self, loader, sampler: EpochSampler, dataset, accelerator):
        self.loader, self.sampler, self.dataset, self.acc = loader, sampler, dataset, accelerator

    def __len__(self) -> int:
        return len(self.loader)

    def set_size(self, size: int) -> None:
        pass  # the transforms are rebuilt from the model's data config (``_Loop.enter_size``)

    def batches(self, epoch: int, start: int = 0):
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        loader = self.acc.skip_first_batches(self.loader, start) if start else self.loader
        if hasattr(loader, 'set_epoch'):  # Accelerate's loaders re-set the sampler's epoch when iterated
            loader.set_epoch(epoch)
        return iter(loader)


def _train_batches(args: argparse.Namespace, splits, accelerator, input_kwargs: Dict[str, Any]):
    """The training input: whole-batch augmentation of in-memory images (``--batch-augment``) or a DataLoader."""
    if not getattr(args, 'batch_augment', False):
        sampler = EpochSampler(len(splits.train), args.seed)
        loader = accelerator.prepare(_loader(splits.train, args.batch_size, args.workers, sampler, args.seed))
        return _LoaderBatches(loader, sampler, splits.train, accelerator)
    from .data.batch_augment import BatchAugment, InMemoryBatches
    data = getattr(splits.train.base, 'data', None)
    if splits.kind != 'image' or not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise UserError(f"--batch-augment needs images held in memory as uint8 arrays (cifar10, fashion_mnist); "
                        f"{splits.name} is read image by image: leave --batch-augment out.")
    padding, flip = (0, False) if args.no_augment else (4, True)
    augment = BatchAugment(input_kwargs['img_size'], padding=padding, hflip=flip, mean=splits.mean, std=splits.std)
    return InMemoryBatches(data[splits.train.indices], splits.train.targets, args.batch_size, augment,
                           seed=args.seed, rank=accelerator.process_index, num_processes=accelerator.num_processes,
                           device=accelerator.device)


def _resume(accelerator, run_dir: Path, custom_objects: Sequence[Any]) -> Path:
    """Load the newest intact checkpoint; a damaged newer one (a crash mid-copy, a full disk) is reported and
    skipped. Nothing is restored from a checkpoint until all of its files have been read."""
    damaged = []
    for folder in checkpoint_folders(run_dir):
        try:
            _load_checkpoint(accelerator, folder, custom_objects)
        except Exception as e:
            damaged.append(f"{folder.name} ({e})")
            accelerator.print(f"warning: checkpoint {folder} cannot be restored ({e}); trying an older one")
            continue
        return folder
    raise UserError(f"No intact checkpoint in {run_dir / 'checkpoints'}: {'; '.join(damaged)}. Start a new run "
                    f"(with --initial-checkpoint to keep weights) or restore the folder from a backup.")


# ------------------------------------------------------------------------------------------------ training
def train_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``scripts/train.py``: build everything, train, export. Returns the run summary."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from .data import create_datasets

    args = _resolve_args(argv)
    _set_autotune(getattr(args, 'autotune', False))
    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
                              cpu=args.cpu, rng_types=[])
    set_seed(args.seed)
    splits = create_datasets(args.data, args.data_dir, val_size=args.val_size, seed=args.seed,
                             train_subset=args.train_subset, eval_subset=args.eval_subset)
    model, model_kwargs, input_kwargs = _build_model(args, splits)
    if args.alias_free_init:
        # on the training grid; a resumed run then loads its own weights over it
        model.band_limit_(include_mask=args.alias_free_mask)
    model.set_grad_checkpointing(args.grad_checkpointing)
    if args.channels_last:
        if splits.kind == 'sequence':
            raise UserError(f"--channels-last is for image models (4-D batches); {args.model} on {splits.name} takes "
                            f"sequences (batch, channels, length), which have no channels-last layout.")
        model = model.to(memory_format=torch.channels_last)
    run_dir = _run_dir(args, accelerator, input_kwargs.get('img_size', input_kwargs.get('seq_len')))
    train_tf, eval_tf = _transforms(model, splits, augment=not args.no_augment)
    splits.set_transforms(train_tf, eval_tf)

    val_loader = _loader(splits.val, args.batch_size * 2, args.workers)
    test_loader = _loader(splits.test, args.batch_size * 2, args.workers)

    optimizer = create_optimizer_v2(param_groups(model, args.weight_decay, args.mask_lr_scale), opt=args.opt,
                                    lr=args.lr, weight_decay=args.weight_decay)
    model, optimizer, val_loader, test_loader = accelerator.prepare(model, optimizer, val_loader, test_loader)
    train_batches = _train_batches(args, splits, accelerator, input_kwargs)
    updates_per_epoch = math.ceil(len(train_batches) / args.grad_accum)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs / 10),
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    unwrapped = accelerator.unwrap_model(model)
    ema = ModelEmaV3(unwrapped, decay=args.ema_decay, use_warmup=args.ema_warmup) if args.ema else None
    state = TrainState(img_size=input_kwargs.get('img_size'))
    custom_objects = (scheduler, state) + ((ema,) if ema is not None else ())  # checkpoint order: never reorder

    if args.resume:
        _resume(accelerator, run_dir, custom_objects)
        accelerator.print(f"resumed {run_dir} after step {state.global_step}: epoch {state.epoch + 1}, batch "
                          f"{state.batch_in_epoch} done")
    elif accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / 'args.json', json.dumps(vars(args), indent=2))
        atomic_write_text(run_dir / 'run_info.json', json.dumps(dict(
            model_kwargs=model_kwargs, input_size_kwargs=input_kwargs, num_processes=accelerator.num_processes,
            global_batch_size=args.batch_size * accelerator.num_processes * args.grad_accum,
            dataset=dict(name=splits.name, source=splits.source, train=len(splits.train), val=len(splits.val),
                         test=len(splits.test))), indent=2))
    accelerator.wait_for_everyone()

    criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)
    loop = _Loop(args, accelerator, model, unwrapped, optimizer, scheduler, ema, criterion, state, run_dir, splits)
    loop.custom_objects = custom_objects
    loop.train_batches = train_batches
    if args.resume and state.img_size is not None and state.img_size != input_kwargs.get('img_size'):
        loop.enter_size(state.img_size, rescale=False)  # the checkpoint's weights are defined at its size
    with GracefulStop() as loop.graceful:
        stopped = loop.run(val_loader, test_loader)
    if stopped:
        accelerator.print(f"stopped after step {state.global_step}; continue with --resume {run_dir}")
        return dict(run_dir=str(run_dir), stopped=True, global_step=state.global_step)
    return loop.finish(test_loader)


class GracefulStop:
    """SIGTERM or a first Ctrl-C asks the loop to checkpoint after the current step and stop (resume continues
    exactly there); a second Ctrl-C interrupts at once. Only in the main thread, where Python delivers signals."""

    def __init__(self):
        self.requested, self._previous = False, {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        message = f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint"
        print(message, file=sys.stderr, flush=True)

    def __enter__(self) -> 'GracefulStop':
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Loop:
    """The training loop; a class only to share its many collaborators between small methods."""

    def __init__(self, args, accelerator, model, unwrapped, optimizer, scheduler, ema, criterion, state, run_dir,
                 splits):
        self.args, self.acc, self.model, self.unwrapped = args, accelerator, model, unwrapped
        self.optimizer, self.scheduler, self.ema, self.criterion = optimizer, scheduler, ema, criterion
        self.state, self.run_dir, self.splits = state, run_dir, splits
        self.graceful = None

    def checkpoint(self) -> None:
        _save_checkpoint(self.acc, self.run_dir, self.state, self.args.keep_checkpoints, self.custom_objects)

    def run(self, val_loader, test_loader) -> bool:
        """Train to the last epoch; True when stopped early by ``--stop-after-steps``."""
        args, state = self.args, self.state
        stages = parse_size_schedule(getattr(args, 'img_size_schedule', None))
        while state.epoch < args.epochs:
            if stages:
                size = size_at_epoch(stages, args.epochs, state.epoch)
                if size != state.img_size:
                    self.acc.print(f"epoch {state.epoch + 1}: training resolution {state.img_size} -> {size} px "
                                   f"(kernels resampled)")
                    self.enter_size(size)
            batches = self.train_batches.batches(state.epoch, state.batch_in_epoch)
            if self.train_epoch(batches, len(self.train_batches)):
                return True
            self.end_epoch(val_loader, test_loader)
        return False

    def enter_size(self, img_size: int, rescale: bool = True) -> None:
        """Resample the model (and its EMA) at a new training size and rebuild the inputs to match."""
        for model in (self.unwrapped,) + ((self.ema.module,) if self.ema is not None else ()):
            rebase_input_size(model, rescale=rescale, img_size=img_size)
        self.state.img_size = img_size
        self.splits.set_transforms(*_transforms(self.unwrapped, self.splits, augment=not self.args.no_augment))
        self.train_batches.set_size(img_size)

    def train_epoch(self, loader, num_batches: int) -> bool:
        from tqdm.auto import tqdm
        args, state, acc = self.args, self.state, self.acc
        self.model.train()
        bar = tqdm(total=num_batches, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{args.epochs}",
                   disable=not (args.progress and acc.is_local_main_process), dynamic_ncols=True, leave=False)
        tic = time.perf_counter()
        channels_last = getattr(args, 'channels_last', False)
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with acc.accumulate(self.model):
                logits = self.model(x)
                loss = self.criterion(logits, y)
                if args.alias_free:
                    loss = loss + self.unwrapped.alias_free_penalty(weight=args.alias_free,
                                                                    include_mask=args.alias_free_mask)
                acc.backward(loss)
                if args.clip_grad and acc.sync_gradients:
                    acc.clip_grad_norm_(self.model.parameters(), args.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            loss_value = loss.detach().float().item()
            self.check_finite(loss_value)
            state.loss_sum += loss_value * y.numel()
            state.correct += (logits.detach().argmax(1) == y).sum().item()
            state.seen += y.numel()
            if acc.sync_gradients:
                state.global_step += 1
                self.scheduler.step_update(num_updates=state.global_step)
                if self.ema is not None:
                    self.ema.update(self.unwrapped, step=state.global_step)
            now = time.perf_counter()
            state.epoch_seconds += now - tic
            tic = now
            bar.update(1)
            bar.set_postfix(loss=f"{state.loss_sum / state.seen:.3f}", acc=f"{100 * state.correct / state.seen:.1f}",
                            img_s=f"{state.seen * acc.num_processes / max(state.epoch_seconds, 1e-9):.0f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if acc.sync_gradients and args.checkpoint_every and state.global_step % args.checkpoint_every == 0 \
                    and state.batch_in_epoch < num_batches:
                self.checkpoint()
                tic = time.perf_counter()  # checkpoint time is not training time
            if acc.sync_gradients and (self.stop_requested() or (
                    args.stop_after_steps and state.global_step >= args.stop_after_steps)):
                bar.close()
                self.checkpoint()
                return True
        bar.close()
        return False

    def stop_requested(self) -> bool:
        """A SIGTERM / Ctrl-C arrived (:class:`GracefulStop`); with several processes, any one of them."""
        flag = self.graceful.requested if self.graceful is not None else False
        if self.acc.num_processes > 1:
            flag = self._reduce(float(flag)) > 0
        return flag

    def check_finite(self, loss_value: float) -> None:
        """Stop a diverged run with a message: a NaN/inf loss, or NaN mask parameters (the next forward would
        fail converting the crop size to an integer). All processes agree, so none waits for a dead one."""
        if not hasattr(self, '_masks'):
            names = set(getattr(self.unwrapped, 'mask_parameter_names', list)())
            self._masks = [p for n, p in self.unwrapped.named_parameters() if n in names]
        # one host sync for all mask parameters (the loss value is already on the host)
        bad = not math.isfinite(loss_value) or (bool(self._masks) and not bool(
            torch.isfinite(torch.cat([p.detach().reshape(-1) for p in self._masks])).all()))
        if self.acc.num_processes > 1:
            bad = self._reduce(float(bad)) > 0
        if bad:
            state = self.state
            raise UserError(
                f"training diverged at epoch {state.epoch + 1}, step {state.global_step} (loss {loss_value:.4g}, "
                f"non-finite loss or mask parameters): start a new run with a lower --lr (now {self.args.lr:g}) "
                f"or with --clip-grad; {self.run_dir} keeps the metrics and checkpoints written before.")

    def _reduce(self, value: float) -> float:
        t = torch.tensor(float(value), device=self.acc.device, dtype=torch.float64)
        return self.acc.reduce(t, reduction='sum').item()

    def progress(self, loader, desc: str):
        """Evaluation passes take minutes on a CPU: a progress bar as in training (none with --no-progress)."""
        from tqdm.auto import tqdm
        if not (self.args.progress and self.acc.is_local_main_process):
            return loader
        return tqdm(loader, total=len(loader), desc=desc, leave=False, dynamic_ncols=True)

    def end_epoch(self, val_loader, test_loader=None) -> None:
        state, acc = self.state, self.acc
        seen = self._reduce(state.seen)
        row = dict(epoch=state.epoch + 1, step=state.global_step, lr=self.optimizer.param_groups[0]['lr'],
                   train_loss=self._reduce(state.loss_sum) / seen, train_top1=100 * self._reduce(state.correct) / seen,
                   epoch_seconds=state.epoch_seconds, train_images_per_s=seen / max(state.epoch_seconds, 1e-9))
        if state.img_size is not None:
            row['img_size'] = state.img_size
        if hasattr(self.unwrapped, 'kernel_sizes'):  # the learned kernel size, averaged over layers
            row['mean_kernel_size'] = float(np.mean([np.mean(k) for k in self.unwrapped.kernel_sizes()]))
        candidates = []
        if len(self.splits.val):  # --val-size 0: all training data used, the final weights are the result
            val = evaluate(self.model, self.progress(val_loader, 'validating'), accelerator=acc)
            row.update(val_loss=val['loss'], val_top1=val['top1'], val_top5=val['top5'])
            candidates.append(('model', self.unwrapped, val['top1']))
        if self.ema is not None and candidates:
            ema_val = evaluate(self.ema.module, self.progress(val_loader, 'validating EMA'), accelerator=acc)
            row.update(ema_val_top1=ema_val['top1'], ema_val_loss=ema_val['loss'])
            candidates.append(('ema', self.ema.module, ema_val['top1']))
        if getattr(self.args, 'track_test', False) and test_loader is not None:
            # learning curves only: never read by the selection below
            row['test_top1'] = evaluate(self.model, test_loader, accelerator=acc)['top1']
            if self.ema is not None:
                row['ema_test_top1'] = evaluate(self.ema.module, test_loader, accelerator=acc)['top1']
        state.history.append(row)
        penalty = ''
        if self.args.alias_free:  # the training loss includes it: say so, or 314.3 next to a val loss of 1.9 puzzles
            with torch.no_grad():
                value = self.unwrapped.alias_free_penalty(weight=self.args.alias_free,
                                                          include_mask=self.args.alias_free_mask).item()
            penalty = f" (cross-entropy + alias-free penalty, now {value:.4f})"
        acc.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}{penalty} top1 {row['train_top1']:.2f}"
                  + (f" | val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}" if 'val_top1' in row else '')
                  + (f" | ema val top1 {row['ema_val_top1']:.2f}" if 'ema_val_top1' in row else '')
                  + f" | {row['epoch_seconds']:.1f} s, {row['train_images_per_s']:.0f} img/s")
        kind, module, top1 = max(candidates, key=lambda c: c[2]) if candidates else (None, None, -1.0)
        if candidates and top1 > state.best_top1:  # EMA or raw weights, chosen on validation
            state.best_top1, state.best_epoch = top1, row['epoch']
            if acc.is_main_process:
                _export(module, self.run_dir / 'best', self.splits.class_names,
                        dict(flexconv_zoo=dict(epoch=row['epoch'], val_top1=top1, weights=kind, selected_on='val')))
        state.epoch += 1
        state.start_epoch()
        if acc.is_main_process:
            _write_metrics(self.run_dir, state.history)
            update_training_plot(self.run_dir)  # <run>/training_curves.png, redrawn every epoch
            self.log_tensorboard(row)
        self.checkpoint()

    def log_tensorboard(self, row: Dict[str, Any]) -> None:
        """Epoch metrics to ``<run>/tensorboard`` when TensorBoard is installed (silently skipped otherwise)."""
        if not hasattr(self, '_tb'):
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.run_dir / 'tensorboard'))
            except ImportError:
                self._tb = None
        if self._tb is not None:
            for key, value in row.items():
                if key != 'epoch' and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row['epoch'])
            self._tb.flush()

    def weight_digests(self) -> List[str]:
        """SHA-256 of every process's parameters (all equal when data-parallel training stayed in sync)."""
        import hashlib
        from accelerate.utils import gather_object
        h = hashlib.sha256()
        for _, p in sorted(self.unwrapped.named_parameters()):
            h.update(p.detach().float().cpu().numpy().tobytes())
        return gather_object([h.hexdigest()])

    def finish(self, test_loader) -> Dict[str, Any]:
        """Report the test split (final, EMA) and export the final weights in the Hub layout."""
        acc, state = self.acc, self.state
        test = evaluate(self.model, self.progress(test_loader, 'testing'), accelerator=acc)
        summary = dict(run_dir=str(self.run_dir), stopped=False, global_step=state.global_step,
                       epochs=self.args.epochs, best_epoch=state.best_epoch, best_val_top1=state.best_top1,
                       test=test, final=state.history[-1] if state.history else None)
        summary['rank_weight_digests'] = self.weight_digests()
        if self.ema is not None:
            summary['ema_test'] = evaluate(self.ema.module, self.progress(test_loader, 'testing EMA'), accelerator=acc)
        if acc.is_main_process:
            meta = dict(flexconv_zoo=dict(epochs=self.args.epochs, test_top1=test['top1'],
                                          data=self.splits.name, note="test split reported, never used for selection"))
            _export(self.unwrapped, self.run_dir, self.splits.class_names, meta)
            if self.ema is not None:
                _export(self.ema.module, self.run_dir / 'ema', self.splits.class_names, meta)
            atomic_write_text(self.run_dir / 'summary.json', json.dumps(summary, indent=2))
        acc.print(f"test top1 {test['top1']:.2f} top5 {test['top5']:.2f} ({test['count']} images); "
                  f"weights in {self.run_dir}")
        acc.wait_for_everyone()
        acc.end_training()
        return summary
