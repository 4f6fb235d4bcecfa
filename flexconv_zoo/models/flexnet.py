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
from timm.layers import ClassifierHead, get_device_dtype, register_notrace_module, to_2tuple
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..data.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from ..layers import FlexConv1d, FlexConv2d, FlexConvNd
from ..layers.resolution import check_size
from ..loading import build_flexconv_model, hub_weights
from ._base import FlexConvModelMixin, check_image_input, pretrained_input_size, resample_to, sync_cfg_input_size
from ._checkpoint import checkpoint_filter_fn

__all__ = ['FlexNet', 'FlexNetBlock']

# FlexConv layers pick crop sizes and the convolution path at run time: FX must treat them as leaves.
for _cls in (FlexConvNd, FlexConv1d, FlexConv2d):
    register_notrace_module(_cls)



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
            act_layer: Callable[..., nn.Module] = nn.ReLU,
            norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, **dd)
        self.norm1 = norm_layer(out_chs, **dd)
        self.act1 = act_layer()
        self.drop = nn.Dropout(drop_rate)
        self.conv2 = conv_layer(out_chs, out_chs, **dd)
        self.norm2 = norm_layer(out_chs, **dd)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, **dd) if in_chs != out_chs else nn.Identity()
        self.act2 = act_layer()

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
        kernel_net, kernel_hidden, kernel_layers, kernel_input_scale, mask_init_sigma, mask_threshold,
        conv_method, follow_input_size: passed to every :class:`~flexconv_zoo.layers.FlexConv2d`.
    """

    def __init__(
            self,
            widths: Sequence[int] = (24, 24, 36, 36, 36, 48, 48),
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 32,
            drop_rate: float = 0.0,
            block_drop_rate: float = 0.2,
            kernel_net: str = 'magnet',
            kernel_hidden: int = 32,
            kernel_layers: int = 3,
            kernel_input_scale: float = 25.6,
            mask_init_sigma: float = 0.075,
            mask_threshold: float = 0.1,
            conv_method: str = 'auto',
            follow_input_size: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if not widths:
            raise ValueError("FlexNet needs at least one residual block (widths is empty).")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.output_fmt = 'NCHW'

        conv_layer = partial(
            FlexConv2d,
            kernel_net=kernel_net,
            kernel_hidden=kernel_hidden,
            kernel_layers=kernel_layers,
            kernel_input_scale=kernel_input_scale,
            mask_init_sigma=mask_init_sigma,
            mask_threshold=mask_threshold,
            conv_method=conv_method,
            follow_input_size=follow_input_size,
        )
        self.stem = FlexStem(in_chans, widths[0], conv_layer, **dd)
        blocks, self.feature_info = [], []
        prev_chs = widths[0]
        for i, width in enumerate(widths):
            blocks.append(FlexNetBlock(prev_chs, width, conv_layer, drop_rate=block_drop_rate, **dd))
            self.feature_info.append(dict(num_chs=width, reduction=1, module=f'blocks.{i}'))
            prev_chs = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = prev_chs
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.set_source_size(self.img_size)
        self._init_head()

    @torch.no_grad()
    def _init_head(self) -> None:
        fc = self.head.fc
        if isinstance(fc, nn.Linear) and not fc.weight.is_meta:
            nn.init.kaiming_normal_(fc.weight)  # original code's head init
            nn.init.zeros_(fc.bias)

    # ------------------------------------------------------------------ resolution
    def set_source_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Declare the training resolution (sets the kernel grid every layer is trained on)."""
        self.img_size = check_size(img_size, 2, 'img_size')
        for layer in self.flexconv_layers():
            layer.set_source_size(self.img_size)

    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None, **kwargs: Any) -> None:
        """Run on data of resolution ``img_size``: resample every kernel on that grid (paper's protocol).

        The pretrained config's ``input_size`` follows, so ``resolve_data_config(model=model)`` builds
        transforms for the same size.
        """
        if kwargs:
            raise TypeError(f"FlexNet.set_input_size got unexpected arguments {sorted(kwargs)}.")
        if img_size is None:
            return
        size = check_size(img_size, 2, 'img_size')  # before any layer changes
        for layer in self.flexconv_layers():
            layer.set_input_size(size)
        cfg = getattr(self, 'pretrained_cfg', None)
        if cfg:
            cfg = dict(cfg, input_size=(self.in_chans, *size))
            cfg.pop('test_input_size', None)
            self.pretrained_cfg = self.default_cfg = cfg

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))

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

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last one ``indices`` needs (and the head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < len(self.feature_info) - 1:
            self.head.reset(0, pool_type='', in_features=self.num_features, **get_device_dtype(self))
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_image_input(x, self.in_chans, type(self).__name__))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_flexnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FlexNet:
    # Kernels live on the grid of the training resolution; a different requested size is a resampling.
    run_size = kwargs.get('img_size')
    trained = pretrained_input_size(variant, pretrained, kwargs, 'img_size')
    if trained is not None:
        kwargs['img_size'] = trained[-2:]
    num_blocks = len(kwargs.get('widths', ()))
    model = build_flexconv_model(
        FlexNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(num_blocks)), flatten_sequential=True),
        **kwargs,
    )
    if trained is not None and run_size is not None and to_2tuple(run_size) != tuple(trained[-2:]):
        resample_to(model, to_2tuple(run_size))
    size = to_2tuple(run_size if run_size is not None else kwargs['img_size'])
    sync_cfg_input_size(model, (model.in_chans, *size))  # in_chans may come from the tag's cfg
    return model


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (32, 32), 'min_input_size': (3, 2, 2),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'stem.conv.kernel_net.output', 'classifier': 'head.fc',
        'paper_ids': 'arXiv:2110.08059',
        'paper_name': 'FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes',
        'origin_url': 'https://github.com/rjbruin/flexconv', 'license': 'mit',
        **kwargs,
    }


# Published tags: the shipped copy is the source (no network), hf_hub_id once published, sha256 of the bytes.
default_cfgs = generate_default_cfgs({
    'flexnet16.cifar10': _cfg(
        **hub_weights('flexnet16.cifar10', 'b7c6b4c307f7fcfc32cd37b525d7e0ea761f587cb0227cfd344be46e357889f2'),
        label_names=CIFAR10_CLASSES),
    'flexnet16.cifar10_16px_alias_free': _cfg(
        **hub_weights('flexnet16.cifar10_16px_alias_free',
                      'ba2e8cdc7e69aba137f1b0c290ffc71d22413a05099e2c2d3b689fe1c1a1d30e'),
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
