"""Large-kernel convolution as real matrix products with DFT matrices: the exportable FFT path.

ONNX has no complex matrix product, so :mod:`.fftconv`'s FFT path cannot be exported, and a direct ``Conv`` with a
33x33 (or 1000-tap) kernel is 20-30x slower in onnxruntime than PyTorch's FFT path. This computes the same
"same"/causal correlation with real ops only: per spatial axis, a DFT of length ``N = n + k - 1`` (no wrap-around)
as a product with cosine/sine matrices generated from the input size (so exported graphs keep symbolic sizes),
channel mixing per frequency as real batched matmuls of the real and imaginary parts, and an inverse DFT that only
produces the ``n`` kept outputs. It is used by reparameterized FlexConvs under ``torch.onnx.export`` and
``torch.jit.trace`` for kernels the FFT dispatch table would run through the FFT.

    y[j] = sum_t w[t] x[j - before + t],   j in [0, n)    (before = (k - 1) // 2 "same", k - 1 causal)
"""
import math
from typing import List, Optional, Tuple

import torch

__all__ = ['conv_dft_matmul']


def _dft(length: int, points: int, like: torch.Tensor, sign: float,
         offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``exp(sign * 2 pi i f (t + offset) / length)``, shape ``(length, points)``."""
    f = torch.arange(length, device=like.device, dtype=torch.int64)
    t = torch.arange(points, device=like.device, dtype=torch.int64) + offset
    # f * t mod length keeps the angle small (cos/sin of large float32 arguments lose precision); in int64, as
    # f * t passes 2^24 (float32's exact integers) from n + k ~ 4100 on: a 5000-step causal input lost 1e-4
    # (the modulus as a tensor: the ONNX exporter cannot take an integer remainder by a symbolic size)
    phase = torch.remainder(f[:, None] * t[None, :], f[-1:] + 1).to(like.dtype)
    angle = (sign * 2 * math.pi / length) * phase
    return torch.cos(angle), torch.sin(angle)


def _cmatmul(ar, ai, br, bi):
    """(ar + i ai) @ (br + i bi)."""
    return ar @ br - ai @ bi, ar @ bi + ai @ br


def conv_dft_matmul(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """Stride-1 "same" (or causal) correlation of ``x`` (B, C, *n) with ``weight`` (O, C, *k), 1-D or 2-D."""
    dim = weight.dim() - 2
    sizes, ks = list(x.shape[2:]), list(weight.shape[2:])
    xr, xi = x, torch.zeros_like(x)
    # the kernel, reversed, is the filter of a linear convolution whose outputs start at k - 1 - before
    wr = weight.flip(tuple(range(2, 2 + dim)))
    wi = torch.zeros_like(wr)
    inverse: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for axis, (n, k) in enumerate(zip(sizes, ks)):
        before = k - 1 if causal else (k - 1) // 2
        length = n + k - 1
        fr, fi = _dft(length, n, x, -1.0)
        kr, ki = _dft(length, k, x, -1.0)
        gr, gi = _dft(length, n, x, 1.0, offset=k - 1 - before)  # only the n kept outputs
        pos = 2 + axis
        # transform along `pos`: move it last, multiply by the (points -> length) matrix transposed
        xr, xi = (t.transpose(pos, -1) for t in (xr, xi))
        xr, xi = _cmatmul(xr, xi, fr.t(), fi.t())
        xr, xi = (t.transpose(pos, -1) for t in (xr, xi))
        wr, wi = (t.transpose(pos, -1) for t in (wr, wi))
        wr, wi = _cmatmul(wr, wi, kr.t(), ki.t())
        wr, wi = (t.transpose(pos, -1) for t in (wr, wi))
        inverse.append((gr / length, gi / length))
    b, c = x.shape[:2]
    o = weight.shape[0]
    freq = list(xr.shape[2:])
    # channel mixing per frequency: (F, B, C) @ (F, C, O)
    xr, xi = (t.reshape(b, c, -1).permute(2, 0, 1) for t in (xr, xi))
    wr, wi = (t.reshape(o, c, -1).permute(2, 1, 0) for t in (wr, wi))
    yr, yi = _cmatmul(xr, xi, wr, wi)
    yr, yi = (t.permute(1, 2, 0).reshape(b, o, *freq) for t in (yr, yi))
    for axis, (gr, gi) in enumerate(inverse):
        pos = 2 + axis
        yr, yi = (t.transpose(pos, -1) for t in (yr, yi))
        yr, yi = _cmatmul(yr, yi, gr, gi)  # (..., length) @ (length, n): the n kept outputs
        yr, yi = (t.transpose(pos, -1) for t in (yr, yi))
    y = yr
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * dim))
    return y
