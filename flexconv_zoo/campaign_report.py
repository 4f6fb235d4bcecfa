"""Progress of a long training run (``scripts/campaign_report.py``, docs/campaign.md): a per-epoch table, the
training curves (:mod:`flexconv_zoo.plots`), the calendar left and a trend for the accuracy at the schedule's end.

The calendar extrapolation charges every epoch still to come at the measured time of the newest epoch of its stage
(the masks keep widening, so later epochs of a stage cost more: read it as a lower bound), or at a given time for a
stage not reached yet.

The accuracy trend is a least-squares fit of accuracy against log(epoch) over the newest stage's epochs, read off at
the schedule's last epoch. It knows nothing of the learning rate's decay to zero (which usually adds a point or two at
the end) nor of a curve that flattens sooner (on the default run, a fit over epochs 8-20 promised a third more than
epoch 30 gave): a trend to reason with, not a forecast.
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .cli import UserError

__all__ = ['COLUMNS', 'OPTIONAL_COLUMNS', 'epoch_table', 'calendar', 'log_epoch_fit', 'accuracy_trend',
           'campaign_report']

COLUMNS = (('epoch', 'epoch', '{:d}'), ('img_size', 'px', '{:d}'), ('lr', 'lr', '{:.2e}'),
           ('train_loss', 'train loss', '{:.3f}'), ('val_top1', 'val top-1', '{:.2f}'),
           ('ema_val_top1', 'EMA val top-1', '{:.2f}'), ('test_top1', 'test top-1 (tracked)', '{:.2f}'),
           ('ema_test_top1', 'EMA test top-1 (tracked)', '{:.2f}'), ('mean_kernel_size', 'mean kernel', '{:.1f}'),
           ('train_images_per_s', 'img/s', '{:.0f}'), ('epoch_seconds', 'epoch min', '{:.1f}'))
# Shown only for runs that record it (an --alias-free run, from the code that logs it on).
OPTIONAL_COLUMNS = (('alias_free_penalty', 'alias-free penalty', '{:.4f}'),)


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return '-'
    return fmt.format(value / 60 if key == 'epoch_seconds' else value)


def epoch_table(history: Sequence[Mapping[str, Any]]) -> str:
    """One markdown row per epoch of ``metrics.json``, plus the optional columns some epoch of the run records."""
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(row.get(c[0]) is not None for row in history))
    lines = ['| ' + ' | '.join(title for _, title, _ in columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(_cell(row, key, fmt) for key, _, fmt in columns) + ' |' for row in history]
    return '\n'.join(lines)


def calendar(run_args: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
             epoch_minutes: Optional[Mapping[int, float]] = None) -> List[str]:
    """Epochs done and the training time left, per image size (``epoch_minutes``: size -> minutes per epoch for
    sizes the run has not reached yet)."""
    from .progressive import parse_size_schedule, size_at_epoch
    stages = parse_size_schedule(run_args.get('img_size_schedule'))
    epochs = int(run_args['epochs'])
    minutes = dict(epoch_minutes or {})
    for row in history:  # the newest measured epoch of each size wins
        if row.get('img_size') is not None:
            minutes[int(row['img_size'])] = row['epoch_seconds'] / 60
    size_of = (lambda e: size_at_epoch(stages, epochs, e)) if stages else (lambda e: run_args.get('img_size') or 32)
    left = [size_of(e) for e in range(len(history), epochs)]
    unknown = sorted({s for s in left if s not in minutes})
    done_h = sum(r['epoch_seconds'] for r in history) / 3600
    lines = [f"{len(history)} of {epochs} epochs done in {done_h:.1f} h of training time."]
    if unknown:
        lines.append(f"No epoch measured yet at {', '.join(map(str, unknown))} px: pass --epoch-minutes SIZE=MIN.")
    elif left:
        left_h = sum(minutes[s] for s in left) / 60
        by_size = ', '.join(f"{left.count(s)} at {s} px ({minutes[s]:.1f} min each)" for s in sorted(set(left)))
        lines.append(f"Left: {by_size} = {left_h:.1f} h of training time or more.")
    return lines


def log_epoch_fit(epochs: Sequence[float], values: Sequence[float]) -> Tuple[float, float]:
    """Least-squares ``(a, b)`` of ``value = a + b * ln(epoch)``."""
    if len(epochs) != len(values) or len(set(epochs)) < 2:
        raise ValueError("a log(epoch) fit needs at least two distinct epochs")
    xs = [math.log(e) for e in epochs]
    x_mean, y_mean = sum(xs) / len(xs), sum(values) / len(values)
    b = (sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, values))
         / sum((x - x_mean) ** 2 for x in xs))
    return y_mean - b * x_mean, b


TREND_KEYS = (('ema_val_top1', 'EMA val'), ('ema_test_top1', 'EMA test (tracked)'),
              ('val_top1', 'val'), ('test_top1', 'test (tracked)'))


def accuracy_trend(run_args: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                   fit_from: int = 8, min_points: int = 5) -> List[str]:
    """The log(epoch) trend of each accuracy the run records, over the newest stage's epochs from ``fit_from`` on,
    read off at the schedule's last epoch (see the module docstring for what it does not know)."""
    epochs = int(run_args['epochs'])
    if not history or len(history) >= epochs:
        return []
    stage_size = history[-1].get('img_size')
    stage = [r for r in history if r.get('img_size') == stage_size]
    first = max(fit_from, min(int(r['epoch']) for r in stage))
    rows = [r for r in stage if int(r['epoch']) >= first]
    if len(rows) < min_points:
        return [f"Accuracy trend: {len(rows)} epochs of this stage from epoch {first} on; it needs {min_points}."]
    parts = []
    for key, title in TREND_KEYS:
        points = [(int(r['epoch']), float(r[key])) for r in rows if r.get(key) is not None]
        if len(points) < min_points:
            continue
        a, b = log_epoch_fit(*zip(*points))
        parts.append(f"{title} {a + b * math.log(epochs):.1f} % (+{b * math.log(2):.1f} a doubling)")
    if not parts:
        return []
    return [f"Accuracy trend, a + b*ln(epoch) over epochs {first}-{rows[-1]['epoch']} at {stage_size} px, read at "
            f"epoch {epochs}: " + '; '.join(parts) + ". It ignores the learning rate's decay: a trend, not a forecast."]


def campaign_report(run: Path, plot: Optional[Path] = None, epoch_minutes: Optional[Dict[int, float]] = None,
                    fit_from: int = 8) -> None:
    """Print the epoch table, the calendar and the accuracy trend of the run folder ``run``; draw its curves into
    ``plot``."""
    from .plots import plot_training_curves
    run = Path(run)
    for name in ('args.json', 'metrics.json'):
        if not (run / name).is_file():
            raise UserError(f"{run / name} is missing: pass a run folder that has finished an epoch.")
    run_args = json.loads((run / 'args.json').read_text())
    history = json.loads((run / 'metrics.json').read_text())
    print(epoch_table(history))
    print('\n' + '\n'.join(calendar(run_args, history, epoch_minutes) + accuracy_trend(run_args, history, fit_from)))
    if plot:
        plot_training_curves(history, plot, title=f"{run_args.get('model')} on {run_args.get('data')}")
        print(f"wrote {plot}")
