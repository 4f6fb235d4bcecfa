#!/usr/bin/env python
"""Progress of a long training run (docs/campaign.md): a per-epoch table, the curves and the calendar left.

    python scripts/campaign_report.py runs/flexnet16-cifar10 --plot docs/campaign_curves.png

Reads the run folder's ``args.json`` and ``metrics.json``. The calendar extrapolation charges every epoch still to
come at the measured time of the newest epoch of its stage (the masks keep widening, so later epochs of a stage cost
more: read it as a lower bound), or at ``--epoch-minutes SIZE=MIN`` for a stage not reached yet. The accuracy trend fits accuracy against log(epoch) over the newest stage's epochs from
``--fit-from`` on and reads it off at the schedule's last epoch (it ignores the learning rate's decay). The code is
:mod:`flexconv_zoo.campaign_report`; this script parses the arguments.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from flexconv_zoo.campaign_report import campaign_report  # noqa: E402
from flexconv_zoo.cli import UserError  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', type=Path, help="run folder (args.json + metrics.json)")
    p.add_argument('--plot', type=Path, help="write the training curves here (PNG)")
    p.add_argument('--epoch-minutes', nargs='*', default=[], metavar='SIZE=MIN',
                   help="time of an epoch at a size the run has not reached yet (e.g. 32=25)")
    p.add_argument('--fit-from', type=int, default=8, metavar='EPOCH',
                   help="first epoch of the accuracy trend (default 8: past the warm-up; clipped to the newest stage)")
    args = p.parse_args()
    minutes = {int(k): float(v) for k, v in (item.split('=') for item in args.epoch_minutes)}
    try:
        campaign_report(args.run, args.plot, minutes, args.fit_from)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == '__main__':
    main()
