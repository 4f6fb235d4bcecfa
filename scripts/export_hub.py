#!/usr/bin/env python3
"""Turn a finished training run into a Hub folder ``hub_configs/<model>.<tag>/`` with a measured model card.

Every number in the card is measured here, by ``scripts/validate.py`` (run in process) on the run's weights:
the whole test split at each ``--img-size`` and a small seeded sample (``--ci-samples``) that the test suite
re-measures in CI. Example::

    python scripts/export_hub.py runs/flextcn6-mnist1d --tag flextcn6.mnist1d \
        --dataset mnist1d --dataset-name MNIST-1D --hardware "2 CPU cores (shared)"
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexconv_zoo.cli import run_cli  # noqa: E402
from flexconv_zoo.hub_export import export_run  # noqa: E402


def export_main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('run', type=Path, help='finished run folder of scripts/train.py')
    p.add_argument('--tag', required=True, help='<model>.<tag> registered in default_cfgs')
    p.add_argument('--dataset', required=True, help='data set name for train/validate (and the Hub metadata)')
    p.add_argument('--dataset-name', required=True, help='human-readable data set name')
    p.add_argument('--img-size', type=int, nargs='*', default=(), help='resolutions to report (default: training)')
    p.add_argument('--test-img-size', type=int, default=None, help="extra evaluation resolution of the tag's cfg")
    p.add_argument('--ci-samples', type=int, default=256, help='size of the test sample re-measured in CI')
    p.add_argument('--hardware', default='2 CPU cores (shared machine)')
    p.add_argument('--summary', default='', help='one paragraph on what the weight is')
    p.add_argument('--limitation', action='append', default=[], help='a limitation line (repeatable)')
    p.add_argument('--output', type=Path, default=None, help='default: hub_configs/<tag>')
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--weights', default='model.safetensors',
                   help="weights inside the run folder: model.safetensors (final), best/model.safetensors (best on "
                        "validation so far: exports a run that is still training), ema/model.safetensors")
    p.add_argument('--flip-tta', action='store_true',
                   help='also measure horizontal-flip test-time augmentation (images), shown beside the single view')
    p.add_argument('--command-note', default='',
                   help="text after the card's train command: what the command alone does not say (e.g. flags "
                        "switched on when the run was resumed)")
    args = p.parse_args(argv)
    output = args.output or ROOT / 'hub_configs' / args.tag
    return export_run(args.run, args.tag, args.dataset, args.dataset_name, output,
                      img_sizes=args.img_size, test_img_size=args.test_img_size, ci_samples=args.ci_samples,
                      hardware=args.hardware, summary=args.summary, limitations=args.limitation,
                      overwrite=args.overwrite, weights=args.weights, flip_tta=args.flip_tta,
                      command_note=args.command_note)


if __name__ == '__main__':
    sys.exit(run_cli(export_main))
