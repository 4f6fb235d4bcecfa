"""FlexConv: a convolution whose kernel is a continuous function with a learned size.

    kernel(x) = KernelNet(x) * GaussianMask(x),   x on a grid over [-1, 1]^D, cropped where the mask < threshold
    y = conv(input, kernel) + bias                  ("same" padding in 2-D, causal in 1-D)

From "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes"
(Romero, Bruintjes, Tomczak, Bekkers, Hoogendoorn, van Gemert; ICLR 2022, arXiv:2110.08059).

Resolution: a layer is built for a sampling grid (``kernel_size``, the largest kernel it can have: 33 for
32 px images, the sequence length for sequences). Inputs of another size use that same grid unless told
otherwise, exactly like a fixed-kernel convolution. :meth:`FlexConvNd.set_input_size` announces that the
data itself was resampled (a 16 px model fed 32 px images): the continuous kernel is then sampled on the
grid of the new size and scaled by ``(src / tgt)^D``, the paper's protocol. With ``follow_input_size=True``
every forward does this for the size of its input.

In eval mode the cropped, masked kernel is cached and reused until a parameter changes (in place or by
replacement), the sampling grid changes, the module moves (``.to``), a state dict is loaded, or the layer
returns to train mode. In-place edits through ``.data`` bypass version counters: call
:meth:`FlexConvNd.clear_kernel_cache` after those.

The crop is a shape, so deciding it reads the mask parameters on the host. ``crop_mode`` picks how:

* ``'exact'`` (CPU default): read them every forward (free on CPU, a device sync on a GPU);
* ``'lagged'`` (CUDA default): read a copy made asynchronously one forward earlier, widen it by a margin and
  round it up to a few bucket sizes, then zero the taps outside the exact crop with a 0/1 indicator computed
  on the device. Outputs and gradients equal the exact crop's as long as the crop moves less than the margin
  per step; a device-side flag reports (one step late) when it did not and the margin doubles;
* ``'full'`` (under ``torch.compile`` / export): no host read at all: the whole grid times the indicator.
  Same function, no graph breaks, but the convolution always costs the full kernel size.
"""
import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .dftconv import conv_dft_matmul
from .fftconv import CONV_METHODS, _direct, _padding, conv_nd
from .kernelnet import create_kernel_net
from .mask import GaussianMask
from .resolution import (
    MIN_INPUT_SIZE, check_size, crop_extent_causal, crop_extent_centered, grid_positions, grid_size_for_input,
    sampling_rate_scale, threshold_radius, to_tuple,
)

__all__ = ['FlexConvNd', 'FlexConv1d', 'FlexConv2d', 'CROP_MODES']

# How the crop (an integer shape) is decided, see FlexConvNd.crop_mode.
CROP_MODES = ('auto', 'exact', 'lagged', 'full')


def _clear_cache_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: new parameters invalidate the cached kernel."""
    module.clear_kernel_cache()


def _conv_for_export(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], causal: bool,
                     method: str) -> torch.Tensor:
    """The convolution of a reparameterized layer in an exported graph (ONNX, TorchScript trace): a padded direct
    conv, or with ``conv_method='fft'`` the FFT path as real DFT matmuls (much faster in onnxruntime for large
    kernels, but each such layer adds seconds to the export; see ``flexconv_zoo.deploy.export_onnx(fft=True)``)."""
    if method == 'fft':
        return conv_dft_matmul(x, weight, bias, causal=causal)
    # without conv_nd's input-size-dependent tap trimming: the graph keeps symbolic sizes
    return _direct(x, weight, bias, _padding(weight.shape[2:], causal))


class FlexConvNd(nn.Module):
    """N-d FlexConv (N = 1 or 2). Use :class:`FlexConv1d` or :class:`FlexConv2d`.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        kernel_size: Points per dimension of the sampling grid, i.e. the largest kernel (paper's horizon).
        bias: Add a learnable bias (initialised to zero).
        dim: 1 or 2.
        causal: Causal 1-D convolution (kernel position +1 touches the current step); otherwise "same".
        kernel_net: Kernel network name: 'magnet' (paper), 'gabor', 'fourier', 'siren' or 'mlp'.
        kernel_hidden: Hidden width of the kernel network (paper: 32).
        kernel_layers: Hidden layers of the kernel network (paper: 3, i.e. 4 Gabor filters).
        kernel_input_scale: Frequency scale of the first layers (paper: 25.6).
        kernel_init_spatial: Range of the Gabor centres at init; defaults to 1.667 * mask_init_sigma.
        mask_init_mean: Initial mask centre (default 1.0 if causal else 0.0).
        mask_init_sigma: Initial mask width (paper: 0.075).
        mask_threshold: Mask value where the kernel is cropped (paper: 0.1).
        conv_method: 'auto' (by kernel size and device), 'direct' or 'fft'.
        follow_input_size: Resample the kernel to every input's size instead of keeping the grid.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Sequence[int]] = 33,
            bias: bool = True,
            *,
            dim: int = 2,
            causal: bool = False,
            kernel_net: str = 'magnet',
            kernel_hidden: int = 32,
            kernel_layers: int = 3,
            kernel_input_scale: float = 25.6,
            kernel_init_spatial: Optional[float] = None,
            mask_init_mean: Optional[float] = None,
            mask_init_sigma: float = 0.075,
            mask_threshold: float = 0.1,
            conv_method: str = 'auto',
            follow_input_size: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if dim not in (1, 2):
            raise ValueError(f"FlexConv supports dim=1 or dim=2, got {dim}.")
        if causal and dim != 1:
            raise ValueError("Causal FlexConv is only defined for 1-D kernels.")
        if conv_method not in CONV_METHODS:
            raise ValueError(f"conv_method must be one of {CONV_METHODS}, got {conv_method!r}.")
        kernel_size = to_tuple(kernel_size, dim, 'kernel_size')
        if any(k < MIN_INPUT_SIZE for k in kernel_size):
            raise ValueError(f"kernel_size must be at least {MIN_INPUT_SIZE} per dimension, got {kernel_size}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim = dim
        self.causal = causal
        self.conv_method = conv_method
        self.follow_input_size = follow_input_size
        self.source_grid: Tuple[int, ...] = kernel_size  # the grid the kernel is trained on
        self.grid: Tuple[int, ...] = kernel_size  # the grid it is sampled on now

        if kernel_init_spatial is None:
            # Gabor centres start inside the initial mask (original code: 1.667 * mask width).
            kernel_init_spatial = 1.667 * mask_init_sigma
        self.kernel_net = create_kernel_net(
            kernel_net, dim, out_channels * in_channels,
            hidden=kernel_hidden, num_layers=kernel_layers, input_scale=kernel_input_scale,
            init_spatial=kernel_init_spatial, **dd,
        )
        self.mask = GaussianMask(
            dim, causal=causal, init_mean=mask_init_mean, init_sigma=mask_init_sigma,
            threshold=mask_threshold, **dd,
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **dd)) if bias else None
        self.crop_mode = 'auto'
        self._cached_kernel: Optional[torch.Tensor] = None
        self._cache_key = None
        self._positions: Dict[tuple, torch.Tensor] = {}  # constant grids, per (window, device, dtype)
        self._lag_buffer: Optional[torch.Tensor] = None  # host copy of (mean, sigma, overflow) per dim
        self._lag_event = None
        self._lag_window = None  # (mask parameter versions, grid) -> window of the last lagged forward
        self._lag_margin = 1.0  # in grid steps (centred) / fraction of 1 % of the domain (causal), doubles
        self.register_load_state_dict_post_hook(_clear_cache_after_load)  # a function, not a lambda: picklable

    # ------------------------------------------------------------------ resolution
    @property
    def kernel_size(self) -> Tuple[int, ...]:
        """The current sampling grid (largest kernel); the cropped size is :attr:`cropped_kernel_size`."""
        return self.grid

    @property
    def cropped_kernel_size(self) -> Tuple[int, ...]:
        """Size of the kernel after the mask crop on the current grid."""
        if self.is_reparameterized:
            return tuple(self.weight.shape[2:])
        return self.mask.crop(self.grid)[1]

    def set_sampling_grid(self, grid_size: Union[int, Sequence[int]]) -> None:
        """Sample the continuous kernel on a grid of ``grid_size`` points per dimension."""
        if self.is_reparameterized:
            raise ValueError(
                f"{type(self).__name__} is reparameterized (fixed kernel): call set_input_size before reparameterize().")
        grid = to_tuple(grid_size, self.dim, 'grid_size')
        if any(k < MIN_INPUT_SIZE for k in grid):
            raise ValueError(f"grid_size must be at least {MIN_INPUT_SIZE} per dimension, got {grid}.")
        self.grid = grid
        self.clear_kernel_cache()

    def set_input_size(self, input_size: Union[int, Sequence[int]]) -> None:
        """Announce that inputs now have ``input_size`` samples per dimension (resampled data)."""
        input_size = check_size(input_size, self.dim, 'input_size')
        self.set_sampling_grid(grid_size_for_input(input_size, self.dim, causal=self.causal))

    def set_source_size(self, input_size: Union[int, Sequence[int]]) -> None:
        """Declare the input size the layer is trained at (its kernel grid) and sample on that grid."""
        input_size = check_size(input_size, self.dim, 'input_size')
        self.source_grid = grid_size_for_input(input_size, self.dim, causal=self.causal)
        self.set_sampling_grid(self.source_grid)

    # ------------------------------------------------------------------ kernel
    def clear_kernel_cache(self) -> None:
        """Drop the cached eval kernel, grids and the lagged copy of the mask parameters."""
        self._cached_kernel = None
        self._cache_key = None
        self._positions = {}
        self._lag_buffer = None
        self._lag_event = None
        self._lag_window = None

    def __getstate__(self) -> Dict[str, Any]:
        # pickle / torch.save / deepcopy keep the definition, not the caches (a CUDA event does not pickle)
        state = self.__dict__.copy()
        state.update(_cached_kernel=None, _cache_key=None, _positions={}, _lag_buffer=None, _lag_event=None,
                     _lag_window=None)
        return state

    def _apply(self, fn, *args, **kwargs):
        # .to(device/dtype), .cuda(), .half(): every cached tensor lives on the old device or dtype.
        self.clear_kernel_cache()
        return super()._apply(fn, *args, **kwargs)

    def _resolve_crop_mode(self, device: torch.device) -> str:
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}.")
        if device.type == 'meta' or torch.compiler.is_compiling():
            return 'full'  # nothing to read on the host (meta) or reading it would break the graph
        if self.crop_mode != 'auto':
            return self.crop_mode
        return 'lagged' if device.type == 'cuda' else 'exact'

    def _grid_positions(self, grid, start, length, device, dtype) -> torch.Tensor:
        key = (tuple(grid), tuple(start), tuple(length), device, dtype)
        positions = self._positions.get(key)
        if positions is None or torch.compiler.is_compiling():
            positions = grid_positions(grid, start, length, device=device, dtype=dtype)
            if not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled():
                self._positions[key] = positions
        return positions

    def _exact_window(self, grid: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last kept index per dimension, on the device: the host crop rule, in float64."""
        mask = self.mask
        radius = threshold_radius(mask.threshold)
        wide = torch.float32 if mask.sigma.device.type == 'mps' else torch.float64
        with torch.no_grad():
            mean, sigma = mask.mean.detach().to(wide), mask.sigma.detach().to(wide)
            half_width = sigma.abs().clamp_min(mask.eps) * radius
            size = torch.tensor(grid, device=mean.device, dtype=wide)
            half = (size - 1) / 2
            if self.causal:
                root = mean - half_width
                start = torch.floor((root + 1.0) * half + 1e-9) + 1
                start = torch.minimum(start, size - 1)
                start = torch.where((root <= -1.0) | (root >= 1.0), torch.zeros_like(start), start)
                end = size
            else:
                root = torch.maximum((mean - half_width).abs(), (mean + half_width).abs())
                start = torch.floor((1.0 - root) * half + 1e-9) + 1
                start = torch.minimum(start, torch.floor((size - 1) / 2))
                start = torch.where(root >= 1.0, torch.zeros_like(start), start)
                end = size - start
        return start, end

    def _indicator(self, grid, start: Sequence[int], length: Sequence[int]):
        """0/1 weights of the window ``start, length`` that zero the taps outside the exact crop, and a flag
        that is 1 where the exact crop reaches outside the window (the lagged bucket was too small)."""
        lo, hi = self._exact_window(grid)
        with torch.no_grad():
            ind, overflow = None, []
            for d, (s, n) in enumerate(zip(start, length)):
                idx = torch.arange(s, s + n, device=lo.device, dtype=lo.dtype)
                keep = ((idx >= lo[d]) & (idx < hi[d])).to(self.mask.sigma.dtype)
                ind = keep if ind is None else ind[..., None] * keep
                overflow.append((lo[d] < s) | (hi[d] > s + n))
            return ind, torch.stack(overflow).to(torch.float32)

    def _lagged_window(self, grid: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """Bucketed crop from a copy of the mask parameters made one forward earlier (no device sync).

        Until the mask parameters change, every forward reuses the last window: a gradient-checkpointing
        recomputation must see the crop of its original forward, not the copy that forward has since recorded.
        """
        mask = self.mask
        key = (tuple(grid), *((p.data_ptr(), p._version) for p in (mask.mean, mask.sigma)))
        if self._lag_window is not None and self._lag_window[0] == key:
            return self._lag_window[1]
        window = self._read_lagged_window(grid)
        self._lag_window = (key, window)
        return window

    def _read_lagged_window(self, grid: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        mask = self.mask
        buf, event = self._lag_buffer, self._lag_event
        if buf is None:
            values = torch.stack([mask.mean.detach(), mask.sigma.detach()]).float().cpu()  # one sync, first call
            buf = torch.zeros(3, self.dim, pin_memory=mask.sigma.device.type == 'cuda')
            buf[:2] = values
            self._lag_buffer = buf
        elif event is not None:
            event.synchronize()  # waits, at most, for the previous forward's copy (host stays a step ahead)
        mean, sigma, overflow = buf.tolist()
        if any(overflow):
            self._lag_margin *= 2
            warnings.warn(
                f"{type(self).__name__}: the mask grew past the lagged crop in one step; the margin is now "
                f"{self._lag_margin:g} and one step used a slightly smaller kernel than the exact crop.")
        radius = threshold_radius(mask.threshold)
        starts, lengths = [], []
        for m, s, k in zip(mean, sigma, grid):
            half_width = max(abs(s), mask.eps) * radius
            step = 2.0 / (k - 1)
            if self.causal:
                margin = self._lag_margin * max(step, 0.01)
                # min with the unwidened crop: the rule keeps everything when the root passes +1 (not monotone)
                start = min(crop_extent_causal(m - half_width, k)[0], crop_extent_causal(m - half_width - margin, k)[0])
                length = k - start
                # Geometric buckets (eighth octaves) for long causal kernels, exact below 16 taps.
                length = k if length >= k else min(k, length if length <= 16 else
                                                   int(math.ceil(2 ** (math.ceil(8 * math.log2(length)) / 8))))
                start = k - length
            else:
                margin = self._lag_margin * step
                root = max(abs(m - half_width), abs(m + half_width)) + margin
                start, _ = crop_extent_centered(root, k)
                start = (start // 2) * 2  # lengths grow in steps of 4: 5, 9, 13, ... on a 33 grid
                length = k - 2 * start
            starts.append(start)
            lengths.append(length)
        return tuple(starts), tuple(lengths)

    def _record_lag(self, overflow: torch.Tensor) -> None:
        """Start the asynchronous copy of the current mask parameters (read by the next forward)."""
        buf, mask = self._lag_buffer, self.mask
        device = mask.sigma.device
        if buf is None or (device.type == 'cuda' and torch.cuda.is_current_stream_capturing()):
            return
        with torch.no_grad():
            values = torch.cat([mask.mean.detach()[None], mask.sigma.detach()[None], overflow[None]]).float()
            buf.copy_(values, non_blocking=device.type == 'cuda')
        if device.type == 'cuda':
            self._lag_event = torch.cuda.Event()
            self._lag_event.record()

    def compute_kernel(self, grid: Optional[Sequence[int]] = None, crop_mode: Optional[str] = None) -> torch.Tensor:
        """The masked, cropped kernel on ``grid`` (default: the current grid), ``(out, in, *crop)``.

        ``crop_mode`` overrides :attr:`crop_mode` (see the module docstring); in the 'lagged' and 'full'
        modes the kernel is larger than the exact crop, with zeros outside it.
        """
        grid = self.grid if grid is None else tuple(grid)
        ref = self.mask.sigma
        mode = self._resolve_crop_mode(ref.device) if crop_mode is None or ref.is_meta else crop_mode
        indicator = overflow = None
        if mode == 'exact':
            start, length = self.mask.crop(grid)
        else:
            start, length = self._lagged_window(grid) if mode == 'lagged' else ((0,) * self.dim, grid)
            if not ref.is_meta:  # meta: no values, and the output shape does not depend on the crop
                indicator, overflow = self._indicator(grid, start, length)
        positions = self._grid_positions(grid, start, length, ref.device, ref.dtype)
        values = self.kernel_net(positions)  # (P, out * in)
        weight = values.t().reshape(self.out_channels, self.in_channels, *length)
        mask = self.mask(positions).reshape(*length)
        if indicator is not None:
            mask = mask * indicator
        scale = sampling_rate_scale(self.source_grid, grid)
        if scale != 1.0:
            mask = mask * scale
        if mode == 'lagged':
            self._record_lag(overflow)
        return weight * mask

    def _kernel_cache_key(self, grid: Tuple[int, ...]):
        params = tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in self.parameters())
        # An inference-mode kernel cannot join autograd later; keep it apart from ordinary no_grad kernels.
        return grid, self.source_grid, torch.is_inference_mode_enabled(), params

    def _use_cache(self) -> bool:
        if self.training or torch.compiler.is_compiling() or self.mask.sigma.is_meta:
            return False
        # A cached kernel has no autograd history; only reuse it when none is needed.
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def get_kernel(self, grid: Tuple[int, ...]) -> torch.Tensor:
        if self.is_reparameterized:
            return self.weight
        if not self._use_cache():
            self._cached_kernel = None
            return self.compute_kernel(grid)
        key = self._kernel_cache_key(grid)
        if self._cached_kernel is None or self._cache_key != key:
            # Computed once: take the exact crop (smallest kernel, one host read).
            self._cached_kernel = self.compute_kernel(grid, crop_mode='exact')
            self._cache_key = key
        return self._cached_kernel

    def train(self, mode: bool = True):
        self._cached_kernel = None
        return super().train(mode)

    # ------------------------------------------------------------------ deployment
    @property
    def is_reparameterized(self) -> bool:
        """True after :meth:`reparameterize`: the layer is a fixed convolution with parameter ``weight``."""
        return 'weight' in self._parameters

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the kernel net and mask by their fixed product on the current grid (timm's convention,
        called for a whole model by ``timm.utils.reparameterize_model``).

        The layer keeps only ``weight`` (the exact crop, ``(out, in, *cropped_kernel_size)``) and ``bias`` and
        runs the same "same"/causal convolution, dispatched to direct or FFT by ``conv_method``: the function
        of the eval-mode layer at this resolution, without kernel net, mask or crop logic. Resample first
        (``set_input_size``): afterwards the grid is fixed.
        """
        if self.is_reparameterized:
            return
        if self.follow_input_size:
            raise ValueError(
                f"{type(self).__name__} has follow_input_size=True (a kernel per input size): set it to False and "
                f"call set_input_size for the deployment size before reparameterize().")
        if self.mask.sigma.is_meta:
            raise ValueError(f"{type(self).__name__} is on the meta device: load weights before reparameterize().")
        kernel = self.compute_kernel(self.grid, crop_mode='exact')
        self.clear_kernel_cache()
        del self.kernel_net, self.mask  # a plain conv carries no kernel net or mask
        self.weight = nn.Parameter(kernel.detach().clone(memory_format=torch.contiguous_format))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Reparameterized kernels have their learned crop size: take the size stored with the weights
        # (a freshly created model reparameterizes to its 5x5 init crop).
        weight = state_dict.get(prefix + 'weight')
        if self.is_reparameterized and isinstance(weight, torch.Tensor) and weight.shape != self.weight.shape:
            if weight.shape[:2] == self.weight.shape[:2] and weight.dim() == self.weight.dim():
                self.weight = nn.Parameter(self.weight.new_empty(weight.shape), self.weight.requires_grad)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2:
            layout = '(batch, channels, length)' if self.dim == 1 else '(batch, channels, height, width)'
            raise ValueError(
                f"{type(self).__name__} expects a {self.dim + 2}-D input {layout}, got shape {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}).")
        if any(n < MIN_INPUT_SIZE for n in x.shape[2:]):
            raise ValueError(
                f"{type(self).__name__} needs at least {MIN_INPUT_SIZE} samples per spatial dimension, "
                f"got input shape {tuple(x.shape)}.")
        if x.shape[0] == 0:  # the FFT libraries fail on empty batches with backend errors
            raise ValueError(f"{type(self).__name__} got an empty batch (input shape {tuple(x.shape)}).")
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects a floating-point input, got {x.dtype}: convert images first, "
                f"e.g. x.float() / 255 or timm's transforms (resolve_data_config + create_transform).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        grid = grid_size_for_input(x.shape[2:], self.dim, self.causal) if self.follow_input_size else self.grid
        weight = self.get_kernel(grid)
        bias = self.bias
        if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        if self.is_reparameterized and (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
            # ONNX has no complex matmul (nor can a trace keep the FFT path's host-side lengths)
            return _conv_for_export(x, weight, bias, self.causal, self.conv_method)
        return conv_nd(x, weight, bias, causal=self.causal, method=self.conv_method)

    # ------------------------------------------------------------------ regularisation
    def nyquist_frequency(self) -> float:
        """``f_Nyq = (K - 1) / 4``: the Nyquist frequency of the ``K``-point training grid over ``[-1, 1]``
        (the smallest ``K`` over dimensions)."""
        return (min(self.source_grid) - 1) / 4

    def _filter_net(self) -> nn.Module:
        if self.is_reparameterized:
            raise ValueError(f"{type(self).__name__} is reparameterized: it has no kernel net to regularise.")
        if not hasattr(self.kernel_net, 'layer_frequencies'):
            raise ValueError(
                f"The alias-free regulariser needs a multiplicative filter kernel net (magnet, gabor, fourier), "
                f"not {type(self.kernel_net).__name__}.")
        return self.kernel_net

    def frequency_penalty(self, include_mask: bool = False) -> torch.Tensor:
        """Alias-free penalty ``sum_l relu(f_l - f_Nyq / (L + 1))^2`` for the training grid.

        ``f_l`` is the largest frequency of Gabor/Fourier filter ``l`` (plus an equal share of the mask's with
        ``include_mask``) and ``f_Nyq`` is :meth:`nyquist_frequency`.
        """
        freqs = self._filter_net().layer_frequencies()
        num_filters = freqs.numel()
        if include_mask:
            freqs = freqs + self.mask.max_frequency() / num_filters
        return torch.relu(freqs - self.nyquist_frequency() / num_filters).pow(2).sum()

    @torch.no_grad()
    def band_limit_(self, include_mask: bool = False) -> None:
        """Project the kernel net onto the set where :meth:`frequency_penalty` is zero (see
        ``FlexConvModelMixin.band_limit_``); with ``include_mask`` a mask narrower than half the band
        (``1 / (pi sigma) > f_Nyq / 2``) is widened to it first and the kernel net gets what it leaves."""
        filter_net = self._filter_net()
        budget = self.nyquist_frequency()
        if include_mask:
            sigma = self.mask.sigma  # the mask only reads |sigma|
            sigma.copy_(sigma.sign().where(sigma != 0, torch.ones_like(sigma)) * sigma.abs().clamp_min(
                2 / (torch.pi * budget)))
            budget -= self.mask.max_frequency().item()
        filter_net.band_limit_(budget)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.grid}"
        if self.grid != self.source_grid:
            s += f", source_kernel_size={self.source_grid}"
        s += f", causal={self.causal}, conv_method={self.conv_method!r}, bias={self.bias is not None}"
        if self.is_reparameterized:
            s += f", reparameterized={tuple(self.weight.shape[2:])}"
        return s


class FlexConv1d(FlexConvNd):
    """1-D FlexConv, causal by default (the FlexTCN layer). Input ``(batch, channels, length)``.

    >>> conv = FlexConv1d(3, 16, kernel_size=1000)  # kernel grid of a 1000-step sequence
    >>> conv(torch.randn(2, 3, 1000)).shape
    torch.Size([2, 16, 1000])
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Sequence[int]] = 1000,
            bias: bool = True,
            causal: bool = True,
            **kwargs,
    ):
        super().__init__(in_channels, out_channels, kernel_size, bias, dim=1, causal=causal, **kwargs)


class FlexConv2d(FlexConvNd):
    """2-D FlexConv with "same" padding: a drop-in for ``nn.Conv2d(in, out, k, padding='same')``.

    >>> conv = FlexConv2d(3, 16, kernel_size=33)  # the grid of 32x32 images
    >>> conv(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 16, 32, 32])
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Sequence[int]] = 33,
            bias: bool = True,
            **kwargs,
    ):
        super().__init__(in_channels, out_channels, kernel_size, bias, dim=2, causal=False, **kwargs)
