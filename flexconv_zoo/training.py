"""Training and fine-tuning of FlexConv models with Accelerate (the logic behind ``scripts/train.py``).

One code path for CPU, one or many GPUs and bf16/fp16: ``python scripts/train.py ...``,
``accelerate launch scripts/train.py ...`` or ``torchrun --nproc_per_node N scripts/train.py ...``.

Defaults are the paper's recipe: Adam, lr 0.01 (mask parameters x0.1, no weight decay), batch 64,
5 warm-up epochs then a per-step cosine to 1e-6, random crop (pad 4) + flip. ``--batch-size`` is per process.
Options and their checks: :mod:`flexconv_zoo.train_options`.

Run folder ``<output>/<name>/``: ``args.json``, ``run_info.json``, ``checkpoints/step_XXXXXXXX_eXXXXbXXXXXX/``
(:mod:`flexconv_zoo.checkpoints`: model, optimizer, scheduler, EMA, RNG, data position), ``metrics.csv`` /
``metrics.json`` per epoch, ``tensorboard/`` when TensorBoard is installed, and at the end the weights in timm's
Hub layout (``model.safetensors`` + ``config.json``; ``best/`` = best validation epoch of the last resolution stage,
``ema/`` with ``--ema``).
``--resume <run folder>`` continues a killed run exactly where its newest checkpoint left it.
"""
import argparse
import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from accelerate.data_loader import DataLoaderStateMixin

from .checkpoints import (
    check_model_name, checkpoint_name, create_model, export_weights, latest_checkpoint, load_weights, min_input_size,
    pretrained_model, restore_newest, save_training_state, weights_file,
)
from .cli import UserError, parse_model_kwargs
from .evaluation import evaluate
from .files import atomic_write_text
from .models import FlexConvModelMixin
from .plots import update_training_plot
from .progressive import parse_size_schedule, size_at_epoch
from .train_options import resolve_train_args

__all__ = ['train_main', 'param_groups', 'EpochSampler', 'TrainState']

# Steps between reads of the running loss / accuracy and the finiteness check (each read waits for the device).
SYNC_EVERY = 50

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


# ------------------------------------------------------------------------------------------------ setup
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
        if latest_checkpoint(run_dir) is None:  # stopped before its first checkpoint: nothing to resume
            raise UserError(f"Run folder {run_dir} already exists but has no checkpoint yet (it stopped before its "
                            f"first one): delete or rename it, then run this command again; or pick another --name.")
        raise UserError(f"Run folder {run_dir} already exists: continue it with --resume {run_dir} or pick --name.")
    return run_dir


def _run_info(run_dir: Path) -> Dict[str, Any]:
    """What a run recorded about itself (run_info.json); empty without a (readable) record."""
    try:
        return json.loads((run_dir / 'run_info.json').read_text())
    except (OSError, ValueError):
        return {}


def _check_num_processes(run_dir: Path, num_processes: int) -> None:
    """A resume must run as many processes as the run recorded: the data position (batches per process) and the
    learning-rate schedule (updates per epoch) both depend on it."""
    recorded = _run_info(run_dir).get('num_processes')  # None: nothing to compare with
    if recorded is not None and int(recorded) != num_processes:
        raise UserError(f"--resume {run_dir}: the run was trained with {recorded} process(es) (run_info.json), this "
                        f"launch has {num_processes}; the data position and learning-rate schedule would not match. "
                        f"Resume with {recorded} process(es) (accelerate launch --num_processes {recorded} or "
                        f"torchrun --nproc_per_node {recorded}), or start a new run.")


def _build_model(args: argparse.Namespace, splits) -> tuple:
    """Create the model (optionally with weights) and set it to the training size. Returns
    ``(model, creation kwargs, set_input_size kwargs)`` (the latter two rebuild it from a checkpoint)."""
    import timm
    check_model_name(args.model)
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
    recorded = _run_info(Path(args.resume)).get('model_kwargs') if args.resume and init is not None else None
    if recorded is not None:
        # a resumed run loads its own weights over the initial ones: only the architecture they gave matters, and
        # run_info.json recorded it (the initial checkpoint may be elsewhere on this machine, or gone)
        kwargs.update({k: v for k, v in recorded.items() if k not in ('num_classes', 'in_chans')})
        init = None
    if init is not None and init.is_dir():
        if not (init / 'config.json').is_file() or weights_file(init) is None:
            raise UserError(f"{init} holds no exported weights (config.json + model.safetensors): pass a finished run "
                            f"folder, a Hub-layout folder or a weights file.")
        try:
            model_args = json.loads((init / 'config.json').read_text()).get('model_args', {})
        except ValueError as e:
            raise UserError(f"Cannot read {init / 'config.json'}: {e}") from None
        kwargs.update({k: v for k, v in model_args.items() if k not in ('num_classes', 'in_chans')})
        init = weights_file(init)
    elif not sequence:
        kwargs['img_size'] = args.source_img_size or input_kwargs['img_size']
    if args.pretrained:
        model = pretrained_model(args.model, kwargs)
        if model.num_classes != splits.num_classes:
            model.reset_classifier(splits.num_classes)
    else:
        model = create_model(args.model, **kwargs)
    if init is not None:
        load_weights(model, init, strict_head=False)
    if not sequence and input_kwargs['img_size'] < min_input_size(model):
        raise UserError(f"--img-size {input_kwargs['img_size']} is smaller than the {min_input_size(model)} px "
                        f"{args.model} accepts.")
    model.rebase_input_size(next(iter(input_kwargs.values())))  # kernels and data config agree on the training size
    kwargs.update(input_kwargs)  # the weights are now defined at the training size
    if not (args.pretrained or args.initial_checkpoint) and splits.mean is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(splits.mean), std=tuple(splits.std))
    return model, kwargs, input_kwargs


def param_groups(model: nn.Module, weight_decay: float, mask_lr_scale: float) -> List[Dict[str, Any]]:
    """Three groups: weights (``weight_decay``), norms/biases (no decay), masks (``lr x mask_lr_scale``, no decay).

    timm's ``param_groups_weight_decay`` splits weights from norms/biases; the masks are then taken out of its
    no-decay group. timm's schedulers honour ``lr_scale`` in every step. The group order (decay, no decay, mask)
    is the one of the optimizer states in existing checkpoints: never reorder.
    """
    from timm.optim import param_groups_weight_decay
    masks = set(model.mask_parameter_names()) if isinstance(model, FlexConvModelMixin) else set()
    mask_ids = {id(p) for n, p in model.named_parameters() if n in masks and p.requires_grad}
    # weight_decay=1.0 only marks the decayed group (0.0 would put every parameter in one group)
    decay, no_decay = [], []
    for group in param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=masks):
        (decay if group['weight_decay'] else no_decay).extend(group['params'])
    groups = [dict(params=decay, weight_decay=weight_decay),
              dict(params=[p for p in no_decay if id(p) not in mask_ids], weight_decay=0.0),
              dict(params=[p for p in no_decay if id(p) in mask_ids], weight_decay=0.0, lr_scale=mask_lr_scale)]
    return [g for g in groups if g['params']]


def _val_fold(args: argparse.Namespace) -> Optional[Tuple[int, int]]:
    """``--val-fold`` as ``(fold, folds)``; a resumed run's args.json holds it as a list."""
    fold = getattr(args, 'val_fold', None)
    return tuple(fold) if fold else None


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


class _InMemoryEpochs(DataLoaderStateMixin):
    """``--batch-augment`` batches (:class:`~flexconv_zoo.data.batch_augment.InMemoryBatches`) that tell Accelerate
    which batch ends the epoch, as its prepared DataLoaders do: with ``--grad-accum`` the epoch's last, partial
    accumulation then steps the optimizer, instead of carrying its gradients into the next epoch past the epoch's
    checkpoint (which does not store them), and an epoch has the updates the schedule plans for."""

    def __init__(self, batches, accelerator):
        self.inner, self.gradient_state = batches, accelerator.gradient_state

    def __len__(self) -> int:
        return len(self.inner)

    def set_size(self, size: int) -> None:
        self.inner.set_size(size)

    def batches(self, epoch: int, start: int = 0):
        self.begin()  # Accelerate's accumulate() now reads end_of_dataloader
        try:
            for i, batch in enumerate(self.inner.batches(epoch, start), start + 1):
                self.end_of_dataloader = i == len(self.inner)
                yield batch
        finally:
            self.end()


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
    return _InMemoryEpochs(InMemoryBatches(
        data[splits.train.indices], splits.train.targets, args.batch_size, augment, seed=args.seed,
        rank=accelerator.process_index, num_processes=accelerator.num_processes, device=accelerator.device),
        accelerator)


# ------------------------------------------------------------------------------------------------ training
def train_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``scripts/train.py``: build everything, train, export. Returns the run summary."""
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available, set_seed
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from .data import create_datasets

    args = resolve_train_args(argv)
    _set_autotune(getattr(args, 'autotune', False))
    # epoch metrics to TensorBoard through Accelerate's tracker when tensorboard is installed; the run folder's name
    # is only known below, so the tracker writes to <parent>/<run name>/tensorboard (init_trackers)
    runs_parent = Path(args.resume).parent if args.resume else Path(args.output)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
                              cpu=args.cpu, rng_types=[], project_dir=str(runs_parent),
                              log_with='tensorboard' if is_tensorboard_available() else None)
    if args.resume:
        _check_num_processes(Path(args.resume), accelerator.num_processes)
    set_seed(args.seed)
    try:
        splits = create_datasets(args.data, args.data_dir, val_size=args.val_size, seed=args.seed,
                                 train_subset=args.train_subset, eval_subset=args.eval_subset,
                                 val_fold=_val_fold(args))
    except ValueError as e:  # a hold-out the data cannot give (e.g. --val-fold on a folder without a test split)
        raise UserError(str(e)) from None
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
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs / 10),
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False,
        updates_per_epoch=math.ceil(len(train_batches) / args.grad_accum))
    unwrapped = accelerator.unwrap_model(model)
    ema = ModelEmaV3(unwrapped, decay=args.ema_decay, use_warmup=args.ema_warmup) if args.ema else None
    state = TrainState(img_size=input_kwargs.get('img_size'))
    custom_objects = (scheduler, state) + ((ema,) if ema is not None else ())  # checkpoint order: never reorder

    if args.resume:
        restore_newest(accelerator, run_dir, custom_objects)
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
    accelerator.init_trackers(f'{run_dir.name}/tensorboard')

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
        accelerator.end_training()
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
        names = set(unwrapped.mask_parameter_names()) if isinstance(unwrapped, FlexConvModelMixin) else set()
        self._masks = [p for n, p in unwrapped.named_parameters() if n in names]  # checked for NaN on every sync
        self._loss_sum = None  # device-side running sums: start_running_sums
        self._saved = None  # name of the newest checkpoint this session wrote

    def checkpoint(self) -> None:
        self.sync_running_sums()  # also stops a diverged run before its state is saved
        state = self.state
        name = checkpoint_name(state.global_step, state.epoch, state.batch_in_epoch)
        if name == self._saved:
            # --checkpoint-every and a stop on the same step: that state is on disk already, and writing it again
            # would replace the folder (with --keep-checkpoints 1 a kill in between would leave none)
            return
        save_training_state(self.acc, self.run_dir, name, self.args.keep_checkpoints, self.custom_objects)
        self._saved = name

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
                    if state.best_epoch >= 0:
                        # validation at another size is not comparable, and the run's result is at its last size:
                        # best/ restarts its selection with each stage (the earlier best is in metrics.csv)
                        self.acc.print(f"best/ so far: epoch {state.best_epoch} at {state.best_top1:.2f} % val; a "
                                       f"new stage starts a new selection at {size} px")
                        state.best_top1, state.best_epoch = -1.0, -1
            batches = self.train_batches.batches(state.epoch, state.batch_in_epoch)
            try:
                stopped = self.train_epoch(batches, len(self.train_batches))
            finally:  # a stopped epoch leaves Accelerate's gradient state now, not when garbage-collected
                getattr(batches, 'close', lambda: None)()
            if stopped:
                return True
            self.end_epoch(val_loader, test_loader)
        return False

    def enter_size(self, img_size: int, rescale: bool = True) -> None:
        """Resample the model (and its EMA) at a new training size and rebuild the inputs to match."""
        for model in (self.unwrapped,) + ((self.ema.module,) if self.ema is not None else ()):
            model.rebase_input_size(img_size, rescale=rescale)
        self.state.img_size = img_size
        self.splits.set_transforms(*_transforms(self.unwrapped, self.splits, augment=not self.args.no_augment))
        self.train_batches.set_size(img_size)

    def train_epoch(self, loader, num_batches: int) -> bool:
        from tqdm.auto import tqdm
        args, state, acc = self.args, self.state, self.acc
        self.model.train()
        bar = tqdm(total=num_batches, initial=state.batch_in_epoch, desc=f"epoch {state.epoch + 1}/{args.epochs}",
                   disable=not (args.progress and acc.is_local_main_process), dynamic_ncols=True, leave=False)
        self.start_running_sums()
        tic = time.perf_counter()
        channels_last = getattr(args, 'channels_last', False)
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                loss, logits = self.step(x, y)
            except (ValueError, RuntimeError):  # NaN masks fail the next forward: report the divergence instead
                self.sync_running_sums()
                raise
            state.batch_in_epoch += 1
            self.add_to_running_sums(loss, logits, y)
            if acc.sync_gradients:
                state.global_step += 1
                self.scheduler.step_update(num_updates=state.global_step)
                if self.ema is not None:
                    self.ema.update(self.unwrapped, step=state.global_step)
            now = time.perf_counter()
            state.epoch_seconds += now - tic
            tic = now
            bar.update(1)
            if state.batch_in_epoch % SYNC_EVERY == 0:
                self.sync_running_sums()
                bar.set_postfix(loss=f"{state.loss_sum / state.seen:.3f}",
                                acc=f"{100 * state.correct / state.seen:.1f}",
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
        self.sync_running_sums()
        return False

    def step(self, x: torch.Tensor, y: torch.Tensor):
        """Forward, backward and (at the end of an accumulation) an optimizer step; returns loss and logits."""
        args, acc = self.args, self.acc
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
        return loss.detach(), logits.detach()

    # Running loss / accuracy sums stay on the device and are read every SYNC_EVERY batches, before a checkpoint
    # and at the end of an epoch (sync_running_sums). They continue the TrainState values, never restart from a
    # partial sum, so the metrics of a resumed run are bitwise those of an uninterrupted one.
    def start_running_sums(self) -> None:
        device, state = self.acc.device, self.state
        self._loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
        self._correct = torch.tensor(int(state.correct), dtype=torch.int64, device=device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._last_loss = torch.zeros((), device=device)

    def add_to_running_sums(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._loss_sum += loss.float().double() * y.numel()
        self._correct += (logits.argmax(1) == y).sum()
        self._nonfinite |= ~torch.isfinite(loss)
        self._last_loss = loss
        self.state.seen += y.numel()

    def sync_running_sums(self) -> None:
        """Copy the device sums into the TrainState (one host sync) and stop a diverged run with a message: a
        non-finite loss since the last read, or NaN mask parameters (the next forward would fail converting the
        crop size to an integer). All processes agree, so none waits for a dead one."""
        if self._loss_sum is None:
            return
        masks_bad = (~torch.isfinite(torch.cat([p.detach().reshape(-1) for p in self._masks]))).any() \
            if self._masks else torch.zeros((), dtype=torch.bool, device=self.acc.device)
        loss_sum, correct, bad, last_loss = torch.stack([
            self._loss_sum, self._correct.double(), (self._nonfinite | masks_bad).double(),
            self._last_loss.double()]).tolist()
        self.state.loss_sum, self.state.correct = loss_sum, correct
        bad = bool(bad)
        if self.acc.num_processes > 1:
            bad = self._reduce(float(bad)) > 0
        if bad:
            state = self.state
            raise UserError(
                f"training diverged at epoch {state.epoch + 1}, step {state.global_step} (loss {last_loss:.4g}, "
                f"non-finite loss or mask parameters): start a new run with a lower --lr (now {self.args.lr:g}) "
                f"or with --clip-grad; {self.run_dir} keeps the metrics and checkpoints written before.")

    def stop_requested(self) -> bool:
        """A SIGTERM / Ctrl-C arrived (:class:`GracefulStop`); with several processes, any one of them."""
        flag = self.graceful.requested if self.graceful is not None else False
        if self.acc.num_processes > 1:
            flag = self._reduce(float(flag)) > 0
        return flag

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
        if isinstance(self.unwrapped, FlexConvModelMixin):  # the learned kernel size, averaged over layers
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
        penalty = ''
        if self.args.alias_free:  # the training loss includes it: say so, or 314.3 next to a val loss of 1.9 puzzles
            with torch.no_grad():
                value = self.unwrapped.alias_free_penalty(weight=self.args.alias_free,
                                                          include_mask=self.args.alias_free_mask).item()
            penalty = f" (cross-entropy + alias-free penalty, now {value:.4f})"
            row['alias_free_penalty'] = value
        state.history.append(row)
        acc.print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}{penalty} top1 {row['train_top1']:.2f}"
                  + (f" | val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}" if 'val_top1' in row else '')
                  + (f" | ema val top1 {row['ema_val_top1']:.2f}" if 'ema_val_top1' in row else '')
                  + f" | {row['epoch_seconds']:.1f} s, {row['train_images_per_s']:.0f} img/s")
        kind, module, top1 = max(candidates, key=lambda c: c[2]) if candidates else (None, None, -1.0)
        if candidates and top1 > state.best_top1:  # EMA or raw weights, chosen on validation
            state.best_top1, state.best_epoch = top1, row['epoch']
            if acc.is_main_process:
                export_weights(module, self.run_dir / 'best', self.splits.class_names,
                        dict(flexconv_zoo=dict(epoch=row['epoch'], val_top1=top1, weights=kind, selected_on='val')))
        state.epoch += 1
        state.start_epoch()
        self.start_running_sums()
        if acc.is_main_process:
            _write_metrics(self.run_dir, state.history)
            update_training_plot(self.run_dir)  # <run>/training_curves.png, redrawn every epoch
            # Accelerate's tracker (TensorBoard when installed, else nothing); the epoch is the step axis
            acc.log({k: v for k, v in row.items() if k != 'epoch' and isinstance(v, (int, float))}, step=row['epoch'])
        self.checkpoint()

    def weight_digests(self) -> List[str]:
        """SHA-256 of every process's parameters (all equal when data-parallel training stayed in sync)."""
        import hashlib
        from accelerate.utils import gather_object
        h = hashlib.sha256()
        for _, p in sorted(self.unwrapped.named_parameters()):
            h.update(p.detach().float().cpu().numpy().tobytes())
        return gather_object([h.hexdigest()])

    def finish(self, test_loader) -> Dict[str, Any]:
        """Report the test split (final, EMA; not with ``--no-test``) and export the final weights in the Hub
        layout."""
        acc, state = self.acc, self.state
        skip_test = getattr(self.args, 'no_test', False)
        test = None if skip_test else evaluate(self.model, self.progress(test_loader, 'testing'), accelerator=acc)
        summary = dict(run_dir=str(self.run_dir), stopped=False, global_step=state.global_step,
                       epochs=self.args.epochs, best_epoch=state.best_epoch, best_val_top1=state.best_top1,
                       test=test, final=state.history[-1] if state.history else None)
        summary['rank_weight_digests'] = self.weight_digests()
        if self.ema is not None and not skip_test:
            summary['ema_test'] = evaluate(self.ema.module, self.progress(test_loader, 'testing EMA'), accelerator=acc)
        if acc.is_main_process:
            meta = dict(flexconv_zoo=dict(epochs=self.args.epochs, data=self.splits.name,
                                          note="test split reported, never used for selection"))
            if test is not None:
                meta['flexconv_zoo']['test_top1'] = test['top1']
            export_weights(self.unwrapped, self.run_dir, self.splits.class_names, meta)
            if self.ema is not None:
                export_weights(self.ema.module, self.run_dir / 'ema', self.splits.class_names, meta)
            atomic_write_text(self.run_dir / 'summary.json', json.dumps(summary, indent=2))
        if test is None:
            acc.print(f"test split not evaluated (--no-test); weights in {self.run_dir}")
        else:
            acc.print(f"test top1 {test['top1']:.2f} top5 {test['top5']:.2f} ({test['count']} images); "
                      f"weights in {self.run_dir}")
        acc.wait_for_everyone()
        acc.end_training()
        return summary
