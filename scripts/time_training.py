#!/usr/bin/env python
"""Time a FlexNet training step across the settings a CPU training campaign can choose (docs/campaign.md).

    python scripts/time_training.py --json docs/campaign_timing.json            # ~10 min on 2 busy cores

Each row: one Adam training step (forward + backward + update, the recipe's parameter groups) of ``--model`` at an
input size, batch size, thread count, mask width and memory layout, timed after warm-up; images/s and the
extrapolated time of a 45,000-image epoch. Mask widths are given in the continuous kernel coordinates
(``sigma``: 0.075 at init, about 0.2 mid-run, 0.466 = the whole grid), so the cropped kernel shrinks with the
input size exactly as it does in a progressive-resolution run. A second table times the data pipeline: per-image
torchvision transforms through a DataLoader vs the whole-batch uint8 augmentation of ``flexconv_zoo.data``.
Times are minima over the timed steps (the least disturbed by other processes on a shared machine). The code is
:mod:`flexconv_zoo.training_timing`; this script parses the arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from flexconv_zoo.training_timing import run_time_training  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='flexnet16')
    p.add_argument('--steps', type=int, default=3, help="timed steps per row (after a warm-up step)")
    p.add_argument('--json', help="write the rows here")
    p.add_argument('--quick', action='store_true', help="only the 2-thread batch-64 rows")
    p.add_argument('--sizes', type=int, nargs='+', default=[16, 20, 24, 32])
    p.add_argument('--sigmas', type=float, nargs='+', default=[0.075, 0.2, 0.466])
    args = p.parse_args()
    run_time_training(args.model, args.steps, args.sizes, args.sigmas, args.quick, args.json)


if __name__ == '__main__':
    main()
