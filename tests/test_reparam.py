"""Reparameterized FlexConv models (``timm.utils.reparameterize_model``: every FlexConv becomes a fixed convolution
of its cropped kernel) compute the original function, keep the timm API, save and load, and export
(torch.export, TorchScript tracing, ONNX checked with onnxruntime)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.utils import reparameterize_model

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo import deploy
from flexconv_zoo.layers import FlexConv1d, FlexConv2d
from flexconv_zoo.layers.dftconv import conv_dft_matmul
from flexconv_zoo.layers.fftconv import conv_direct

ROOT = Path(__file__).resolve().parents[1]
_CACHE = {}


def _pretrained(tag: str) -> torch.nn.Module:
    """A fresh eval-mode copy of a shipped weight (loaded once per test session)."""
    if tag not in _CACHE:
        _CACHE[tag] = timm.create_model(f'local-dir:{ROOT / "hub_configs" / tag}', pretrained=True).eval()
    return copy.deepcopy(_CACHE[tag])


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('tag,size,shape', [
    ('flexnet16.cifar10', None, (2, 3, 32, 32)),
    ('flexnet16.cifar10', None, (2, 3, 20, 24)),  # another input size on the same kernels
    ('flexnet16.cifar10_16px_alias_free', None, (2, 3, 16, 16)),
    ('flexnet16.cifar10_16px_alias_free', 32, (2, 3, 32, 32)),  # resampled to 32 px before freezing
    ('flextcn6.mnist1d', None, (2, 1, 40)),
    ('flextcn2.mnist1d', 80, (2, 1, 80)),
])
def test_reparameterized_model_computes_the_same_outputs(one_thread, tag, size, shape):
    model = _pretrained(tag)
    deploy.set_resolution(model, size)
    x = torch.randn(shape)
    expected = _outputs(model, x)
    sizes = model.kernel_sizes()
    fixed = reparameterize_model(model)
    assert not any(isinstance(m, (FlexConv1d, FlexConv2d)) and not m.is_reparameterized for m in fixed.modules())
    assert not any('kernel_net' in k or '.mask.' in k for k in fixed.state_dict())
    assert fixed.kernel_sizes() == sizes  # the learned crops, now plain weight shapes
    assert all(tuple(layer.weight.shape[2:]) == s for layer, s in zip(fixed.flexconv_layers(), sizes))
    assert (_outputs(fixed, x) - expected).abs().max().item() <= 1e-5
    # both convolution paths of the fixed kernels give the function too (to float32 rounding of the FFT, which
    # spreads over the output's scale: logits reach ~50 here)
    for method in ('direct', 'fft'):
        for layer in fixed.flexconv_layers():
            layer.conv_method = method
        assert (_outputs(fixed, x) - expected).abs().max().item() <= 1e-6 * expected.abs().max().item(), method
    # the stored weight is what runs: changing it changes the outputs
    with torch.no_grad():
        next(fixed.flexconv_layers()).weight.mul_(2)
    assert (_outputs(fixed, x) - expected).abs().max().item() > 1e-3


def test_reparameterized_keeps_the_timm_api(one_thread):
    model = _pretrained('flexnet16.cifar10')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
    fixed = reparameterize_model(model)
    assert fixed.pretrained_cfg == model.pretrained_cfg
    assert timm.data.resolve_data_config(model=fixed) == timm.data.resolve_data_config(model=model)
    with torch.no_grad():
        assert (fixed.forward_features(x) - features).abs().max().item() <= 1e-5
        assert (fixed.forward_head(fixed.forward_features(x), pre_logits=True) - pre_logits).abs().max() <= 1e-5
    assert model.stem.conv.is_reparameterized is False  # reparameterize_model works on a copy by default


@pytest.mark.parametrize('name,kwargs,first_conv', [
    ('flexnet8', dict(img_size=16), 'stem.conv'),
    ('flextcn2', dict(seq_len=30, in_chans=1), 'blocks.0.conv1'),
])
def test_deploy_reparameterize_points_first_conv_at_the_fixed_conv(one_thread, name, kwargs, first_conv):
    """The cfg's first_conv names a kernel net output, which reparameterization removes: it then names the conv."""
    model = timm.create_model(name, **kwargs).eval()
    assert model.pretrained_cfg['first_conv'] == f'{first_conv}.kernel_net.output'
    fixed = deploy.reparameterize(model)
    assert fixed.pretrained_cfg['first_conv'] == fixed.default_cfg['first_conv'] == first_conv
    assert fixed.get_submodule(first_conv).is_reparameterized
    assert model.pretrained_cfg['first_conv'] == f'{first_conv}.kernel_net.output'  # the original is untouched


@pytest.mark.parametrize('name,shape', [('flexnet8', (2, 3, 16, 16)), ('flextcn2', (2, 1, 1, 30))])
def test_reparameterized_features_only(one_thread, name, shape):
    kwargs = dict(img_size=16) if name.startswith('flexnet') else dict(seq_len=30, in_chans=1)
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, (FlexConv1d, FlexConv2d))):
            layer.mask.sigma.fill_(0.2)  # wider than init, so the FFT dispatch is exercised too
    x = torch.randn(shape)
    expected = _outputs(model, x)
    fixed = reparameterize_model(model)
    got = _outputs(fixed, x)
    assert len(got) == len(expected) == len(model.feature_info)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_reparameterized_model_saves_and_loads(one_thread, tmp_path):
    fixed = reparameterize_model(_pretrained('flexnet16.cifar10'))
    x = torch.randn(2, 3, 32, 32)
    expected = _outputs(fixed, x)
    # state dict (safetensors): a fresh model reparameterized at its init crops takes the learned kernel sizes
    save_file(fixed.state_dict(), tmp_path / 'fixed.safetensors')
    fresh = reparameterize_model(timm.create_model('flexnet16').eval())
    assert fresh.kernel_sizes() != fixed.kernel_sizes()
    fresh.load_state_dict(load_file(tmp_path / 'fixed.safetensors'))
    assert fresh.kernel_sizes() == fixed.kernel_sizes()
    assert torch.equal(_outputs(fresh, x), expected)
    # a reparameterized state dict does not load into a FlexConv model: the kernel nets are missing
    with pytest.raises(RuntimeError, match='kernel_net'):
        timm.create_model('flexnet16').load_state_dict(load_file(tmp_path / 'fixed.safetensors'))
    # the whole module (torch.save / torch.load)
    torch.save(fixed, tmp_path / 'fixed.pt')
    loaded = torch.load(tmp_path / 'fixed.pt', weights_only=False)
    assert torch.equal(_outputs(loaded, x), expected)


def test_reparameterized_layer_refuses_what_needs_a_kernel_net():
    conv = FlexConv2d(3, 4, kernel_size=33).eval()
    conv.reparameterize()
    conv.reparameterize()  # idempotent, as timm may walk a model twice
    assert conv.is_reparameterized and conv.cropped_kernel_size == (5, 5)  # the init crop of a 33-point grid
    with pytest.raises(ValueError, match='before reparameterize'):
        conv.set_input_size(32)
    with pytest.raises(ValueError, match='reparameterized'):
        conv.frequency_penalty()
    follow = FlexConv2d(3, 4, kernel_size=17, follow_input_size=True)
    with pytest.raises(ValueError, match='follow_input_size'):
        follow.reparameterize()
    model = reparameterize_model(timm.create_model('flexnet8', img_size=16))
    with pytest.raises(ValueError, match='before reparameterize'):
        model.set_input_size(img_size=32)


def test_reparameterized_layer_trains_as_a_plain_conv():
    conv = FlexConv1d(2, 3, kernel_size=20)
    conv.reparameterize()
    x = torch.randn(4, 2, 20)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert [n for n, _ in conv.named_parameters()] == ['bias', 'weight']


@pytest.mark.parametrize('tag,shapes', [
    ('flexnet16.cifar10', [(2, 3, 32, 32)]),
    ('flextcn6.mnist1d', [(2, 1, 40)]),
])
def test_torch_export_and_torchscript_trace(one_thread, tag, shapes):
    fixed = reparameterize_model(_pretrained(tag))
    x = torch.randn(shapes[0])
    expected = _outputs(fixed, x)
    exported = torch.export.export(fixed, (x,))
    assert (exported.module()(x) - expected).abs().max().item() <= 1e-4
    traced = torch.jit.trace(fixed, (x,))
    assert (traced(x) - expected).abs().max().item() <= 1e-4
    other = torch.randn(1, *shapes[0][1:-1], shapes[0][-1] * 3 // 4)  # traced convs accept other sizes
    assert (traced(other) - _outputs(fixed, other)).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('tag,size,check_sizes', [
    ('flexnet16.cifar10', None, (24,)),
    ('flexnet16.cifar10_16px_alias_free', 32, (48,)),  # resampled 16 -> 32 px, then exported
    ('flextcn6.mnist1d', None, (64,)),
])
def test_onnx_export_matches_pytorch(one_thread, tmp_path, tag, size, check_sizes):
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    model = _pretrained(tag)
    deploy.set_resolution(model, size)
    path = deploy.export_onnx(model, tmp_path / 'model.onnx')
    shapes = [deploy.input_shape(model, 2)] + [deploy.input_shape(model, 3, s) for s in check_sizes]
    if size is not None:
        assert shapes[0][-1] == size
    rows = deploy.onnx_max_diff(path, model, shapes)  # against the original model, not the reparameterized one
    assert [r['shape'] for r in rows] == shapes
    for r in rows:
        assert r['max_abs_diff'] <= 1e-4, r
        assert r['max_abs_output'] > 0.1  # real logits, not an all-zero comparison


@pytest.mark.parametrize('x_shape,w_shape,causal', [
    ((2, 3, 32, 32), (4, 3, 33, 33), False),  # "same", kernel as large as the grid
    ((2, 3, 20, 24), (4, 3, 9, 7), False),  # non-square input and kernel
    ((1, 2, 6, 5), (3, 2, 17, 17), False),  # kernel larger than the input
    ((2, 3, 50), (4, 3, 50), True),  # causal, kernel = sequence
    ((2, 3, 40), (4, 3, 9), False),
])
def test_dft_matmul_conv_equals_direct_conv(x_shape, w_shape, causal):
    x, w, b = torch.randn(x_shape), torch.randn(w_shape), torch.randn(w_shape[0])
    expected = conv_direct(x, w, b, causal=causal)
    got = conv_dft_matmul(x, w, b, causal=causal)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_dft_matmul_conv_is_exact_past_float32_integers():
    """The DFT phases f * t mod N are integers: taken in float32 they were wrong once f * t passed 2^24 (a
    5000-step causal input with a 1000-tap kernel lost 2e-4 relative); in int64 the error is the direct conv's."""
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 5000), torch.randn(1, 1, 1000) / 1000
    reference = F.conv1d(F.pad(x.double(), (999, 0)), w.double())
    got = conv_dft_matmul(x, w, causal=True).double()
    assert ((got - reference).norm() / reference.norm()).item() < 5e-6


@pytest.mark.slow
def test_onnx_export_with_dft_matmuls(one_thread, tmp_path):
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    model = timm.create_model('flexnet8', widths=(8,), kernel_hidden=8, img_size=16).eval()
    model.set_mask_width(0.3)  # 11x11 kernels on the 17-point grid: over the FFT threshold
    model.stem.conv.mask.sigma.data.fill_(0.05)  # one small kernel stays a Conv op
    path = deploy.export_onnx(model, tmp_path / 'dft.onnx', fft=True)
    import onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert 'Conv' in ops and 'MatMul' in ops and 'Cos' in ops  # both kinds of layer are in the graph
    rows = deploy.onnx_max_diff(path, model, [(2, 3, 16, 16), (1, 3, 24, 20)])
    for r in rows:
        assert r['max_abs_diff'] <= 1e-4 * max(1.0, r['max_abs_output']), r
    with pytest.raises(ValueError, match='dynamic'):
        deploy.export_onnx(model, tmp_path / 'x.onnx', fft=True, dynamic=False)


@pytest.mark.slow
def test_export_onnx_script(tmp_path):
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'tcn.onnx'
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    cmd = [sys.executable, 'scripts/export_onnx.py', str(ROOT / 'hub_configs' / 'flextcn2.mnist1d'), '-o', str(out),
           '--check-sizes', '64']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 10_000
    table = [line for line in proc.stdout.splitlines() if line.startswith('| (')]
    assert [line.split('|')[1].strip() for line in table] == ['(2, 1, 40)', '(2, 1, 64)']
    assert all(float(line.split('|')[2]) <= 1e-4 for line in table)
    bad = subprocess.run([sys.executable, 'scripts/export_onnx.py', str(tmp_path / 'missing.safetensors')],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith('error:') and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_benchmark_deploy_section(tmp_path):
    """scripts/benchmark.py --sections deploy: complete rows, reparameterized and onnxruntime outputs agree (no
    timing is asserted)."""
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, 'scripts/benchmark.py', '--threads', '1', '--models', 'flexnet8,flextcn2', '--batch-size',
           '2', '--img-size', '8', '--seq-len', '32', '--rounds', '1', '--sections', 'deploy', '--json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '## Deployment' in proc.stdout
    rows = json.loads(out.read_text())['deploy']
    assert [(r['model'], r['regime']) for r in rows] == [
        (m, g) for m in ('flexnet8', 'flextcn2') for g in ('initial', 'trained')]
    for r in rows:
        assert r['reparam_rel_diff'] <= 1e-6 and r['ort_rel_diff'] <= 1e-5, r
        for key in ('reparam_vs_cached', 'reparam_vs_resnet44', 'ort_vs_reparam', 'resnet44_ort_vs_torch'):
            assert 0 < r[key] < float('inf'), (key, r)
