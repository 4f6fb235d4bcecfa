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

In eval mode the cropped, masked kernel is cached (:class:`.kernel_cache.KernelCache`) and reused until a
parameter changes (in place or by replacement), the sampling grid changes, the module moves (``.to``), a state
dict is loaded, or the layer returns to train mode. In-place edits through ``.data`` bypass version counters:
call :meth:`FlexConvNd.clear_kernel_cache` after those, and after any change of the mask outside the optimizer
step (the 'lagged' crop below reads a copy of the mask made one forward earlier and can only follow small steps;
``set_mask_width`` and ``band_limit_`` do this themselves).

The crop is a shape, so deciding it reads the mask parameters on the host. ``crop_mode`` picks how
(the rule is :mod:`.crop`'s, used through :class:`.mask.GaussianMask`):

* ``'exact'`` (CPU default): read them every forward (free on CPU, a device sync on a GPU);
* ``'lagged'`` (CUDA default): read a copy made asynchronously one forward earlier, widen it by a margin and
  round it up to a few bucket sizes, then zero the taps outside the exact crop with a 0/1 indicator computed
  on the device (:class:`.crop.LaggedCrop`). Outputs and gradients equal the exact crop's as long as the crop
  moves less than the margin per step; a device-side flag reports (one step late) when it did not and the
  margin doubles;
* ``'full'`` (under ``torch.compile`` / export): no host read at all: the whole grid times the indicator.
  Same function, no graph breaks, but the convolution always costs the full kernel size.

The alias-free regulariser (:meth:`FlexConvNd.frequency_penalty`, :meth:`FlexConvNd.band_limit_`) is
:mod:`.alias_free`'s.
"""
from contextlib import nullcontext
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import alias_free
from .config import FlexConvConfig
from .crop import CROP_MODES, LaggedCrop, resolve_crop_mode
from .dftconv import conv_dft_matmul
from .fftconv import CONV_METHODS, conv_direct_untrimmed, conv_nd
from .kernel_cache import KernelCache, autocast_state
from .kernelnet import create_kernel_net
from .mask import GaussianMask
from .resolution import MIN_INPUT_SIZE, check_size, grid_size_for_input, sampling_rate_scale, to_tuple

__all__ = ['FlexConvNd', 'FlexConv1d', 'FlexConv2d', 'CROP_MODES']


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
    return conv_direct_untrimmed(x, weight, bias, causal)


class FlexConvNd(nn.Module):
    """N-d FlexConv (N = 1 or 2). Use :class:`FlexConv1d` or :class:`FlexConv2d`.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        kernel_size: Points per dimension of the sampling grid: the size of the full, uncropped kernel (paper's
            horizon), as in ``nn.Conv2d``; the mask crops it to :attr:`cropped_kernel_size`.
        bias: Add a learnable bias (initialised to zero).
        dim: 1 or 2.
        causal: Causal 1-D convolution (kernel position +1 touches the current step); otherwise "same".
        config: The kernel net, mask and convolution options (:class:`FlexConvConfig`); its fields may also be
            given as keyword arguments (``kernel_net='siren'``), which update ``config``.
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
            config: Optional[FlexConvConfig] = None,
            device=None,
            dtype=None,
            **options: Any,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        config = FlexConvConfig.from_kwargs(type(self).__name__, config, **options)
        conv_method = config.conv_method
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
        self.follow_input_size = config.follow_input_size
        self.source_grid: Tuple[int, ...] = kernel_size  # the grid the kernel is trained on
        self.grid: Tuple[int, ...] = kernel_size  # the grid it is sampled on now

        self.kernel_net = create_kernel_net(
            config.kernel_net, dim, out_channels * in_channels,
            hidden=config.kernel_hidden, num_layers=config.kernel_layers, input_scale=config.kernel_input_scale,
            init_spatial=config.gabor_init_spatial, **dd,
        )
        self.mask = GaussianMask(
            dim, causal=causal, init_mean=config.mask_init_mean, init_sigma=config.mask_init_sigma,
            threshold=config.mask_threshold, **dd,
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **dd)) if bias else None
        self.crop_mode = 'auto'  # one of CROP_MODES, see the module docstring
        self._kernel_cache = KernelCache()
        self._lagged_crop = LaggedCrop(type(self).__name__)
        self.register_load_state_dict_post_hook(_clear_cache_after_load)  # a function, not a lambda: picklable

    # ------------------------------------------------------------------ resolution
    @property
    def kernel_size(self) -> Tuple[int, ...]:
        """Size of the full, uncropped kernel, as in ``nn.Conv2d``: the current sampling grid :attr:`grid` (the
        constructor's ``kernel_size`` until resampled). The mask crops it to :attr:`cropped_kernel_size`."""
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
        self._kernel_cache.clear()
        self._lagged_crop.clear()

    @property
    def _cached_kernel(self) -> Optional[torch.Tensor]:
        """The cached eval kernel, or None."""
        return self._kernel_cache.kernel

    def _apply(self, fn, *args, **kwargs):
        # .to(device/dtype), .cuda(), .half(): every cached tensor lives on the old device or dtype.
        self.clear_kernel_cache()
        return super()._apply(fn, *args, **kwargs)

    def compute_kernel(self, grid: Optional[Sequence[int]] = None, crop_mode: Optional[str] = None) -> torch.Tensor:
        """The masked, cropped kernel on ``grid`` (default: the current grid), ``(out, in, *crop)``.

        ``crop_mode`` overrides :attr:`crop_mode` (see the module docstring); in the 'lagged' and 'full'
        modes the kernel is larger than the exact crop, with zeros outside it.
        """
        grid = self.grid if grid is None else tuple(grid)
        ref = self.mask.sigma
        mode = resolve_crop_mode(self.crop_mode, ref.device) if crop_mode is None or ref.is_meta else crop_mode
        indicator = overflow = None
        if mode == 'exact':
            start, length = self.mask.crop(grid)
        else:
            start, length = self._lagged_crop.window(self.mask, grid) if mode == 'lagged' else ((0,) * self.dim, grid)
            if not ref.is_meta:  # meta: no values, and the output shape does not depend on the crop
                indicator, overflow = self.mask.indicator(grid, start, length)
        # bfloat16 (8 significant bits) turns a 16000-point grid into 1780 distinct positions: half-precision
        # layers sample their kernel in float32 (float32 copies of the kernel net's parameters, gradients flow
        # back to them) and round the kernel once; under autocast the kernel net and mask run in float32 too
        # (a bf16 kernel net was up to 2 % off) and the convolution rounds the kernel once, as it does any weight
        low = ref.dtype in (torch.float16, torch.bfloat16)
        positions = self._kernel_cache.positions(grid, start, length, ref.device,
                                                 torch.float32 if low else ref.dtype)
        with torch.autocast(ref.device.type, enabled=False) if autocast_state(ref.device)[1] else nullcontext():
            if low:
                params = {name: p.float() for name, p in self.kernel_net.named_parameters()}
                values = torch.func.functional_call(self.kernel_net, params, (positions,))
            else:
                values = self.kernel_net(positions)  # (P, out * in)
            mask = self.mask(positions).reshape(*length)
        weight = values.t().reshape(self.out_channels, self.in_channels, *length)
        if indicator is not None:
            mask = mask * indicator
        scale = sampling_rate_scale(self.source_grid, grid)
        if scale != 1.0:
            mask = mask * scale
        if mode == 'lagged':
            self._lagged_crop.record(self.mask, overflow)
        return (weight * mask).to(ref.dtype)

    def _use_cache(self) -> bool:
        if self.training or torch.compiler.is_compiling() or self.mask.sigma.is_meta:
            return False
        # A cached kernel has no autograd history; only reuse it when none is needed.
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def get_kernel(self, grid: Tuple[int, ...]) -> torch.Tensor:
        """The kernel a forward on ``grid`` uses: the weight once reparameterized, else the cached eval kernel
        (computed once with the exact crop: smallest kernel, one host read) or :meth:`compute_kernel`."""
        if self.is_reparameterized:
            return self.weight
        if not self._use_cache():
            self._kernel_cache.kernel = None
            return self.compute_kernel(grid)
        return self._kernel_cache.get(grid, self.source_grid, self.parameters(),
                                      lambda: self.compute_kernel(grid, crop_mode='exact'))

    def train(self, mode: bool = True):
        self._kernel_cache.kernel = None
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

    # ------------------------------------------------------------------ regularisation (see .alias_free)
    def nyquist_frequency(self) -> float:
        """``f_Nyq = (K - 1) / 4``: the Nyquist frequency of the ``K``-point training grid over ``[-1, 1]``
        (the smallest ``K`` over dimensions)."""
        return alias_free.nyquist_frequency(self.source_grid)

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
        return alias_free.frequency_penalty(self._filter_net(), self.mask, self.nyquist_frequency(), include_mask)

    def band_limit_(self, include_mask: bool = False) -> None:
        """Project the kernel net onto the set where :meth:`frequency_penalty` is zero (see
        ``FlexConvModelMixin.band_limit_``); with ``include_mask`` a mask narrower than half the band
        (``1 / (pi sigma) > f_Nyq / 2``) is widened to it first and the kernel net gets what it leaves."""
        alias_free.band_limit_(self._filter_net(), self.mask, self.nyquist_frequency(), include_mask)
        self.clear_kernel_cache()  # a widened mask: the 'lagged' crop's copy of it is stale

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
