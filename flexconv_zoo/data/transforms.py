"""Resolution-aware image transforms built from a model's timm data config.

The model and its transforms agree on the input size through ONE place: the model's data config
(``timm.data.resolve_data_config(model=model)``), which ``model.set_input_size(img_size=...)`` updates together
with the FlexConv kernel grids. Build transforms from that config; :func:`create_eval_transform` refuses a
config whose size disagrees with the size the model's kernels are sampled for, so the two cannot drift apart.

Train recipe (paper, CIFAR-10): random crop with 4 px zero padding and horizontal flip at the data's native
size, then a resize to the training size (the paper's 16 px protocol downsamples the augmented 32 px image).
Evaluation: resize the shorter side to ``size / crop_pct``, centre crop to ``size``. Both give exactly the
requested size for images of any size or aspect ratio.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torchvision.transforms import v2

from ..models import FlexConvModelMixin

__all__ = [
    'create_train_transform', 'create_eval_transform', 'eval_transform_for', 'model_input_size',
    'check_model_input_size', 'spatial_size',
]

SizeLike = Union[int, Sequence[int]]


def spatial_size(size: SizeLike) -> Tuple[int, int]:
    """``(H, W)`` from an int, an ``(H, W)`` pair or a timm ``input_size`` ``(C, H, W)``."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2:
        raise ValueError(f"Expected an image size as int, (H, W) or (C, H, W), got {size}.")
    return size


def _channel_stats(data_config: Dict[str, Any]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Mean/std with one value per input channel (a 3-value RGB statistic is averaged for grey images)."""
    chans = int(data_config['input_size'][0])
    mean, std = tuple(data_config['mean']), tuple(data_config['std'])
    if len(mean) != chans:
        mean = (sum(mean) / len(mean),) * chans
    if len(std) != chans:
        std = (sum(std) / len(std),) * chans
    return mean, std


def _cover_and_center_crop(size: Tuple[int, int], crop_pct: float = 1.0) -> list:
    """Resize the shorter side so the image covers ``size / crop_pct``, then centre crop to ``size``."""
    scale_size = int(round(max(size) / crop_pct))
    return [v2.Resize(scale_size, antialias=True), v2.CenterCrop(size)]


def _finish(data_config: Dict[str, Any]) -> list:
    mean, std = _channel_stats(data_config)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


def create_train_transform(
        data_config: Dict[str, Any],
        base_size: Optional[SizeLike] = None,
        padding: int = 4,
        hflip: float = 0.5,
) -> v2.Compose:
    """CIFAR recipe: crop with ``padding`` and flip at ``base_size`` (the data's native size), resize to the
    training size ``data_config['input_size']``.

    Args:
        data_config: timm data config of the model (``resolve_data_config(model=model)``).
        base_size: Size at which to augment (default: the training size). Images of another size or aspect
            ratio are first resized to cover it and centre cropped.
        padding: Zero padding of the random crop (paper: 4); 0 disables the crop.
        hflip: Probability of a horizontal flip (paper: 0.5).
    """
    size = spatial_size(data_config['input_size'])
    base = spatial_size(base_size) if base_size is not None else size
    ops = [v2.ToImage(), *_cover_and_center_crop(base)]
    if padding > 0:
        ops.append(v2.RandomCrop(base, padding=padding))
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if base != size:
        ops.append(v2.Resize(size, antialias=True))
    transform = v2.Compose(ops + _finish(data_config))
    transform.input_size = (int(data_config['input_size'][0]), *size)
    return transform


def model_input_size(model: nn.Module) -> Tuple[int, ...]:
    """The ``input_size`` ``(C, H, W)`` the model is set up for, read from its data config.

    For FlexConv models the config is checked against the grids the kernels are sampled on; a stale config
    (e.g. ``create_model(..., img_size=16)`` still advertising 32 px) raises ``ValueError``.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if 'input_size' not in cfg:
        raise ValueError(f"{type(model).__name__} has no pretrained_cfg['input_size'] to build transforms from.")
    input_size = tuple(int(s) for s in cfg['input_size'])
    if isinstance(model, FlexConvModelMixin) and tuple(model.input_size) != input_size:
        raise ValueError(
            f"{type(model).__name__}'s data config says input size {input_size[1:]} but its kernels are sampled for "
            f"{tuple(model.input_size)[1:]}; call model.set_input_size(...) so both agree.")
    return input_size


def check_model_input_size(data_config: Dict[str, Any], model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``data_config`` produces the input size ``model`` is set up for."""
    want = model_input_size(model)
    got = tuple(int(s) for s in data_config['input_size'])
    if want != got:
        raise ValueError(
            f"Transform size {got[1:]} disagrees with the model's input size {want[1:]}: call "
            f"model.set_input_size(img_size={got[-1]}) and build the transform from "
            f"resolve_data_config(model=model) instead of passing sizes separately.")


def create_eval_transform(data_config: Dict[str, Any], model: Optional[nn.Module] = None) -> v2.Compose:
    """Evaluation transform: cover ``input_size / crop_pct``, centre crop to ``input_size``, normalise.

    With ``model`` given, the config's size must equal the model's (see :func:`check_model_input_size`).
    """
    if model is not None:
        check_model_input_size(data_config, model)
    size = spatial_size(data_config['input_size'])
    ops = [v2.ToImage(), *_cover_and_center_crop(size, float(data_config.get('crop_pct') or 1.0))]
    transform = v2.Compose(ops + _finish(data_config))
    transform.input_size = (int(data_config['input_size'][0]), *size)
    return transform


def eval_transform_for(model: nn.Module, img_size: Optional[SizeLike] = None) -> v2.Compose:
    """Set the model to ``img_size`` (if given) and return the matching eval transform (one place for both)."""
    from timm.data import resolve_data_config
    if img_size is not None:
        model.set_input_size(img_size=spatial_size(img_size))
    return create_eval_transform(resolve_data_config(model=model), model=model)
