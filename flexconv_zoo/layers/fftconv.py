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
* The FFT path is one autograd Function (:class:`_FFTConv`) with a hand-written, exact backward that reuses
  the forward's conjugate input spectrum and kernel spectrum (flexnet16's 32 px training step: 11 % faster
  than recomputing them, for more memory; :func:`set_recompute_spectra` keeps the real tensors instead).
  Autograd through the composite ops ran ``rfftn``'s backward as a full complex FFT. Spectra are
  frequency-major ``(F, B, C)`` so that channels are mixed per frequency by one complex ``bmm``; the
  kernel's "same"/causal offset is a phase on its spectrum, so every crop is a plain slice; inverse
  transforms run column pass, crop, row pass (only the kept rows reach the second pass).
  ``einsum`` picked a path that was 80x slower here on CPU. Under ``torch.compile``/export, FX tracing and on
  the meta device the same function is computed from differentiable ops (:func:`_fft_reference`).
* FFTs run in float32 (complex64) for half-precision inputs and under autocast; under autocast the result is
  rounded once to the autocast dtype, the dtype of the direct path's (autocast) convolution.
* Memory format: like ``F.conv2d``, both paths return a ``channels_last`` output for a ``channels_last`` 2-D
  input (and a ``channels_last`` input gradient in the FFT backward), so a channels-last network stays
  channels-last through its FFT layers instead of flipping layouts at every one. The FFT path transforms a
  contiguous copy of such an input (batch 64, 48 channels, 32x32 on CPU: copy + ``rfftn`` + frequency-major copy
  21.5 ms, ``rfftn`` on the channels-last strides 24.6 ms) and keeps only the caller's tensor for the backward (no
  second copy held between passes). The channels-last output is one transposing copy (3.7 ms against 0.7 ms
  into NCHW, as the inverse FFT leaves the spatial axes innermost), so one FFT layer's training step is about
  5 % slower in channels_last than in NCHW (199 vs 191 ms, 48->48, 33x33, batch 64, 1 thread).

:func:`conv_nd` with ``method='auto'`` uses the threshold tables ``FFT_THRESHOLDS`` and, for training steps of
16 or more examples, ``FFT_THRESHOLDS_TRAINING`` (deterministic, no set-up cost). Autotuning is opt-in (``FLEXCONV_AUTOTUNE=1`` or :func:`set_autotune`): the faster path is then measured
once per device and shape (:func:`select_conv_method`; on CPU a direct convolution is first estimated from one
32x32 tile, so a large first input costs about one FFT timing), except where timing is not possible
(``torch.compile``/export, FX tracing, meta tensors, CUDA graph capture).
"""
import contextlib
import functools
import math
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    'next_fast_len', 'fft_length', 'kernel_bucket', 'conv_direct', 'conv_direct_untrimmed', 'conv_fft', 'conv_nd', 'choose_conv_method',
    'select_conv_method', 'set_autotune', 'autotune_enabled', 'clear_autotune_cache', 'autotune_cache',
    'set_recompute_spectra', 'recompute_spectra_enabled',
    'CONV_METHODS', 'FFT_THRESHOLDS', 'FFT_THRESHOLDS_TRAINING', 'TRAINING_MIN_BATCH',
]

CONV_METHODS = ('auto', 'direct', 'fft')

# Fallback when the choice cannot be measured: kernel size (taps along the longest dimension) from which
# the FFT is used. ('cpu', 2) is the crossover measured on a 2-core CPU for one 48->48 conv on 32x32: a
# forward pass at batch 256 ties at 7x7 and the FFT is 2x faster at 9x9 (a training step at batch 16 also
# crossed at 9x9 before the FFT backward reused its spectra; docs/PERFORMANCE.md). ('cpu', 1) is
# conservative: those measurements (30->30 causal, batch 4) had the FFT ahead already at 64 taps, the
# smallest 1-D size timed. The CUDA rows are estimates, not measurements: no GPU has been measured in this
# project (FLEXCONV_AUTOTUNE=1 times both paths on the hardware at hand).
FFT_THRESHOLDS = {
    ('cpu', 2): 9,
    ('cuda', 2): 13,
    ('cpu', 1): 256,
    ('cuda', 1): 256,
}
# Training steps (a backward follows) of at least TRAINING_MIN_BATCH examples: the direct path's weight gradient
# costs more than the FFT's, whose backward reuses the forward's spectra, so the FFT wins earlier. Measured on the
# 2-core CPU (session 8, docs/PERFORMANCE.md): 48->48 at 32x32, 7x7 taps, batch 16: FFT 1.2-1.4x faster, batch 64:
# 1.7-2.5x; flexnet16 at 16 px, batch 64, all kernels 7x7: a 1.4-1.8x faster step. Forward-only passes keep the
# table above: there the FFT only ties at 7x7 (batch 256) and loses 10x at batch 1.
FFT_THRESHOLDS_TRAINING = {('cpu', 2): 7}
TRAINING_MIN_BATCH = 16


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


def _is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also plain contiguous, as with 1 channel or 1x1 maps)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


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
    if x.device.type == 'cpu' and x.dtype == torch.float16:
        # CPUs have no fast float16 convolution (one 48->48 33x33 layer on two 32x32 images: 109 s in float16,
        # 0.4 s in float32): compute in float32, as the FFT path does, and round once at the end
        bias = bias.float() if bias is not None else None
        y = _direct(x.float(), weight.float(), bias, before)
        return y if torch.is_autocast_enabled('cpu') else y.to(x.dtype)  # autocast: its dtype, as any conv
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


def conv_direct_untrimmed(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """:func:`conv_direct` without dropping the taps that never meet the input: the padding depends on the kernel
    alone, so an exported graph (ONNX, a trace) keeps symbolic input sizes."""
    return _direct(x, weight, bias, _padding(weight.shape[2:], causal))


def _phase(fft_shape: Sequence[int], shift: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``exp(2 pi i sum_d f_d s_d / N_d)`` on the rfft grid of ``fft_shape``, shaped ``(*freq, 1, 1)``: times a
    spectrum, it shifts the signal back circularly by ``shift`` (sample ``shift`` moves to index 0)."""
    key = (tuple(fft_shape), tuple(shift), device, dtype)
    phase = _PHASE_CACHE.get(key)
    if phase is None:
        angle = torch.zeros((), dtype=torch.float64)
        for d, (n, s) in enumerate(zip(fft_shape, shift)):
            f = torch.arange(n // 2 + 1 if d == len(fft_shape) - 1 else n, dtype=torch.float64)
            angle = angle[..., None] + f * (2 * math.pi * s / n)
        phase = torch.polar(torch.ones_like(angle), angle).to(device=device, dtype=dtype)
        phase = phase.view(*phase.shape, 1, 1)
        if not torch.compiler.is_compiling() and device.type != 'meta':
            _PHASE_CACHE[key] = phase
    return phase


_PHASE_CACHE: Dict[tuple, torch.Tensor] = {}


def _rfft_fm(t: torch.Tensor, fft_shape: Sequence[int], shift: Optional[Sequence[int]] = None,
             conj: bool = False) -> torch.Tensor:
    """Real FFT of ``t`` ``(A, C, *sizes)`` zero-padded to ``fft_shape``, frequency-major: ``(*freq, A, C)``.

    ``shift``: the spectrum of ``t`` shifted back circularly (sample ``shift`` at index 0); ``conj``: the
    complex conjugate. Both are applied by the one transposing copy that makes the result frequency-major.
    (Measured on CPU/MKL: a multi-dimensional ``rfftn`` plus this copy beat row-column variants that transpose
    between the passes; MKL writes a complex FFT's output with the transformed axis innermost.)
    """
    dim = len(fft_shape)
    z = torch.fft.rfftn(t, s=fft_shape, dim=tuple(range(2, 2 + dim)))
    src = z.permute(*range(2, 2 + dim), 0, 1)
    out = torch.empty(src.shape, dtype=z.dtype, device=z.device)
    if shift is not None and any(shift):
        torch.mul(src, _phase(fft_shape, shift, z.device, z.dtype), out=out)
    elif conj:
        torch.conj_physical(src, out=out)
    else:
        out.copy_(src)
    return out


def _irfft_fm(spec: torch.Tensor, fft_shape: Sequence[int], sizes: Sequence[int], conj: bool = False,
              bias: Optional[torch.Tensor] = None, channels_last: bool = False) -> torch.Tensor:
    """Inverse of :func:`_rfft_fm`: ``(*freq, A, C)`` -> real ``(A, C, *sizes)`` (the first ``sizes`` samples),
    of ``conj(spec)`` if ``conj``, plus ``bias`` per channel ``C``; in ``channels_last`` memory format if
    ``channels_last`` (2-D only). ``spec`` may be overwritten."""
    dim = len(fft_shape)
    if dim == 2:
        if conj:  # ifft(conj(s)) = conj(fft(s)) / n1
            v = torch.fft.fft(spec, dim=0, norm='forward')[:sizes[0]].conj_physical_()
        else:
            v = torch.fft.ifft(spec, dim=0)[:sizes[0]]  # only the kept rows go through the second pass
    else:
        v = spec.conj_physical_() if conj else spec
    y = torch.fft.irfft(v, n=fft_shape[-1], dim=dim - 1)  # (*rows, n_last, A, C)
    y = y[(slice(None),) * (dim - 1) + (slice(0, sizes[-1]),)]
    view = y.permute(dim, dim + 1, *range(dim))
    fmt = torch.channels_last if channels_last and dim == 2 else torch.contiguous_format
    out = torch.empty(view.shape, dtype=y.dtype, device=y.device, memory_format=fmt)
    if bias is not None:
        torch.add(view, bias.view(-1, *([1] * dim)), out=out)
    else:
        out.copy_(view)
    return out


class _FFTConv(torch.autograd.Function):
    """Stride-1 correlation through real FFTs, forward and backward written out.

    Circular correlation of length ``N`` (``fft_length``) with the input at ``[0, n)`` and the kernel shifted
    back by ``before`` (tap ``before`` at index 0): its first ``n`` outputs are the result, so every crop is a
    plain slice. Channels are mixed per frequency, frequency-major so that the batched matmuls read contiguous
    matrices: ``Y = X @ K^H`` with ``X`` ``(F, B, I)`` and ``K`` ``(F, O, I)``. The backward is the exact
    adjoint (``G = rfft(grad_y)``):

    * ``grad_x = irfft(G @ K)`` cropped to the input;
    * ``grad_w = irfft(conj(phase * (G^T @ conj(X))))`` cropped to the kernel (``G^H @ X`` is the gradient of
      the shifted kernel's spectrum; it is formed as the conjugate of ``G^T @ conj(X)``, the conjugation
      folded into the transposing copy of ``X``, because a conjugate-transposed first operand made ``bmm``
      copy it).

    The backward reuses the forward's spectra: the conjugate input spectrum and the kernel spectrum, each only
    when its gradient is needed. :func:`set_recompute_spectra` keeps the real input and kernel instead and
    recomputes their spectra in the backward (less memory: an input spectrum holds 1.6-2.3x the input's bytes).
    """

    @staticmethod
    def forward(ctx, x, w, bias, fft_shape, before):
        b, o = x.shape[0], w.shape[0]
        channels_last = _is_channels_last(x)
        # conj(Y) = conj(X) @ K^T: the conjugate input spectrum is what the kernel gradient needs, so the forward
        # computes with it and the backward can reuse it (the conjugation rides on the transposing copy)
        xc = _rfft_fm(x.contiguous(), fft_shape, conj=True)
        km = _rfft_fm(w, fft_shape, shift=before)
        freq = xc.shape[:-2]
        yc = torch.bmm(xc.view(-1, *xc.shape[-2:]), km.view(-1, *km.shape[-2:]).transpose(1, 2))
        y = _irfft_fm(yc.view(*freq, b, o), fft_shape, x.shape[2:], conj=True, bias=bias,
                      channels_last=channels_last)
        del yc
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.recompute = _RECOMPUTE_SPECTRA
        if ctx.recompute:  # the real tensors: less memory, two more forward transforms in the backward
            ctx.save_for_backward(x if need_w else None, w if need_x else None)
        else:
            ctx.save_for_backward(xc if need_w else None, km if need_x else None)
        ctx.fft_shape, ctx.before, ctx.has_bias = fft_shape, before, bias is not None
        ctx.channels_last, ctx.x_shape, ctx.w_shape = channels_last, x.shape, w.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        xc, km = ctx.saved_tensors
        fft_shape, before, x_shape, w_shape = ctx.fft_shape, ctx.before, ctx.x_shape, ctx.w_shape
        if ctx.recompute:  # saved: the real input and kernel
            xc = _rfft_fm(xc.contiguous(), fft_shape, conj=True) if xc is not None else None
            km = _rfft_fm(km, fft_shape, shift=before) if km is not None else None
        dim = len(w_shape) - 2
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            gm = _rfft_fm(grad_y.contiguous(), fft_shape)
            freq = gm.shape[:-2]
            gm = gm.view(-1, *gm.shape[-2:])  # (F, B, O)
            if need_x:
                gx = torch.bmm(gm, km.view(gm.shape[0], *w_shape[:2]))  # (F, B, I)
                del km
                grad_x = _irfft_fm(gx.view(*freq, *x_shape[:2]), fft_shape, x_shape[2:],
                                   channels_last=ctx.channels_last)
                del gx
            if need_w:
                q = torch.bmm(gm.transpose(1, 2), xc.view(gm.shape[0], *x_shape[:2]))  # (F, O, I) = G^T conj(X)
                del xc, gm
                q = q.view(*freq, *w_shape[:2])
                if any(before):
                    q.mul_(_phase(fft_shape, before, q.device, q.dtype))
                grad_w = _irfft_fm(q, fft_shape, w_shape[2:], conj=True)
        if need_b and ctx.has_bias:
            grad_b = grad_y.sum(dim=(0, *range(2, 2 + dim)))
        return grad_x, grad_w, grad_b, None, None


def _env_flag(name: str) -> bool:
    """An on/off environment switch: unset, '0', 'false', 'off' and 'no' mean off."""
    return os.environ.get(name, '0').strip().lower() not in ('0', 'false', 'off', 'no')


# Keep the real input and kernel for the backward instead of their spectra (see set_recompute_spectra).
_RECOMPUTE_SPECTRA = _env_flag('FLEXCONV_RECOMPUTE_SPECTRA')


def set_recompute_spectra(enabled: bool) -> None:
    """Trade speed for memory in the FFT path's backward (applies to forwards run after the call).

    Off (the default): each FFT convolution keeps its conjugate input spectrum and kernel spectrum from the forward
    for the backward. On: it keeps the real input and kernel and recomputes both spectra in the backward, which
    saves the difference between a spectrum and its real tensor per layer for two more forward transforms per
    layer (flexnet16 at 32 px, mid-run kernels: see docs/PERFORMANCE.md). ``model.set_grad_checkpointing()``
    saves more memory than this, for more recomputation.
    """
    global _RECOMPUTE_SPECTRA
    _RECOMPUTE_SPECTRA = bool(enabled)


def recompute_spectra_enabled() -> bool:
    return _RECOMPUTE_SPECTRA


def _fft_reference(x, weight, bias, fft_shape, before, sizes, ks):
    """Composite of differentiable ops (the compiler's path): same function as :class:`_FFTConv`."""
    dim = weight.dim() - 2
    dims = tuple(range(2, 2 + dim))
    x_f = torch.fft.rfftn(x, s=fft_shape, dim=dims)
    w_f = torch.fft.rfftn(weight.flip(dims), s=fft_shape, dim=dims)
    b, i = x_f.shape[:2]
    o = w_f.shape[0]
    freq_shape = x_f.shape[2:]
    xm = x_f.reshape(b, i, -1).permute(2, 0, 1).contiguous()  # (F, B, I)
    wm = w_f.reshape(o, i, -1).permute(2, 1, 0).contiguous()  # (F, I, O)
    y_f = torch.bmm(xm, wm).permute(1, 2, 0).reshape(b, o, *freq_shape)
    y = torch.fft.irfftn(y_f, s=fft_shape, dim=dims)
    index = [slice(None), slice(None)]
    for n, k, bf in zip(sizes, ks, before):
        index.append(slice(k - 1 - bf, k - 1 - bf + n))
    y = y[tuple(index)]
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * dim))
    if _is_channels_last(x):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


# Above this size of kernel spectrum a CPU call takes long enough (minutes for flexnet16 at 512x512) to announce.
LARGE_SPECTRUM_BYTES = 1 << 30
_announced_shapes = set()


def _announce_large_fft(x: torch.Tensor, weight: torch.Tensor, fft_shape: Sequence[int]) -> None:
    """Say once per shape what a very large CPU FFT convolution is doing, instead of going silent for minutes."""
    if x.device.type != 'cpu':
        return
    spectrum = weight.shape[0] * weight.shape[1] * math.prod(fft_shape[:-1]) * (fft_shape[-1] // 2 + 1) * 8
    key = (tuple(x.shape), tuple(weight.shape))
    if spectrum > LARGE_SPECTRUM_BYTES and key not in _announced_shapes:
        _announced_shapes.add(key)
        warnings.warn(f"FFT convolution of a {tuple(weight.shape)} kernel over a {tuple(x.shape)} input: "
                      f"{spectrum / 2 ** 30:.1f} GiB of kernel spectrum (FFT size {tuple(fft_shape)}), slow on a CPU "
                      f"(kernels grow with the input size); evaluate nearer the training resolution or on a GPU.",
                      stacklevel=4)


def _fft(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], before: Sequence[int]):
    out_dtype = torch.result_type(x, weight)
    if out_dtype != torch.float64 and x.device.type != 'meta' and torch.is_autocast_enabled(x.device.type):
        # what the direct path (an autocast conv, which leaves float64 alone) returns: the output dtype must not
        # depend on the dispatch
        out_dtype = torch.get_autocast_dtype(x.device.type)
    compute_dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    sizes, ks = x.shape[2:], weight.shape[2:]
    fft_shape = [fft_length(n, k, b) for n, k, b in zip(sizes, ks, before)]
    _announce_large_fft(x, weight, fft_shape)
    # keep FFTs and the complex matmul in float32 (the meta device has no autocast state)
    with torch.autocast(x.device.type, enabled=False) if x.device.type != 'meta' else contextlib.nullcontext():
        x, weight = x.to(compute_dtype), weight.to(compute_dtype)
        bias = bias.to(compute_dtype) if bias is not None else None
        if torch.compiler.is_compiling() or x.is_meta or _is_fx_tracing():
            y = _fft_reference(x, weight, bias, fft_shape, before, sizes, ks)  # let the compiler own the backward
        else:
            y = _FFTConv.apply(x, weight.contiguous(), bias, tuple(fft_shape), tuple(before))
    return y.to(out_dtype)


def conv_fft(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, causal: bool = False,
) -> torch.Tensor:
    """The same convolution as :func:`conv_direct`, computed through real FFTs."""
    _check(x, weight)
    weight, before = _trim(weight, x.shape[2:], causal)
    return _fft(x, weight, bias, before)


def choose_conv_method(kernel_size: Sequence[int], device_type: str, batch_size: Optional[int] = None,
                       backward: bool = False) -> str:
    """'fft' or 'direct' for a kernel of ``kernel_size`` on ``device_type`` from the fixed tables: a training
    step (``backward``) of at least ``TRAINING_MIN_BATCH`` examples uses ``FFT_THRESHOLDS_TRAINING`` where it has
    a row, everything else ``FFT_THRESHOLDS``."""
    dim = len(kernel_size)
    threshold = FFT_THRESHOLDS.get((device_type, dim), FFT_THRESHOLDS[('cuda', dim)])
    if backward and batch_size is not None and batch_size >= TRAINING_MIN_BATCH:
        threshold = FFT_THRESHOLDS_TRAINING.get((device_type, dim), threshold)
    return 'fft' if max(kernel_size) >= threshold else 'direct'


# ---------------------------------------------------------------------------------------------- autotune
_AUTOTUNE = _env_flag('FLEXCONV_AUTOTUNE')
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


def kernel_bucket(k: int) -> int:
    """The kernel length ``k`` rounded up to an eighth-octave step (exact up to 16: 16, 18, 20, 21, 23, ...).

    Kernels within ~10 % of each other share an autotune measurement, and the lagged crop of a long causal
    kernel changes shape only when it crosses a step (sizes grow slowly during training).
    """
    if k <= 16:
        return k
    return int(math.ceil(2 ** (math.ceil(8 * math.log2(k)) / 8)))


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
        # A direct conv costs batch x output area x one tile on CPU: skip timing one that cannot win (seconds
        # for a 33x33 kernel at batch 64; minutes for one 512x512 image, so the probe is a 32x32 tile).
        with torch.no_grad():
            tile = x[(slice(0, 1), slice(None), *(slice(0, min(n, 32)) for n in x.shape[2:]))].detach()
            scale = x.shape[0] * math.prod(x.shape[2:]) / math.prod(tile.shape[2:])
            _direct(tile, weight.detach(), None, before)
            t0 = time.perf_counter()
            _direct(tile, weight.detach(), None, before)
            if (time.perf_counter() - t0) * scale > 2.0 * t_fft:
                return 'fft'
    t_direct = _measure(runner(_direct, x), device, budget_s=0.1)
    # Ties go to the direct path: it is exact to float rounding per output (an FFT spreads rounding over
    # the whole signal, e.g. ~1e-8 of the largest output leaks across the causal boundary).
    return 'fft' if t_fft < _FFT_MARGIN * t_direct else 'direct'


def select_conv_method(x: torch.Tensor, weight: torch.Tensor, causal: bool = False) -> str:
    """The faster of 'fft' and 'direct' for this device and shape, measured once and cached in memory.

    Key: device type and index, dims, kernel size bucket, input size, channels, batch, dtype, causality,
    whether a backward will follow and whether the input is channels-last (both paths' speeds depend on it).
    Falls back to :func:`choose_conv_method` where timing is impossible or autotuning is disabled.
    """
    kernel_size = tuple(weight.shape[2:])
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if not _AUTOTUNE or not _can_time(x, weight):
        return choose_conv_method(kernel_size, x.device.type, x.shape[0], needs_grad)
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.result_type(x, weight)
    key = (
        x.device.type, x.device.index, len(kernel_size), tuple(kernel_bucket(k) for k in kernel_size),
        tuple(x.shape[2:]), x.shape[1], weight.shape[0], x.shape[0], dtype, causal, needs_grad,
        _is_channels_last(x),
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
