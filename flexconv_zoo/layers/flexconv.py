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
replacement), the sampling grid changes, or the layer returns to train mode.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .fftconv import CONV_METHODS, conv_nd
from .kernelnet import create_kernel_net
from .mask import GaussianMask
from .resolution import MIN_INPUT_SIZE, grid_positions, grid_size_for_input, sampling_rate_scale, to_tuple

__all__ = ['FlexConvNd', 'FlexConv1d', 'FlexConv2d']


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
        self._cached_kernel: Optional[torch.Tensor] = None
        self._cache_key = None

    # ------------------------------------------------------------------ resolution
    @property
    def kernel_size(self) -> Tuple[int, ...]:
        """The current sampling grid (largest kernel); the cropped size is :attr:`cropped_kernel_size`."""
        return self.grid

    @property
    def cropped_kernel_size(self) -> Tuple[int, ...]:
        """Size of the kernel after the mask crop on the current grid."""
        return self.mask.crop(self.grid)[1]

    def set_sampling_grid(self, grid_size: Union[int, Sequence[int]]) -> None:
        """Sample the continuous kernel on a grid of ``grid_size`` points per dimension."""
        grid = to_tuple(grid_size, self.dim, 'grid_size')
        if any(k < MIN_INPUT_SIZE for k in grid):
            raise ValueError(f"grid_size must be at least {MIN_INPUT_SIZE} per dimension, got {grid}.")
        self.grid = grid
        self._cached_kernel = None

    def set_input_size(self, input_size: Union[int, Sequence[int]]) -> None:
        """Announce that inputs now have ``input_size`` samples per dimension (resampled data)."""
        self.set_sampling_grid(grid_size_for_input(input_size, self.dim, causal=self.causal))

    def set_source_size(self, input_size: Union[int, Sequence[int]]) -> None:
        """Declare the input size the layer is trained at (its kernel grid) and sample on that grid."""
        self.source_grid = grid_size_for_input(input_size, self.dim, causal=self.causal)
        self.set_sampling_grid(self.source_grid)

    # ------------------------------------------------------------------ kernel
    def compute_kernel(self, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The masked, cropped kernel on ``grid`` (default: the current grid), ``(out, in, *crop)``."""
        grid = self.grid if grid is None else tuple(grid)
        ref = self.mask.sigma
        if ref.is_meta:
            # No values to crop with on the meta device; the output shape does not depend on the crop.
            start, length = (0,) * self.dim, grid
        else:
            start, length = self.mask.crop(grid)
        positions = grid_positions(grid, start, length, device=ref.device, dtype=ref.dtype)
        values = self.kernel_net(positions)  # (P, out * in)
        weight = values.t().reshape(self.out_channels, self.in_channels, *length)
        mask = self.mask(positions).reshape(*length)
        scale = sampling_rate_scale(self.source_grid, grid)
        if scale != 1.0:
            mask = mask * scale
        return weight * mask

    def _kernel_cache_key(self, grid: Tuple[int, ...]):
        return grid, self.source_grid, tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in self.parameters())

    def _use_cache(self) -> bool:
        if self.training or torch.compiler.is_compiling() or self.mask.sigma.is_meta:
            return False
        # A cached kernel has no autograd history; only reuse it when none is needed.
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def get_kernel(self, grid: Tuple[int, ...]) -> torch.Tensor:
        if not self._use_cache():
            self._cached_kernel = None
            return self.compute_kernel(grid)
        key = self._kernel_cache_key(grid)
        if self._cached_kernel is None or self._cache_key != key:
            self._cached_kernel = self.compute_kernel(grid)
            self._cache_key = key
        return self._cached_kernel

    def train(self, mode: bool = True):
        self._cached_kernel = None
        return super().train(mode)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        grid = grid_size_for_input(x.shape[2:], self.dim, self.causal) if self.follow_input_size else self.grid
        weight = self.get_kernel(grid)
        bias = self.bias
        if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return conv_nd(x, weight, bias, causal=self.causal, method=self.conv_method)

    # ------------------------------------------------------------------ regularisation
    def frequency_penalty(self, include_mask: bool = False) -> torch.Tensor:
        """Alias-free penalty ``sum_l relu(f_l - f_Nyq / (L + 1))^2`` for the training grid.

        ``f_l`` is the largest frequency of Gabor/Fourier filter ``l`` and ``f_Nyq = (K - 1) / 4`` the Nyquist
        frequency of a ``K``-point grid over ``[-1, 1]`` (the smallest ``K`` over dimensions).
        """
        if not hasattr(self.kernel_net, 'layer_frequencies'):
            raise ValueError(
                f"The alias-free regulariser needs a multiplicative filter kernel net (magnet, gabor, fourier), "
                f"not {type(self.kernel_net).__name__}.")
        freqs = self.kernel_net.layer_frequencies()
        num_filters = freqs.numel()
        if include_mask:
            mask_freq = 2 * (1.0 / self.mask.effective_sigma()).max() / (2 * torch.pi)
            freqs = freqs + mask_freq / num_filters
        nyquist = (min(self.source_grid) - 1) / 4
        return torch.relu(freqs - nyquist / num_filters).pow(2).sum()

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.grid}"
        if self.grid != self.source_grid:
            s += f", source_kernel_size={self.source_grid}"
        s += f", causal={self.causal}, conv_method={self.conv_method!r}, bias={self.bias is not None}"
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
