"""Speed and memory of FlexNet / FlexTCN as ratios against baselines measured in the same run
(``scripts/benchmark.py``); the timing helpers here also serve :mod:`flexconv_zoo.training_timing`.

Timing is ``torch.utils.benchmark.Timer`` (accelerator synchronisation, torch's thread count): :func:`compare`
times every callable once per round, interleaved, so a row's ratio is the median of per-round ratios of
measurements taken back to back (robust to other processes on a shared machine), and each side's minimum over
rounds is reported as its time. Each round is one ``blocked_autorange``: its block-size estimate is the warm-up.

The "fixed kernels" baseline is the same network reparameterized (:func:`flexconv_zoo.deploy.reparameterize`,
``timm.utils.reparameterize_model``): every FlexConv a plain convolution of its cropped kernel.
"""
import argparse
import copy
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.benchmark import Timer

__all__ = [
    'IMAGE_MODELS', 'SEQ_MODELS', 'SECTIONS', 'compare', 'time_call', 'make_timer', 'run_benchmark', 'print_table',
    'print_tables', 'write_json',
]

IMAGE_MODELS = ('flexnet8', 'flexnet12', 'flexnet16')
SEQ_MODELS = ('flextcn2', 'flextcn4', 'flextcn6')
TRAINED_SIGMA = {'flexnet': 0.5, 'flextcn': 1.0}


# ---------------------------------------------------------------------------------------------- timing
def make_timer(fn: Callable[[], Any]) -> Timer:
    # torch's Timer runs with one thread unless told otherwise: keep the thread count the benchmark set.
    return Timer(stmt='fn()', globals={'fn': fn}, num_threads=torch.get_num_threads())


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn`` after one warm-up call (for single slow calls, e.g. lower bounds)."""
    return make_timer(fn).blocked_autorange(min_run_time=0.0).median


def compare(fns: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, Dict[str, Any]]:
    """Time every callable once per round, interleaved; min / median time and median per-round ratio to the first."""
    timers = {k: make_timer(fn) for k, fn in fns.items()}
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, timer in timers.items():
            times[k].append(timer.blocked_autorange(min_run_time=0.0).median)
    base = times[next(iter(fns))]
    return {k: dict(min_s=min(ts), median_s=statistics.median(ts), ratio=_median_ratio(ts, base), times=ts)
            for k, ts in times.items()}


def _median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def round_ratio(res: Dict, num: str, den: str) -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round (both from one :func:`compare`)."""
    return _median_ratio(res[num]['times'], res[den]['times'])


# ---------------------------------------------------------------------------------------------- networks
def _family(name: str) -> str:
    return 'flextcn' if name.startswith('flextcn') else 'flexnet'


def _regimes(name: str) -> Tuple[Tuple[str, Optional[float]], ...]:
    """Initial mask widths and trained ones (0.5 -> 33x33 kernels for FlexNet, 1.0 -> the whole sequence)."""
    return ('initial', None), ('trained', TRAINED_SIGMA[_family(name)])


def _layout(x: torch.Tensor, args) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if args.channels_last else x


def make_input(name: str, args, device) -> torch.Tensor:
    if _family(name) == 'flextcn':
        return torch.randn(args.batch_size, 1, args.seq_len, device=device)
    return _layout(torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device), args)


def build(name: str, args, device, sigma: Optional[float], grad_ckpt: bool = False, reparam: bool = False
          ) -> nn.Module:
    """``name`` (a FlexConv model or 'resnet44') at the benchmark's size; ``reparam``: fixed kernels."""
    import timm
    from .baselines import cifar_resnet44
    from .deploy import reparameterize
    if name == 'resnet44':
        model = cifar_resnet44(num_classes=10)
    elif _family(name) == 'flextcn':
        model = timm.create_model(name, num_classes=10, in_chans=1, seq_len=args.seq_len)
    else:
        model = timm.create_model(name, num_classes=10, img_size=args.img_size)
    if sigma is not None:
        model.set_mask_width(sigma)
    if grad_ckpt:
        model.set_grad_checkpointing(True)
    if reparam:
        model = reparameterize(model, inplace=True)
    model = model.to(device)
    if args.channels_last and _family(name) != 'flextcn':
        model = model.to(memory_format=torch.channels_last)
    return model


def train_step_fn(model: nn.Module, x: torch.Tensor, args) -> Callable[[], None]:
    model.train()
    target = torch.randint(0, 10, (x.shape[0],), device=x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # small steps: the mask widths stay in their regime
    fwd = torch.compile(model) if args.compile else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(fwd(x).float(), target)
        loss.backward()
        opt.step()
    return step


def eval_fn(model: nn.Module, x: torch.Tensor, args, clear_cache: bool = False) -> Callable[[], None]:
    """Eval forward; ``clear_cache``: the kernel nets run on every call (what the original code always did)."""
    model.eval()
    fwd = torch.compile(model) if args.compile else model
    layers = list(model.flexconv_layers()) if clear_cache else []

    def run():
        for layer in layers:
            layer.clear_kernel_cache()
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            fwd(x)
    return run


def _kernel_sizes(model: nn.Module) -> List[List[int]]:
    return [list(s) for s in sorted({tuple(s) for s in model.kernel_sizes()})]


def _fmt_sizes(sizes) -> str:
    ks = sorted({s[0] for s in sizes})
    return f"{ks[0]}..{ks[-1]}" if len(ks) > 1 else str(ks[0])


# ---------------------------------------------------------------------------------------------- sections
def bench_models(args, device) -> List[Dict]:
    rows = []
    x_img = make_input('flexnet', args, device)
    base = build('resnet44', args, device, None)
    base_train, base_eval = train_step_fn(base, x_img, args), eval_fn(base, x_img, args)
    for name in args.models:
        for regime, sigma in _regimes(name):
            x = make_input(name, args, device)
            model = build(name, args, device, sigma)
            sizes = _kernel_sizes(model)
            fixed = build(name, args, device, sigma, reparam=True)
            t0 = time.perf_counter()
            train = compare({'resnet44': base_train, name: train_step_fn(model, x, args)}, args.rounds)
            ev = compare({'resnet44': base_eval, name: eval_fn(model, x, args), 'fixed': eval_fn(fixed, x, args)},
                         args.rounds + 2)
            uncached = compare({'cached': eval_fn(model, x, args), 'uncached': eval_fn(model, x, args, True)},
                               args.rounds)
            row = dict(
                model=name, regime=regime, kernel_sizes=sizes,
                params=sum(p.numel() for p in model.parameters()),
                train_s=train[name]['min_s'], resnet44_train_s=train['resnet44']['min_s'],
                train_vs_resnet44=train[name]['ratio'],
                images_per_s=x.shape[0] / train[name]['min_s'],
                resnet44_images_per_s=x.shape[0] / train['resnet44']['min_s'],
                eval_s=ev[name]['min_s'], eval_vs_resnet44=ev[name]['ratio'],
                eval_vs_fixed=round_ratio(ev, name, 'fixed'),
                eval_uncached_vs_cached=uncached['uncached']['ratio'],
                wall_s=time.perf_counter() - t0,
            )
            print(f"  {name:10s} {regime:8s} kernels {_fmt_sizes(sizes):18s} train {row['train_s']:.3f}s "
                  f"= {row['train_vs_resnet44']:.2f}x ResNet-44 | eval "
                  f"{row['eval_vs_resnet44']:.2f}x ResNet-44, {row['eval_vs_fixed']:.2f}x fixed", flush=True)
            rows.append(row)
            del model, fixed
    return rows


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _cpu_peak_memory(name: str, sigma: Optional[float], args, grad_ckpt: bool, recompute: bool) -> float:
    """Runs in a fresh process: RSS high-water mark above the model at rest, sampled every 0.5 ms."""
    from .layers import fftconv
    fftconv.set_recompute_spectra(recompute)
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
    peak, done = [_rss_mib()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0005)
    gc.collect()
    before = _rss_mib()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    step()
    step()
    done.set()
    thread.join()
    return max(0.0, peak[0] - before)


def _spectra_policy(step: Callable[[], Any], recompute: bool) -> Callable[[], Any]:
    """``step`` with the FFT backward keeping (False) or recomputing (True) its spectra."""
    from .layers import fftconv

    def run():
        previous = fftconv.recompute_spectra_enabled()
        fftconv.set_recompute_spectra(recompute)
        try:
            return step()
        finally:
            fftconv.set_recompute_spectra(previous)
    return run


def peak_memory(name: str, sigma: Optional[float], args, device, grad_ckpt: bool = False,
                recompute: bool = False) -> float:
    """Peak memory (MiB) above the model at rest during its first two training steps."""
    if device.type == 'cuda':
        x = make_input(name, args, device)
        model = build(name, args, device, sigma, grad_ckpt)
        step = _spectra_policy(train_step_fn(model, x, args), recompute)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    # CPU: the RSS high-water mark is per process, so measure each model in a fresh one.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context('spawn')) as pool:
        return pool.submit(_cpu_peak_memory, name, sigma, args, grad_ckpt, recompute).result()


# The memory section's variants: label -> (gradient checkpointing, FFT backward recomputes its spectra)
MEMORY_VARIANTS = {'plain': (False, False), 'recompute spectra': (False, True), 'grad ckpt': (True, False)}


def bench_memory(args, device) -> List[Dict]:
    """Peak training memory vs ResNet-44 and the step time it costs: the plain model (its FFT backward keeps the
    spectra of its forward), with the FFT backward recomputing them instead, and with gradient checkpointing.

    Memory: one fresh measurement per configuration (a subprocess on CPU). Time: ResNet-44 and the variants,
    interleaved round by round in this process (same protocol as the models section).
    """
    rows = []
    base = peak_memory('resnet44', None, args, device)
    x_img = make_input('flexnet', args, device)
    base_train = train_step_fn(build('resnet44', args, device, None), x_img, args)
    variants = {k: v for k, v in MEMORY_VARIANTS.items() if args.grad_ckpt or not v[0]}
    for name in args.memory_models:
        for regime, sigma in _regimes(name):
            x = make_input(name, args, device)
            steps = {'resnet44': base_train}
            for label, (ckpt, recompute) in variants.items():
                steps[label] = _spectra_policy(train_step_fn(build(name, args, device, sigma, ckpt), x, args), recompute)
            times = compare(steps, args.rounds)
            del steps
            plain = None
            for label, (ckpt, recompute) in variants.items():
                mib = peak_memory(name, sigma, args, device, ckpt, recompute)
                row = dict(model=name, regime=regime, variant=label, grad_checkpointing=ckpt,
                           recompute_spectra=recompute, peak_mib=mib, resnet44_peak_mib=base, vs_resnet44=mib / base,
                           train_s=times[label]['min_s'], resnet44_train_s=times['resnet44']['min_s'],
                           train_vs_resnet44=times[label]['ratio'])
                if plain is None:
                    plain = row
                else:
                    row.update(peak_vs_plain=mib / plain['peak_mib'], train_vs_plain=round_ratio(times, label, 'plain'))
                rows.append(row)
                print(f"  {name:10s} {regime:8s} {label:17s} peak {mib:8.1f} MiB = "
                      f"{mib / base:.2f}x ResNet-44 ({base:.1f} MiB) | train {row['train_s']:.3f}s = "
                      f"{row['train_vs_resnet44']:.2f}x ResNet-44 ({row['resnet44_train_s']:.3f}s)", flush=True)
    return rows


def bench_deploy(args, device) -> List[Dict]:
    """Reparameterized eval vs the cached-kernel model and ResNet-44; onnxruntime vs PyTorch (CPU only)."""
    from .deploy import export_onnx, onnx_session, reparameterize
    try:
        import onnxscript  # noqa: F401
        import onnxruntime  # noqa: F401
        has_ort = device.type == 'cpu'
    except ImportError:
        has_ort = False
        print("  onnxruntime / onnxscript not installed (pip install '.[onnx]'): no onnxruntime columns", flush=True)
    threads = torch.get_num_threads()
    rows = []
    x_img = make_input('flexnet', args, device)
    base = build('resnet44', args, device, None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        base_ort = None
        if has_ort:
            torch.onnx.export(base.cpu(), (x_img.cpu(),), f'{tmp}/resnet44.onnx', dynamo=True, verbose=False)
            base_ort = onnx_session(f'{tmp}/resnet44.onnx', threads)
        for name in args.models:
            for regime, sigma in _regimes(name):
                x = make_input(name, args, device)
                model = build(name, args, device, sigma).eval()
                fixed = reparameterize(model)  # a copy
                sizes = _kernel_sizes(fixed)
                fns = {'resnet44': eval_fn(base, x_img, args), 'cached': eval_fn(model, x, args),
                       'reparam': eval_fn(fixed, x, args)}
                with torch.inference_mode():
                    y_cached, y_fixed = model(x).float(), fixed(x).float()
                row = dict(model=name, regime=regime, kernel_sizes=sizes,
                           # relative to the output's scale: untrained nets at trained widths reach logits of 1e6+
                           reparam_rel_diff=((y_fixed - y_cached).abs().max() / y_cached.abs().max()).item())
                if has_ort:
                    path = export_onnx(copy.deepcopy(fixed).cpu(), f'{tmp}/{name}_{regime}.onnx',
                                       batch_size=x.shape[0], dynamic=False)
                    sess, x_np = onnx_session(path, threads), x.cpu().numpy()
                    base_np = x_img.cpu().numpy()
                    fns['ort'] = lambda: sess.run(None, {sess.get_inputs()[0].name: x_np})
                    fns['resnet44_ort'] = lambda: base_ort.run(None, {base_ort.get_inputs()[0].name: base_np})
                    y_ort = torch.from_numpy(fns['ort']()[0])
                    row['ort_rel_diff'] = ((y_ort - y_fixed.cpu()).abs().max() / y_fixed.abs().max()).item()
                t0 = time.perf_counter()
                res = compare(fns, args.rounds + 2)
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
    return rows


def bench_channels_last(args, device) -> List[Dict]:
    """Image models and ResNet-44 in NCHW and in channels_last, the four timed interleaved round by round."""
    rows = []
    layouts = {cl: argparse.Namespace(**dict(vars(args), channels_last=cl)) for cl in (False, True)}
    torch.manual_seed(0)
    x0 = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    for name in (n for n in args.models if _family(n) == 'flexnet'):
        for regime, sigma in _regimes(name):
            nets, inputs = {}, {}
            for cl, a in layouts.items():
                sfx = '_cl' if cl else ''
                inputs[sfx] = _layout(x0.clone(), a)
                torch.manual_seed(0)
                nets['resnet44' + sfx] = build('resnet44', a, device, None)
                torch.manual_seed(0)
                nets[name + sfx] = build(name, a, device, sigma)
            sizes = _kernel_sizes(nets[name])
            t0 = time.perf_counter()
            res = {}
            for what, make in (('train', train_step_fn), ('eval', eval_fn)):
                fns = {k: make(m, inputs['_cl' if k.endswith('_cl') else ''], args) for k, m in nets.items()}
                res[what] = compare(fns, args.rounds if what == 'train' else args.rounds + 2)
            row = dict(model=name, regime=regime, kernel_sizes=sizes, wall_s=0.0)
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


def _grad_step(fn: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[[], Any]:
    return lambda: torch.autograd.grad(fn().float().sum(), list(inputs))


def _train_or_lower_bound(candidate: float, step: Callable[[], Any], forward: Callable[[], Any], rounds: int
                          ) -> Tuple[float, bool]:
    """The training step time of ``step``, or its forward time alone when that is already 3x ``candidate``'s step
    (a lower bound: oneDNN's 33x33 backward takes many seconds and cannot win)."""
    with torch.no_grad():
        t_fwd = time_call(forward)
    if t_fwd > 3 * candidate:
        return t_fwd, True
    return compare({'step': step}, rounds)['step']['min_s'], False


def bench_layers(args, device) -> List[Dict]:
    from .layers import FlexConv2d
    rows = []
    ch = 48
    x = torch.randn(args.dispatch_batch, ch, args.img_size, args.img_size, device=device)
    x = _layout(x, args).requires_grad_(True)
    for sigma, label in ((None, 'initial'), (0.5, 'trained')):
        flex = FlexConv2d(ch, ch, kernel_size=2 * (args.img_size // 2) + 1).to(device)
        if sigma is not None:
            with torch.no_grad():
                flex.mask.sigma.fill_(sigma)
        k = flex.cropped_kernel_size[0]
        conv = nn.Conv2d(ch, ch, k, padding=k // 2).to(device)
        if args.channels_last:
            flex, conv = flex.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)

        def step(m):
            def forward():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                    return m(x)
            return _grad_step(forward, [x, *m.parameters()])
        t_flex = compare({'FlexConv2d': step(flex)}, args.rounds)['FlexConv2d']['min_s']
        t_conv, lower_bound = _train_or_lower_bound(t_flex, step(conv), lambda: conv(x), args.rounds)
        row = dict(layer=f'{ch}->{ch}, {k}x{k}', regime=label, batch=x.shape[0],
                   conv2d_is_forward_only_lower_bound=lower_bound, conv2d_s=t_conv, flexconv_s=t_flex,
                   ratio=t_flex / t_conv)
        print(f"  FlexConv2d {row['layer']:14s} train step {row['flexconv_s'] * 1e3:8.1f} ms = "
              f"{row['ratio']:.2f}x nn.Conv2d ({'>= ' if lower_bound else ''}{row['conv2d_s'] * 1e3:.1f} ms)", flush=True)
        rows.append(row)
    return rows


def bench_dispatch(args, device) -> List[Dict]:
    """auto's pick vs the faster path, training step (forward + backward) of one convolution."""
    from .layers import fftconv
    from .layers.fftconv import conv_direct, conv_fft, select_conv_method
    rows = []
    cfgs = [('2d', k, (args.dispatch_batch, 48, args.img_size, args.img_size), (48, 48, k, k), False)
            for k in args.dispatch_2d]
    cfgs += [('1d', n, (args.dispatch_batch_1d, 30, n), (30, 30, n), True) for n in args.dispatch_1d]
    for kind, k, xs, ws, causal in cfgs:
        x = torch.randn(*xs, device=device)
        x = (_layout(x, args) if kind == '2d' else x).requires_grad_(True)
        w = torch.randn(*ws, device=device, requires_grad=True)
        fftconv.clear_autotune_cache()
        t0 = time.perf_counter()
        with torch.enable_grad():
            pick = select_conv_method(x, w, causal)
        tune_s = time.perf_counter() - t0
        t_fft = compare({'fft': _grad_step(lambda: conv_fft(x, w, None, causal), (x, w))}, args.rounds)['fft']['min_s']
        # A direct conv whose forward alone is 3x slower than the FFT's training step cannot win: say so
        # instead of spending a minute on its backward.
        t_direct, dominated = _train_or_lower_bound(
            t_fft, _grad_step(lambda: conv_direct(x, w, None, causal), (x, w)),
            lambda: conv_direct(x, w, None, causal), args.rounds)
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


SECTIONS: Dict[str, Callable[[Any, torch.device], List[Dict]]] = {
    'models': bench_models, 'memory': bench_memory, 'layers': bench_layers, 'dispatch': bench_dispatch,
    'channels_last': bench_channels_last, 'deploy': bench_deploy,
}


# ---------------------------------------------------------------------------------------------- tables
def print_table(title: Optional[str], header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A markdown table on stdout (after a ``## title`` line when given)."""
    if title:
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
        print_table('Models: training step (fwd+bwd+Adam) and eval forward, ratios in the same run',
                    ['model', 'regime', 'kernels', 'train step', 'vs ResNet-44', 'img/s', 'eval vs ResNet-44',
                     'eval cached vs fixed kernels', 'eval uncached / cached'],
                    [[r['model'], r['regime'], _kernels(r), _ms(r['train_s']), f"{r['train_vs_resnet44']:.2f}x",
                      f"{r['images_per_s']:.0f}", f"{r['eval_vs_resnet44']:.2f}x", f"{r['eval_vs_fixed']:.2f}x",
                      f"{r['eval_uncached_vs_cached']:.2f}x"] for r in result['models']])
        r = result['models'][0]
        print(f"ResNet-44 (0.66M params): train step {_ms(r['resnet44_train_s'])}, "
              f"{r['resnet44_images_per_s']:.0f} img/s")
    if result.get('memory'):
        print_table('Peak training memory and train step: plain, FFT backward recomputing its spectra, grad '
                    'checkpointing; vs ResNet-44 and vs plain in the same run',
                    ['model', 'regime', 'variant', 'peak MiB', 'peak vs ResNet-44', 'peak vs plain', 'train step',
                     'step vs ResNet-44', 'step vs plain'],
                    [[r['model'], r['regime'], r.get('variant', 'grad ckpt' if r['grad_checkpointing'] else 'plain'),
                      f"{r['peak_mib']:.0f}", f"{r['vs_resnet44']:.2f}x",
                      f"{r['peak_vs_plain']:.2f}x" if 'peak_vs_plain' in r else '', _ms(r['train_s']),
                      f"{r['train_vs_resnet44']:.2f}x",
                      f"{r['train_vs_plain']:.2f}x" if 'train_vs_plain' in r else ''] for r in result['memory']])
        r = result['memory'][0]
        print(f"ResNet-44: peak {r['resnet44_peak_mib']:.0f} MiB, train step {_ms(r['resnet44_train_s'])}")
    if result.get('channels_last'):
        print_table('channels_last vs NCHW (model and input), all timed interleaved in one process',
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
        print_table('Deployment: eval forward of the reparameterized model (fixed kernels) vs the model with its '
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
        print_table(f"One layer, training step (batch {result['layers'][0]['batch']}): FlexConv2d vs nn.Conv2d "
                    "of the same kernel size ('>=': nn.Conv2d forward alone, a lower bound)",
                    ['layer', 'regime', 'nn.Conv2d', 'FlexConv2d', 'ratio'],
                    [[r['layer'], r['regime'], _ms(r['conv2d_s'], 1, r['conv2d_is_forward_only_lower_bound']),
                      _ms(r['flexconv_s'], 1), f"{r['ratio']:.2f}x"] for r in result['layers']])
    if result.get('dispatch'):
        print_table('FFT/direct dispatch: auto vs the faster path (training step of one conv)',
                    ['kind', 'kernel', 'fft', 'direct', 'auto', 'auto / fastest'],
                    [[r['kind'], str(r['kernel']), _ms(r['fft_s'], 2),
                      _ms(r['direct_s'], 2, r['direct_is_forward_only_lower_bound']), r['auto'],
                      f"{r['auto_vs_fastest']:.2f}x"] for r in result['dispatch']])


def write_json(path: str, data: Dict, indent: int) -> None:
    from .files import atomic_write_text
    atomic_write_text(path, json.dumps(data, indent=indent, default=str))


def run_benchmark(args: argparse.Namespace, command: str) -> Dict[str, Any]:
    """Run ``args.sections`` (see ``scripts/benchmark.py --help``), print the tables, write ``args.json``."""
    import timm
    from .layers import fftconv
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    env = dict(
        command=command, torch=torch.__version__, timm=timm.__version__,
        device=torch.cuda.get_device_name(device) if device.type == 'cuda' else
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        batch_size=args.batch_size, img_size=args.img_size, seq_len=args.seq_len, amp=args.amp,
        compile=args.compile, channels_last=args.channels_last, autotune=fftconv.autotune_enabled(),
    )
    print(f"# {env['command']}\n# {env['device']}, torch {env['torch']}, batch {args.batch_size}", flush=True)
    result: Dict[str, Any] = dict(env=env)
    t0 = time.perf_counter()
    for section, fn in SECTIONS.items():
        if section in args.sections:
            print(f"[{section}]", flush=True)
            result[section] = fn(args, device)
    result['env']['wall_s'] = time.perf_counter() - t0
    result['autotune_choices'] = {str(k): v for k, v in fftconv.autotune_cache().items()}
    print_tables(result)
    print(f"\ntotal {result['env']['wall_s']:.0f} s; results in {args.json}")
    write_json(args.json, result, indent=1)
    return result
