"""Convolution with a large kernel: direct (``F.conv1d`` / ``F.conv2d``) or through the FFT.

Both paths compute the same cross-correlation with stride 1 and

* ``causal=False``: "same" padding, ``(k - 1) // 2`` samples before and ``k // 2`` after
  (``F.conv2d(..., padding='same')``);
* ``causal=True``: ``k - 1`` samples of left padding, so the last kernel tap touches ``x[t]``
  and the output at ``t`` never sees the future.

Speed notes (measured, see ``scripts/benchmark.py`` and ``docs/PERFORMANCE.md``):

* Kernel taps that can never touch the input (a 33-tap kernel on an 8-sample input) are dropped first.
* The FFT length is the smallest fast length (2^a 3^b 5^c 7^d) whose circular wrap-around misses the
  ``n`` outputs we keep: ``N >= n + max(a, k - 1 - a)`` with ``a`` the offset of the first kept output in
  the full linear convolution, i.e. ``N >= n + k // 2`` for "same" and ``N >= n + k - 1`` for causal
  (48 instead of 64 for a 33x33 kernel on 32x32 inputs: 1.8x fewer frequencies in 2-D).
* Channels are mixed per frequency with one complex ``bmm`` of ``(F, B, I) @ (F, I, O)``; ``einsum`` picked
  a path that was 80x slower here on CPU, and its backward slower still.
* FFTs run in float32 (complex64) for half-precision inputs and under autocast.

:func:`conv_nd` with ``method='auto'`` picks the faster path by measuring both once per device and shape
(:func:`select_conv_method`), falling back to the threshold table ``FFT_THRESHOLDS`` where timing is not
possible (``torch.compile``/export, FX tracing, meta tensors, CUDA graph capture) or when autotuning is
disabled (``FLEXCONV_AUTOTUNE=0`` or :func:`set_autotune`).
"""
import contextlib
import functools
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    'next_fast_len', 'fft_length', 'conv_direct', 'conv_fft', 'conv_nd', 'choose_conv_method',
    'select_conv_method', 'set_autotune', 'autotune_enabled', 'clear_autotune_cache', 'autotune_cache',
    'CONV_METHODS', 'FFT_THRESHOLDS',
]

CONV_METHODS = ('auto', 'direct', 'fft')

# Fallback when the choice cannot be measured: kernel size (taps along the longest dimension) from which
# the FFT is used. CPU rows measured on a 2-core CPU at batch 64 with this file's FFT path (training step,
# see docs/PERFORMANCE.md); CUDA rows from an H100 (GUIDE §7: cuDNN falls behind from k ~ 13 in training,
# a causal kernel of the sequence's length from a few hundred steps).
FFT_THRESHOLDS = {
    ('cpu', 2): 9,
    ('cuda', 2): 13,
    ('cpu', 1): 256,
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


def fft_length(n: int, k: int, before: int) -> int:
    """Shortest fast FFT length for ``n`` outputs of a ``k``-tap correlation padded with ``before`` samples.

    The kept outputs start at offset ``a = k - 1 - before`` of the full linear convolution (length
    ``n + k - 1``); a circular convolution of length ``N`` adds entry ``j + N`` and ``j - N`` onto ``j``, so
    no kept output is touched iff ``N >= n + max(a, k - 1 - a)``.
    """
    a = k - 1 - before
    fast_len = next_fast_len.__wrapped__ if torch.compiler.is_compiling() else next_fast_len
    return fast_len(n + max(a, k - 1 - a))


def _check(x: torch.Tensor, weight: torch.Tensor) -> int:
    dim = weight.dim() - 2
    if dim not in (1, 2):
        raise ValueError(f"Only 1-D and 2-D kernels are supported, got a weight of shape {tuple(weight.shape)}.")
    if x.dim() != dim + 2:
        raise ValueError(f"Expected a {dim + 2}-D input (batch, channels, *spatial), got shape {tuple(x.shape)}.")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"Input has {x.shape[1]} channels but the kernel expects {weight.shape[1]}.")
    return dim


def _padding(kernel_size: Sequence[int], causal: bool) -> List[int]:
    """Samples of padding before each dimension."""
    return [k - 1 if causal else (k - 1) // 2 for k in kernel_size]


def _trim(weight: torch.Tensor, sizes: Sequence[int], causal: bool) -> Tuple[torch.Tensor, List[int]]:
    """Drop kernel taps that never meet the input; returns the kernel and its padding before each dimension.

    Tap ``t`` meets ``x[j - before + t]`` for outputs ``j`` in ``[0, n)``: only ``t`` in
    ``[before - n + 1, before + n - 1]`` can touch a sample, the rest multiply zero padding.
    """
    ks = weight.shape[2:]
    before = _padding(ks, causal)
    index, new_before, trimmed = [slice(None), slice(None)], [], False
    for n, k, b in zip(sizes, ks, before):
        lo, hi = max(0, b - n + 1), min(k, b + n)
        index.append(slice(lo, hi))
        new_before.append(b - lo)
        trimmed |= lo > 0 or hi < k
    return (weight[tuple(index)] if trimmed else weight), new_before


def _direct(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], before: Sequence[int]):
    dim = weight.dim() - 2
    conv = F.conv1d if dim == 1 else F.conv2d
    ks = weight.shape[2:]
    after = [k - 1 - b for k, b in zip(ks, before)]
    if list(before) == after:
        return conv(x, weight, bias, padding=tuple(before))  # symmetric: no padded copy of the input
    pads = []
    for b, a in zip(reversed(before), reversed(after)):  # F.pad takes the last dimension first
        pads += [b, a]
    return conv(F.pad(x, pads), weight, bias)


def conv_direct(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """Stride-1 "same" or causal convolution with the framework's direct kernels."""
    _check(x, weight)
    weight, before = _trim(weight, x.shape[2:], causal)
    return _direct(x, weight, bias, before)


class _FrequencyMix(torch.autograd.Function):
    """``(F, B, I) @ (F, I, O)`` complex batched matmul with contiguous operands in both passes.

    Autograd's own bmm backward multiplies by lazily conjugated, transposed views; on CPU that fell back to
    a per-frequency loop (thousands of small copies) and made the backward 20x slower than the forward.
    """

    @staticmethod
    def forward(ctx, xm: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
        xm, wm = xm.contiguous(), wm.contiguous()
        ctx.save_for_backward(xm, wm)
        return torch.bmm(xm, wm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xm, wm = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad, wm.transpose(1, 2).conj().resolve_conj())
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(xm.transpose(1, 2).conj().resolve_conj(), grad)
        return grad_x, grad_w


def _mix_channels(x_f: torch.Tensor, w_f: torch.Tensor) -> torch.Tensor:
    """``y[b, o, f] = sum_i x[b, i, f] * w[o, i, f]`` as one batched matmul over frequencies."""
    b, i = x_f.shape[:2]
    o = w_f.shape[0]
    freq_shape = x_f.shape[2:]
    xm = x_f.reshape(b, i, -1).permute(2, 0, 1)  # (F, B, I)
    wm = w_f.reshape(o, i, -1).permute(2, 1, 0)  # (F, I, O)
    if torch.compiler.is_compiling():
        y = torch.bmm(xm.contiguous(), wm.contiguous())  # let the compiler own the backward
    else:
        y = _FrequencyMix.apply(xm, wm)
    return y.permute(1, 2, 0).reshape(b, o, *freq_shape)


def _fft(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], before: Sequence[int]):
    dim = weight.dim() - 2
    out_dtype = torch.result_type(x, weight)
    compute_dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    dims = tuple(range(2, 2 + dim))
    sizes, ks = x.shape[2:], weight.shape[2:]
    fft_shape = [fft_length(n, k, b) for n, k, b in zip(sizes, ks, before)]
    # keep FFTs and the complex matmul in float32 (the meta device has no autocast state)
    with torch.autocast(x.device.type, enabled=False) if x.device.type != 'meta' else contextlib.nullcontext():
        x, weight = x.to(compute_dtype), weight.to(compute_dtype)
        # A linear convolution with the flipped kernel is the cross-correlation F.conv computes.
        x_f = torch.fft.rfftn(x, s=fft_shape, dim=dims)
        w_f = torch.fft.rfftn(weight.flip(dims), s=fft_shape, dim=dims)
        y = torch.fft.irfftn(_mix_channels(x_f, w_f), s=fft_shape, dim=dims)
        index = [slice(None), slice(None)]
        for n, k, b in zip(sizes, ks, before):
            index.append(slice(k - 1 - b, k - 1 - b + n))
        y = y[tuple(index)]
        if bias is not None:
            y = y + bias.to(compute_dtype).view(1, -1, *([1] * dim))
    return y.to(out_dtype)


def conv_fft(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """The same convolution as :func:`conv_direct`, computed through real FFTs."""
    _check(x, weight)
    weight, before = _trim(weight, x.shape[2:], causal)
    return _fft(x, weight, bias, before)


def choose_conv_method(kernel_size: Sequence[int], device_type: str) -> str:
    """'fft' or 'direct' for a kernel of ``kernel_size`` on ``device_type`` from the fixed table."""
    dim = len(kernel_size)
    threshold = FFT_THRESHOLDS.get((device_type, dim), FFT_THRESHOLDS[('cuda', dim)])
    return 'fft' if max(kernel_size) >= threshold else 'direct'


# ---------------------------------------------------------------------------------------------- autotune
_AUTOTUNE = os.environ.get('FLEXCONV_AUTOTUNE', '1').strip().lower() not in ('0', 'false', 'off', 'no')
_AUTOTUNE_CACHE: Dict[tuple, str] = {}
# The FFT must be this much faster to be picked (see _tune).
_FFT_MARGIN = 0.95


def set_autotune(enabled: bool) -> None:
    """Enable or disable the measured FFT/direct choice (disabled: the fixed table, deterministic)."""
    global _AUTOTUNE
    _AUTOTUNE = bool(enabled)


def autotune_enabled() -> bool:
    return _AUTOTUNE


def clear_autotune_cache() -> None:
    _AUTOTUNE_CACHE.clear()


def autotune_cache() -> Dict[tuple, str]:
    """A copy of the measured choices: ``key -> 'fft' | 'direct'``."""
    return dict(_AUTOTUNE_CACHE)


def _kernel_bucket(k: int) -> int:
    """Kernels within ~10 % of each other share a measurement (sizes grow slowly during training)."""
    if k <= 16:
        return k
    return int(round(2 ** (math.ceil(8 * math.log2(k)) / 8)))  # eighth-octave steps: 17, 18, 20, 22, ...


def _is_fx_tracing() -> bool:
    import torch.fx._symbolic_trace as fx_trace
    fn = getattr(fx_trace, 'is_fx_symbolic_tracing', None) or getattr(fx_trace, 'is_fx_tracing', None)
    return bool(fn()) if fn is not None else False


def _can_time(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if _is_fx_tracing():
        return False
    if x.is_meta or weight.is_meta or type(x) is not torch.Tensor or type(weight) not in (
            torch.Tensor, torch.nn.Parameter):
        return False  # meta / fake / subclass tensors have no real kernels to time
    if x.device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _measure(fn, device: torch.device, budget_s: float) -> float:
    """Best of several runs (the minimum is the least disturbed by other processes); fast calls get more
    runs, up to ``budget_s`` of timing, slow ones at least three."""
    fn()  # warm-up: FFT plans, oneDNN primitives, cuDNN algorithm search
    _sync(device)
    best, spent, runs = math.inf, 0.0, 0
    while runs < 3 or (spent < budget_s and runs < 50):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def _tune(x: torch.Tensor, weight: torch.Tensor, causal: bool, needs_grad: bool) -> str:
    device = x.device
    x = x.detach()  # same memory format as the real call
    weight = weight.detach()
    weight, before = _trim(weight, x.shape[2:], causal)
    if needs_grad:
        x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)

    def runner(impl, inp):
        def run():
            with torch.enable_grad() if needs_grad else torch.no_grad():
                y = impl(inp, weight, None, before)
                if needs_grad:
                    torch.autograd.grad(y.sum(), (inp, weight))
        return run

    # Timed at the real batch: the FFT of the kernel is a fixed cost that a slice of the batch would overweight.
    t_fft = _measure(runner(_fft, x), device, budget_s=0.1)
    if device.type == 'cpu':
        # A direct conv costs batch x one sample on CPU: skip timing one that cannot win (seconds for a
        # 33x33 kernel at batch 64, more with its backward).
        with torch.no_grad():
            one = x[:1].detach()
            _direct(one, weight.detach(), None, before)
            t0 = time.perf_counter()
            _direct(one, weight.detach(), None, before)
            if (time.perf_counter() - t0) * x.shape[0] > 2.0 * t_fft:
                return 'fft'
    t_direct = _measure(runner(_direct, x), device, budget_s=0.1)
    # Ties go to the direct path: it is exact to float rounding per output (an FFT spreads rounding over
    # the whole signal, e.g. ~1e-8 of the largest output leaks across the causal boundary).
    return 'fft' if t_fft < _FFT_MARGIN * t_direct else 'direct'


def select_conv_method(x: torch.Tensor, weight: torch.Tensor, causal: bool = False) -> str:
    """The faster of 'fft' and 'direct' for this device and shape, measured once and cached in memory.

    Key: device type and index, dims, kernel size bucket, input size, channels, batch, dtype, causality
    and whether a backward will follow. Falls back to :func:`choose_conv_method` where timing is impossible
    or autotuning is disabled.
    """
    kernel_size = tuple(weight.shape[2:])
    if not _AUTOTUNE or not _can_time(x, weight):
        return choose_conv_method(kernel_size, x.device.type)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.result_type(x, weight)
    key = (
        x.device.type, x.device.index, len(kernel_size), tuple(_kernel_bucket(k) for k in kernel_size),
        tuple(x.shape[2:]), x.shape[1], weight.shape[0], x.shape[0], dtype, causal, needs_grad,
    )
    method = _AUTOTUNE_CACHE.get(key)
    if method is None:
        method = _tune(x, weight, causal, needs_grad)
        _AUTOTUNE_CACHE[key] = method
    return method


def conv_nd(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        causal: bool = False,
        method: str = 'auto',
) -> torch.Tensor:
    """Stride-1 "same" (or causal) convolution, dispatched to the direct or the FFT path."""
    _check(x, weight)
    if method == 'auto':
        method = select_conv_method(x, weight, causal)
    if method not in ('fft', 'direct'):
        raise ValueError(f"Unknown convolution method {method!r}; choose one of {CONV_METHODS}.")
    weight, before = _trim(weight, x.shape[2:], causal)
    return (_fft if method == 'fft' else _direct)(x, weight, bias, before)
