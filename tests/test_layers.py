"""Numerical tests of the FlexConv building blocks: convolution paths, kernel nets, mask, resolution."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flexconv_zoo.layers import (
    KERNEL_NETS, FlexConv1d, FlexConv2d, GaussianMask, conv_direct, conv_fft, create_kernel_net, next_fast_len,
)
from flexconv_zoo.layers.crop import crop_extent_causal, crop_extent_centered
from flexconv_zoo.layers.resolution import grid_size_for_input

THRESHOLD_RADIUS = math.sqrt(-2 * math.log(0.1))


# ----------------------------------------------------------------------------- convolution paths
@pytest.mark.parametrize('kernel_size', [(1, 1), (3, 3), (4, 4), (5, 8), (8, 3), (11, 11), (33, 33), (17, 6)])
@pytest.mark.parametrize('batch,size', [(1, (16, 16)), (3, (20, 13))])
def test_same_conv_paths_match_conv2d(kernel_size, batch, size):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, *size)
    w = torch.randn(5, 4, *kernel_size) / math.prod(kernel_size)
    b = torch.randn(5)
    reference = F.conv2d(x, w, b, padding='same')
    torch.testing.assert_close(conv_direct(x, w, b), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv_fft(x, w, b), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('k,length', [(1, 10), (4, 10), (9, 30), (64, 64), (100, 37), (513, 700)])
def test_causal_conv_paths_match_padded_conv1d(k, length):
    torch.manual_seed(0)
    x = torch.randn(2, 3, length)
    w = torch.randn(6, 3, k) / k
    b = torch.randn(6)
    reference = F.conv1d(F.pad(x, (k - 1, 0)), w, b)
    torch.testing.assert_close(conv_direct(x, w, b, causal=True), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv_fft(x, w, b, causal=True), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('method', ['direct', 'fft'])
def test_causal_output_ignores_the_future(method):
    torch.manual_seed(0)
    conv = FlexConv1d(2, 3, kernel_size=50, conv_method=method, mask_init_sigma=0.5)
    x = torch.randn(1, 2, 50)
    t = 20
    x_changed = x.clone()
    x_changed[..., t + 1:] = torch.randn_like(x_changed[..., t + 1:])
    y, y_changed = conv(x), conv(x_changed)
    torch.testing.assert_close(y[..., :t + 1], y_changed[..., :t + 1])
    assert not torch.allclose(y[..., t + 1:], y_changed[..., t + 1:])


def test_conv_direct_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='channels'):
        conv_direct(torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match='4-D input'):
        conv_fft(torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3))


def test_next_fast_len_is_smooth_and_minimal():
    for n in [1, 2, 7, 11, 13, 64, 65, 97, 1000, 2047, 16001]:
        m = next_fast_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        assert r == 1
        assert all(next_fast_len(j) == m for j in range(n, m + 1))  # nothing smooth in between


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize('method', ['direct', 'fft'])
@pytest.mark.parametrize('kernel_net', ['magnet', 'gabor', 'fourier', 'siren', 'mlp'])
def test_gradcheck_through_kernel_net_mask_and_conv_2d(method, kernel_net):
    torch.manual_seed(0)
    conv = FlexConv2d(2, 2, kernel_size=7, conv_method=method, kernel_net=kernel_net,
                      kernel_hidden=4, kernel_layers=1, mask_init_sigma=0.3).double()
    params = dict(conv.named_parameters())
    names = list(params)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return torch.func.functional_call(conv, dict(zip(names, values)), (x,))

    inputs = (x, *[p.detach().clone().requires_grad_() for p in params.values()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('method', ['direct', 'fft'])
def test_gradcheck_causal_1d(method):
    torch.manual_seed(0)
    conv = FlexConv1d(2, 2, kernel_size=9, conv_method=method, kernel_hidden=4, kernel_layers=1,
                      mask_init_sigma=0.4).double()
    names = [n for n, _ in conv.named_parameters()]
    x = torch.randn(2, 2, 9, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return torch.func.functional_call(conv, dict(zip(names, values)), (x,))

    inputs = (x, *[p.detach().clone().requires_grad_() for p in conv.parameters()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_mask_parameters_receive_gradients():
    conv = FlexConv2d(3, 4, kernel_size=9, mask_init_sigma=0.2)
    conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
    for p in (conv.mask.mean, conv.mask.sigma):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize('sigma', [0.0, 1e-8, -1e-8])
def test_collapsed_mask_gives_finite_gradients(sigma):
    conv = FlexConv2d(2, 2, kernel_size=9)
    with torch.no_grad():
        conv.mask.sigma.fill_(sigma)
        conv.mask.mean.fill_(0.01)
    assert conv.cropped_kernel_size == (1, 1)
    y = conv(torch.randn(1, 2, 8, 8))
    y.sum().backward()
    for p in conv.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- mask and crop
def _expected_centered_length(mean, sigma, grid):
    positions = torch.linspace(-1, 1, grid, dtype=torch.float64)
    root = max(abs(mean - sigma * THRESHOLD_RADIUS), abs(mean + sigma * THRESHOLD_RADIUS))
    if root >= 1:
        return grid
    return max(int((positions.abs() < root).sum()), 1)


def test_initial_crop_is_5x5_of_33_and_full_from_0466():
    conv = FlexConv2d(1, 1, kernel_size=33)
    assert conv.cropped_kernel_size == (5, 5)
    with torch.no_grad():
        conv.mask.sigma.fill_(0.466)
    assert conv.cropped_kernel_size == (33, 33)


@pytest.mark.parametrize('grid', [17, 33, 65])
def test_centered_crop_grows_with_sigma_and_follows_threshold_rule(grid):
    mask = GaussianMask(2)
    previous = 0
    for sigma in torch.linspace(0.01, 0.6, 60).tolist():
        with torch.no_grad():
            mask.sigma.copy_(torch.tensor([sigma, sigma / 2]))
        (start_h, start_w), (len_h, len_w) = mask.crop((grid, grid))
        assert len_h == _expected_centered_length(0.0, sigma, grid)
        assert len_w == _expected_centered_length(0.0, sigma / 2, grid)
        assert start_h == (grid - len_h) // 2 and start_w == (grid - len_w) // 2
        assert len_h >= previous
        previous = len_h
        # every cropped position has mask >= threshold, the next ones outward do not
        positions = torch.linspace(-1, 1, grid)
        kept = positions[start_h:start_h + len_h]
        if len_h < grid:
            assert torch.exp(-0.5 * (kept / sigma) ** 2).min() >= 0.1 - 1e-6
            assert torch.exp(-0.5 * (positions[start_h - 1] / sigma) ** 2) <= 0.1 + 1e-6
    assert previous == grid


def test_causal_crop_keeps_positions_right_of_the_left_root():
    positions = torch.linspace(-1, 1, 101, dtype=torch.float64)
    for mean, sigma in [(1.0, 0.075), (1.0, 0.3), (0.5, 0.1), (1.0, 2.0), (0.0, 0.01)]:
        root = mean - sigma * THRESHOLD_RADIUS
        start, length = crop_extent_causal(root, 101)
        expected = 101 if root <= -1 else max(int((positions > root).sum()), 1)
        assert length == expected and start == 101 - length
    # the paper's init: a 16,000-step grid starts with ~8 % of the taps
    conv = FlexConv1d(1, 1, kernel_size=16000)
    assert 1200 < conv.cropped_kernel_size[0] < 1400


def test_centered_crop_extent_edge_cases():
    assert crop_extent_centered(1.0, 33) == (0, 33)
    assert crop_extent_centered(0.0, 33) == (16, 1)
    assert crop_extent_centered(0.5, 5) == (2, 1)  # positions -1, -0.5, 0, 0.5, 1: |p| < 0.5 keeps only 0
    assert crop_extent_centered(0.5 + 1e-6, 5) == (1, 3)


# ----------------------------------------------------------------------------- kernel nets
def test_magnet_initialisation_follows_the_paper():
    torch.manual_seed(0)
    net = create_kernel_net('magnet', 2, 12, hidden=32, num_layers=3, input_scale=25.6, init_spatial=0.125)
    assert len(net.filters) == 4 and len(net.linears) == 3
    for layer, filt in enumerate(net.filters):
        assert filt.gamma.shape == (32, 2) and filt.mu.shape == (32, 2)
        assert filt.mu.abs().max() <= 0.125
        assert filt.linear.bias.abs().max() <= math.pi
        assert (filt.gamma > 0).all()
        # Gamma(alpha = 6 / (l + 1), 1) has mean alpha: check it loosely over 64 samples
        assert abs(filt.gamma.mean().item() - 6 / (layer + 1)) < 0.5 * 6 / (layer + 1)
    bound = math.sqrt(1 / 32)
    for linear in net.linears:
        assert linear.weight.abs().max() <= bound


def test_gabor_ablation_is_isotropic():
    net = create_kernel_net('gabor', 2, 4)
    assert all(f.gamma.shape == (32, 1) for f in net.filters)


@pytest.mark.parametrize('name', sorted(KERNEL_NETS))
def test_every_kernel_net_maps_positions_to_kernel_values(name):
    net = create_kernel_net(name, 2, 6)
    out = net(torch.rand(10, 2) * 2 - 1)
    assert out.shape == (10, 6) and torch.isfinite(out).all()


def test_unknown_kernel_net_is_a_clear_error():
    with pytest.raises(ValueError, match='Unknown kernel_net'):
        FlexConv2d(1, 1, kernel_net='wavelet')


# ----------------------------------------------------------------------------- resolution
def test_grid_size_for_input():
    assert grid_size_for_input(32, 2) == (33, 33)
    assert grid_size_for_input((16, 33), 2) == (17, 33)
    assert grid_size_for_input(16000, 1, causal=True) == (16000,)
    with pytest.raises(ValueError, match='at least 2'):
        grid_size_for_input(1, 2)


def test_resampled_kernel_equals_source_samples_times_scale():
    torch.manual_seed(0)
    conv = FlexConv2d(2, 3, kernel_size=17)
    conv.eval()
    with torch.no_grad():
        conv.mask.sigma.fill_(1.0)  # no crop: compare full grids
        coarse = conv.compute_kernel()
        conv.set_input_size(32)
        assert conv.kernel_size == (33, 33) and conv.source_grid == (17, 17)
        fine = conv.compute_kernel()
    # the 33-point grid contains the 17-point grid at every other sample; (16 / 32)^2 = 0.25
    torch.testing.assert_close(fine[..., ::2, ::2], 0.25 * coarse, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_layers_sample_their_kernel_on_float32_positions(dtype):
    """After model.bfloat16() the grid was made in bfloat16: 16,000 causal positions collapsed to 1,780 distinct
    values. Positions and the kernel net run in float32; the kernel is that of the float32 layer with the same
    (rounded) parameters, rounded once, and gradients still reach the half-precision parameters."""
    torch.manual_seed(0)
    conv = FlexConv1d(1, 1, kernel_size=16000, mask_init_sigma=5.0).to(dtype)
    reference = FlexConv1d(1, 1, kernel_size=16000, mask_init_sigma=5.0)
    reference.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
    seen = []
    conv.kernel_net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    kernel = conv.compute_kernel()
    assert seen[0].dtype == torch.float32 and seen[0][:, 0].unique().numel() == 16000
    assert kernel.dtype == dtype
    with torch.no_grad():
        expected = reference.compute_kernel().to(dtype)
    torch.testing.assert_close(kernel, expected, atol=0, rtol=2 ** -7)  # (was up to 40 % off in bfloat16)
    kernel.float().square().sum().backward()
    grads = [p.grad for p in conv.parameters() if p is not conv.bias]
    assert all(g is not None and g.dtype == dtype for g in grads)
    assert conv(torch.randn(1, 1, 100, dtype=dtype)).dtype == dtype


def test_unannounced_sizes_keep_the_training_grid_unless_following_input():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 48, 40)
    fixed = FlexConv2d(2, 2, kernel_size=33, mask_init_sigma=1.0)
    follow = FlexConv2d(2, 2, kernel_size=33, mask_init_sigma=1.0, follow_input_size=True)
    follow.load_state_dict(fixed.state_dict())
    y_fixed = fixed(x)
    assert fixed.kernel_size == (33, 33)
    reference = F.conv2d(x, fixed.compute_kernel(), fixed.bias, padding='same')
    torch.testing.assert_close(y_fixed, reference, atol=1e-4, rtol=1e-4)
    fixed.set_input_size((48, 40))
    torch.testing.assert_close(follow(x), fixed(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(follow(x), y_fixed, atol=1e-3)


# ----------------------------------------------------------------------------- bad input
def test_layer_errors_name_the_problem():
    conv = FlexConv2d(3, 4)
    with pytest.raises(ValueError, match='4-D input'):
        conv(torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match='3 input channels, got 1'):
        conv(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='at least 2 samples'):
        conv(torch.randn(2, 3, 1, 32))
    with pytest.raises(ValueError, match='3-D input'):
        FlexConv1d(3, 4, kernel_size=10)(torch.randn(2, 3, 10, 10))
    with pytest.raises(ValueError, match='in_channels'):
        FlexConv2d(0, 4)
    with pytest.raises(ValueError, match='conv_method'):
        FlexConv2d(1, 1, conv_method='winograd')
    with pytest.raises(ValueError, match='kernel_size'):
        FlexConv2d(1, 1, kernel_size=(33, 33, 33))
    with pytest.raises(ValueError, match='threshold'):
        FlexConv2d(1, 1, mask_threshold=1.5)
    with pytest.raises(TypeError):
        FlexConv2d(1, 1, padding='same')


@pytest.mark.parametrize('options,error,match', [
    (dict(kernel_net='siren', kernel_layers=0), ValueError, 'kernel_layers must be at least 1'),  # was a matmul error
    (dict(kernel_net='MLP', kernel_layers=0), ValueError, 'kernel_layers must be at least 1'),
    (dict(kernel_layers=-1), ValueError, 'kernel_layers must be at least 0'),  # was a ZeroDivisionError
    (dict(kernel_hidden=0), ValueError, 'kernel_hidden must be at least 1'),  # was a ZeroDivisionError
    (dict(kernel_hidden=2.5), TypeError, 'kernel_hidden must be an int'),
])
def test_kernel_net_size_options_are_validated(options, error, match):
    from flexconv_zoo.layers import FlexConvConfig
    with pytest.raises(error, match=match):
        FlexConv1d(1, 1, kernel_size=10, **options)
    with pytest.raises(error, match=match):
        FlexConvConfig(**options)


def test_multiplicative_filter_nets_take_zero_hidden_layers():
    conv = FlexConv1d(1, 2, kernel_size=10, kernel_layers=0)  # one Gabor filter and the output layer
    assert len(conv.kernel_net.filters) == 1 and conv(torch.randn(1, 1, 10)).shape == (1, 2, 10)


# ------------------------------------------------------------------------------------------------ issue 12
def test_autotune_is_off_by_default_in_the_library():
    import subprocess
    import sys
    env = {k: v for k, v in __import__('os').environ.items() if k != 'FLEXCONV_AUTOTUNE'}
    code = ("import importlib.util as u, sys; spec = u.spec_from_file_location('fftconv', sys.argv[1]); "
            "m = u.module_from_spec(spec); spec.loader.exec_module(m); print(m.autotune_enabled())")
    path = str(Path(__file__).resolve().parents[1] / 'flexconv_zoo' / 'layers' / 'fftconv.py')
    out = subprocess.run([sys.executable, '-c', code, path], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == 'False', out.stderr[-2000:]


def test_autotune_probes_direct_convolution_on_a_tile_of_a_large_input(monkeypatch):
    """A first call at a large resolution used to time full direct convolutions (minutes at 512x512): the CPU
    probe now times one 32x32 tile and extrapolates, and the FFT wins without a full direct run."""
    from flexconv_zoo.layers import fftconv
    areas = []
    real_direct = fftconv._direct

    def recording_direct(x, *args):
        areas.append(x.shape[0] * x.shape[2] * x.shape[3])
        return real_direct(x, *args)

    monkeypatch.setattr(fftconv, '_direct', recording_direct)
    x, w = torch.randn(2, 8, 128, 128), torch.randn(8, 8, 33, 33)
    enabled = fftconv.autotune_enabled()
    fftconv.set_autotune(True)
    fftconv.clear_autotune_cache()
    try:
        with torch.no_grad():
            method = fftconv.select_conv_method(x, w)
    finally:
        fftconv.set_autotune(enabled)
        fftconv.clear_autotune_cache()
    assert method == 'fft' and areas and max(areas) == 32 * 32, (method, areas)


def test_half_precision_direct_convolution_on_cpu_computes_in_float32(monkeypatch):
    """CPUs have no fast float16 convolution (one 48->48 33x33 layer on two 32x32 images: 109 s in float16, 0.4 s
    in float32): the direct path convolves in float32 and rounds the result once."""
    import torch.nn.functional as F
    from flexconv_zoo.layers import fftconv
    seen, conv2d = [], F.conv2d

    def recording_conv2d(x, w, *args, **kwargs):
        seen.append((x.dtype, w.dtype))
        return conv2d(x, w, *args, **kwargs)
    monkeypatch.setattr(F, 'conv2d', recording_conv2d)
    x, w = torch.randn(2, 8, 32, 32), torch.randn(8, 8, 33, 33) / 100
    ref = fftconv.conv_direct(x, w)
    out = fftconv.conv_direct(x.half(), w.half())
    assert out.dtype == torch.float16
    assert seen == [(torch.float32, torch.float32)] * 2, seen
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------- dropout
def test_fast_dropout_matches_nn_dropout_in_distribution_and_gradient():
    """FastDropout: each element kept with probability 1 - p and scaled by 1 / (1 - p), like nn.Dropout; the
    gradient is that same scaled mask; identity in eval; the channels_last layout is kept."""
    from flexconv_zoo.layers import FastDropout
    p = 0.2
    drop = FastDropout(p).train()
    x = (torch.rand(64, 24, 32, 32, generator=torch.Generator().manual_seed(7)) + 0.5).requires_grad_()
    # (x has no zeros: a zero output means a dropped element; drawn from its own stream, not the masks')
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    frac = kept.float().mean().item()
    assert abs(frac - (1 - p)) < 6 * math.sqrt(p * (1 - p) / x.numel())  # 6 sigma of the binomial fraction
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p))
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    ref = torch.nn.Dropout(p).train()(x.detach())  # same first two moments as PyTorch's dropout
    assert abs(y.mean().item() - ref.mean().item()) < 5e-3 and abs(y.std().item() - ref.std().item()) < 5e-3
    torch.manual_seed(0)  # a seeded mask replays (gradient checkpointing relies on it)
    assert torch.equal(drop(x.detach()), y.detach())
    cl = x.detach().to(memory_format=torch.channels_last)
    assert drop(cl).is_contiguous(memory_format=torch.channels_last)
    drop.eval()
    assert torch.equal(drop(x.detach()), x.detach())
    # bfloat16 and p in {0, 1} go to nn.Dropout: all zeros at p = 1, identity at 0
    assert FastDropout(1.0).train()(x.detach()).abs().sum() == 0
    assert torch.equal(FastDropout(0.0).train()(x.detach()), x.detach())
    half = FastDropout(p).train()(torch.ones(4096, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and set(half.unique().tolist()) <= {0.0, 1.25}
