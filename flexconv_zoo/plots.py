"""Training curves of a run: loss, top-1 (train / val), learning rate and mean learned kernel size per epoch.

``scripts/train.py`` rewrites ``<run>/training_curves.png`` after every epoch (:func:`update_training_plot`, from
``metrics.json``); :func:`plot_training_curves` draws any list of epoch rows, e.g. several chained runs.
"""
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .files import atomic_path

__all__ = ['plot_training_curves', 'update_training_plot', 'TRAINING_PLOT_NAME']

TRAINING_PLOT_NAME = 'training_curves.png'

# (panel title, y label, [(metrics.json key, legend label)])
_PANELS = (
    ('loss', 'cross-entropy', [('train_loss', 'train'), ('val_loss', 'val'), ('ema_val_loss', 'EMA val')]),
    ('top-1 accuracy', '%', [('train_top1', 'train'), ('val_top1', 'val'), ('ema_val_top1', 'EMA val'),
                             ('test_top1', 'test (tracked only)')]),
    ('learning rate (end of epoch)', 'lr', [('lr', None)]),
    ('mean learned kernel size', 'taps per dimension', [('mean_kernel_size', None)]),
)


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_training_curves(history: Sequence[Dict[str, Any]], path: Union[str, Path], title: str = '') -> Path:
    """Draw the epoch rows of ``metrics.json`` (dicts with ``epoch``, ``train_loss``, ``val_top1``, ``lr``,
    ``mean_kernel_size``, ...) as a 2x2 figure at ``path``; missing series are left out."""
    if not history:
        raise ValueError("No epochs to plot: the metrics are empty.")
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [row.get('epoch', i + 1) for i, row in enumerate(history)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True)
    for ax, (name, ylabel, series) in zip(axes.flat, _PANELS):
        drawn = False
        for key, label in series:
            points = [(e, _number(row.get(key))) for e, row in zip(epochs, history)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker='o', ms=3, lw=1.4, label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, 'not recorded in this run', ha='center', va='center', transform=ax.transAxes,
                    color='0.5')
        if key == 'lr' and drawn:
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn and any(label for _, label in series):
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel('epoch')
    sizes = sorted({row['img_size'] for row in history if isinstance(row.get('img_size'), (int, float))})
    suffix = f" (input size {', '.join(str(s) for s in sizes)})" if sizes else ''
    fig.suptitle(f'{title}{suffix}' if title else f'training curves{suffix}')
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:  # readers never see a half-written image
        fig.savefig(tmp, dpi=100, format='png')
    plt.close(fig)
    return path


def update_training_plot(run_dir: Union[str, Path]) -> Optional[Path]:
    """Redraw ``<run_dir>/training_curves.png`` from ``<run_dir>/metrics.json``; called after every epoch.

    Never fails the training run: without matplotlib or metrics it returns None, other errors become a warning.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / 'metrics.json'
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    if not metrics.is_file():
        return None
    try:
        history = json.loads(metrics.read_text())
        return plot_training_curves(history, run_dir / TRAINING_PLOT_NAME, title=run_dir.name)
    except Exception as e:  # a plot is never worth a crashed run
        warnings.warn(f"Could not draw {run_dir / TRAINING_PLOT_NAME}: {type(e).__name__}: {e}")
        return None
