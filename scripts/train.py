#!/usr/bin/env python
"""Train or fine-tune a FlexConv model with Accelerate (see ``python scripts/train.py --help``).

    python scripts/train.py --model flexnet16 --data cifar10 --img-size 32            # the paper's recipe
    accelerate launch scripts/train.py --model flexnet16 --data cifar10 --mixed-precision bf16
    python scripts/train.py --model flexnet16 --initial-checkpoint runs/<run> --data <folder> --img-size 48
    python scripts/train.py --resume runs/<run>                                        # continue a killed run
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.cli import run_cli  # noqa: E402
from flexconv_zoo.training import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_cli(train_main))
