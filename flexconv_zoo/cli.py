"""What every command-line entry point shares: one-line user errors and ``--model-kwargs`` parsing."""
import ast
import sys
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ['UserError', 'run_cli', 'parse_model_kwargs']


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
