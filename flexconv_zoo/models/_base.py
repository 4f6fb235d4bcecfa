"""What FlexNet and FlexTCN share: resolution, the timm model API, the FlexConv extras, model creation.

Resolution has one home here. A FlexConv model has two sizes:

* the **source size**: the resolution its kernels are trained on (``img_size`` / ``seq_len``); it sets every
  layer's kernel grid and is what ``config.json`` records;
* the **input size**: the resolution of the data it runs on now. :meth:`FlexConvModelMixin.set_input_size`
  resamples every continuous kernel for it (the paper's 16 px -> 32 px protocol) and makes the model's data
  config advertise it, so ``timm.data.resolve_data_config(model=model)`` builds transforms for the same size.

Sizes are given as an int, a spatial size, or timm's full ``input_size`` ``(C, H, W)`` (sequences: ``(C, 1, L)``).
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype, register_notrace_function, register_notrace_module
from timm.models import checkpoint_seq
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size

from ..layers import FlexConv1d, FlexConv2d, FlexConvConfig, FlexConvNd
from ..layers.resolution import sampling_rate_scale
from ..loading import build_flexconv_model
from ._checkpoint import checkpoint_filter_fn

__all__ = [
    'FlexConvModelMixin', 'create_flexconv_model', 'flexconv_cfg', 'advertise_input_size', 'check_image_input', 'as_sequence',
    'restore_layout',
]

Size = Union[int, Sequence[int]]

# FlexConv layers pick crop sizes and the convolution path at run time: FX must treat them as leaves.
for _cls in (FlexConvNd, FlexConv1d, FlexConv2d):
    register_notrace_module(_cls)


class FlexConvModelMixin:
    """Resolution, the shared timm API and the FlexConv extras of every FlexConv model.

    A model sets ``size_arg`` (its constructor's size argument), ``size_unit``, and implements
    :meth:`spatial_size` (any accepted size -> the per-dimension size its layers take) and
    :meth:`full_input_size` (channels and that size -> timm's ``input_size``). It keeps ``blocks``, ``head``, ``feature_info``
    (one entry per feature tap with the ``stage`` = block index it belongs to) and ``grad_checkpointing``.
    """
    size_arg: str = 'img_size'
    size_unit: str = 'px'
    flexconv_config: FlexConvConfig  # the options every FlexConv layer of the model was built with
    in_chans: int
    blocks: nn.Sequential
    head: nn.Module
    feature_info: List[Dict[str, Any]]

    @staticmethod
    def spatial_size(size: Size, in_chans: Optional[int] = None) -> Tuple[int, ...]:
        """Any accepted size -> the per-dimension size of the layers; ``in_chans`` checks a full input size."""
        raise NotImplementedError

    @staticmethod
    def full_input_size(in_chans: int, spatial: Sequence[int]) -> Tuple[int, ...]:
        """Channels and the per-dimension size -> timm's ``input_size``."""
        raise NotImplementedError

    def init_model_attributes(self, widths: Sequence[int], in_chans: int, num_classes: int, drop_rate: float) -> None:
        """The attributes timm reads on every model, set at the start of ``__init__``."""
        if not widths:
            raise ValueError(f"{type(self).__name__} needs at least one residual block (widths is empty).")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # FlexTCN features come back as (B, C, 1, L) for image-shaped inputs
        self.output_fmt = 'NCHW'

    # ------------------------------------------------------------------ resolution
    @property
    def source_input_size(self) -> Tuple[int, ...]:
        """``input_size`` of the data the kernels are trained on (the kernel grid's resolution)."""
        return self.full_input_size(self.in_chans, self._source_size)

    @property
    def input_size(self) -> Tuple[int, ...]:
        """``input_size`` the kernels are sampled for now (the source size unless resampled)."""
        return self.full_input_size(self.in_chans, self._run_size)

    def construction_args(self) -> Dict[str, Any]:
        """JSON-serialisable constructor arguments that rebuild the function the weights compute (``config.json``'s
        ``model_args``): the widths, the source size, the kernel net and mask sizes, and every other FlexConv
        option that differs from its default. ``conv_method`` is left out: it picks how to convolve, not what."""
        defaults = FlexConvConfig()
        always = ('kernel_hidden', 'kernel_layers', 'mask_threshold', 'mask_init_sigma')
        options = {k: v for k, v in self.flexconv_config.as_dict().items()
                   if k != 'conv_method' and (k in always or v != getattr(defaults, k))}
        widths = [block.conv1.out_channels for block in self.blocks]
        return dict(widths=widths, **options, **self.source_size_kwargs())

    def source_size_kwargs(self) -> Dict[str, Any]:
        """The source size as the constructor argument that rebuilds it (``config.json``'s ``model_args``)."""
        size = self._source_size
        return {self.size_arg: list(size) if len(size) > 1 else size[0]}

    def set_source_size(self, size: Size) -> None:
        """Declare the training resolution: every layer's kernel grid and the size the model runs at."""
        spatial = self.spatial_size(size, self.in_chans)
        self._source_size = self._run_size = spatial
        setattr(self, self.size_arg, spatial if len(spatial) > 1 else spatial[0])
        for layer in self.flexconv_layers():
            layer.set_source_size(spatial)

    def set_input_size(self, img_size: Optional[Size] = None, seq_len: Optional[Size] = None) -> None:
        """Run on data resampled to ``img_size`` (timm's name) / ``seq_len``: resample every kernel on that grid,
        scaled by ``(src / tgt)^D`` (paper's protocol), and advertise the size in the data config."""
        if seq_len is not None and self.size_arg != 'seq_len':
            raise TypeError(f"{type(self).__name__} takes images: set_input_size(img_size=...), not seq_len.")
        size = seq_len if seq_len is not None else img_size
        if size is None:
            return
        spatial = self.spatial_size(size, self.in_chans)  # checked before any layer changes
        resample_kernels(self, spatial, self.full_input_size(self.in_chans, spatial))
        self._run_size = spatial

    @torch.no_grad()
    def rebase_input_size(self, size: Size, rescale: bool = True) -> None:
        """Make ``size`` the training resolution without changing the model's function.

        :meth:`set_input_size` resamples every kernel and scales it by ``(src / tgt)^D``; that factor is then
        folded into each kernel net's output layer and the new size becomes the source size, so fine-tuning
        trains, regularises (alias-free Nyquist) and exports at the new size. ``rescale=False`` only declares
        the size, for weights that are already defined at it (a progressive run's checkpoint about to be loaded).
        """
        self.set_input_size(size)
        for layer in self.flexconv_layers() if rescale else ():
            scale = sampling_rate_scale(layer.source_grid, layer.grid)
            if scale != 1.0:
                output = layer.kernel_net.output
                output.weight.mul_(scale)
                if output.bias is not None:
                    output.bias.mul_(scale)
        self.set_source_size(size)
        if self.size_arg == 'img_size':  # timm records supported resizes for export (save_for_hf's model_args)
            update_model_input_size(self, img_size=self._source_size)

    # ------------------------------------------------------------------ FlexConv extras
    def flexconv_layers(self) -> Iterator[FlexConvNd]:
        """All FlexConv layers of the model, in order."""
        return (m for m in self.modules() if isinstance(m, FlexConvNd))

    def alias_free_penalty(self, weight: float = 0.1, include_mask: bool = False) -> torch.Tensor:
        """Alias-free FlexNet regulariser (paper §4): ``weight * sum_layers sum_l relu(f_l - f_Nyq / (L+1))^2``.

        Add it to the training loss to keep every kernel band-limited on the training grid, so that the
        model can later be evaluated at a higher resolution with :meth:`set_input_size`.
        """
        return weight * sum(layer.frequency_penalty(include_mask) for layer in self.flexconv_layers())

    @torch.no_grad()
    def band_limit_(self, include_mask: bool = False) -> None:
        """Project every kernel net onto the alias-free set of its training grid (where
        :meth:`alias_free_penalty` is zero) by smoothing the Gabor units that exceed their Nyquist share.

        The paper's initialisation puts MAGNet frequencies 2-15x above that share on a 17-point grid, and
        the penalty, which acts on one maximum per filter, takes hundreds of epochs to pull them all down;
        ``train.py --alias-free-init`` projects once at initialisation so training starts alias-free.
        With ``include_mask`` the Gaussian masks count too: a mask narrower than half the band
        (``1 / (pi sigma) > f_Nyq / 2``) is widened to it, and the kernel nets share what the mask leaves.
        """
        for layer in self.flexconv_layers():
            layer.band_limit_(include_mask)

    @torch.no_grad()
    def set_mask_width(self, sigma: float) -> None:
        """Set every Gaussian mask width to ``sigma`` (0.075 at init; >= 0.466 gives full-size kernels)."""
        for layer in self.flexconv_layers():
            layer.mask.sigma.fill_(sigma)
            layer.clear_kernel_cache()  # the 'lagged' crop's copy of the mask is one forward behind this jump

    def kernel_sizes(self) -> List[Tuple[int, ...]]:
        """The cropped kernel size of every FlexConv layer, as learned by its mask."""
        return [layer.cropped_kernel_size for layer in self.flexconv_layers()]

    def mask_parameter_names(self) -> List[str]:
        """Names of the mask parameters (trained at 0.1x the learning rate, without weight decay)."""
        return [n for n, _ in self.named_parameters() if '.mask.' in n]

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set(self.mask_parameter_names())

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))  # may refuse: before any change
        self.num_classes = num_classes

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the one holding the last feature ``indices`` needs, and the head if asked
        (always when blocks are dropped: the head no longer fits)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last_block = self.feature_info[max_index]['stage']
        pruned = last_block < len(self.blocks) - 1
        self.blocks = self.blocks[:last_block + 1]
        self.feature_info = [info for info in self.feature_info if info['stage'] <= last_block]
        self.num_features = self.head_hidden_size = self.feature_info[-1]['num_chs']
        if prune_head or pruned:
            self.head.reset(0, pool_type='', in_features=self.num_features, **get_device_dtype(self))
            self.num_classes = 0
        return take_indices

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The residual blocks, with gradient checkpointing when it is on."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)


def resample_kernels(model: nn.Module, spatial: Tuple[int, ...], input_size: Tuple[int, ...]) -> None:
    """Sample every FlexConv kernel of ``model`` for inputs of ``spatial`` size and advertise ``input_size``."""
    for layer in model.modules():
        if isinstance(layer, FlexConvNd):
            layer.set_input_size(spatial)
    advertise_input_size(model, input_size)


def advertise_input_size(model: nn.Module, input_size: Tuple[int, ...]) -> None:
    """Make the pretrained cfg advertise ``input_size`` (the size the model was built or resampled for), so
    ``timm.data.resolve_data_config(model=model)`` and the model agree."""
    cfg = getattr(model, 'pretrained_cfg', None)
    if not cfg or tuple(cfg.get('input_size') or ()) == tuple(input_size):
        return
    cfg = dict(cfg, input_size=tuple(input_size))
    cfg.pop('test_input_size', None)  # advertised for the published training size only
    model.pretrained_cfg = model.default_cfg = cfg


def _pretrained_input_size(variant: str, pretrained: bool, kwargs: Dict[str, Any], size_arg: str
                           ) -> Optional[Tuple[int, ...]]:
    """The resolved pretrained cfg's ``input_size`` when the model must be built on its kernel grid, else None.

    FlexConv weights are tied to the grid of their training resolution (``flexnet16.cifar10_16px_alias_free`` is
    trained at 16 px), which the cfg's ``input_size`` records. The model is built on it unless the caller gives
    ``kwargs[size_arg]`` for its own model or its own weights (``pretrained_cfg_overlay=dict(file=...)`` without
    an ``input_size``). For a published weight, a requested size is reached by resampling the kernels afterwards.
    """
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    if cfg is None or not cfg.input_size:
        return None
    if kwargs.get(size_arg) is None:
        return tuple(cfg.input_size)
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    # file=None only skips the shipped copy for the tag's Hub repo: the tag's weights, on the tag's grid.
    own_weights = (overlay.get('file') is not None or overlay.get('state_dict') is not None) \
        and 'input_size' not in overlay
    return tuple(cfg.input_size) if pretrained and not own_weights else None


def create_flexconv_model(
        model_cls: Type[FlexConvModelMixin],
        variant: str,
        pretrained: bool = False,
        feature_cfg: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
) -> nn.Module:
    """``_create_*`` of every FlexConv model: build on the kernel grid of the weights' training size, then
    resample to a different requested size (``img_size`` / ``seq_len``), which the data config then advertises."""
    size_arg = model_cls.size_arg
    requested = kwargs.get(size_arg)
    trained = _pretrained_input_size(variant, pretrained, kwargs, size_arg)
    if trained is not None:
        spatial = model_cls.spatial_size(trained)
        kwargs[size_arg] = spatial if len(spatial) > 1 else spatial[0]
    model = build_flexconv_model(
        model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)
    size = requested if requested is not None else kwargs[size_arg]
    if isinstance(model, FlexConvModelMixin):
        model.set_input_size(size)
    else:  # a timm feature wrapper (features_only=True): it has the layers but not the mixin
        spatial = model_cls.spatial_size(size)
        in_chans = next(m for m in model.modules() if isinstance(m, FlexConvNd)).in_channels
        resample_kernels(model, spatial, model_cls.full_input_size(in_chans, spatial))
    return model


def flexconv_cfg(**kwargs: Any) -> Dict[str, Any]:
    """The pretrained-cfg fields every FlexConv tag shares (the paper, the original code), plus ``kwargs``."""
    return {
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'classifier': 'head.fc',
        'paper_ids': 'arXiv:2110.08059',
        'paper_name': 'FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes',
        'origin_url': 'https://github.com/rjbruin/flexconv', 'license': 'mit',
        **kwargs,
    }


# ---------------------------------------------------------------------- input checks (outside FX-traced code)
@register_notrace_function
def check_image_input(x: torch.Tensor, in_chans: int, model_name: str) -> torch.Tensor:
    """Raise a clear error unless ``x`` is an image batch ``(B, in_chans, H, W)``."""
    if x.dim() != 4:
        hint = ' For sequences (B, C, L) use a FlexTCN model.' if x.dim() == 3 else ''
        raise ValueError(
            f"{model_name} expects images of shape (batch, {in_chans}, height, width), "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}.{hint}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{model_name} expects {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).")
    return x


@register_notrace_function
def as_sequence(x: torch.Tensor, in_chans: int, model_name: str) -> torch.Tensor:
    """Accept ``(B, C, L)`` or timm's image-shaped ``(B, C, 1, L)``, return ``(B, C, L)``."""
    if x.dim() == 4 and x.shape[2] == 1:
        x = x.squeeze(2)
    elif x.dim() != 3:
        hint = ' Images (B, C, H, W) need a FlexNet model.' if x.dim() == 4 else ''
        raise ValueError(
            f"{model_name} expects sequences of shape (batch, {in_chans}, length) or (batch, {in_chans}, 1, length), "
            f"got shape {tuple(x.shape)}.{hint}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{model_name} expects {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}).")
    return x


@register_notrace_function
def restore_layout(features: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Give ``(B, C, L)`` features the ``(B, C, 1, L)`` layout again when the input came in that way."""
    return features.unsqueeze(2) if like.dim() == 4 else features
