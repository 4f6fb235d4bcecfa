#!/usr/bin/env python
"""Speed and memory of FlexNet / FlexTCN, always as ratios against baselines measured in the same run.

    python scripts/benchmark.py                       # CPU, batch 64, 32 px, all models, ~3-5 min on 2 cores
    python scripts/benchmark.py --quick               # flexnet16 only, ~1 min
    python scripts/benchmark.py --device cuda --amp   # GPU, bf16 autocast
    python scripts/benchmark.py --threads 1 --sections memory --json mem.json   # the memory section alone

Sections (each row: FlexConv time / baseline time, both timed in this process, interleaved round by round):
  models    train step (forward + backward + Adam) and eval forward vs a CIFAR ResNet-44 (0.66M params) and vs
            the same network with fixed kernels of the cropped sizes; initial mask widths and trained widths
            (``set_mask_width``: 0.5 -> 33x33 for FlexNet, 1.0 -> the whole sequence for FlexTCN).
  memory    peak memory of a training step above the resting state (CUDA: max_memory_allocated; CPU: RSS of a
            fresh subprocess sampled every 0.5 ms over the first two steps) vs ResNet-44, without and with
            ``model.set_grad_checkpointing(True)`` (timm's checkpoint_seq over the blocks; ``--no-grad-ckpt``
            drops those rows), plus the training step time of the same configurations vs ResNet-44, timed
            interleaved in this process.
  layers    one FlexConv2d (kernel net + mask + conv) vs nn.Conv2d at the same kernel size, training step.
  dispatch  the automatic FFT/direct choice vs the faster of the two measured here, 2-D kernels 3..33 and
            1-D causal kernels as long as the sequence.
  deploy    (not in the default set) eval forward of the reparameterized model (``timm.utils.reparameterize_model``:
            fixed kernels, no kernel nets) vs the same model with its kernel cache and vs ResNet-44, and the
            reparameterized model in onnxruntime (``torch.onnx.export``, ``pip install ".[onnx]"``) vs in PyTorch,
            ResNet-44 likewise; initial and trained widths, with the max |difference| of each pair of outputs
            relative to the largest output.
  channels_last  (not in the default set) the image models of --models and ResNet-44, each in NCHW and in
            channels_last, all four timed interleaved in this process: train step and eval forward, each model's
            channels_last / NCHW time and its ratio to ResNet-44 in the same layout.

``--channels-last`` runs every image network of the other sections in ``torch.channels_last`` (module and input,
as timm's train.py does): the FlexNets, ResNet-44, the fixed-kernel copies and nn.Conv2d (layers, and the 2-D
dispatch inputs), so every ratio stays like-for-like. FlexTCN (3-D sequence tensors) has no channels_last layout
and runs as before. Recorded as ``env.channels_last`` in the JSON.

Timing: each round times the baseline and the candidate back to back; a row reports the median over rounds
of the per-round ratio and the minimum time of each side (the least disturbed by other processes).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import timm  # noqa: E402
import flexconv_zoo  # noqa: E402,F401  (registers the models)
from flexconv_zoo.baselines import cifar_resnet44  # noqa: E402
from flexconv_zoo.layers import FlexConvNd, fftconv  # noqa: E402
from flexconv_zoo.layers.fftconv import conv_direct, conv_fft, conv_nd, select_conv_method  # noqa: E402

IMAGE_MODELS = ('flexnet8', 'flexnet12', 'flexnet16')
SEQ_MODELS = ('flextcn2', 'flextcn4', 'flextcn6')
TRAINED_SIGMA = {'flexnet': 0.5, 'flextcn': 1.0}


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def compare(fns: Dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 1) -> Dict:
    """Time every callable once per round, interleaved; return min times and per-round ratios to the first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    base = next(iter(fns))
    out = {}
    for k, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[base])]
        out[k] = dict(min_s=min(ts), median_s=statistics.median(ts), ratio=statistics.median(ratios), times=ts)
    return out


def round_ratio(res: Dict, num: str, den: str) -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round (both from one compare call)."""
    return statistics.median(a / b for a, b in zip(res[num]['times'], res[den]['times']))


class FixedKernelConv(nn.Module):
    """A FlexConv frozen into an ordinary convolution: its current cropped kernel as a plain parameter."""

    def __init__(self, layer: FlexConvNd):
        super().__init__()
        with torch.no_grad():
            self.weight = nn.Parameter(layer.compute_kernel(crop_mode='exact').clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.causal = layer.causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_nd(x, self.weight, self.bias, causal=self.causal, method='auto')


def freeze_kernels(model: nn.Module) -> nn.Module:
    """The same network with every FlexConv replaced by a fixed-kernel convolution of its cropped size."""
    for name, child in list(model.named_children()):
        if isinstance(child, FlexConvNd):
            setattr(model, name, FixedKernelConv(child))
        else:
            freeze_kernels(child)
    return model


def _layout(x: torch.Tensor, args) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if args.channels_last else x


def make_input(name: str, args, device) -> torch.Tensor:
    if name.startswith('flextcn'):
        return torch.randn(args.batch_size, 1, args.seq_len, device=device)
    return _layout(torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device), args)


def build(name: str, args, device, sigma: Optional[float], grad_ckpt: bool = False) -> nn.Module:
    if name == 'resnet44':
        model = cifar_resnet44(num_classes=10)
    elif name.startswith('flextcn'):
        model = timm.create_model(name, num_classes=10, in_chans=1, seq_len=args.seq_len)
    else:
        model = timm.create_model(name, num_classes=10, img_size=args.img_size)
    if sigma is not None:
        model.set_mask_width(sigma)
    if grad_ckpt:
        model.set_grad_checkpointing(True)
    model = model.to(device)
    if args.channels_last and not name.startswith('flextcn'):
        model = model.to(memory_format=torch.channels_last)
    return model


def train_step_fn(model: nn.Module, x: torch.Tensor, args) -> Callable[[], None]:
    model.train()
    target = torch.randint(0, 10, (x.shape[0],), device=x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # small steps: the mask widths stay in their regime
    fwd = torch.compile(model) if args.compile else model
    amp_dtype = torch.bfloat16

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=args.amp):
            loss = F.cross_entropy(fwd(x).float(), target)
        loss.backward()
        opt.step()
    return step


def eval_fn(model: nn.Module, x: torch.Tensor, args) -> Callable[[], None]:
    model.eval()
    fwd = torch.compile(model) if args.compile else model

    def run():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            fwd(x)
    return run


# ---------------------------------------------------------------------------------------------- sections
def bench_models(args, device) -> List[Dict]:
    rows = []
    x_img = make_input('flexnet', args, device)
    base = build('resnet44', args, device, None)
    base_train, base_eval = train_step_fn(base, x_img, args), eval_fn(base, x_img, args)
    for name in args.models:
        family = 'flextcn' if name.startswith('flextcn') else 'flexnet'
        for regime, sigma in (('initial', None), ('trained', TRAINED_SIGMA[family])):
            x = make_input(name, args, device)
            model = build(name, args, device, sigma)
            sizes = sorted({tuple(s) for s in model.kernel_sizes()})
            fixed = freeze_kernels(build(name, args, device, sigma))
            t0 = time.perf_counter()
            train = compare({'resnet44': base_train, name: train_step_fn(model, x, args)}, device, args.rounds)
            ev = compare({'resnet44': base_eval, name: eval_fn(model, x, args),
                          'fixed': eval_fn(fixed, x, args)}, device, args.rounds + 2)
            # Uncached eval: the kernel nets run on every forward (what the original code always did).
            uncached = compare({'cached': eval_fn(model, x, args), 'uncached': _uncached_eval(model, x, args)},
                               device, args.rounds)
            row = dict(
                model=name, regime=regime, kernel_sizes=[list(s) for s in sizes],
                params=sum(p.numel() for p in model.parameters()),
                train_s=train[name]['min_s'], resnet44_train_s=train['resnet44']['min_s'],
                train_vs_resnet44=train[name]['ratio'],
                images_per_s=x.shape[0] / train[name]['min_s'],
                resnet44_images_per_s=x.shape[0] / train['resnet44']['min_s'],
                eval_s=ev[name]['min_s'], eval_vs_resnet44=ev[name]['ratio'],
                eval_vs_fixed=ev[name]['ratio'] / ev['fixed']['ratio'],
                eval_uncached_vs_cached=uncached['uncached']['ratio'],
                wall_s=time.perf_counter() - t0,
            )
            print(f"  {name:10s} {regime:8s} kernels {_fmt_sizes(sizes):18s} train {row['train_s']:.3f}s "
                  f"= {row['train_vs_resnet44']:.2f}x ResNet-44 | eval "
                  f"{row['eval_vs_resnet44']:.2f}x ResNet-44, {row['eval_vs_fixed']:.2f}x fixed", flush=True)
            rows.append(row)
            del model, fixed
    return rows


def _uncached_eval(model: nn.Module, x: torch.Tensor, args) -> Callable[[], None]:
    def run():
        model.eval()
        for layer in model.modules():
            if isinstance(layer, FlexConvNd):
                layer.clear_kernel_cache()
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            model(x)
    return run


def _fmt_sizes(sizes) -> str:
    ks = sorted({s[0] for s in sizes})
    return f"{ks[0]}..{ks[-1]}" if len(ks) > 1 else str(ks[0])


_MEMORY_CHILD = '--memory-child'


def peak_memory(name: str, sigma: Optional[float], args, device, grad_ckpt: bool = False) -> float:
    """Peak memory (MiB) above the model at rest during its first two training steps."""
    if device.type == 'cuda':
        x = make_input(name, args, device)
        model = build(name, args, device, sigma, grad_ckpt)
        step = train_step_fn(model, x, args)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    # CPU: the RSS high-water mark is per process, so measure each model in a fresh one.
    cmd = [sys.executable, os.path.abspath(__file__), _MEMORY_CHILD, name, str(sigma), str(int(grad_ckpt)),
           '--batch-size', str(args.batch_size), '--img-size', str(args.img_size), '--seq-len', str(args.seq_len),
           '--threads', str(args.threads)]
    cmd += ['--amp'] if args.amp else []
    cmd += ['--channels-last'] if args.channels_last else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(out)


def _memory_child(argv: List[str]) -> None:
    name, sigma, grad_ckpt = argv[0], None if argv[1] == 'None' else float(argv[1]), argv[2] == '1'
    args = parse_args(argv[3:])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cpu')
    x = make_input(name, args, device)
    model = build(name, args, device, sigma, grad_ckpt)
    step = train_step_fn(model, x, args)
    # Measured from the model at rest: freed memory stays in the process, so a warm-up step would hide the
    # peak. No autotuning here (its timing runs would count): the fixed table decides, as under compile.
    fftconv.set_autotune(False)
    with torch.no_grad():
        model.eval()
        model(x[:2])
    model.train()
    import threading
    peak, done = [_rss_mib()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0005)
    gc_collect()
    before = _rss_mib()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    step()
    step()
    done.set()
    thread.join()
    print(max(0.0, peak[0] - before))


def gc_collect() -> None:
    import gc
    gc.collect()


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def bench_memory(args, device) -> List[Dict]:
    """Peak training memory vs ResNet-44, without and with gradient checkpointing, and the step time it costs.

    Memory: one fresh measurement per configuration (a subprocess on CPU). Time: ResNet-44, the plain model and
    the checkpointed one, interleaved round by round in this process (same protocol as the models section).
    """
    rows = []
    base = peak_memory('resnet44', None, args, device)
    x_img = make_input('flexnet', args, device)
    base_train = train_step_fn(build('resnet44', args, device, None), x_img, args)
    for name in args.memory_models:
        family = 'flextcn' if name.startswith('flextcn') else 'flexnet'
        ckpts = (False, True) if args.grad_ckpt else (False,)
        for regime, sigma in (('initial', None), ('trained', TRAINED_SIGMA[family])):
            x = make_input(name, args, device)
            steps = {'resnet44': base_train}
            for ckpt in ckpts:
                steps[ckpt] = train_step_fn(build(name, args, device, sigma, ckpt), x, args)
            times = compare(steps, device, args.rounds)
            del steps
            for ckpt in ckpts:
                mib = peak_memory(name, sigma, args, device, ckpt)
                row = dict(model=name, regime=regime, grad_checkpointing=ckpt, peak_mib=mib, resnet44_peak_mib=base,
                           vs_resnet44=mib / base, train_s=times[ckpt]['min_s'],
                           resnet44_train_s=times['resnet44']['min_s'], train_vs_resnet44=times[ckpt]['ratio'])
                if ckpt:
                    plain = rows[-1]
                    row.update(peak_vs_plain=mib / plain['peak_mib'],
                               train_vs_plain=times[ckpt]['ratio'] / times[False]['ratio'])
                rows.append(row)
                print(f"  {name:10s} {regime:8s} {'grad ckpt' if ckpt else 'plain':9s} peak {mib:8.1f} MiB = "
                      f"{mib / base:.2f}x ResNet-44 ({base:.1f} MiB) | train {row['train_s']:.3f}s = "
                      f"{row['train_vs_resnet44']:.2f}x ResNet-44 ({row['resnet44_train_s']:.3f}s)", flush=True)
    return rows


def bench_deploy(args, device) -> List[Dict]:
    """Reparameterized eval vs the cached-kernel model and ResNet-44; onnxruntime vs PyTorch (CPU only)."""
    import copy
    import tempfile
    from timm.utils import reparameterize_model
    from flexconv_zoo.deploy import export_onnx, onnx_session
    try:
        import onnxscript  # noqa: F401
        import onnxruntime  # noqa: F401
        has_ort = device.type == 'cpu'
    except ImportError:
        has_ort = False
        print("  onnxruntime / onnxscript not installed (pip install '.[onnx]'): no onnxruntime columns", flush=True)
    threads = torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory()
    rows = []
    x_img = make_input('flexnet', args, device)
    base = build('resnet44', args, device, None).eval()
    base_ort = None
    if has_ort:
        torch.onnx.export(base.cpu(), (x_img.cpu(),), f'{tmp.name}/resnet44.onnx', dynamo=True, verbose=False)
        base_ort = onnx_session(f'{tmp.name}/resnet44.onnx', threads)
    for name in args.models:
        family = 'flextcn' if name.startswith('flextcn') else 'flexnet'
        for regime, sigma in (('initial', None), ('trained', TRAINED_SIGMA[family])):
            x = make_input(name, args, device)
            model = build(name, args, device, sigma).eval()
            fixed = reparameterize_model(model)  # a copy
            sizes = sorted({tuple(s) for s in fixed.kernel_sizes()})
            fns = {'resnet44': eval_fn(base, x_img, args), 'cached': eval_fn(model, x, args),
                   'reparam': eval_fn(fixed, x, args)}
            with torch.inference_mode():
                y_cached, y_fixed = model(x).float(), fixed(x).float()
            row = dict(model=name, regime=regime, kernel_sizes=[list(s) for s in sizes],
                       # relative to the output's scale: untrained nets at trained widths reach logits of 1e6+
                       reparam_rel_diff=((y_fixed - y_cached).abs().max() / y_cached.abs().max()).item())
            if has_ort:
                path = export_onnx(copy.deepcopy(fixed).cpu(), f'{tmp.name}/{name}_{regime}.onnx',
                                   batch_size=x.shape[0], dynamic=False)
                sess, x_np = onnx_session(path, threads), x.cpu().numpy()
                base_np = x_img.cpu().numpy()
                fns['ort'] = lambda: sess.run(None, {sess.get_inputs()[0].name: x_np})
                fns['resnet44_ort'] = lambda: base_ort.run(None, {base_ort.get_inputs()[0].name: base_np})
                y_ort = torch.from_numpy(fns['ort']()[0])
                row['ort_rel_diff'] = ((y_ort - y_fixed.cpu()).abs().max() / y_fixed.abs().max()).item()
            t0 = time.perf_counter()
            res = compare(fns, device, args.rounds + 2)
            row.update(
                reparam_s=res['reparam']['min_s'], cached_s=res['cached']['min_s'],
                resnet44_s=res['resnet44']['min_s'],
                reparam_vs_cached=round_ratio(res, 'reparam', 'cached'),
                reparam_vs_resnet44=round_ratio(res, 'reparam', 'resnet44'),
            )
            if has_ort:
                row.update(ort_s=res['ort']['min_s'], ort_vs_reparam=round_ratio(res, 'ort', 'reparam'),
                           resnet44_ort_s=res['resnet44_ort']['min_s'],
                           resnet44_ort_vs_torch=round_ratio(res, 'resnet44_ort', 'resnet44'))
            row['wall_s'] = time.perf_counter() - t0
            print(f"  {name:10s} {regime:8s} kernels {_fmt_sizes(sizes):18s} reparam {row['reparam_s']:.3f}s = "
                  f"{row['reparam_vs_cached']:.2f}x cached, {row['reparam_vs_resnet44']:.2f}x ResNet-44"
                  + (f" | onnxruntime {row['ort_vs_reparam']:.2f}x PyTorch" if has_ort else ''), flush=True)
            rows.append(row)
            del model, fixed
    tmp.cleanup()
    return rows


def bench_channels_last(args, device) -> List[Dict]:
    """Image models and ResNet-44 in NCHW and in channels_last, the four timed interleaved round by round."""
    rows = []
    layouts = {False: argparse.Namespace(**dict(vars(args), channels_last=False)),
               True: argparse.Namespace(**dict(vars(args), channels_last=True))}
    names = [n for n in args.models if not n.startswith('flextcn')]
    torch.manual_seed(0)
    x0 = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    for name in names:
        for regime, sigma in (('initial', None), ('trained', TRAINED_SIGMA['flexnet'])):
            nets, inputs = {}, {}
            for cl, a in layouts.items():
                sfx = '_cl' if cl else ''
                inputs[sfx] = _layout(x0.clone(), a)
                torch.manual_seed(0)
                nets['resnet44' + sfx] = build('resnet44', a, device, None)
                torch.manual_seed(0)
                nets[name + sfx] = build(name, a, device, sigma)
            sizes = sorted({tuple(s) for s in nets[name].kernel_sizes()})
            t0 = time.perf_counter()
            res = {}
            for what, make in (('train', train_step_fn), ('eval', eval_fn)):
                fns = {k: make(m, inputs['_cl' if k.endswith('_cl') else ''], args) for k, m in nets.items()}
                res[what] = compare(fns, device, args.rounds if what == 'train' else args.rounds + 2)
            row = dict(model=name, regime=regime, kernel_sizes=[list(s) for s in sizes], wall_s=0.0)
            for what, r in res.items():
                row.update({
                    f'{what}_nchw_s': r[name]['min_s'], f'{what}_cl_s': r[name + '_cl']['min_s'],
                    f'resnet44_{what}_nchw_s': r['resnet44']['min_s'], f'resnet44_{what}_cl_s': r['resnet44_cl']['min_s'],
                    f'{what}_vs_resnet44_nchw': round_ratio(r, name, 'resnet44'),
                    f'{what}_vs_resnet44_cl': round_ratio(r, name + '_cl', 'resnet44_cl'),
                    f'{what}_cl_vs_nchw': round_ratio(r, name + '_cl', name),
                    f'resnet44_{what}_cl_vs_nchw': round_ratio(r, 'resnet44_cl', 'resnet44'),
                })
            row['wall_s'] = time.perf_counter() - t0
            print(f"  {name:10s} {regime:8s} kernels {_fmt_sizes(sizes):8s} train NCHW {row['train_nchw_s']:.3f}s "
                  f"({row['train_vs_resnet44_nchw']:.2f}x ResNet-44) | channels_last {row['train_cl_s']:.3f}s "
                  f"({row['train_vs_resnet44_cl']:.2f}x ResNet-44 channels_last) | cl/NCHW {row['train_cl_vs_nchw']:.2f}x,"
                  f" ResNet-44 cl/NCHW {row['resnet44_train_cl_vs_nchw']:.2f}x", flush=True)
            rows.append(row)
            del nets
    return rows


def bench_layers(args, device) -> List[Dict]:
    rows = []
    ch = 48
    x = torch.randn(args.dispatch_batch, ch, args.img_size, args.img_size, device=device)
    x = _layout(x, args).requires_grad_(True)
    for sigma, label in ((None, 'initial'), (0.5, 'trained')):
        flex = flexconv_zoo.FlexConv2d(ch, ch, kernel_size=2 * (args.img_size // 2) + 1).to(device)
        if sigma is not None:
            with torch.no_grad():
                flex.mask.sigma.fill_(sigma)
        k = flex.cropped_kernel_size[0]
        conv = nn.Conv2d(ch, ch, k, padding=k // 2).to(device)
        if args.channels_last:
            flex, conv = flex.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)

        def step(m):
            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                    y = m(x)
                torch.autograd.grad(y.float().sum(), [x, *m.parameters()])
            return run
        res = compare({'FlexConv2d': step(flex)}, device, args.rounds)
        with torch.no_grad():
            conv(x)
            t_fwd = timed(lambda: conv(x), device)
        lower_bound = t_fwd > 3 * res['FlexConv2d']['min_s']
        if lower_bound:  # oneDNN's 33x33 backward takes many seconds; its forward alone already loses
            t_conv = t_fwd
        else:
            t_conv = compare({'nn.Conv2d': step(conv)}, device, args.rounds)['nn.Conv2d']['min_s']
        res['nn.Conv2d'] = dict(min_s=t_conv)
        res['FlexConv2d']['ratio'] = res['FlexConv2d']['min_s'] / t_conv
        row = dict(layer=f'{ch}->{ch}, {k}x{k}', regime=label, batch=x.shape[0], conv2d_is_forward_only_lower_bound=lower_bound,
                   conv2d_s=res['nn.Conv2d']['min_s'],
                   flexconv_s=res['FlexConv2d']['min_s'], ratio=res['FlexConv2d']['ratio'])
        print(f"  FlexConv2d {row['layer']:14s} train step {row['flexconv_s'] * 1e3:8.1f} ms = "
              f"{row['ratio']:.2f}x nn.Conv2d ({'>= ' if lower_bound else ''}{row['conv2d_s'] * 1e3:.1f} ms)", flush=True)
        rows.append(row)
    return rows


def bench_dispatch(args, device) -> List[Dict]:
    """auto's pick vs the faster path, training step (forward + backward) of one convolution."""
    rows = []
    cfgs = []
    b2 = args.dispatch_batch
    for k in args.dispatch_2d:
        cfgs.append(('2d', k, (b2, 48, args.img_size, args.img_size), (48, 48, k, k), False))
    for n in args.dispatch_1d:
        cfgs.append(('1d', n, (args.dispatch_batch_1d, 30, n), (30, 30, n), True))
    for kind, k, xs, ws, causal in cfgs:
        x = torch.randn(*xs, device=device)
        x = (_layout(x, args) if kind == '2d' else x).requires_grad_(True)
        w = torch.randn(*ws, device=device, requires_grad=True)
        fftconv.clear_autotune_cache()
        t0 = time.perf_counter()
        with torch.enable_grad():
            pick = select_conv_method(x, w, causal)
        tune_s = time.perf_counter() - t0

        def step(fn):
            return lambda: torch.autograd.grad(fn(x, w, None, causal).sum(), (x, w))
        fns = {'fft': step(conv_fft), 'direct': step(conv_direct)}
        # A direct conv whose forward alone is 3x slower than the FFT's training step cannot win: say so
        # instead of spending a minute on its backward.
        t_fft = compare({'fft': fns['fft']}, device, args.rounds)['fft']['min_s']
        with torch.no_grad():
            conv_direct(x, w, None, causal)  # warm-up
            t_dir_fwd = timed(lambda: conv_direct(x, w, None, causal), device)
        if t_dir_fwd > 3 * t_fft:
            t_direct, dominated = t_dir_fwd, True
        else:
            t_direct, dominated = compare({'direct': fns['direct']}, device, args.rounds)['direct']['min_s'], False
        times = {'fft': t_fft, 'direct': t_direct}
        best = min(times, key=times.get)
        ratio = 1.0 if pick == best else (times[pick] / times[best] if not (dominated and pick == 'direct') else
                                          float('inf'))
        rows.append(dict(kind=kind, kernel=k, input=list(xs), fft_s=t_fft, direct_s=t_direct,
                         direct_is_forward_only_lower_bound=dominated, auto=pick, fastest=best,
                         auto_vs_fastest=ratio, tune_s=tune_s))
        print(f"  {kind} k={k:<6d} fft {t_fft * 1e3:9.2f} ms  direct {'>=' if dominated else '  '}"
              f"{t_direct * 1e3:9.2f} ms  auto={pick:6s} -> {ratio:.2f}x the fastest (tuned in {tune_s:.2f}s)",
              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- main
def _print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n## {title}")
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for cells in rows:
        print('| ' + ' | '.join(cells) + ' |')


def _ms(seconds: float, digits: int = 0, lower_bound: bool = False) -> str:
    return f"{'>= ' if lower_bound else ''}{seconds * 1e3:.{digits}f} ms"


def _kernels(r: Dict) -> str:
    return _fmt_sizes([tuple(s) for s in r['kernel_sizes']])


def print_tables(result: Dict) -> None:
    if result.get('models'):
        _print_table('Models: training step (fwd+bwd+Adam) and eval forward, ratios in the same run',
                     ['model', 'regime', 'kernels', 'train step', 'vs ResNet-44', 'img/s', 'eval vs ResNet-44',
                      'eval cached vs fixed kernels', 'eval uncached / cached'],
                     [[r['model'], r['regime'], _kernels(r), _ms(r['train_s']), f"{r['train_vs_resnet44']:.2f}x",
                       f"{r['images_per_s']:.0f}", f"{r['eval_vs_resnet44']:.2f}x", f"{r['eval_vs_fixed']:.2f}x",
                       f"{r['eval_uncached_vs_cached']:.2f}x"] for r in result['models']])
        r = result['models'][0]
        print(f"ResNet-44 (0.66M params): train step {_ms(r['resnet44_train_s'])}, "
              f"{r['resnet44_images_per_s']:.0f} img/s")
    if result.get('memory'):
        _print_table('Peak training memory and train step, without / with grad checkpointing, vs ResNet-44 in the '
                     'same run', ['model', 'regime', 'peak MiB', 'peak vs ResNet-44', 'train step', 'step vs ResNet-44'],
                     [[r['model'] + (' + grad checkpointing' if r['grad_checkpointing'] else ''), r['regime'],
                       f"{r['peak_mib']:.0f}", f"{r['vs_resnet44']:.2f}x", _ms(r['train_s']),
                       f"{r['train_vs_resnet44']:.2f}x"] for r in result['memory']])
        r = result['memory'][0]
        print(f"ResNet-44: peak {r['resnet44_peak_mib']:.0f} MiB, train step {_ms(r['resnet44_train_s'])}")
    if result.get('channels_last'):
        _print_table('channels_last vs NCHW (model and input), all timed interleaved in one process',
                     ['model', 'regime', 'kernels', 'train NCHW', 'train channels_last', 'cl / NCHW',
                      'vs ResNet-44, NCHW', 'vs ResNet-44, both channels_last', 'eval cl / NCHW',
                      'eval vs ResNet-44, NCHW', 'eval vs ResNet-44, cl'],
                     [[r['model'], r['regime'], _kernels(r), _ms(r['train_nchw_s']), _ms(r['train_cl_s']),
                       f"{r['train_cl_vs_nchw']:.2f}x", f"{r['train_vs_resnet44_nchw']:.2f}x",
                       f"{r['train_vs_resnet44_cl']:.2f}x", f"{r['eval_cl_vs_nchw']:.2f}x",
                       f"{r['eval_vs_resnet44_nchw']:.2f}x", f"{r['eval_vs_resnet44_cl']:.2f}x"]
                      for r in result['channels_last']])
        for r in result['channels_last']:
            print(f"ResNet-44 ({r['regime']} rows): train NCHW {_ms(r['resnet44_train_nchw_s'])}, channels_last "
                  f"{_ms(r['resnet44_train_cl_s'])} ({r['resnet44_train_cl_vs_nchw']:.2f}x); eval cl / NCHW "
                  f"{r['resnet44_eval_cl_vs_nchw']:.2f}x")
    if result.get('deploy'):
        ort = any('ort_s' in r for r in result['deploy'])
        _print_table('Deployment: eval forward of the reparameterized model (fixed kernels) vs the model with its '
                     'kernel cache and vs ResNet-44; onnxruntime vs PyTorch on the same reparameterized model',
                     ['model', 'regime', 'kernels', 'reparam eval', 'vs cached', 'vs ResNet-44', 'rel. diff']
                     + (['onnxruntime', 'vs PyTorch', 'ort rel. diff', 'ResNet-44 ort vs PyTorch'] if ort else []),
                     [[r['model'], r['regime'], _kernels(r), _ms(r['reparam_s'], 1), f"{r['reparam_vs_cached']:.2f}x",
                       f"{r['reparam_vs_resnet44']:.2f}x", f"{r['reparam_rel_diff']:.1e}"]
                      + ([_ms(r['ort_s'], 1), f"{r['ort_vs_reparam']:.2f}x", f"{r['ort_rel_diff']:.1e}",
                          f"{r['resnet44_ort_vs_torch']:.2f}x"] if 'ort_s' in r else []) for r in result['deploy']])
        r = result['deploy'][0]
        print(f"ResNet-44 eval {_ms(r['resnet44_s'], 1)}" + (f", onnxruntime {_ms(r['resnet44_ort_s'], 1)}" if ort else ''))
    if result.get('layers'):
        _print_table(f"One layer, training step (batch {result['layers'][0]['batch']}): FlexConv2d vs nn.Conv2d "
                     "of the same kernel size ('>=': nn.Conv2d forward alone, a lower bound)",
                     ['layer', 'regime', 'nn.Conv2d', 'FlexConv2d', 'ratio'],
                     [[r['layer'], r['regime'], _ms(r['conv2d_s'], 1, r['conv2d_is_forward_only_lower_bound']),
                       _ms(r['flexconv_s'], 1), f"{r['ratio']:.2f}x"] for r in result['layers']])
    if result.get('dispatch'):
        _print_table('FFT/direct dispatch: auto vs the faster path (training step of one conv)',
                     ['kind', 'kernel', 'fft', 'direct', 'auto', 'auto / fastest'],
                     [[r['kind'], str(r['kernel']), _ms(r['fft_s'], 2),
                       _ms(r['direct_s'], 2, r['direct_is_forward_only_lower_bound']), r['auto'],
                       f"{r['auto_vs_fastest']:.2f}x"] for r in result['dispatch']])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--seq-len', type=int, default=1000, help='FlexTCN input length (kernel grid)')
    p.add_argument('--models', default=','.join(IMAGE_MODELS + SEQ_MODELS))
    p.add_argument('--memory-models', default='flexnet16', help="models for the memory section ('' for none)")
    p.add_argument('--no-grad-ckpt', dest='grad_ckpt', action='store_false',
                   help='memory section: skip the rows with model.set_grad_checkpointing(True)')
    p.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds per row')
    p.add_argument('--compile', action='store_true', help='torch.compile every model (baselines too)')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (FFTs stay float32)')
    p.add_argument('--channels-last', action='store_true',
                   help='image networks (FlexNets and every baseline) and their inputs in torch.channels_last')
    p.add_argument('--sections', default='models,memory,layers,dispatch',
                   help="comma-separated subset of models,memory,layers,dispatch (the default) and channels_last "
                        "(NCHW vs channels_last in one run) and deploy (reparameterized / onnxruntime eval), e.g. "
                        "'--sections memory' for the memory table alone")
    p.add_argument('--quick', action='store_true', help='flexnet16 only, fewer rounds and dispatch sizes (~1 min)')
    p.add_argument('--full', action='store_true', help='every dispatch size up to 16,000 steps, all rounds')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave the default)')
    p.add_argument('--json', default='benchmark.json', help='where to write the results')
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds = 'flexnet16', 2
    args.models = [m for m in args.models.split(',') if m]
    args.memory_models = [m for m in args.memory_models.split(',') if m]
    args.sections = set(args.sections.split(','))
    args.dispatch_batch = 64 if args.device.startswith('cuda') or args.full else 16
    args.dispatch_batch_1d = 16 if args.device.startswith('cuda') or args.full else 4
    if args.quick:
        args.dispatch_2d, args.dispatch_1d = [3, 9, 33], [64, 1000]
    elif args.full:
        args.dispatch_2d, args.dispatch_1d = list(range(3, 34, 2)), [64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000]
    else:
        args.dispatch_2d, args.dispatch_1d = [3, 5, 7, 9, 11, 13, 17, 21, 25, 33], [64, 256, 1000, 4000]
    return args


def main():
    if len(sys.argv) > 1 and sys.argv[1] == _MEMORY_CHILD:
        return _memory_child(sys.argv[2:])
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    env = dict(
        command=' '.join(['python', 'scripts/benchmark.py', *sys.argv[1:]]), torch=torch.__version__,
        timm=timm.__version__, device=torch.cuda.get_device_name(device) if device.type == 'cuda' else
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        batch_size=args.batch_size, img_size=args.img_size, seq_len=args.seq_len, amp=args.amp,
        compile=args.compile, channels_last=args.channels_last, autotune=fftconv.autotune_enabled(),
    )
    print(f"# {env['command']}\n# {env['device']}, torch {env['torch']}, batch {args.batch_size}", flush=True)
    result = dict(env=env)
    t0 = time.perf_counter()
    for section, fn in (('models', bench_models), ('memory', bench_memory), ('layers', bench_layers),
                        ('dispatch', bench_dispatch), ('channels_last', bench_channels_last),
                        ('deploy', bench_deploy)):
        if section in args.sections:
            print(f"[{section}]", flush=True)
            result[section] = fn(args, device)
    result['env']['wall_s'] = time.perf_counter() - t0
    result['autotune_choices'] = {str(k): v for k, v in fftconv.autotune_cache().items()}
    print_tables(result)
    print(f"\ntotal {result['env']['wall_s']:.0f} s; results in {args.json}")
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == '__main__':
    main()
