"""The alias-free regulariser of a FlexConv layer: its kernel must not hold frequencies its training grid cannot.

    f_Nyq = (K - 1) / 4                                   Nyquist frequency of the K-point grid over [-1, 1]
    penalty = sum_l relu(f_l + f_mask / (L + 1) - f_Nyq / (L + 1))^2

``f_l`` is the largest frequency of Gabor/Fourier filter ``l`` of a multiplicative filter kernel net
(``L + 1`` filters, whose frequencies add up in their product) and ``f_mask = max_d 1 / (pi sigma_d)`` the
mask's, counted only with ``include_mask``. :func:`band_limit_` projects onto the set where the penalty is zero.
Each filter's own share and projection live with the filter (:mod:`.kernelnet`).
"""
from typing import Sequence

import torch
import torch.nn as nn

from .mask import GaussianMask

__all__ = ['nyquist_frequency', 'frequency_penalty', 'band_limit_']


def nyquist_frequency(grid: Sequence[int]) -> float:
    """``(K - 1) / 4`` for the smallest ``K`` of ``grid``."""
    return (min(grid) - 1) / 4


def frequency_penalty(kernel_net: nn.Module, mask: GaussianMask, f_nyquist: float,
                      include_mask: bool = False) -> torch.Tensor:
    """``sum_l relu(f_l - f_Nyq / (L + 1))^2``, with an equal share of the mask's frequency added to every
    ``f_l`` when ``include_mask``."""
    freqs = kernel_net.layer_frequencies()
    num_filters = freqs.numel()
    if include_mask:
        freqs = freqs + mask.max_frequency() / num_filters
    return torch.relu(freqs - f_nyquist / num_filters).pow(2).sum()


@torch.no_grad()
def band_limit_(kernel_net: nn.Module, mask: GaussianMask, f_nyquist: float, include_mask: bool = False) -> None:
    """Make :func:`frequency_penalty` zero: with ``include_mask`` a mask narrower than half the band
    (``1 / (pi sigma) > f_Nyq / 2``) is widened to it first, and the kernel net gets what the mask leaves."""
    budget = f_nyquist
    if include_mask:
        mask.widen_(2 / (torch.pi * budget))
        budget -= mask.max_frequency().item()
    kernel_net.band_limit_(budget)
