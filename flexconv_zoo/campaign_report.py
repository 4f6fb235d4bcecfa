"""Progress of a long training run (``scripts/campaign_report.py``, docs/campaign.md): a per-epoch table, the
training curves (:mod:`flexconv_zoo.plots`) and the calendar left.

The calendar extrapolation charges every epoch still to come at the measured time of the newest epoch of its stage
(the masks keep widening, so later epochs of a stage cost more: read it as a lower bound), or at a given time for a
stage not reached yet.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .cli import UserError

__all__ = ['COLUMNS', 'OPTIONAL_COLUMNS', 'epoch_table', 'calendar', 'campaign_report']

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


def campaign_report(run: Path, plot: Optional[Path] = None, epoch_minutes: Optional[Dict[int, float]] = None) -> None:
    """Print the epoch table and the calendar of the run folder ``run``; draw its curves into ``plot``."""
    from .plots import plot_training_curves
    run = Path(run)
    for name in ('args.json', 'metrics.json'):
        if not (run / name).is_file():
            raise UserError(f"{run / name} is missing: pass a run folder that has finished an epoch.")
    run_args = json.loads((run / 'args.json').read_text())
    history = json.loads((run / 'metrics.json').read_text())
    print(epoch_table(history))
    print('\n' + '\n'.join(calendar(run_args, history, epoch_minutes)))
    if plot:
        plot_training_curves(history, plot, title=f"{run_args.get('model')} on {run_args.get('data')}")
        print(f"wrote {plot}")
