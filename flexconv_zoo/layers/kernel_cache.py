"""What a FlexConv layer keeps between forwards: its eval-mode kernel and the constant position grids."""
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch

from .resolution import grid_positions

__all__ = ['KernelCache', 'autocast_state']


def autocast_state(device: torch.device) -> Tuple[str, bool, Optional[torch.dtype]]:
    """Whether autocast is on for ``device``'s type, and to which dtype."""
    kind = device.type
    if kind == 'meta' or not torch.amp.is_autocast_available(kind):
        return kind, False, None
    enabled = torch.is_autocast_enabled(kind)
    return kind, enabled, torch.get_autocast_dtype(kind) if enabled else None


class KernelCache:
    """The eval kernel of one layer, reused until its key changes, and the grids its kernel net is sampled on.

    The key holds the grid, the source grid, inference mode (an inference-mode kernel cannot join autograd
    later), autocast (on, dtype) on the parameters' devices and per parameter its device, dtype, storage
    (replaced) and version counter (changed in place).
    Nothing is pickled: a copy starts empty.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.kernel: Optional[torch.Tensor] = None
        self.key = None
        self._positions: Dict[tuple, torch.Tensor] = {}  # per (grid, window, device, dtype)

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.clear()

    def get(self, grid: Sequence[int], source_grid: Sequence[int], params: Iterable[torch.Tensor],
            compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached kernel, or ``compute()`` when the key has changed."""
        params = tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in params)
        # the autocast state stays in the key: compute_kernel now samples in float32 under autocast too, so both
        # states give the same kernel, and the key keeps any later low-precision path from leaking across
        autocast = frozenset(autocast_state(device) for device, *_ in params)
        key = grid, source_grid, torch.is_inference_mode_enabled(), autocast, params
        if self.kernel is None or self.key != key:
            self.kernel = compute()
            self.key = key
        return self.kernel

    def positions(self, grid: Sequence[int], start: Sequence[int], length: Sequence[int], device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
        """:func:`.resolution.grid_positions`, memoised outside ``torch.compile`` and inference mode."""
        key = (tuple(grid), tuple(start), tuple(length), device, dtype)
        positions = self._positions.get(key)
        if positions is None or torch.compiler.is_compiling():
            positions = grid_positions(grid, start, length, device=device, dtype=dtype)
            if not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled():
                self._positions[key] = positions
        return positions
