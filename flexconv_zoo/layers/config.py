"""The options of a FlexConv layer, as one object.

A FlexConv is defined by its kernel network, its Gaussian mask and how it convolves. Models pass the same
options to every layer they build, so the options travel together: ``FlexConvConfig`` is what
``FlexConv1d`` / ``FlexConv2d``, ``FlexNet`` and ``FlexTCN`` accept, either as ``config=`` or as the flat
keyword arguments of its fields (the form ``config.json``'s ``model_args`` and ``timm.create_model`` use).
"""
import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

__all__ = ['FlexConvConfig', 'CONFIG_FIELDS']

# Kernel nets whose hidden layers are their only path from the position to the output (see .kernelnet).
POINTWISE_KERNEL_NETS = ('siren', 'mlp')


@dataclass(frozen=True)
class FlexConvConfig:
    """Options shared by every FlexConv layer of a model.

    Args:
        kernel_net: Kernel network name: 'magnet' (paper), 'gabor', 'fourier', 'siren' or 'mlp'.
        kernel_hidden: Hidden width of the kernel network (paper: 32).
        kernel_layers: Hidden layers of the kernel network (paper: 3, i.e. 4 Gabor filters); at least 1 for
            'siren' and 'mlp', 0 (one filter) for the multiplicative filter nets.
        kernel_input_scale: Frequency scale of the first layers (paper: 25.6).
        kernel_init_spatial: Range of the Gabor centres at init; None: 1.667 * mask_init_sigma (original code).
        mask_init_mean: Initial mask centre; None: 1.0 for causal layers (the present step), else 0.0.
        mask_init_sigma: Initial mask width (paper: 0.075, a 5x5 kernel on a 33-point grid).
        mask_threshold: Mask value where the kernel is cropped (paper: 0.1).
        conv_method: 'auto' (by kernel size and device), 'direct' or 'fft'.
        follow_input_size: Resample the kernel to every input's size instead of keeping the grid.
    """
    kernel_net: str = 'magnet'
    kernel_hidden: int = 32
    kernel_layers: int = 3
    kernel_input_scale: float = 25.6
    kernel_init_spatial: Optional[float] = None
    mask_init_mean: Optional[float] = None
    mask_init_sigma: float = 0.075
    mask_threshold: float = 0.1
    conv_method: str = 'auto'
    follow_input_size: bool = False

    def __post_init__(self):
        # caught here, not as a matmul or ZeroDivisionError deep inside the kernel net
        for name, value in (('kernel_hidden', self.kernel_hidden), ('kernel_layers', self.kernel_layers)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"FlexConvConfig.{name} must be an int, got {value!r}.")
        if self.kernel_hidden < 1:
            raise ValueError(f"FlexConvConfig.kernel_hidden must be at least 1, got {self.kernel_hidden}.")
        # a multiplicative filter net with 0 hidden layers is one filter and its output layer; an MLP needs a layer
        min_layers = 1 if str(self.kernel_net).lower() in POINTWISE_KERNEL_NETS else 0
        if self.kernel_layers < min_layers:
            raise ValueError(
                f"FlexConvConfig.kernel_layers must be at least {min_layers} for kernel_net={self.kernel_net!r}, "
                f"got {self.kernel_layers}.")

    @property
    def gabor_init_spatial(self) -> float:
        """Range of the Gabor centres at init: inside the initial mask unless given."""
        return 1.667 * self.mask_init_sigma if self.kernel_init_spatial is None else self.kernel_init_spatial

    @classmethod
    def from_kwargs(cls, owner: str, config: Optional['FlexConvConfig'] = None, **kwargs: Any) -> 'FlexConvConfig':
        """``config`` updated with the flat keyword arguments ``kwargs``; unknown names raise a ``TypeError``
        that lists the valid ones (``owner`` names the class that received them)."""
        unknown = sorted(set(kwargs) - set(CONFIG_FIELDS))
        if unknown:
            raise TypeError(
                f"{owner} got unexpected arguments {unknown}; its FlexConv options are {list(CONFIG_FIELDS)}.")
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"{owner}: config must be a FlexConvConfig, got {type(config).__name__}.")
        return dataclasses.replace(config or cls(), **kwargs)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


CONFIG_FIELDS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FlexConvConfig))
