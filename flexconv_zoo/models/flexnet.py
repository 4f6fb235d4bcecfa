"""FlexNet: residual networks of FlexConvs for images.

Paper: "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes"
    David W. Romero, Robert-Jan Bruintjes, Jakub M. Tomczak, Erik J. Bekkers, Mark Hoogendoorn,
    Jan C. van Gemert. ICLR 2022. https://arxiv.org/abs/2110.08059
Original code (MIT): https://github.com/rjbruin/flexconv

Every convolution is a FlexConv with a MAGNet kernel and a learned Gaussian mask; there is no striding or
pooling inside the network, so the receptive field comes from the learned kernel sizes alone.
FlexNet-L has L = 2N + 2 layers: a stem, N residual blocks of two FlexConvs, and a linear head.
FlexNet-16 (N = 7) has 671,650 parameters with 10 classes and reaches 92.2 % on CIFAR-10 (paper).

Resolution: ``img_size`` fixes the kernel grid the model trains on (33 points for 32 px). Inputs of other
sizes reuse that grid, like a CNN with fixed kernels; ``model.set_input_size(img_size=...)`` resamples the
continuous kernels for data of another resolution (the paper's 16 px -> 32 px protocol), and
``follow_input_size=True`` does that for every input automatically.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from ..layers import FastDropout, FlexConv2d, FlexConvConfig
from ..layers.resolution import check_size
from ..loading import hub_weights
from ._base import FlexConvModelMixin, check_image_input, create_flexconv_model, flexconv_cfg

__all__ = ['FlexNet', 'FlexNetBlock']


class FlexNetBlock(nn.Module):
    """``FlexConv -> BN -> ReLU -> Dropout -> FlexConv -> BN -> (+ shortcut) -> ReLU``.

    The shortcut is a 1x1 convolution when the width changes (as in the original code).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            conv_layer: Callable[..., nn.Module],
            drop_rate: float = 0.2,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, **dd)
        self.norm1 = nn.BatchNorm2d(out_chs, **dd)
        self.act1 = nn.ReLU()
        self.drop = FastDropout(drop_rate)
        self.conv2 = conv_layer(out_chs, out_chs, **dd)
        self.norm2 = nn.BatchNorm2d(out_chs, **dd)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, **dd) if in_chs != out_chs else nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.drop(self.act1(self.norm1(self.conv1(x))))
        x = self.norm2(self.conv2(x))
        return self.act2(x + shortcut)


class FlexStem(nn.Module):
    """``FlexConv -> BN -> ReLU``."""

    def __init__(self, in_chs: int, out_chs: int, conv_layer: Callable[..., nn.Module], device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class FlexNet(FlexConvModelMixin, nn.Module):
    """FlexNet image classifier.

    Args:
        widths: Output width of each residual block; the stem has ``widths[0]`` channels.
        in_chans: Input channels.
        num_classes: Classes of the head (0 removes the classifier).
        global_pool: Pooling before the head ('avg', 'max', 'avgmax', '' for none).
        img_size: Input size the model is trained at; it sets the kernel grid (``2 * (n // 2) + 1``).
        drop_rate: Dropout before the classifier.
        block_drop_rate: Dropout inside each residual block (paper: 0.2).
        config: Options of every :class:`~flexconv_zoo.layers.FlexConv2d` (:class:`~flexconv_zoo.layers.FlexConvConfig`);
            its fields may also be given as keyword arguments (``kernel_net='siren'``, ``mask_init_sigma=0.1``).
    """
    size_arg = 'img_size'
    size_unit = 'px'

    def __init__(
            self,
            widths: Sequence[int] = (24, 24, 36, 36, 36, 48, 48),
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 32,
            drop_rate: float = 0.0,
            block_drop_rate: float = 0.2,
            config: Optional[FlexConvConfig] = None,
            device=None,
            dtype=None,
            **flexconv_args: Any,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.init_model_attributes(widths, in_chans, num_classes, drop_rate)
        self.flexconv_config = FlexConvConfig.from_kwargs('FlexNet', config, **flexconv_args)

        conv_layer = partial(FlexConv2d, config=self.flexconv_config)
        self.stem = FlexStem(in_chans, widths[0], conv_layer, **dd)
        blocks, self.feature_info = [], []
        prev_chs = widths[0]
        for i, width in enumerate(widths):
            blocks.append(FlexNetBlock(prev_chs, width, conv_layer, drop_rate=block_drop_rate, **dd))
            self.feature_info.append(dict(num_chs=width, reduction=1, module=f'blocks.{i}', stage=i))
            prev_chs = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = prev_chs
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.set_source_size(img_size)
        self._init_head()

    @torch.no_grad()
    def _init_head(self) -> None:
        fc = self.head.fc
        if isinstance(fc, nn.Linear) and not fc.weight.is_meta:
            nn.init.kaiming_normal_(fc.weight)  # original code's head init
            nn.init.zeros_(fc.bias)

    @staticmethod
    def spatial_size(size: Union[int, Sequence[int]], in_chans: Optional[int] = None) -> Tuple[int, int]:
        """``n``, ``(H, W)`` or timm's ``(C, H, W)`` -> ``(H, W)``."""
        if not isinstance(size, (int, str, bytes)) and hasattr(size, '__len__') and len(size) == 3:
            if in_chans is not None and size[0] != in_chans:
                raise ValueError(f"input size {tuple(size)} has {size[0]} channels, the model {in_chans}.")
            size = size[1:]
        return check_size(size, 2, 'img_size')

    @staticmethod
    def full_input_size(in_chans: int, spatial: Sequence[int]) -> Tuple[int, int, int]:
        return (in_chans, *spatial)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^blocks\.(\d+)')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the outputs of the blocks selected by ``indices`` (see timm)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"FlexNet intermediates are NCHW, got output_fmt={output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem(check_image_input(x, self.in_chans, type(self).__name__))
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for idx, block in enumerate(blocks):
            x = block(x)
            if idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(self.stem(check_image_input(x, self.in_chans, type(self).__name__)))

    # Defined here, not in the mixin: FX wraps the input checks through the globals of the module of ``forward``.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_flexnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FlexNet:
    num_blocks = len(kwargs.get('widths', ()))
    feature_cfg = dict(out_indices=tuple(range(num_blocks)), flatten_sequential=True)
    return create_flexconv_model(FlexNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return flexconv_cfg(**{
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (32, 32), 'min_input_size': (3, 2, 2),
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD, 'first_conv': 'stem.conv.kernel_net.output', **kwargs})


# Published tags: the shipped copy is the source (no network), hf_hub_id once published, sha256 of the bytes.
default_cfgs = generate_default_cfgs({
    'flexnet16.cifar10': _cfg(
        **hub_weights('flexnet16.cifar10', '347838faf2888e6c137f2ea30e56d3e47a0efdbdc91f3a6429c149baac60bbec'),
        label_names=CIFAR10_CLASSES),
    'flexnet16.cifar10_16px_alias_free': _cfg(
        **hub_weights('flexnet16.cifar10_16px_alias_free',
                      '115529a374b34b7c9a05b8e5bee1993a3fa492ac5be6420434defc99a60f472b'),
        label_names=CIFAR10_CLASSES, input_size=(3, 16, 16), pool_size=(16, 16), test_input_size=(3, 32, 32)),
    'flexnet12.untrained': _cfg(),
    'flexnet8.untrained': _cfg(),
})


@register_model
def flexnet8(pretrained: bool = False, **kwargs: Any) -> FlexNet:
    """FlexNet-8: 3 blocks (widths chosen here; the paper lists FlexNet-8 without its widths)."""
    model_args = dict(widths=(24, 36, 48))
    return _create_flexnet('flexnet8', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def flexnet12(pretrained: bool = False, **kwargs: Any) -> FlexNet:
    """FlexNet-12: 5 blocks, 454,046 parameters with 10 classes."""
    model_args = dict(widths=(22, 33, 33, 44, 44))
    return _create_flexnet('flexnet12', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def flexnet16(pretrained: bool = False, **kwargs: Any) -> FlexNet:
    """FlexNet-16, the paper's CIFAR-10 model: 7 blocks, 671,650 parameters with 10 classes."""
    model_args = dict(widths=(24, 24, 36, 36, 36, 48, 48))
    return _create_flexnet('flexnet16', pretrained=pretrained, **dict(model_args, **kwargs))
