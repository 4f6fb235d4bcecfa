"""Kernel networks: continuous functions from relative positions to convolution kernel values.

A kernel network maps a point ``x`` in ``[-1, 1]^D`` to the ``out * in`` values of a convolution
kernel at that point. Every layer acts per point, so a kernel can be sampled on any grid.

MAGNet (Romero, Bruintjes et al., "FlexConv: Continuous Kernel Convolutions with Differentiable
Kernel Sizes", ICLR 2022) is a multiplicative filter network (Fathony et al., ICLR 2021) whose
filters are anisotropic Gabor functions::

    g_l(x) = exp(-1/2 * sum_d (gamma_{l,d} * (x_d - mu_{l,d}))^2) * sin(V_l x + c_l)
    h_0 = g_0(x);   h_l = g_l(x) * (W_l h_{l-1} + b_l);   k(x) = W_out h_L + b_out

The ablation baselines of the paper are selectable by name (:func:`create_kernel_net`):
``"magnet"``, ``"gabor"`` (MFN-Gabor, isotropic), ``"fourier"`` (MFN-Fourier), ``"siren"`` and ``"mlp"``.
"""
import inspect
import math
from typing import Callable, Dict, List, Optional, Type

import torch
import torch.nn as nn

__all__ = [
    'GaborFilter', 'FourierFilter', 'MultiplicativeFilterNet', 'MAGNet', 'GaborNet', 'FourierNet',
    'SIREN', 'MLPKernelNet', 'create_kernel_net', 'KERNEL_NETS', 'LAYER_OPTIONS',
]


class GaborFilter(nn.Module):
    """One Gabor filter ``exp(-|gamma * (x - mu)|^2 / 2) * sin(V x + c)`` with ``hidden`` outputs.

    ``gamma`` has shape ``(hidden, D)`` when anisotropic (MAGNet) and ``(hidden, 1)`` otherwise (MFN-Gabor).
    """

    def __init__(
            self,
            dim: int,
            hidden: int,
            input_scale: float,
            alpha: float,
            beta: float = 1.0,
            init_spatial: float = 0.125,
            anisotropic: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.input_scale = input_scale
        self.alpha = alpha
        self.beta = beta
        self.init_spatial = init_spatial
        self.linear = nn.Linear(dim, hidden, **dd)
        self.mu = nn.Parameter(torch.empty(hidden, dim, **dd))
        self.gamma = nn.Parameter(torch.empty(hidden, dim if anisotropic else 1, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.mu.is_meta:
            return
        self.mu.uniform_(-self.init_spatial, self.init_spatial)
        gamma = torch.distributions.Gamma(self.alpha, self.beta).sample(self.gamma.shape)
        self.gamma.copy_(gamma)
        self.linear.reset_parameters()
        # The frequency of each unit grows with its Gaussian envelope (paper: V = scale * gamma * V_default).
        self.linear.weight.mul_(self.input_scale * self.gamma)
        self.linear.bias.uniform_(-math.pi, math.pi)

    def unit_frequencies(self) -> torch.Tensor:
        """Frequency (cycles per unit length) of each unit and dimension: ``(|V| + 2 |gamma|) / 2 pi``."""
        return (self.linear.weight.abs() + 2 * self.gamma.abs()) / (2 * math.pi)

    def max_frequency(self) -> torch.Tensor:
        """Largest frequency of this filter (the alias-free regulariser's ``f_l``)."""
        return self.unit_frequencies().max()

    @torch.no_grad()
    def band_limit_(self, max_frequency: float) -> None:
        """Shrink ``V`` and ``gamma`` of every unit whose frequency exceeds ``max_frequency`` (same ratio for
        both, so the unit keeps its shape and only gets smoother)."""
        freq = self.unit_frequencies()
        # units within rounding of the limit are left alone, so that projecting twice changes nothing
        factor = torch.where(freq > max_frequency * (1 + 1e-6), max_frequency / freq, torch.ones_like(freq))
        self.linear.weight.mul_(factor)
        self.gamma.mul_(factor if self.gamma.shape == factor.shape else factor.min(-1, keepdim=True).values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        envelope = torch.exp(-0.5 * ((self.gamma * (x.unsqueeze(-2) - self.mu)) ** 2).sum(-1))
        return envelope * torch.sin(self.linear(x))


class FourierFilter(nn.Module):
    """A sine filter ``sin(V x + c)`` (MFN-Fourier)."""

    def __init__(self, dim: int, hidden: int, input_scale: float, device=None, dtype=None):
        super().__init__()
        self.input_scale = input_scale
        self.linear = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.linear.weight.is_meta:
            return
        self.linear.reset_parameters()
        self.linear.weight.mul_(self.input_scale)
        self.linear.bias.uniform_(-math.pi, math.pi)

    def max_frequency(self) -> torch.Tensor:
        return (self.linear.weight.abs() / (2 * math.pi)).max()

    @torch.no_grad()
    def band_limit_(self, max_frequency: float) -> None:
        """Clamp every frequency of ``V`` to ``max_frequency`` (keeping its sign)."""
        bound = 2 * math.pi * max_frequency
        self.linear.weight.clamp_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.linear(x))


class MultiplicativeFilterNet(nn.Module):
    """Multiplicative filter network: ``h_l = filter_l(x) * (W_l h_{l-1} + b_l)``, then a linear output.

    ``filter_type`` ('gabor' or 'fourier') and ``anisotropic`` default to the class's own: :class:`MAGNet`,
    :class:`GaborNet` and :class:`FourierNet` fix them.
    """
    filter_type: str = 'gabor'
    anisotropic: bool = True

    def __init__(
            self,
            dim: int,
            out_features: int,
            hidden: int = 32,
            num_layers: int = 3,
            input_scale: float = 25.6,
            init_spatial: float = 0.125,
            alpha: float = 6.0,
            beta: float = 1.0,
            filter_type: Optional[str] = None,
            anisotropic: Optional[bool] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if type(self) is not MultiplicativeFilterNet and (filter_type, anisotropic) != (None, None):
            raise TypeError(f"{type(self).__name__} fixes filter_type and anisotropic; use MultiplicativeFilterNet.")
        filter_type = self.filter_type if filter_type is None else filter_type
        anisotropic = self.anisotropic if anisotropic is None else anisotropic
        if filter_type not in ('gabor', 'fourier'):
            raise ValueError(f"filter_type must be 'gabor' or 'fourier', got {filter_type!r}.")
        self.filter_type, self.anisotropic = filter_type, anisotropic
        self.dim = dim
        self.out_features = out_features
        self.hidden = hidden
        # The total frequency of a product of L+1 sines adds up: split the input scale among them.
        layer_scale = input_scale / math.sqrt(num_layers + 1)
        filters = []
        for layer in range(num_layers + 1):
            if filter_type == 'gabor':
                # MAGNet lowers alpha with depth (wider envelopes deeper); MFN-Gabor uses one alpha.
                layer_alpha = alpha / (layer + 1) if anisotropic else alpha / (num_layers + 1)
                filters.append(GaborFilter(
                    dim, hidden, layer_scale, layer_alpha, beta, init_spatial, anisotropic, **dd))
            else:
                filters.append(FourierFilter(dim, hidden, layer_scale, **dd))
        self.filters = nn.ModuleList(filters)
        self.linears = nn.ModuleList([nn.Linear(hidden, hidden, **dd) for _ in range(num_layers)])
        self.output = nn.Linear(hidden, out_features, **dd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = math.sqrt(1.0 / self.hidden)
        for linear in self.linears:
            if not linear.weight.is_meta:
                linear.weight.uniform_(-bound, bound)

    def layer_frequencies(self) -> torch.Tensor:
        """Per-filter maximum frequency ``f_l`` used by the alias-free regulariser, shape ``(L+1,)``."""
        return torch.stack([f.max_frequency() for f in self.filters])

    @torch.no_grad()
    def band_limit_(self, max_frequency: float) -> None:
        """Project every filter onto ``f_l <= max_frequency / (L+1)``, the alias-free regulariser's feasible set."""
        for filt in self.filters:
            filt.band_limit_(max_frequency / len(self.filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.filters[0](x)
        for filt, linear in zip(self.filters[1:], self.linears):
            h = filt(x) * linear(h)
        return self.output(h)


class MAGNet(MultiplicativeFilterNet):
    """Multiplicative Anisotropic Gabor Network, the FlexConv kernel network."""
    filter_type, anisotropic = 'gabor', True


class GaborNet(MultiplicativeFilterNet):
    """MFN-Gabor (isotropic Gabor filters), the paper's MAGNet ablation."""
    filter_type, anisotropic = 'gabor', False


class FourierNet(MultiplicativeFilterNet):
    """MFN-Fourier: products of sines without Gaussian envelopes."""
    filter_type = 'fourier'


class _Sine(nn.Module):
    def __init__(self, omega_0: float):
        super().__init__()
        self.omega_0 = omega_0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega_0 * x)


class _PointwiseMLP(nn.Module):
    """``num_layers`` of ``Linear`` + activation from ``dim`` to ``hidden``, then a linear output."""

    def __init__(self, dim: int, out_features: int, hidden: int, num_layers: int,
                 activation: Callable[[], nn.Module], device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        widths = [dim] + [hidden] * num_layers
        layers: List[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out, **dd), activation()]
        self.body = nn.Sequential(*layers)
        self.output = nn.Linear(hidden, out_features, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.body(x))


class SIREN(_PointwiseMLP):
    """SIREN kernel net (Sitzmann et al., 2020): linear layers with ``sin(omega_0 * .)`` activations."""

    def __init__(
            self,
            dim: int,
            out_features: int,
            hidden: int = 32,
            num_layers: int = 3,
            omega_0: float = 30.0,
            device=None,
            dtype=None,
    ):
        super().__init__(dim, out_features, hidden, num_layers, lambda: _Sine(omega_0), device=device, dtype=dtype)
        self.omega_0 = omega_0
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        for i, linear in enumerate(linears):
            if linear.weight.is_meta:
                return
            fan_in = linear.in_features
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.omega_0
            linear.weight.uniform_(-bound, bound)


class MLPKernelNet(_PointwiseMLP):
    """Plain ReLU MLP kernel net (the CKConv baseline without sine activations)."""

    def __init__(self, dim: int, out_features: int, hidden: int = 32, num_layers: int = 3, device=None, dtype=None):
        super().__init__(dim, out_features, hidden, num_layers, nn.ReLU, device=device, dtype=dtype)


KERNEL_NETS: Dict[str, Type[nn.Module]] = {
    'magnet': MAGNet,
    'gabor': GaborNet,
    'fourier': FourierNet,
    'siren': SIREN,
    'mlp': MLPKernelNet,
}


# The options a FlexConv layer builds every kernel net with; each net is given those its constructor takes.
LAYER_OPTIONS = ('hidden', 'num_layers', 'input_scale', 'init_spatial')


def create_kernel_net(name: str, dim: int, out_features: int, **kwargs) -> nn.Module:
    """Build a kernel network by name (one of :data:`KERNEL_NETS`); options of :data:`LAYER_OPTIONS` that this
    net does not use (``input_scale`` for a SIREN) are left out, any other unknown option raises."""
    key = name.lower()
    if key not in KERNEL_NETS:
        raise ValueError(f"Unknown kernel_net {name!r}; choose one of {sorted(KERNEL_NETS)}.")
    cls = KERNEL_NETS[key]
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params or k not in LAYER_OPTIONS}
    return cls(dim, out_features, **kwargs)
