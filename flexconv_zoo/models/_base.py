"""Behaviour shared by FlexConv models: access to their FlexConv layers, the alias-free regulariser,
mask control and input checks that stay outside FX-traced code."""
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models._builder import resolve_pretrained_cfg

from ..layers import FlexConvNd

__all__ = ['FlexConvModelMixin', 'check_image_input', 'as_sequence', 'restore_layout', 'pretrained_input_size', 'resample_to', 'sync_cfg_input_size']


class FlexConvModelMixin:
    """Methods every FlexConv model offers on top of the timm model API."""

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

    def kernel_sizes(self) -> List[Tuple[int, ...]]:
        """The cropped kernel size of every FlexConv layer, as learned by its mask."""
        return [layer.cropped_kernel_size for layer in self.flexconv_layers()]

    def mask_parameter_names(self) -> List[str]:
        """Names of the mask parameters (trained at 0.1x the learning rate, without weight decay)."""
        return [n for n, _ in self.named_parameters() if '.mask.' in n]

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set(self.mask_parameter_names())


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




def pretrained_input_size(
        variant: str, pretrained: bool, kwargs: Dict[str, Any], size_key: str,
) -> Optional[Tuple[int, ...]]:
    """The resolved pretrained cfg's ``input_size`` when the model must be built on its kernel grid, else None.

    FlexConv weights are tied to the grid of their training resolution (``flexnet16.cifar10_16px_alias_free``
    is trained at 16 px), which the cfg's ``input_size`` records. The model is built on it unless the caller
    gives ``kwargs[size_key]`` (``img_size`` / ``seq_len``) for its own model or its own weights
    (``pretrained_cfg_overlay=dict(file=...)`` without an ``input_size``). For a published weight, a requested
    size is reached by resampling the kernels afterwards (``set_input_size``, the paper's protocol).
    """
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    if cfg is None or not cfg.input_size:
        return None
    if kwargs.get(size_key) is None:
        return tuple(cfg.input_size)
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    own_weights = ('file' in overlay or 'state_dict' in overlay) and 'input_size' not in overlay
    return tuple(cfg.input_size) if pretrained and not own_weights else None


def resample_to(model: nn.Module, size: Any) -> None:
    """Resample the kernels of ``model`` (a FlexConv model or a timm feature wrapper of one) for ``size``."""
    if hasattr(model, 'set_input_size'):
        model.set_input_size(size)
        return
    for layer in model.modules():
        if isinstance(layer, FlexConvNd):
            layer.set_input_size(size)


def sync_cfg_input_size(model: nn.Module, input_size: Tuple[int, ...]) -> None:
    """Make the pretrained cfg advertise ``input_size`` (the size the model was built or resampled for), so
    ``timm.data.resolve_data_config(model=model)`` and the model agree."""
    cfg = getattr(model, 'pretrained_cfg', None)
    if not cfg or tuple(cfg.get('input_size') or ()) == tuple(input_size):
        return
    cfg = dict(cfg, input_size=tuple(input_size))
    cfg.pop('test_input_size', None)  # advertised for the published training size only
    model.pretrained_cfg = model.default_cfg = cfg
