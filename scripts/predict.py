#!/usr/bin/env python
"""Top-k predictions of a pretrained FlexNet (see ``python scripts/predict.py --help``).

    python scripts/predict.py                                   # CIFAR-10 test images, flexnet16.cifar10
    python scripts/predict.py my_cat.png --model flexnet16.cifar10_16px_alias_free --img-size 32
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.cli import run_cli  # noqa: E402
from flexconv_zoo.prediction import predict_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_cli(predict_main))
