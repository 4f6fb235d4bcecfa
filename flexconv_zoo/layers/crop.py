"""The crop of a FlexConv kernel: which window of the sampling grid the Gaussian mask keeps.

On a grid of ``K`` points ``p_i = -1 + 2 i / (K - 1)`` the mask ``exp(-1/2 ((p - m) / s)^2)`` exceeds the
threshold ``t`` inside its roots ``m -+ r``, ``r = max(|s|, eps) * sqrt(-2 ln t)``:

* centred kernels (2-D, "same"): the symmetric window of the positions with ``|p| < max(|m - r|, |m + r|)``;
* causal kernels (1-D): the positions ``p > m - r`` (the past ends at ``+1``, the present step).

A root outside ``(-1, 1)`` keeps the whole grid, and at least the centre (present) sample is always kept.
:func:`crop_bounds` is this rule, written once in torch: on the device it gives the 0/1 indicator of the
'lagged' and 'full' crop modes, on a host copy of the parameters the integer crop. The 'lagged' mode's state
lives in :class:`LaggedCrop`.
"""
import math
import warnings
from typing import Optional, Sequence, Tuple

import torch

from .fftconv import kernel_bucket

__all__ = [
    'CROP_MODES', 'threshold_radius', 'crop_roots', 'crop_bounds', 'crop_extent_centered', 'crop_extent_causal',
    'resolve_crop_mode', 'LaggedCrop',
]

# How the crop (an integer shape) is decided, see FlexConvNd.crop_mode.
CROP_MODES = ('auto', 'exact', 'lagged', 'full')


def threshold_radius(threshold: float) -> float:
    """Distance from the mean, in units of sigma, where a Gaussian falls to ``threshold``."""
    return math.sqrt(-2.0 * math.log(threshold))


def crop_roots(mean: torch.Tensor, sigma: torch.Tensor, causal: bool, threshold: float,
               eps: float) -> torch.Tensor:
    """Per-dimension root the crop keeps inside: the left root (causal) or the largest absolute root."""
    half_width = sigma.abs().clamp_min(eps) * threshold_radius(threshold)
    if causal:
        return mean - half_width
    return torch.maximum((mean - half_width).abs(), (mean + half_width).abs())


def _first_kept(root: torch.Tensor, size: torch.Tensor, causal: bool) -> torch.Tensor:
    half = (size - 1) / 2
    if causal:  # grid points p_i <= root are dropped
        start = torch.floor((root + 1.0) * half + 1e-9) + 1
        start = torch.minimum(start, size - 1)  # keep at least the present sample
        return torch.where((root <= -1.0) | (root >= 1.0), torch.zeros_like(start), start)
    # grid points p_i <= -root are dropped (paper / original code: -root < p on the left half)
    start = torch.floor((1.0 - root) * half + 1e-9) + 1
    start = torch.minimum(start, torch.floor((size - 1) / 2))  # keep at least the centre sample
    return torch.where(root >= 1.0, torch.zeros_like(start), start)


def crop_bounds(mean: torch.Tensor, sigma: torch.Tensor, grid: Sequence[int], causal: bool, threshold: float,
                eps: float, margin: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last kept index per dimension, as tensors of ``mean``'s dtype and device.

    ``margin`` (positions, per dimension) widens the window: the roots move outward by it.
    """
    root = crop_roots(mean, sigma, causal, threshold, eps)
    size = torch.tensor(grid, device=root.device, dtype=root.dtype)
    if margin is None:
        start = _first_kept(root, size, causal)
    elif causal:
        # min with the unwidened crop: the rule keeps everything once the root passes +1 (not monotone)
        start = torch.minimum(_first_kept(root, size, causal), _first_kept(root - margin, size, causal))
    else:
        start = _first_kept(root + margin, size, causal)
    return start, size if causal else size - start


def _extent(root: float, grid_size: int, causal: bool) -> Tuple[int, int]:
    root_t = torch.tensor([root], dtype=torch.float64)
    start = int(_first_kept(root_t, torch.tensor([grid_size], dtype=torch.float64), causal).item())
    return start, grid_size - (start if causal else 2 * start)


def crop_extent_centered(root: float, grid_size: int) -> Tuple[int, int]:
    """``(start, length)`` of the symmetric window of a ``grid_size`` grid whose positions lie inside
    ``(-root, root)``: the 2-D FlexConv crop (the scalar form of :func:`crop_bounds`)."""
    return _extent(root, grid_size, causal=False)


def crop_extent_causal(root: float, grid_size: int) -> Tuple[int, int]:
    """``(start, length)`` of the positions ``p > root`` of a ``grid_size`` grid: the 1-D causal crop."""
    return _extent(root, grid_size, causal=True)


def resolve_crop_mode(crop_mode: str, device: torch.device) -> str:
    """The mode a forward on ``device`` uses for ``crop_mode`` ('auto': 'lagged' on CUDA, else 'exact')."""
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}.")
    if device.type == 'meta' or torch.compiler.is_compiling():
        return 'full'  # nothing to read on the host (meta) or reading it would break the graph
    if crop_mode != 'auto':
        return crop_mode
    return 'lagged' if device.type == 'cuda' else 'exact'


class LaggedCrop:
    """The 'lagged' crop: a window decided without a device sync, from a host copy of the mask parameters made
    asynchronously one forward earlier, widened by a margin and rounded up to a few bucket sizes. The
    indicator zeroes the taps outside the exact crop; its overflow flag (copied with the parameters) reports,
    one forward late, a window that was too small, and the margin doubles.

    Args:
        owner: Name of the layer, for the warning.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self.margin = 1.0  # in grid steps (centred) / of max(grid step, 1 % of the domain) (causal)
        self.clear()

    def clear(self) -> None:
        self._buffer: Optional[torch.Tensor] = None  # host copy of (mean, sigma, overflow) per dim
        self._event = None
        self._last = None  # (mask parameter versions, grid) -> window of the last forward

    def __getstate__(self):
        return {'owner': self.owner, 'margin': self.margin}  # a CUDA event does not pickle

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self.clear()

    def window(self, mask, grid: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """``(start, length)`` per dimension of the bucketed window for ``mask`` on ``grid``.

        Until the mask parameters change, every forward reuses the last window: a gradient-checkpointing
        recomputation must see the crop of its original forward, not the copy that forward has since recorded.
        """
        key = (tuple(grid), *((p.data_ptr(), p._version) for p in (mask.mean, mask.sigma)))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        window = self._read(mask, grid)
        self._last = (key, window)
        return window

    def _read(self, mask, grid: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        buf = self._buffer
        if buf is None:
            values = torch.stack([mask.mean.detach(), mask.sigma.detach()]).float().cpu()  # one sync, first call
            buf = torch.zeros(3, mask.dim, pin_memory=mask.sigma.device.type == 'cuda')
            buf[:2] = values
            self._buffer = buf
        elif self._event is not None:
            self._event.synchronize()  # waits, at most, for the previous forward's copy (host stays a step ahead)
        mean, sigma, overflow = buf.double()
        if overflow.any():
            self.margin *= 2
            warnings.warn(
                f"{self.owner}: the mask grew past the lagged crop in one step; the margin is now "
                f"{self.margin:g} and one step used a slightly smaller kernel than the exact crop.")
        step = 2.0 / (torch.tensor(grid, dtype=torch.float64) - 1)
        margin = self.margin * (step.clamp_min(0.01) if mask.causal else step)
        starts, _ = mask.bounds(mean, sigma, grid, margin)
        window = []
        for start, k in zip(starts.tolist(), grid):
            start = int(start)
            if mask.causal:
                length = min(k, kernel_bucket(k - start))  # geometric buckets for long causal kernels
                window.append((k - length, length))
            else:
                start = (start // 2) * 2  # lengths grow in steps of 4: 5, 9, 13, ... on a 33 grid
                window.append((start, k - 2 * start))
        starts, lengths = zip(*window)
        return tuple(starts), tuple(lengths)

    def record(self, mask, overflow: torch.Tensor) -> None:
        """Start the asynchronous copy of the current mask parameters (read by the next forward)."""
        buf = self._buffer
        device = mask.sigma.device
        if buf is None or (device.type == 'cuda' and torch.cuda.is_current_stream_capturing()):
            return
        with torch.no_grad():
            values = torch.cat([mask.mean.detach()[None], mask.sigma.detach()[None], overflow[None]]).float()
            buf.copy_(values, non_blocking=device.type == 'cuda')
        if device.type == 'cuda':
            self._event = torch.cuda.Event()
            self._event.record()
