#!/usr/bin/env python
"""Evaluate a FlexConv model at one or many resolutions (see ``python scripts/validate.py --help``).

    python scripts/validate.py --checkpoint runs/<run> --data cifar10 --img-size 16 24 32 48
    python scripts/validate.py --model flexnet16 --checkpoint weights.safetensors --source-img-size 16 --img-size 16 32
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.cli import run_cli  # noqa: E402
from flexconv_zoo.evaluation import validate_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_cli(validate_main))
