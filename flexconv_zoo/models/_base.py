"""Behaviour shared by FlexConv models: access to their FlexConv layers, the alias-free regulariser,
mask control and input checks that stay outside FX-traced code."""
from typing import Iterator, List, Set, Tuple

import torch
import torch.nn as nn
from timm.layers import register_notrace_function

from ..layers import FlexConvNd

__all__ = ['FlexConvModelMixin', 'check_image_input', 'as_sequence', 'restore_layout']


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
