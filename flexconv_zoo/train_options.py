"""The options of ``scripts/train.py``: parser, checks that turn bad values into one-line errors, and what a
resumed run takes from its ``args.json``."""
import argparse
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from .checkpoints import latest_checkpoint
from .cli import VAL_FOLD_HELP, UserError, parse_val_fold
from .progressive import parse_size_schedule

__all__ = ['build_train_parser', 'resolve_train_args', 'validate_train_args', 'RESUME_OVERRIDES']

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
    validate_train_args(merged)
    return merged
