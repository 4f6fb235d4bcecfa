"""Convolution with a large kernel: direct (``F.conv1d`` / ``F.conv2d``) or through the FFT.

Both paths compute the same cross-correlation with stride 1 and

* ``causal=False``: "same" padding, ``(k - 1) // 2`` samples before and ``k // 2`` after
  (``F.conv2d(..., padding='same')``);
* ``causal=True``: ``k - 1`` samples of left padding, so the last kernel tap touches ``x[t]``
  and the output at ``t`` never sees the future.

The FFT path pads to fast FFT lengths (products of 2, 3, 5 and 7), mixes channels in the frequency
domain with one einsum (a batched matmul per frequency, which keeps the backward cheap) and runs in
float32 when the inputs are half precision, where FFTs lose too much accuracy.
"""
import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ['next_fast_len', 'conv_direct', 'conv_fft', 'conv_nd', 'choose_conv_method', 'CONV_METHODS']

CONV_METHODS = ('auto', 'direct', 'fft')

# Kernel sizes (taps along the longest dimension) from which the FFT is used when method='auto'.
# Measured on a 2-core CPU and an H100 at batch 64 (see GUIDE §7 and scripts/benchmark.py):
# oneDNN's direct 2-D convolution falls behind the FFT from k ~ 9-11, cuDNN's from k ~ 13 in training;
# a causal 1-D kernel of the sequence's length wins with the FFT from ~600 steps.
FFT_THRESHOLDS = {
    ('cpu', 2): 11,
    ('cuda', 2): 13,
    ('cpu', 1): 512,
    ('cuda', 1): 256,
}


@functools.lru_cache(maxsize=None)
def next_fast_len(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3, 5 and 7 (fast for pocketfft and cuFFT)."""
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def _check(x: torch.Tensor, weight: torch.Tensor) -> int:
    dim = weight.dim() - 2
    if dim not in (1, 2):
        raise ValueError(f"Only 1-D and 2-D kernels are supported, got a weight of shape {tuple(weight.shape)}.")
    if x.dim() != dim + 2:
        raise ValueError(f"Expected a {dim + 2}-D input (batch, channels, *spatial), got shape {tuple(x.shape)}.")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"Input has {x.shape[1]} channels but the kernel expects {weight.shape[1]}.")
    return dim


def _padding(kernel_size: Sequence[int], causal: bool):
    """Samples of padding before each dimension."""
    return [k - 1 if causal else (k - 1) // 2 for k in kernel_size]


def conv_direct(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """Stride-1 "same" or causal convolution with the framework's direct kernels."""
    dim = _check(x, weight)
    ks = weight.shape[2:]
    before = _padding(ks, causal)
    pads = []
    for k, b in zip(reversed(ks), reversed(before)):  # F.pad takes the last dimension first
        pads += [b, k - 1 - b]
    x = F.pad(x, pads)
    return (F.conv1d if dim == 1 else F.conv2d)(x, weight, bias)


def conv_fft(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """The same convolution as :func:`conv_direct`, computed through real FFTs."""
    dim = _check(x, weight)
    out_dtype = torch.result_type(x, weight)
    compute_dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    x, weight = x.to(compute_dtype), weight.to(compute_dtype)
    dims = tuple(range(2, 2 + dim))
    sizes, ks = x.shape[2:], weight.shape[2:]
    fft_shape = [next_fast_len(n + k - 1) for n, k in zip(sizes, ks)]
    # A linear convolution with the flipped kernel is the cross-correlation F.conv computes.
    x_f = torch.fft.rfftn(x, s=fft_shape, dim=dims)
    w_f = torch.fft.rfftn(weight.flip(dims), s=fft_shape, dim=dims)
    y_f = torch.einsum('bi...,oi...->bo...', x_f, w_f)
    y = torch.fft.irfftn(y_f, s=fft_shape, dim=dims)
    index = [slice(None), slice(None)]
    for n, k, b in zip(sizes, ks, _padding(ks, causal)):
        index.append(slice(k - 1 - b, k - 1 - b + n))
    y = y[tuple(index)]
    if bias is not None:
        y = y + bias.to(compute_dtype).view(1, -1, *([1] * dim))
    return y.to(out_dtype)


def choose_conv_method(kernel_size: Sequence[int], device_type: str) -> str:
    """'fft' or 'direct' for a kernel of ``kernel_size`` on ``device_type`` (see ``FFT_THRESHOLDS``)."""
    dim = len(kernel_size)
    threshold = FFT_THRESHOLDS.get((device_type, dim), FFT_THRESHOLDS[('cuda', dim)])
    return 'fft' if max(kernel_size) >= threshold else 'direct'


def conv_nd(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        causal: bool = False,
        method: str = 'auto',
) -> torch.Tensor:
    """Stride-1 "same" (or causal) convolution, dispatched to the direct or the FFT path."""
    if method == 'auto':
        method = choose_conv_method(weight.shape[2:], x.device.type)
    if method == 'fft':
        return conv_fft(x, weight, bias, causal)
    if method == 'direct':
        return conv_direct(x, weight, bias, causal)
    raise ValueError(f"Unknown convolution method {method!r}; choose one of {CONV_METHODS}.")
