#!/usr/bin/env python
"""k-fold cross-validation of a training recipe (see ``python scripts/cross_validate.py --help``).

    python scripts/cross_validate.py --folds 5 --jobs 2 --name jv-drop03 -- \\
        --model flextcn4 --data japanese_vowels --epochs 200 --batch-size 32 --model-kwargs block_drop_rate=0.3
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.cli import run_cli  # noqa: E402
from flexconv_zoo.cross_validation import cross_validate_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_cli(cross_validate_main))
