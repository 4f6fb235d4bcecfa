"""The options of ``scripts/train.py``: parser, checks that turn bad values into one-line errors, and what a
resumed run takes from its ``args.json``."""
import argparse
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoints import latest_checkpoint
from .cli import VAL_FOLD_HELP, UserError, parse_val_fold
from .progressive import check_stage_epochs, parse_size_schedule

__all__ = ['build_train_parser', 'resolve_train_args', 'validate_train_args', 'RESUME_OVERRIDES']

# Options a resumed run may change; everything else comes from the run's args.json.
RESUME_OVERRIDES = ('stop_after_steps', 'workers', 'progress', 'checkpoint_every', 'keep_checkpoints',
                    'mixed_precision', 'cpu', 'data_dir', 'track_test', 'channels_last', 'ema_warmup')
# data_dir: the same files on another machine; channels_last: a memory layout, the same function (a speed choice);
# ema_warmup: the schedule of the weight average, which never feeds back into training.
# The on/off ones among them have a --no-... form (--progress for --no-progress), to switch them off again.

# Names create_scheduler_v2 may know; the ones the installed timm builds for a per-update schedule are accepted
# (plateau needs per-epoch steps, none would leave the loop without a schedule).
SCHEDULER_CANDIDATES = ('cosine', 'tanh', 'step', 'multistep', 'poly', 'constant', 'wsd', 'rsqrt')


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
    g.add_argument('--val-fold', type=parse_val_fold, metavar='K/N', help=VAL_FOLD_HELP)
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
    g.add_argument('--ema-warmup', action=argparse.BooleanOptionalAction, default=False,
                   help="ramp the EMA decay up from 0 (timm's 1 - (1 + step)^-2/3, capped at --ema-decay): the average "
                        "follows the weights early in training instead of mixing in the random start")
    g.add_argument('--mixed-precision', default='no', choices=('no', 'bf16', 'fp16'))
    g.add_argument('--grad-checkpointing', action='store_true',
                   help="recompute each block in the backward (model.set_grad_checkpointing): less memory, slower "
                        "steps; as with any checkpointed BN network, BN statistics see each batch twice")
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                   help="image models: model and training batches in torch.channels_last memory format (as timm's "
                        "train.py; same function, faster direct convolutions with oneDNN/cuDNN); an error for "
                        "sequence models")
    g.add_argument('--cpu', action=argparse.BooleanOptionalAction, default=False,
                   help="train on the CPU even when a GPU is present")
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--autotune', action='store_true',
                   help="pick FFT/direct convolutions by timing (faster, but runs and resumes are no longer bitwise "
                        "reproducible); default: the fixed, deterministic table")
    g = p.add_argument_group('run folder')
    g.add_argument('--output', default='runs', help="parent folder of run folders")
    g.add_argument('--name', help="run folder name (default: <model>-<data>-<size>px-<time>)")
    g.add_argument('--resume', help="continue the run in this folder from its newest checkpoint, with the options "
                   "in its args.json; only --data-dir, --workers, --stop-after-steps, --checkpoint-every, "
                   "--keep-checkpoints, --mixed-precision, --[no-]cpu, --[no-]progress, --[no-]track-test, "
                   "--[no-]channels-last and --[no-]ema-warmup may be given with it")
    g.add_argument('--checkpoint-every', type=int, default=500, help="optimizer steps between checkpoints (0: epochs only)")
    g.add_argument('--keep-checkpoints', type=int, default=2)
    g.add_argument('--stop-after-steps', type=int, metavar='STEP',
                   help="checkpoint and stop once the run's optimizer step count (global, counted from the start of "
                        "the run, not of this session) reaches STEP: a resumable pause; a resume at or past STEP "
                        "stops after its first step")
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (--no-progress: log lines only)")
    g.add_argument('--track-test', action=argparse.BooleanOptionalAction, default=False,
                   help="also evaluate the test split after every epoch, for learning curves only: model selection "
                        "stays on the validation split")
    g.add_argument('--no-test', action='store_true',
                   help="skip the test split at the end as well (cross-validation folds: recipes are compared "
                        "without seeing it)")
    return p


# ------------------------------------------------------------------------------------------------ checks
def _check_writable(folder: Path, option: str) -> None:
    """Fail before any data is read or step is trained when the run folder cannot be written (read-only mount,
    no permission, a file in the way); probes with an anonymous temporary file that leaves nothing behind."""
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


def _close_matches(name: str, known: Sequence[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name.lower(), known, n=4, cutoff=0.6)
    return f"did you mean {', '.join(close)}? " if close else ''


@functools.lru_cache(maxsize=1)
def _usable_schedulers() -> List[str]:
    """The :data:`SCHEDULER_CANDIDATES` the installed timm builds as a per-update schedule (tried on a dummy
    optimizer: timm has no registry of scheduler names)."""
    import torch
    from timm.scheduler import create_scheduler_v2
    usable = []
    for name in SCHEDULER_CANDIDATES:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        try:
            scheduler, _ = create_scheduler_v2(optimizer, sched=name, num_epochs=10, warmup_epochs=1,
                                               step_on_epochs=False, updates_per_epoch=2)
        except Exception:  # noqa: BLE001  (an older timm without it)
            continue
        if scheduler is not None:
            usable.append(name)
    return usable


def _check_opt_and_sched(opt: str, sched: str) -> None:
    """Misspelled names fail here, before the data is read, not with timm's traceback after it."""
    from timm.optim import list_optimizers
    optimizers = list_optimizers()
    parts = str(opt).lower().split('_')  # timm's own parsing: lookahead_<name>
    if parts[-1] not in optimizers or (len(parts) > 1 and (len(parts) > 2 or parts[0] != 'lookahead')):
        raise UserError(f"--opt {opt} is not a timm optimizer: {_close_matches(parts[-1], optimizers)}see "
                        f"timm.optim.list_optimizers() for all {len(optimizers)} (lookahead_<name> adds Lookahead).")
    schedulers = _usable_schedulers()
    if sched not in schedulers:  # timm compares the names case-sensitively
        why = ("steps once per epoch on a validation metric; train.py steps the schedule every update"
               if sched == 'plateau' else "is not a timm scheduler train.py can use")
        raise UserError(f"--sched {sched} {why}: {_close_matches(str(sched), schedulers)}pick one of "
                        f"{', '.join(schedulers)}.")


def validate_train_args(args: argparse.Namespace) -> None:
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
    if stages and not args.resume:  # a started run keeps the schedule it has (--epochs cannot change on resume)
        try:
            check_stage_epochs(stages, args.epochs)
        except ValueError as e:
            raise UserError(str(e)) from None
    _check_opt_and_sched(args.opt, args.sched)
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
    if getattr(args, 'no_test', False) and getattr(args, 'track_test', False):
        raise UserError("--no-test and --track-test contradict each other: leave one out.")
    if args.resume:
        _check_writable(Path(args.resume) / 'checkpoints', '--resume')
    else:
        _check_writable(Path(args.output), '--output')


def resolve_train_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line; with ``--resume``, the run's own ``args.json`` plus the options a resume may change.
    Every value is checked (:func:`validate_train_args`)."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if not args.resume:
        validate_train_args(args)
        return args
    run_dir = Path(args.resume)
    if not (run_dir / 'args.json').is_file():
        raise UserError(f"{run_dir} is not a run folder to resume (it has no args.json).")
    if latest_checkpoint(run_dir) is None:
        raise UserError(f"{run_dir} has no checkpoint yet (the run stopped before its first one), so there is nothing "
                        f"to resume: delete or rename the folder, then start the run again with its original command "
                        f"(the options in {run_dir / 'args.json'}).")
    try:
        saved = json.loads((run_dir / 'args.json').read_text())
    except ValueError as e:
        raise UserError(f"Cannot read {run_dir / 'args.json'} ({e}): restore it from a backup or start a new "
                        f"run.") from None
    given = _given_options(argv)
    given.pop('resume')
    # the same value as the run's own is no change; anything else outside RESUME_OVERRIDES would be ignored silently
    fixed = [k for k, v in given.items() if k not in RESUME_OVERRIDES and _as_json(v) != saved.get(k)]
    if fixed:
        names = dict(_option_names(parser))
        raise UserError(
            f"{', '.join(names[k] for k in fixed)} cannot change when resuming: {run_dir} continues with the options "
            f"in its args.json. Leave {'it' if len(fixed) == 1 else 'them'} out (a resume may change "
            f"{', '.join(sorted(names[k] for k in RESUME_OVERRIDES))}), or start a new run to train with "
            f"other settings.")
    defaults = vars(parser.parse_args([]))  # options added since the run started keep their defaults
    merged = argparse.Namespace(**{**defaults, **saved, **given})
    merged.resume = str(run_dir)
    merged.stop_after_steps = given.get('stop_after_steps')  # a pause of the earlier session does not carry over
    validate_train_args(merged)
    return merged


def _given_options(argv: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The options the command line actually gives (a parse in which no option has a default), whatever their
    value: ``--workers 0`` overrides a run's 8 although 0 is the default."""
    parser = build_train_parser()
    for action in parser._actions:  # not set_defaults: argparse would put its SUPPRESS marker in the namespace
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def _option_names(parser: argparse.ArgumentParser):
    """``(dest, '--option')`` pairs; ``--[no-]flag`` for the on/off ones."""
    for action in parser._actions:  # argparse has no public list of its options
        if action.option_strings and action.dest != 'help':
            first = action.option_strings[0]
            yield action.dest, (f"--[no-]{first[2:]}" if isinstance(action, argparse.BooleanOptionalAction)
                                else first)


def _as_json(value: Any) -> Any:
    """A parsed value as args.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value))
