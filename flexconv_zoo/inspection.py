"""What a trained FlexConv model learned, as PNG figures and a text table (``scripts/inspect_model.py``).

For every FlexConv layer, at two input resolutions side by side (default: the model's current one and twice it):

* ``kernel_sizes.png``: the learned (cropped) kernel size per layer, the paper's figure of mask widths;
* ``kernels.png``: kernels of chosen layers as images (1-D: curves) on the full grid, the crop outlined;
* ``masks.png``: their Gaussian masks, with the 0.1 threshold that sets the crop;
* ``frequency.png``: each layer's frequency content against the Nyquist limit of the resolution: the share of
  the continuous kernel's energy above it (measured on a grid twice as dense as the finer resolution), and the
  analytic bound the alias-free regulariser controls (sum of the Gabor filters' and the mask's frequencies);
* ``layers.md``: the same numbers as a table (kernel sizes equal ``model.kernel_sizes()`` at each resolution).

Frequencies are in cycles per unit of the kernel's coordinate over ``[-1, 1]``: a ``K``-point grid has the
Nyquist frequency ``(K - 1) / 4`` (:meth:`FlexConvNd.nyquist_frequency` for the training grid).
"""
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .layers import FlexConvNd
from .layers.resolution import grid_positions

__all__ = [
    'LayerStats', 'flexconv_layers', 'current_size', 'layer_stats', 'format_layer_table', 'inspect_model',
    'short_name',
]


@dataclass
class LayerStats:
    """One FlexConv layer at one resolution."""
    index: int
    name: str
    in_channels: int
    out_channels: int
    size: int  # input resolution (pixels per side / sequence length)
    grid: Tuple[int, ...]
    kernel_size: Tuple[int, ...]  # the crop, as model.kernel_sizes()
    mask_mean: Tuple[float, ...]
    mask_sigma: Tuple[float, ...]
    nyquist: float  # (min(grid) - 1) / 4
    frequency_bound: float  # sum of the filters' max frequencies + the mask's (NaN for non-Gabor kernel nets)
    energy_above_nyquist: float  # share of the continuous kernel's energy above ``nyquist``


def _require_matplotlib():
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("The figures need matplotlib: pip install 'flexconv_zoo[plot]'.") from None
    return plt


def flexconv_layers(model: nn.Module) -> List[Tuple[str, FlexConvNd]]:
    """``(name, layer)`` of every FlexConv, in model order; a clear error for reparameterized layers."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FlexConvNd)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FlexConv layers to inspect.")
    if any(m.is_reparameterized for _, m in layers):
        raise ValueError("The model is reparameterized (fixed kernels): inspect it before reparameterize().")
    return layers


def short_name(name: str) -> str:
    """``blocks.3.conv1`` -> ``b3.conv1``, ``stem.conv`` -> ``stem`` (axis labels)."""
    parts = name.split('.')
    if parts[0] == 'blocks' and len(parts) > 2:
        return f"b{parts[1]}.{'.'.join(parts[2:])}"
    return 'stem' if name == 'stem.conv' else name


def current_size(model: nn.Module) -> int:
    """The resolution the model runs at now (pixels per side or sequence length: ``model.input_size[-1]``)."""
    return int(model.input_size[-1])


def _dense_kernel(layer: FlexConvNd, points: int) -> np.ndarray:
    """The continuous masked kernel (uncropped, unscaled) on a ``points``-per-dimension grid, ``(out*in, *grid)``."""
    grid = (points,) * layer.dim
    ref = layer.mask.sigma
    with torch.no_grad():
        pos = grid_positions(grid, (0,) * layer.dim, grid, device=ref.device, dtype=ref.dtype)
        values = layer.kernel_net(pos) * layer.mask(pos)[:, None]  # (P, out * in)
    return values.t().reshape(-1, *grid).double().cpu().numpy()


def _energy_above(kernel: np.ndarray, points: int, limits: Sequence[float]) -> List[float]:
    """Share of the kernel's energy at frequencies above each limit (per axis, the square band of a grid)."""
    axes = tuple(range(1, kernel.ndim))
    power = (np.abs(np.fft.fftn(kernel, axes=axes)) ** 2).sum(0)
    freq = np.abs(np.fft.fftfreq(points, d=2.0 / (points - 1)))  # cycles per unit over [-1, 1]
    fmax = freq
    for _ in range(1, len(axes)):
        fmax = np.maximum.outer(fmax, freq)
    total = power.sum()
    return [float(power[fmax > limit].sum() / total) if total > 0 else 0.0 for limit in limits]


def _frequency_bound(layer: FlexConvNd) -> float:
    net = layer.kernel_net
    if not hasattr(net, 'layer_frequencies'):
        return math.nan
    with torch.no_grad():
        return float(net.layer_frequencies().sum() + layer.mask.max_frequency())


def _copy_at_size(model: nn.Module, size: int) -> nn.Module:
    """An eval copy of ``model`` resampled to ``size``, in float32 when its parameters are half precision: a
    bfloat16 grid collapses neighbouring positions (the layers' own forward samples in float32 too)."""
    copy_ = copy.deepcopy(model).eval()
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in copy_.parameters()):
        copy_.float()
    copy_.set_input_size(size)
    return copy_


def layer_stats(model: nn.Module, sizes: Sequence[int]) -> Dict[int, List[LayerStats]]:
    """Per resolution in ``sizes``, the :class:`LayerStats` of every FlexConv layer (``model`` is not changed)."""
    flexconv_layers(model)
    at_size = {size: flexconv_layers(_copy_at_size(model, size)) for size in sizes}
    finest = max(min(layer.grid) for layers in at_size.values() for _, layer in layers)
    points = 2 * (finest - 1) + 1  # twice as dense as the finest grid: its Nyquist limit is well inside
    out: Dict[int, List[LayerStats]] = {size: [] for size in sizes}
    for i, (name, _) in enumerate(at_size[sizes[0]]):
        layer0 = at_size[sizes[0]][i][1]
        # the continuous kernel is the same at every resolution; only the grid (crop, Nyquist limit) changes
        limits = [(min(at_size[s][i][1].grid) - 1) / 4 for s in sizes]
        energy = _energy_above(_dense_kernel(layer0, points), points, limits)
        bound = _frequency_bound(layer0)
        for size, limit, e in zip(sizes, limits, energy):
            layer = at_size[size][i][1]
            out[size].append(LayerStats(
                index=i, name=name, in_channels=layer.in_channels, out_channels=layer.out_channels, size=size,
                grid=tuple(layer.grid), kernel_size=tuple(layer.cropped_kernel_size),
                mask_mean=tuple(layer.mask.mean.detach().tolist()),
                mask_sigma=tuple(layer.mask.effective_sigma().detach().tolist()),
                nyquist=limit, frequency_bound=bound, energy_above_nyquist=e))
    return out


def _fmt_size(size: Sequence[int]) -> str:
    return 'x'.join(str(s) for s in size)


def format_layer_table(stats: Dict[int, List[LayerStats]], unit: str = 'px') -> str:
    """Markdown table: one row per layer, kernel size / Nyquist limit / energy above it per resolution."""
    sizes = list(stats)
    head = ['#', 'layer', 'in->out', 'mask sigma']
    head += [f'kernel @{s} {unit}' for s in sizes]
    head += ['f bound'] + [f'f_Nyq @{s} {unit}' for s in sizes] + [f'energy > f_Nyq @{s} {unit}' for s in sizes]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for rows in zip(*stats.values()):
        r0 = rows[0]
        cells = [str(r0.index), r0.name, f'{r0.in_channels}->{r0.out_channels}',
                 ', '.join(f'{s:.3f}' for s in r0.mask_sigma)]
        cells += [_fmt_size(r.kernel_size) for r in rows]
        cells += ['-' if math.isnan(r0.frequency_bound) else f'{r0.frequency_bound:.1f}']
        cells += [f'{r.nyquist:g}' for r in rows] + [f'{100 * r.energy_above_nyquist:.2f} %' for r in rows]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------- figures
def _plot_kernel_sizes(plt, stats: Dict[int, List[LayerStats]], unit: str, title: str, path: Path) -> None:
    sizes = list(stats)
    first = stats[sizes[0]]
    n, dim = len(first), len(first[0].kernel_size)
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(6.0, 0.45 * n + 2) * len(sizes) / 1.4, 3.8), sharey=False,
                             squeeze=False)
    x = np.arange(n)
    labels = ['height', 'width'] if dim == 2 else ['length']
    width = 0.8 / dim
    for ax, size in zip(axes[0], sizes):
        rows = stats[size]
        for d in range(dim):
            ax.bar(x + (d - (dim - 1) / 2) * width, [r.kernel_size[d] for r in rows], width, label=labels[d])
        grid = max(max(r.grid) for r in rows)
        ax.axhline(grid, color='k', ls='--', lw=1)
        ax.text(n - 0.5, grid, f' grid {grid}', va='bottom', ha='right', fontsize=8)
        ax.set_ylim(0, grid * 1.12)
        ax.set_xticks(x, [short_name(r.name) for r in rows], rotation=60, ha='right', fontsize=8)
        ax.set_ylabel('kernel size (taps)')
        ax.set_title(f'at {size} {unit}')
        ax.grid(axis='y', alpha=0.3)
        if dim == 2:
            ax.legend(fontsize=8, loc='upper left')
    fig.suptitle(f'{title}: learned kernel size per layer')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _layer_kernels(layer: FlexConvNd, count: int) -> Tuple[np.ndarray, np.ndarray, Tuple[int, ...], Tuple[int, ...]]:
    """The eval kernel embedded in the full grid (zeros outside the crop) for ``count`` output channels (each with
    its strongest input channel), the mask on the full grid, and the crop window."""
    with torch.no_grad():
        start, length = layer.mask.crop(layer.grid)
        kernel = layer.compute_kernel(layer.grid, crop_mode='exact').double().cpu()
        pos = grid_positions(layer.grid, (0,) * layer.dim, layer.grid, dtype=layer.mask.sigma.dtype,
                             device=layer.mask.sigma.device)
        mask = layer.mask(pos).reshape(layer.grid).double().cpu().numpy()
    full = torch.zeros(kernel.shape[0], kernel.shape[1], *layer.grid, dtype=kernel.dtype)
    full[(slice(None), slice(None), *(slice(s, s + n) for s, n in zip(start, length)))] = kernel
    energy = full.flatten(2).square().sum(-1)  # (out, in)
    outs = energy.sum(1).argsort(descending=True)[:count]
    picked = np.stack([full[o, energy[o].argmax()].numpy() for o in outs.tolist()])
    return picked, mask, start, length


def _plot_kernels(plt, models: Dict[int, nn.Module], chosen: Sequence[int], unit: str, title: str, path: Path
                  ) -> None:
    count = 4  # channels drawn per layer and resolution
    sizes = list(models)
    layers = {s: flexconv_layers(m) for s, m in models.items()}
    dim = layers[sizes[0]][0][1].dim
    rows, cols = len(chosen), len(sizes) * count
    fig, axes = plt.subplots(rows, cols, figsize=(1.55 * cols + 0.6, 1.7 * rows + 0.8), squeeze=False)
    for r, i in enumerate(chosen):
        for c, size in enumerate(sizes):
            name, layer = layers[size][i]
            kernels, _, start, length = _layer_kernels(layer, count)
            for k in range(count):
                ax = axes[r][c * count + k]
                if k >= len(kernels):
                    ax.axis('off')
                    continue
                img = kernels[k]
                vmax = float(np.abs(img).max()) or 1.0
                if dim == 2:
                    ax.imshow(img, cmap='RdBu_r', vmin=-vmax, vmax=vmax, interpolation='nearest')
                    rect = plt.Rectangle((start[1] - 0.5, start[0] - 0.5), length[1], length[0], fill=False,
                                         ec='k', lw=0.8)
                    ax.add_patch(rect)
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    t = np.linspace(-1, 1, len(img))
                    ax.axhline(0, color='0.6', lw=0.5)
                    ax.plot(t, img, lw=1, marker='.', ms=2)
                    ax.axvspan(t[start[0]], 1, color='0.9')
                    ax.set_xlim(max(-1.0, 2 * t[start[0]] - 1) - 0.02, 1.02)  # the crop and as much before it
                    ax.set_yticks([])
                    ax.tick_params(labelsize=6)
                if k == 0:
                    ax.set_ylabel(f'{short_name(name)}\n{_fmt_size(length)}', fontsize=8)
                if r == 0:
                    ax.set_title(f'{size} {unit}: #{k + 1}' if k == 0 else f'#{k + 1}', fontsize=8)
    fig.suptitle(f'{title}: kernels of the {count} strongest output channels, each for its strongest input channel '
                 f'(box / shade: learned crop)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_masks(plt, models: Dict[int, nn.Module], chosen: Sequence[int], unit: str, title: str, path: Path) -> None:
    sizes = list(models)
    layers = {s: flexconv_layers(m) for s, m in models.items()}
    dim = layers[sizes[0]][0][1].dim
    fig, axes = plt.subplots(len(chosen), len(sizes), figsize=(2.6 * len(sizes) + 0.6, 2.3 * len(chosen) + 0.6),
                             squeeze=False)
    for r, i in enumerate(chosen):
        for c, size in enumerate(sizes):
            name, layer = layers[size][i]
            _, mask, start, length = _layer_kernels(layer, 1)
            ax = axes[r][c]
            threshold = layer.mask.threshold
            if dim == 2:
                ax.imshow(mask, cmap='viridis', vmin=0, vmax=1, interpolation='nearest')
                if mask.max() > threshold:
                    ax.contour(mask, levels=[threshold], colors='w', linewidths=0.8)
                ax.add_patch(plt.Rectangle((start[1] - 0.5, start[0] - 0.5), length[1], length[0], fill=False,
                                           ec='r', lw=1))
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                t = np.linspace(-1, 1, len(mask))
                ax.plot(t, mask, lw=1.2)
                ax.axhline(threshold, color='r', ls='--', lw=0.8)
                ax.axvspan(t[start[0]], 1, color='0.9')
                ax.set_ylim(0, 1.05)
                ax.tick_params(labelsize=7)
            ax.set_title(f'{short_name(name)} at {size} {unit}: {_fmt_size(length)}', fontsize=8)
    fig.suptitle(f'{title}: Gaussian masks (threshold {layers[sizes[0]][0][1].mask.threshold:g} -> crop)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_frequency(plt, stats: Dict[int, List[LayerStats]], unit: str, title: str, path: Path) -> None:
    sizes = list(stats)
    first = stats[sizes[0]]
    n = len(first)
    x = np.arange(n)
    width = 0.8 / len(sizes)
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 0.5 * n + 4), 3.9))
    for j, size in enumerate(sizes):
        rows = stats[size]
        offset = (j - (len(sizes) - 1) / 2) * width
        axes[0].bar(x + offset, [100 * r.energy_above_nyquist for r in rows], width, label=f'{size} {unit}')
        axes[1].bar(x + offset, [r.frequency_bound / r.nyquist for r in rows], width, label=f'{size} {unit}')
    axes[0].set_ylabel('kernel energy above f_Nyq (%)')
    axes[0].set_title('measured: share of energy the grid cannot represent')
    axes[1].axhline(1.0, color='k', ls='--', lw=1)
    axes[1].set_ylabel('frequency bound / f_Nyq')
    axes[1].set_title('alias-free bound: sum of Gabor + mask frequencies')
    ratios = [r.frequency_bound / r.nyquist for rows in stats.values() for r in rows]
    if all(math.isfinite(v) and v > 0 for v in ratios) and max(ratios) > 20 * min(ratios):
        axes[1].set_yscale('log')  # untrained / penalty-free kernels reach 10-100x the limit
    elif ratios and all(math.isfinite(v) for v in ratios):
        axes[1].set_ylim(0, 1.3 * max(max(ratios), 1.0))  # room for the legend above the bars
    for ax in axes:
        ax.set_xticks(x, [short_name(r.name) for r in first], rotation=60, ha='right', fontsize=8)
        ax.grid(axis='y', alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc='upper right')
    top = max(100 * r.energy_above_nyquist for rows in stats.values() for r in rows)
    axes[0].set_ylim(0, 1.3 * top if top > 0 else 1.0)
    fig.suptitle(f'{title}: frequency content vs the Nyquist limit of each resolution')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_layers(num_layers: int) -> List[int]:
    """First, middle and last layer."""
    return sorted({0, num_layers // 2, num_layers - 1})


def plot_kernel_sizes(model: nn.Module, path: Path, title: Optional[str] = None) -> Path:
    """The learned kernel size of every FlexConv layer at the model's resolution and twice it (the model-card
    figure; :func:`inspect_model` draws it with the others)."""
    plt = _require_matplotlib()
    now = current_size(model)
    stats = layer_stats(model.eval(), [now, 2 * now])
    unit = model.size_unit
    _plot_kernel_sizes(plt, stats, unit, title or type(model).__name__, Path(path))
    return Path(path)


def inspect_model(
        model: nn.Module,
        out_dir: Path,
        sizes: Optional[Sequence[int]] = None,
        layers: Optional[Sequence[int]] = None,
        title: Optional[str] = None,
) -> Dict[str, Any]:
    """Write the figures and ``layers.md`` for ``model`` into ``out_dir`` (see the module docstring).

    ``sizes``: two resolutions (default: the current one and twice it); ``layers``: indices of the FlexConv
    layers whose kernels and masks are drawn (default: first, middle, last). Returns the table, the stats per
    resolution and the files written.
    """
    plt = _require_matplotlib()
    named = flexconv_layers(model)
    now = current_size(model)
    sizes = list(sizes) if sizes else [now, 2 * now]
    if len(sizes) != 2 or len(set(sizes)) != 2 or min(sizes) < 2:
        raise ValueError(f"Give two different resolutions (>= 2) to compare, got {sizes}.")
    chosen = list(layers) if layers else default_layers(len(named))
    bad = [i for i in chosen if not -len(named) <= i < len(named)]
    if bad:
        raise ValueError(
            f"Layer indices {bad} out of range: the model has {len(named)} FlexConv layers (0-{len(named) - 1}).")
    chosen = [i % len(named) for i in chosen]
    unit = model.size_unit
    title = title or type(model).__name__
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    stats = layer_stats(model, sizes)
    models = {size: _copy_at_size(model, size) for size in sizes}
    files = {name: out_dir / f'{name}.png' for name in ('kernel_sizes', 'kernels', 'masks', 'frequency')}
    _plot_kernel_sizes(plt, stats, unit, title, files['kernel_sizes'])
    _plot_kernels(plt, models, chosen, unit, title, files['kernels'])
    _plot_masks(plt, models, chosen, unit, title, files['masks'])
    _plot_frequency(plt, stats, unit, title, files['frequency'])
    table = format_layer_table(stats, unit)
    files['table'] = out_dir / 'layers.md'
    files['table'].write_text(
        f'# {title}: layers at {sizes[0]} and {sizes[1]} {unit}\n\n{table}\n\n'
        f'kernel: learned crop (model.kernel_sizes()); f bound: sum of the Gabor filters\' and the mask\'s maximum '
        f'frequencies (alias-free regulariser); f_Nyq = (K - 1) / 4 for a K-point grid; energy > f_Nyq: share of the '
        f'continuous kernel\'s energy above it. Frequencies in cycles per unit over [-1, 1].\n')
    return dict(table=table, stats=stats, files=files, sizes=sizes, layers=chosen)
