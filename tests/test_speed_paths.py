"""The fast paths compute the same function as the plain ones: FFT == direct, cached == uncached kernels,
lagged/bucketed crops == exact crops, autotuned dispatch, bf16 autocast, torch.compile, channels_last == NCHW.
No timing asserts."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import timm

import flexconv_zoo  # noqa: F401
from flexconv_zoo.layers import FlexConv1d, FlexConv2d, fftconv
from flexconv_zoo.layers.fftconv import (
    TRAINING_MIN_BATCH, conv_direct, conv_fft, conv_nd, fft_length, next_fast_len, select_conv_method)


@pytest.fixture(autouse=True)
def _fresh_autotune():
    # Timing every layer shape would dominate this file's run time: tests that need it switch it on.
    fftconv.clear_autotune_cache()
    enabled = fftconv.autotune_enabled()
    fftconv.set_autotune(False)
    yield
    fftconv.set_autotune(enabled)
    fftconv.clear_autotune_cache()


def _rand_conv(batch, cin, cout, sizes, ks, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, *sizes, generator=g)
    fan_in = cin * torch.tensor(ks).prod().item()
    w = torch.randn(cout, cin, *ks, generator=g) / fan_in ** 0.5  # outputs of order 1
    b = torch.randn(cout, generator=g)
    return x, w, b


# ---------------------------------------------------------------------------------------------- FFT == direct
@pytest.mark.parametrize('k', list(range(3, 34)))
def test_fft_equals_direct_2d_all_sizes(k):
    """Every kernel size 3..33 (odd and even), anisotropic kernels and inputs, with the reference conv."""
    for sizes, ks in (((32, 32), (k, k)), ((17, 24), (k, max(1, k // 2 + 1))), ((9, 31), (max(1, k - 2), k))):
        x, w, b = _rand_conv(2, 3, 4, sizes, ks, seed=k)
        ref = conv_direct(x.double(), w.double(), b.double()).float()
        torch.testing.assert_close(conv_fft(x, w, b), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(conv_direct(x, w, b), ref, atol=1e-4, rtol=1e-4)
    if k % 2:  # odd kernels: also the framework's own "same" padding
        torch.testing.assert_close(conv_fft(x, w, b), F.conv2d(x, w, b, padding='same'), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('n,k', [(1, 1), (2, 5), (7, 7), (64, 64), (100, 37), (257, 257), (1000, 1000), (50, 120)])
def test_fft_equals_direct_1d_causal(n, k):
    x, w, b = _rand_conv(2, 3, 5, (n,), (k,), seed=n)
    ref = F.conv1d(F.pad(x.double(), (k - 1, 0)), w.double(), b.double()).float()
    torch.testing.assert_close(conv_fft(x, w, b, causal=True), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv_direct(x, w, b, causal=True), ref, atol=1e-4, rtol=1e-4)


def test_kernel_larger_than_input_is_trimmed():
    x, w, b = _rand_conv(1, 2, 2, (4, 6), (33, 33))
    ref = F.conv2d(F.pad(x.double(), (16, 16, 16, 16)), w.double(), b.double()).float()
    torch.testing.assert_close(conv_fft(x, w, b), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv_direct(x, w, b), ref, atol=1e-4, rtol=1e-4)


def _circular_correlation(x: torch.Tensor, w: torch.Tensor, before: int, n_fft: int) -> torch.Tensor:
    """1-D correlation through a circular convolution of length ``n_fft`` (no rounding to fast lengths)."""
    n, k = x.shape[-1], w.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(x, n_fft) * torch.fft.rfft(w.flip(-1), n_fft), n_fft)
    return y[..., (torch.arange(n) + k - 1 - before) % n_fft]


@pytest.mark.parametrize('n,k,causal', [(32, 33, False), (32, 5, False), (20, 8, False), (16, 16, True), (30, 7, True)])
def test_fft_length_is_the_shortest_without_wraparound(n, k, causal):
    """N = n + max(a, k - 1 - a) is exact and N - 1 is not ("same": n + k // 2, causal: n + k - 1)."""
    before = k - 1 if causal else (k - 1) // 2
    minimal = n + (k - 1 if causal else k // 2)
    assert fft_length(n, k, before) == next_fast_len(minimal)
    x = torch.randn(n, dtype=torch.float64)
    w = torch.randn(k, dtype=torch.float64)
    ref = F.conv1d(F.pad(x[None, None], (before, k - 1 - before)), w[None, None])[0, 0]
    torch.testing.assert_close(_circular_correlation(x, w, before, minimal), ref)
    assert not torch.allclose(_circular_correlation(x, w, before, minimal - 1), ref)


def test_fft_backward_equals_direct():
    x, w, b = _rand_conv(3, 4, 5, (20, 20), (13, 9))
    grads = []
    for fn in (conv_fft, conv_direct):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xi, wi, bi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append((xi.grad, wi.grad, bi.grad))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def _fft_args(x, w, causal):
    w, before = fftconv._trim(w, x.shape[2:], causal)
    fft_shape = tuple(fft_length(n, k, b) for n, k, b in zip(x.shape[2:], w.shape[2:], before))
    return w, fft_shape, tuple(before)


@pytest.mark.parametrize('sizes,ks,causal', [
    ((9, 8), (5, 4), False), ((6, 7), (3, 6), False), ((5, 6), (13, 13), False), ((12,), (12,), True),
    ((11,), (4,), False),
])
def test_fft_conv_function_gradcheck(sizes, ks, causal):
    """The hand-written backward of the FFT convolution is the exact adjoint (float64 gradcheck), with and
    without bias, for every subset of inputs needing a gradient."""
    x, w, b = (t.double() for t in _rand_conv(2, 3, 2, sizes, ks))
    w, fft_shape, before = _fft_args(x, w, causal)
    for bias in (b, None):
        for needs in ((True, True), (True, False), (False, True)):
            xi = x.clone().requires_grad_(needs[0])
            wi = w.clone().requires_grad_(needs[1])
            bi = None if bias is None else bias.clone().requires_grad_()
            assert torch.autograd.gradcheck(
                lambda a, c, d: fftconv._FFTConv.apply(a, c, d, fft_shape, before), (xi, wi, bi))


@pytest.mark.parametrize('sizes,ks,causal', [((32, 32), (33, 33), False), ((16, 20), (9, 6), False),
                                             ((100,), (100,), True)])
def test_fft_conv_function_equals_composite_path(sizes, ks, causal):
    """The eager Function and the composite path used under torch.compile/export/FX compute the same
    outputs and gradients."""
    x, w, b = _rand_conv(3, 4, 5, sizes, ks)
    w, fft_shape, before = _fft_args(x, w, causal)
    results = []
    for fn in (lambda *a: fftconv._FFTConv.apply(*a, fft_shape, before),
               lambda *a: fftconv._fft_reference(*a, fft_shape, before, x.shape[2:], w.shape[2:])):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xi, wi, bi)
        (y * torch.cos(y)).sum().backward()
        results.append((y.detach(), xi.grad, wi.grad, bi.grad))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_fft_conv_saves_only_the_spectra_its_backward_needs():
    """The FFT path keeps the conjugate input spectrum (for the kernel gradient) and the kernel spectrum (for the
    input gradient) instead of recomputing them in the backward; no real copy of the input, and nothing for a
    gradient that is not needed."""
    x, w, b = _rand_conv(4, 6, 8, (32, 32), (33, 33))
    fft_shape = [fftconv.fft_length(32, 33, 16)] * 2  # 48: the smallest fast length that does not wrap
    freqs = fft_shape[0] * (fft_shape[1] // 2 + 1)
    x_spectrum, w_spectrum = freqs * x.shape[0] * x.shape[1] * 8, freqs * w.shape[0] * w.shape[1] * 8

    def saved_by(x_grad, w_grad):
        xi, wi = x.clone().requires_grad_(x_grad), w.clone().requires_grad_(w_grad)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = conv_nd(xi, wi, b, method='fft')
        y.sum().backward()
        assert (xi.grad is not None) == x_grad and (wi.grad is not None) == w_grad
        assert all(t.is_complex() for t in saved)
        return sorted(t.numel() * t.element_size() for t in saved)

    assert saved_by(True, True) == sorted([x_spectrum, w_spectrum])
    assert saved_by(False, True) == [x_spectrum]  # an input image: no kernel spectrum for its gradient
    assert saved_by(True, False) == [w_spectrum]  # a frozen kernel: no input spectrum


def test_fft_conv_recompute_spectra_saves_real_tensors_and_gives_the_same_gradients():
    """set_recompute_spectra(True): the backward keeps the real input and kernel (no spectra) and recomputes the
    spectra; values and gradients match the default (spectra kept) to float rounding."""
    x, w, b = _rand_conv(3, 5, 7, (20, 20), (15, 15))
    results = []
    for recompute in (False, True):
        fftconv.set_recompute_spectra(recompute)
        try:
            xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                y = conv_nd(xi, wi, bi, method='fft')
            assert all(t.is_complex() != recompute for t in saved) and len(saved) == 2
            (y * torch.sin(y)).sum().backward()
            results.append((y.detach(), xi.grad, wi.grad, bi.grad))
        finally:
            fftconv.set_recompute_spectra(False)
    for kept, recomputed in zip(*results):
        torch.testing.assert_close(recomputed, kept, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_fft_error_is_bounded():
    """Under bf16 autocast the FFT path computes in float32 and rounds once to bf16 (the dtype the direct path,
    an autocast conv, returns): its error vs float32 is that one rounding, far below a bf16 convolution's."""
    x, w, b = _rand_conv(2, 16, 16, (32, 32), (33, 33))
    ref = conv_direct(x.double(), w.double(), b.double())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = conv_nd(x, w, b, method='fft')
        y_bf16_in = conv_nd(x.bfloat16(), w.bfloat16(), b.bfloat16(), method='fft')
    assert y.dtype == torch.bfloat16
    assert y_bf16_in.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    torch.testing.assert_close(y.double(), ref, atol=1e-5 * scale, rtol=2 ** -8)  # one bf16 rounding
    # bf16 inputs and output: bounded by bf16 rounding (8 bits of mantissa) of inputs and result.
    assert (y_bf16_in.double() - ref).abs().max().item() < 2e-2 * scale



@pytest.mark.parametrize('sizes,ks,causal', [((16, 16), (9, 9), False), ((40,), (40,), True)])
def test_autocast_output_dtype_does_not_depend_on_the_dispatch(sizes, ks, causal):
    """Under autocast the direct path (an autocast conv) returns bf16; the FFT path returned float32, so the
    dtype of a layer's output depended on its kernel size and the autotuner."""
    x, w, b = _rand_conv(2, 3, 4, sizes, ks)
    for dtype in (torch.float32, torch.float16):  # (CPU float16 direct convs run in float32, then round)
        args = (x.to(dtype), w.to(dtype), b.to(dtype))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = {method: conv_nd(*args, causal=causal, method=method) for method in ('direct', 'fft')}
        assert {y.dtype for y in outs.values()} == {torch.bfloat16}, (dtype, outs)
        torch.testing.assert_close(outs['fft'].float(), outs['direct'].float(), atol=5e-2, rtol=5e-2)
        assert conv_nd(*args, causal=causal, method='fft').dtype == dtype  # no autocast: unchanged
        assert conv_nd(*args, causal=causal, method='direct').dtype == dtype
# ---------------------------------------------------------------------------------------------- dispatch
def test_autotune_picks_a_valid_method_and_both_paths_agree():
    x, w, b = _rand_conv(4, 8, 8, (16, 16), (9, 9))
    fftconv.set_autotune(True)
    method = select_conv_method(x, w)
    assert method in ('fft', 'direct')
    cache = fftconv.autotune_cache()
    assert len(cache) == 1 and list(cache.values()) == [method]
    other = 'direct' if method == 'fft' else 'fft'
    torch.testing.assert_close(conv_nd(x, w, b), conv_nd(x, w, b, method=other), atol=1e-4, rtol=1e-4)
    # a backward needs its own measurement (different key)
    select_conv_method(x.requires_grad_(), w)
    assert len(fftconv.autotune_cache()) == 2


def test_autotune_disabled_or_untimeable_uses_the_table():
    x, w, _ = _rand_conv(2, 3, 3, (16, 16), (33, 33))
    fftconv.set_autotune(False)
    assert select_conv_method(x, w) == fftconv.choose_conv_method((33, 33), 'cpu') == 'fft'
    assert select_conv_method(x, w[..., :3, :3]) == 'direct'
    fftconv.set_autotune(True)
    assert select_conv_method(x.to('meta'), w.to('meta')) == 'fft'
    assert fftconv.autotune_cache() == {}


def test_training_steps_of_a_full_batch_take_the_fft_from_7_taps():
    fftconv.set_autotune(False)
    x, w, _ = _rand_conv(16, 4, 4, (16, 16), (7, 7))
    assert fftconv.choose_conv_method((7, 7), 'cpu') == 'direct'  # forward passes: the general table
    assert fftconv.choose_conv_method((7, 7), 'cpu', batch_size=16, backward=True) == 'fft'
    assert fftconv.choose_conv_method((5, 5), 'cpu', batch_size=64, backward=True) == 'direct'
    assert select_conv_method(x, w) == 'direct'  # nothing requires a gradient
    w.requires_grad_(True)
    assert select_conv_method(x, w) == 'fft'  # a training step: the weights need gradients
    with torch.no_grad():
        assert select_conv_method(x, w) == 'direct'
    assert select_conv_method(x[:TRAINING_MIN_BATCH - 1], w) == 'direct'  # e.g. an epoch's last, short batch
    assert fftconv.choose_conv_method((7,), 'cpu', batch_size=64, backward=True) == 'direct'  # 1-D: no row


def test_conv_nd_rejects_unknown_method():
    x, w, _ = _rand_conv(1, 2, 2, (8, 8), (3, 3))
    with pytest.raises(ValueError, match='Unknown convolution method'):
        conv_nd(x, w, method='winograd')


# ---------------------------------------------------------------------------------------------- kernel cache
def _tiny_flexnet(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('flexnet8', widths=(6, 8), num_classes=3, **kwargs)


def _uncached(model, x):
    with torch.no_grad():
        for layer in model.flexconv_layers():
            layer.clear_kernel_cache()
        out = model(x)
        for layer in model.flexconv_layers():
            layer.clear_kernel_cache()
    return out


def test_cached_equals_uncached_and_is_reused():
    model = _tiny_flexnet().eval()
    model.set_mask_width(0.2)
    x = torch.randn(2, 3, 16, 16)
    ref = _uncached(model, x)
    with torch.no_grad():
        first = model(x)
        layer = next(model.flexconv_layers())
        cached = layer._cached_kernel
        second = model(x)
    assert cached is not None and layer._cached_kernel is cached  # computed once, reused
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, ref, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_cache_off_when_a_graph_is_needed_and_in_train_mode():
    model = _tiny_flexnet()
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    model(x).sum().backward()  # grad enabled, params require grad: no cache, gradients flow to the kernel nets
    layer = next(model.flexconv_layers())
    assert layer._cached_kernel is None
    assert layer.kernel_net.output.weight.grad is not None
    with torch.no_grad():
        model(x)
    assert layer._cached_kernel is not None
    model.train()
    assert layer._cached_kernel is None


def test_inference_mode_kernel_is_not_reused_with_autograd():
    model = _tiny_flexnet().eval().requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        model(x)
    xg = x.clone().requires_grad_()
    model(xg).sum().backward()  # an inference-mode kernel here would raise
    assert xg.grad is not None


def test_cache_invalidated_by_parameter_changes():
    model = _tiny_flexnet().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    # optimizer step (in place on the parameters)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after_step = model(x)
    assert not torch.allclose(after_step, before)
    torch.testing.assert_close(after_step, _uncached(model, x), atol=1e-5, rtol=1e-5)
    # the mask width changed in place (set_mask_width) -> new crop
    model.set_mask_width(0.3)
    with torch.no_grad():
        wide = model(x)
    torch.testing.assert_close(wide, _uncached(model, x), atol=1e-5, rtol=1e-5)
    # load_state_dict copies in place
    other = _tiny_flexnet().eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
        other_out = other(x)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), other_out, atol=1e-5, rtol=1e-5)


def test_cache_follows_set_input_size_and_dtype():
    model = _tiny_flexnet().eval()
    model.set_mask_width(0.5)
    x16, x32 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x32)
        model.set_input_size(img_size=16)
        small = model(x16)
        layer = next(model.flexconv_layers())
        assert layer._cached_kernel.shape[-1] == 17
        torch.testing.assert_close(small, _uncached(model, x16), atol=1e-5, rtol=1e-5)
        model(x16)
        model.double()
        out64 = model(x16.double())
    assert out64.dtype == torch.float64 and layer._cached_kernel.dtype == torch.float64
    torch.testing.assert_close(out64.float(), small, atol=1e-4, rtol=1e-4)


def test_autocast_samples_the_kernel_in_float32():
    """Under bf16 autocast the kernel net and mask run in float32 (a bf16 kernel net on a 16,000-point grid was
    2 % off); the convolution then rounds the kernel once, as autocast does with any conv weight."""
    torch.manual_seed(0)
    conv = FlexConv1d(1, 1, kernel_size=16000, mask_init_sigma=5.0)
    with torch.no_grad():
        kernel = conv.compute_kernel()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            under_autocast = conv.compute_kernel()
            y = conv(torch.randn(1, 1, 200))
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, kernel)
    assert y.dtype == torch.bfloat16


def test_cache_keeps_autocast_kernels_apart():
    """A kernel computed under bf16 autocast (then with the kernel net in bf16) was reused by the next float32
    forward (1e-3 off): the autocast state is part of the key, both ways."""
    model = _tiny_flexnet().eval()
    model.set_mask_width(0.3)
    x = torch.randn(2, 3, 16, 16)
    ref = _uncached(model, x)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
        assert torch.equal(model(x), ref)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert torch.equal(model(x), low)


# ---------------------------------------------------------------------------------------------- crop modes
@pytest.mark.parametrize('cls,grid,shape', [(FlexConv2d, 33, (2, 3, 32, 32)), (FlexConv1d, 100, (2, 3, 100))])
@pytest.mark.parametrize('sigma', [0.01, 0.075, 0.2, 0.6])
def test_lagged_and_full_crops_equal_the_exact_crop(cls, grid, shape, sigma):
    """Bucketed/full windows with the on-device 0/1 indicator: same outputs and gradients as the exact crop."""
    torch.manual_seed(0)
    conv = cls(3, 4, kernel_size=grid, conv_method='direct').double()
    with torch.no_grad():
        conv.mask.sigma.fill_(sigma)
        conv.mask.mean.add_(0.03)
    x = torch.randn(*shape, dtype=torch.float64)
    results = {}
    for mode in ('exact', 'lagged', 'full'):
        conv.crop_mode = mode
        conv.clear_kernel_cache()
        conv.zero_grad()
        y = conv(x)
        (y * torch.sin(y)).sum().backward()
        results[mode] = (y.detach(), [p.grad.clone() for p in conv.parameters()])
    y_ref, g_ref = results['exact']
    for mode in ('lagged', 'full'):
        y, g = results[mode]
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_lagged_crop_follows_a_growing_mask():
    """The lagged copy trails by one forward; the margin keeps the exact crop inside the bucket for steps of
    training size (Adam moves sigma by ~lr = 1e-3 per step), and a jump is reported and fixed one step later."""
    torch.manual_seed(0)
    conv = FlexConv2d(2, 2, kernel_size=33, conv_method='direct')
    x = torch.randn(1, 2, 32, 32)

    def check(sigma, exact_expected=True):
        with torch.no_grad():
            conv.mask.sigma.fill_(sigma)
        conv.crop_mode = 'lagged'
        y = conv(x)
        conv.crop_mode = 'exact'
        assert torch.allclose(y, conv(x), atol=1e-5, rtol=1e-5) == exact_expected

    for sigma in torch.linspace(0.075, 0.3, 46).tolist():  # steps of 0.005
        check(sigma)
    check(0.5, exact_expected=False)  # a jump past the margin: one step with the smaller bucket ...
    with pytest.warns(UserWarning, match='margin'):
        check(0.5)  # ... reported by the device-side flag one forward later, exact again


# ---------------------------------------------------------------------------------------------- grad checkpointing
@pytest.mark.filterwarnings('ignore:FlexConv2d. the mask grew past the lagged crop')
@pytest.mark.parametrize('crop_mode', ['exact', 'lagged'])  # lagged: the recomputation must reuse the forward's crop
def test_grad_checkpointing_in_training_matches_plain(crop_mode):
    """Train mode (block dropout, batch statistics, no kernel cache), FFT convolution (recomputes its spectra in
    backward), two steps with the mask widened in between: checkpointed blocks give the plain gradients."""
    x = torch.randn(2, 3, 8, 8)
    grads = {}
    for ckpt in (False, True):
        model = _tiny_flexnet(img_size=8, conv_method='fft').train()
        model.set_grad_checkpointing(ckpt)
        for layer in model.flexconv_layers():
            layer.crop_mode = crop_mode
        grads[ckpt] = []
        for step, sigma in enumerate((0.1, 0.5)):
            model.set_mask_width(sigma)
            model.zero_grad()
            torch.manual_seed(step)  # same dropout masks for both models; checkpointing replays them
            model(x).square().sum().backward()
            grads[ckpt].append([p.grad.clone() for p in model.parameters()])
    for plain, ckpt in zip(grads[False], grads[True]):
        for a, b in zip(plain, ckpt):
            torch.testing.assert_close(b, a)


# ---------------------------------------------------------------------------------------------- channels_last
CL = torch.channels_last


def _is_cl(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


@pytest.mark.usefixtures('one_thread')  # 2 threads on the busy 2-core machine: seconds of stalls
@pytest.mark.parametrize('fn', [conv_fft, conv_direct])
@pytest.mark.parametrize('sizes,ks', [((12, 16), (5, 5)), ((12, 16), (6, 3)), ((8, 8), (33, 33))])
def test_conv_paths_channels_last_equal_nchw(fn, sizes, ks):
    """Both paths take channels_last inputs (symmetric, asymmetric-padding and trimmed kernels), return a
    channels_last output and input gradient like F.conv2d, and compute the NCHW function and gradients."""
    x, w, b = _rand_conv(3, 4, 5, sizes, ks)
    g = torch.randn(3, 5, *sizes)
    outs = []
    for fmt in (torch.contiguous_format, CL):
        xi = x.to(memory_format=fmt).requires_grad_()
        wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fn(xi, wi, bi)
        grads = torch.autograd.grad(y, (xi, wi, bi), g.to(memory_format=fmt))
        assert _is_cl(y) == _is_cl(grads[0]) == (fmt is CL)
        outs.append((y, *grads))
    for a, c in zip(*outs):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures('one_thread')
def test_fft_channels_last_input_is_not_kept():
    """The FFT Function transforms a contiguous copy of a channels_last input; neither that copy nor the input
    is kept for the backward (only spectra are), and both gradients keep the caller's layouts."""
    x, w, _ = _rand_conv(2, 3, 4, (10, 10), (9, 9))
    x = x.to(memory_format=CL).requires_grad_()
    y = conv_fft(x, w.requires_grad_())
    saved = y.grad_fn.saved_tensors
    assert saved and all(t.is_complex() for t in saved)
    y.backward(torch.ones_like(y).to(memory_format=CL))
    assert _is_cl(x.grad) and w.grad.is_contiguous()


@pytest.mark.usefixtures('one_thread')
def test_autotune_keys_channels_last_apart():
    x, w, _ = _rand_conv(2, 4, 4, (12, 12), (5, 5))
    fftconv.set_autotune(True)
    select_conv_method(x, w)
    select_conv_method(x.to(memory_format=CL), w)
    assert len(fftconv.autotune_cache()) == 2


@pytest.mark.usefixtures('one_thread')  # 2 threads on the busy 2-core machine: seconds of stalls
@pytest.mark.parametrize('method', ['direct', 'fft'])
def test_channels_last_flexnet_equals_nchw(method):
    """A channels_last FlexNet (module and input, as timm's --channels-last) gives the NCHW outputs and
    gradients in train mode (batch statistics, 1x1 shortcut) and in eval with the kernel cache, and its FlexConv
    layers keep the channels_last layout. Block dropout is off: a dropout mask is drawn in memory order, so the
    same seed drops different elements in the two layouts (an equally valid draw, not the same one)."""
    x = torch.randn(2, 3, 8, 8)
    runs = {}
    for fmt in (torch.contiguous_format, CL):
        model = _tiny_flexnet(img_size=8, conv_method=method, block_drop_rate=0.0).to(memory_format=fmt)
        model.set_mask_width(0.3 if method == 'fft' else 0.05)  # fft: 9x9 kernels; direct: 3x3
        xi = x.to(memory_format=fmt)
        formats = []
        hook = next(model.flexconv_layers()).register_forward_hook(lambda m, a, y: formats.append(_is_cl(y)))
        model.train()
        out = model(xi)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.eval()
        with torch.no_grad():
            ev, ev2 = model(xi), model(xi)  # second call: cached kernels
        hook.remove()
        assert formats == [fmt is CL] * 3
        runs[fmt] = (out, ev, ev2, *grads)
    for a, c in zip(runs[torch.contiguous_format], runs[CL]):
        torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- compile
def test_torch_compile_matches_eager():
    model = _tiny_flexnet().eval()
    model.set_mask_width(0.2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(copy.deepcopy(model))
        out = compiled(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_large_cpu_fft_convolution_is_announced_once(monkeypatch):
    from flexconv_zoo.layers import fftconv
    monkeypatch.setattr(fftconv, 'LARGE_SPECTRUM_BYTES', 100_000)
    monkeypatch.setattr(fftconv, '_announced_shapes', set())
    x, w = torch.randn(1, 4, 40, 40), torch.randn(4, 4, 9, 9)
    with pytest.warns(UserWarning, match=r'FFT convolution of a \(4, 4, 9, 9\) kernel .* GiB of kernel spectrum'):
        fftconv.conv_fft(x, w)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the same shape again: silent; a small one: silent
        fftconv.conv_fft(x, w)
        fftconv.conv_fft(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3))
