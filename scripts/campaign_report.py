#!/usr/bin/env python
"""Progress of a long training run (docs/campaign.md): a per-epoch table, the curves and the calendar left.

    python scripts/campaign_report.py /work/campaign/flexnet16-cifar10 --plot docs/campaign_curves.png

Reads the run folder's ``args.json`` and ``metrics.json``. The calendar extrapolation charges every epoch still to
come at the measured time of the newest epoch of its stage (the masks keep widening, so later epochs of a stage cost
more: read it as a lower bound), or at ``--epoch-minutes SIZE=MIN`` for a stage not reached yet.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from flexconv_zoo.plots import plot_training_curves  # noqa: E402
from flexconv_zoo.progressive import parse_size_schedule, size_at_epoch  # noqa: E402

COLUMNS = (('epoch', 'epoch', '{:d}'), ('img_size', 'px', '{:d}'), ('lr', 'lr', '{:.2e}'),
           ('train_loss', 'train loss', '{:.3f}'), ('val_top1', 'val top-1', '{:.2f}'),
           ('ema_val_top1', 'EMA val top-1', '{:.2f}'), ('test_top1', 'test top-1 (tracked)', '{:.2f}'),
           ('ema_test_top1', 'EMA test top-1 (tracked)', '{:.2f}'), ('mean_kernel_size', 'mean kernel', '{:.1f}'),
           ('train_images_per_s', 'img/s', '{:.0f}'), ('epoch_seconds', 'epoch min', '{:.1f}'))


def cell(row, key, fmt):
    value = row.get(key)
    if value is None:
        return '-'
    return fmt.format(value / 60 if key == 'epoch_seconds' else value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', type=Path, help="run folder (args.json + metrics.json)")
    p.add_argument('--plot', type=Path, help="write the training curves here (PNG)")
    p.add_argument('--epoch-minutes', nargs='*', default=[], metavar='SIZE=MIN',
                   help="time of an epoch at a size the run has not reached yet (e.g. 32=25)")
    args = p.parse_args()
    for name in ('args.json', 'metrics.json'):
        if not (args.run / name).is_file():
            sys.exit(f"error: {args.run / name} is missing: pass a run folder that has finished an epoch.")
    run_args = json.loads((args.run / 'args.json').read_text())
    history = json.loads((args.run / 'metrics.json').read_text())
    stages = parse_size_schedule(run_args.get('img_size_schedule'))
    epochs = int(run_args['epochs'])

    print('| ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |')
    print('|' + '---|' * len(COLUMNS))
    for row in history:
        print('| ' + ' | '.join(cell(row, key, fmt) for key, _, fmt in COLUMNS) + ' |')

    minutes = {int(k): float(v) for k, v in (item.split('=') for item in args.epoch_minutes)}
    for row in history:  # the newest measured epoch of each size wins
        if row.get('img_size') is not None:
            minutes[int(row['img_size'])] = row['epoch_seconds'] / 60
    size_of = (lambda e: size_at_epoch(stages, epochs, e)) if stages else (lambda e: run_args.get('img_size') or 32)
    left = [size_of(e) for e in range(len(history), epochs)]
    unknown = sorted({s for s in left if s not in minutes})
    done_h = sum(r['epoch_seconds'] for r in history) / 3600
    print(f"\n{len(history)} of {epochs} epochs done in {done_h:.1f} h of training time.")
    if unknown:
        print(f"No epoch measured yet at {', '.join(map(str, unknown))} px: pass --epoch-minutes SIZE=MIN.")
    elif left:
        left_h = sum(minutes[s] for s in left) / 60
        by_size = ', '.join(f"{left.count(s)} at {s} px ({minutes[s]:.1f} min each)" for s in sorted(set(left)))
        print(f"Left: {by_size} = {left_h:.1f} h of training time or more.")
    if args.plot:
        plot_training_curves(history, args.plot, title=f"{run_args.get('model')} on {run_args.get('data')}")
        print(f"wrote {args.plot}")


if __name__ == '__main__':
    main()
