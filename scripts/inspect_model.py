#!/usr/bin/env python
"""Pictures of what a FlexConv model learned: kernel size per layer, kernels, masks and frequency content against
the Nyquist limit, at two resolutions side by side (PNG files + a markdown table, see flexconv_zoo/inspection.py).

    python scripts/inspect_model.py flexnet16.cifar10_16px_alias_free              # 16 px and 32 px
    python scripts/inspect_model.py runs/<run> --sizes 32 64 --layers 0 7 14 --out-dir inspect/
    python scripts/inspect_model.py weights.safetensors --model flexnet16 --source-img-size 32
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.deploy import add_source_arguments  # noqa: E402
from flexconv_zoo.cli import UserError, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument('--sizes', type=int, nargs=2, default=None, metavar=('A', 'B'),
                   help="two resolutions to compare (pixels / steps; default: the model's current one and twice it)")
    p.add_argument('--layers', type=int, nargs='+', default=None,
                   help="FlexConv layer indices whose kernels and masks are drawn (default: first, middle, last)")
    p.add_argument('--out-dir', default=None, help="output folder (default: inspect-<source name>)")
    p.add_argument('--title', default=None, help="figure title (default: the source name)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    from flexconv_zoo.deploy import load_source_from_args
    from flexconv_zoo.inspection import inspect_model
    name = Path(args.source.rstrip('/')).name.replace('hf-hub:', '')
    try:
        model = load_source_from_args(args)
        result = inspect_model(model, Path(args.out_dir or f'inspect-{name}'), sizes=args.sizes, layers=args.layers,
                               title=args.title or name)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    print(result['table'])
    print('wrote ' + ', '.join(str(p) for p in result['files'].values()))


if __name__ == '__main__':
    sys.exit(run_cli(main))
