"""What every command-line entry point shares: one-line user errors, ``--model-kwargs`` and ``--val-fold``
parsing."""
import argparse
import ast
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

__all__ = ['UserError', 'run_cli', 'parse_model_kwargs', 'parse_val_fold', 'VAL_FOLD_HELP']

VAL_FOLD_HELP = ("cross-validation: hold out stratified fold K of N (0 <= K < N) of the training examples instead "
                 "of --val-size of them, e.g. 0/5 ... 4/5 (data sets with their own test split)")


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main``; user errors become one ``error: ...`` line on stderr and exit code 2."""
    from .data import DataNotFoundError
    from .loading import PretrainedWeightsError
    try:
        main(argv)
    except (UserError, DataNotFoundError, PretrainedWeightsError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def parse_model_kwargs(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["widths=8,8", "kernel_hidden=16", "conv_method=fft"]`` -> ``{'widths': (8, 8), ...}``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise UserError(f"--model-kwargs expects key=value items, got {item!r}.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_val_fold(text: str) -> Tuple[int, int]:
    """``"2/5"`` -> ``(2, 5)``: fold 2 of 5 (an argparse ``type``)."""
    fold, sep, folds = text.partition('/')
    try:
        k, n = int(fold), int(folds)
    except ValueError:
        k = n = -1
    if not sep or n < 2 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold K/N with N >= 2 and 0 <= K < N, e.g. 0/5.")
    return k, n
