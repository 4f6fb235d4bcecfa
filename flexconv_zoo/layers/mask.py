"""Gaussian mask with a learnable mean and width per dimension: the learned kernel size of FlexConv.

    w(x) = prod_d exp(-1/2 * ((x_d - m_d) / s_d)^2)

The kernel is multiplied by ``w`` and cropped to where ``w`` exceeds ``threshold`` (0.1 in the paper):
``s_d * sqrt(-2 ln threshold)`` around ``m_d``. The crop is an integer decision taken without gradient;
``m`` and ``s`` learn through the mask values on the kept positions. ``|s|`` is clamped to ``eps`` from
below, so a width that collapses to zero gives finite gradients instead of the original code's ``inf``.
The crop rule itself is :func:`.crop.crop_bounds`.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .crop import crop_bounds, crop_roots

__all__ = ['GaussianMask']


class GaussianMask(nn.Module):
    """Separable Gaussian mask over ``[-1, 1]^D`` that decides the kernel extent.

    Args:
        dim: Number of kernel dimensions (1 or 2).
        causal: 1-D causal kernels keep the positions right of the left root (the past ends at +1);
            otherwise a symmetric window around 0 is kept.
        init_mean: Initial mean per dimension (paper: 1.0 for causal 1-D, 0.0 for 2-D).
        init_sigma: Initial width (paper: 0.075, a 5x5 window of a 33-point grid).
        threshold: Mask value below which kernel positions are cropped (paper: 0.1).
        eps: Lower bound on ``|sigma|``.
    """

    def __init__(
            self,
            dim: int,
            causal: bool = False,
            init_mean: float = None,
            init_sigma: float = 0.075,
            threshold: float = 0.1,
            eps: float = 1e-4,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"mask threshold must be in (0, 1), got {threshold}.")
        if init_sigma <= 0:
            raise ValueError(f"mask init_sigma must be positive, got {init_sigma}.")
        self.dim = dim
        self.causal = causal
        self.init_mean = (1.0 if causal else 0.0) if init_mean is None else float(init_mean)
        self.init_sigma = float(init_sigma)
        self.threshold = float(threshold)
        self.eps = float(eps)
        self.mean = nn.Parameter(torch.empty(dim, **dd))
        self.sigma = nn.Parameter(torch.empty(dim, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.mean.fill_(self.init_mean)
        self.sigma.fill_(self.init_sigma)

    def effective_sigma(self) -> torch.Tensor:
        return self.sigma.abs().clamp_min(self.eps)

    def max_frequency(self) -> torch.Tensor:
        """Frequency the alias-free regulariser charges the mask with: ``2 max_d(1 / sigma_d) / 2 pi``."""
        return (1.0 / self.effective_sigma()).max() / torch.pi

    @torch.no_grad()
    def widen_(self, min_sigma: float) -> None:
        """Raise ``|sigma|`` to at least ``min_sigma``, keeping its sign (the mask only reads ``|sigma|``).

        The owning layer's lagged crop does not see this jump: call its ``clear_kernel_cache()`` afterwards
        (``FlexConvNd.band_limit_`` does)."""
        sigma = self.sigma
        sigma.copy_(sigma.sign().where(sigma != 0, torch.ones_like(sigma)) * sigma.abs().clamp_min(min_sigma))

    def roots(self, mean: Sequence[float], sigma: Sequence[float]) -> Tuple[float, ...]:
        """Per-dimension root used for cropping: the left root (causal) or the largest absolute root."""
        mean, sigma = (torch.tensor(v, dtype=torch.float64) for v in (mean, sigma))
        return tuple(crop_roots(mean, sigma, self.causal, self.threshold, self.eps).tolist())

    def bounds(self, mean: torch.Tensor, sigma: torch.Tensor, grid_size: Sequence[int],
               margin: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The crop rule (:func:`.crop.crop_bounds`) of this mask for the parameter values ``mean, sigma``."""
        return crop_bounds(mean, sigma, grid_size, self.causal, self.threshold, self.eps, margin)

    def crop(self, grid_size: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """``(start, length)`` per dimension of the window kept on a grid of ``grid_size`` points.

        Reads the parameters on the host once (the crop is a shape, it cannot stay on the device).
        """
        # float32 values, as in the lagged copy; the rule runs in float64 like the device indicator
        mean, sigma = torch.stack([self.mean.detach(), self.sigma.detach()]).float().cpu().double()
        start, end = (t.tolist() for t in self.bounds(mean, sigma, grid_size))
        return tuple(int(s) for s in start), tuple(int(e - s) for s, e in zip(start, end))

    @torch.no_grad()
    def indicator(self, grid_size: Sequence[int], start: Sequence[int],
                  length: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """0/1 weights over the window ``start, length`` that zero the taps outside the exact crop, computed
        on the device (no sync), and a flag per dimension that is 1 where the exact crop reaches outside the
        window."""
        wide = torch.float32 if self.sigma.device.type == 'mps' else torch.float64
        lo, hi = self.bounds(self.mean.detach().to(wide), self.sigma.detach().to(wide), grid_size)
        ind, overflow = None, []
        for d, (s, n) in enumerate(zip(start, length)):
            idx = torch.arange(s, s + n, device=lo.device, dtype=lo.dtype)
            keep = ((idx >= lo[d]) & (idx < hi[d])).to(self.sigma.dtype)
            ind = keep if ind is None else ind[..., None] * keep
            overflow.append((lo[d] < s) | (hi[d] > s + n))
        return ind, torch.stack(overflow).to(torch.float32)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Mask values at ``positions`` of shape ``(P, D)``, returns ``(P,)``."""
        z = (positions - self.mean) / self.effective_sigma()
        return torch.exp(-0.5 * (z * z).sum(-1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, causal={self.causal}, threshold={self.threshold}"
