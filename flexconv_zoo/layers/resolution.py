"""Kernel grids and the rules for changing the sampling resolution of a continuous kernel.

A FlexConv kernel lives on ``[-1, 1]^D``. On a grid of ``K`` points per dimension the step is
``2 / (K - 1)``. For an image of ``n`` pixels the grid has ``K = 2 * (n // 2) + 1`` points (33 for 32 px,
the paper's "horizon"), so that a full-size kernel reaches every pixel from every other pixel.

When the same continuous kernel is sampled on a denser grid (a model trained at 16 px run at 32 px),
the kernel is scaled by ``prod_d (K_src,d - 1) / (K_tgt,d - 1)`` so that its sum over the
denser samples stays comparable (paper: ``(src / tgt)^D``).
"""
import numbers
from typing import Any, Sequence, Tuple, Union

import torch

__all__ = ['grid_size_for_input', 'to_tuple', 'check_size', 'grid_positions', 'sampling_rate_scale', 'MIN_INPUT_SIZE']

IntOrSeq = Union[int, Sequence[int]]

# A kernel grid needs two samples per dimension to define a step (linspace(-1, 1, K) with K >= 2).
MIN_INPUT_SIZE = 2


def to_tuple(value: IntOrSeq, dim: int, name: str = 'size') -> Tuple[int, ...]:
    """Broadcast an int to a ``dim``-tuple and validate a sequence's length."""
    if isinstance(value, int):
        return (value,) * dim
    value = tuple(int(v) for v in value)
    if len(value) != dim:
        raise ValueError(f"{name} must be an int or a sequence of {dim} ints, got {value}.")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, torch.SymInt)) and not isinstance(value, bool)


def check_size(value: Any, dim: int, name: str = 'size') -> Tuple[int, ...]:
    """:func:`to_tuple` for sizes given by users (``set_input_size``): ints only, so that ``2.5`` or ``'32'``
    cannot leave the kernel grid, ``img_size`` and the data config disagreeing. Raises ``TypeError``."""
    items = (value,) if _is_int(value) else value
    if isinstance(value, (str, bytes)) or not hasattr(items, '__iter__') or not all(_is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a sequence of {dim} ints, got {value!r} ({type(value).__name__}).")
    return to_tuple(int(value) if _is_int(value) else tuple(int(v) for v in value), dim, name)


def grid_size_for_input(input_size: IntOrSeq, dim: int, causal: bool = False) -> Tuple[int, ...]:
    """Kernel grid that covers an input of ``input_size`` samples per dimension.

    Centred ("same") kernels get ``2 * (n // 2) + 1`` points, so every pixel reaches every other one
    (33 for 32 px); causal kernels get ``n`` points, the present and all ``n - 1`` past steps.

    ``2 * (n // 2) + 1`` is the smallest odd count ``>= n``: a centred kernel needs a tap at position 0 of its
    ``linspace(-1, 1, K)`` grid, so an even size and the odd size above it share a grid (30 px and 31 px both
    get 31 points, with the same step). This is the original code's convention, kept so that its checkpoints
    (``train_length``) and the shipped weights are sampled on the grid they were trained on.
    """
    sizes = to_tuple(input_size, dim, 'input_size')
    if any(n < MIN_INPUT_SIZE for n in sizes):
        raise ValueError(
            f"FlexConv needs at least {MIN_INPUT_SIZE} samples per dimension, got input size {sizes}.")
    return sizes if causal else tuple(2 * (n // 2) + 1 for n in sizes)


def grid_positions(
        grid_size: Sequence[int],
        start: Sequence[int],
        length: Sequence[int],
        device=None,
        dtype=None,
) -> torch.Tensor:
    """Positions of a window of the ``linspace(-1, 1, K)`` grid, shape ``(prod(length), D)``.

    The window samples exactly the points of the full grid, so cropping never moves a sample.
    """
    axes = []
    for k, s, n in zip(grid_size, start, length):
        idx = torch.arange(s, s + n, device=device, dtype=torch.float64)
        axes.append((idx * (2.0 / (k - 1)) - 1.0).to(dtype or torch.get_default_dtype()))
    mesh = torch.meshgrid(*axes, indexing='ij')
    return torch.stack(mesh, dim=-1).reshape(-1, len(axes))


def sampling_rate_scale(source_grid: Sequence[int], target_grid: Sequence[int]) -> float:
    """Kernel scale when resampling from ``source_grid`` to ``target_grid``: ``prod (K_s - 1) / (K_t - 1)``."""
    scale = 1.0
    for k_src, k_tgt in zip(source_grid, target_grid):
        scale *= (k_src - 1) / (k_tgt - 1)
    return scale
