"""Atomic file writes: a reader never sees a half-written file, whatever interrupts the writer."""
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ['atomic_path', 'atomic_write_text']

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it replaces ``path`` in one
    rename, otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
