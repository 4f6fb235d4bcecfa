"""Checkpoint conversion shared by FlexNet and FlexTCN.

Reads this package's own state dicts and the original FlexConv code's checkpoints
(github.com/rjbruin/flexconv: ``{"model": state_dict}`` with ``cconv1.Kernel.*``, ``mask_params``,
``train_length`` keys and 1x1-conv "linear" layers), and adapts the stem to another ``in_chans``.

Original checkpoints record the kernel grid of every layer (``train_length``); a model built for another
grid is refused with the size to use. (This package's own weights get their grid at model creation, from
the pretrained cfg's ``input_size``: see ``create_flexconv_model`` in ``_base.py``.)
"""
import re
from typing import Dict, Tuple

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

__all__ = ['checkpoint_filter_fn', 'convert_original_state_dict', 'is_original_checkpoint', 'check_original_grid']

# (pattern, replacement) applied in order to every key of an original checkpoint.
_ORIGINAL_RENAMES = [
    (r'^module\.', ''),
    (r'^cconv1\.', 'stem.conv.'),
    (r'^norm1\.', 'stem.norm.'),
    (r'^backbone\.', 'blocks.'),
    (r'^(blocks\.\d+)\.cconv(\d)\.', r'\1.conv\2.'),
    (r'^(blocks\.\d+)\.shortcut\.0\.', r'\1.shortcut.'),
    (r'^(out_layer|finallyr)\.', 'head.fc.'),
    (r'\.Kernel\.filters\.', '.kernel_net.filters.'),
    (r'\.Kernel\.linear\.', '.kernel_net.linears.'),
    (r'\.Kernel\.output_linear\.', '.kernel_net.output.'),
]
_ORIGINAL_DROPPED = ('train_length', 'temperature', 'mask_threshold', 'conv_kernel')
# Original buffers that describe the layer rather than hold weights: checked against the model, then dropped.
_ORIGINAL_CHECKED = ('train_length', 'mask_threshold')


def is_original_checkpoint(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for a state dict in the layout of the original FlexConv code."""
    return any('.Kernel.' in k or k.endswith('mask_params') for k in state_dict)


def _rename_original_key(key: str) -> str:
    for pattern, repl in _ORIGINAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def original_layer_buffers(state_dict: Dict[str, torch.Tensor]) -> Dict[Tuple[str, str], torch.Tensor]:
    """``{(layer name in this package, buffer): value}`` of the original ``train_length`` / ``mask_threshold``."""
    out = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition('.')
        if leaf in _ORIGINAL_CHECKED:
            out[(_rename_original_key(prefix + '.x')[:-2], leaf)] = value
    return out


def check_original_grid(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse an original checkpoint whose layers were trained on another kernel grid or mask threshold.

    The original code stores per layer the grid size it sampled its kernel on (``train_length``, 0 when the
    layer never ran) and the crop threshold (``mask_threshold``). Loading them into a model with another grid
    would silently compute a different function.
    """
    problems = []
    for (layer_name, leaf), value in original_layer_buffers(state_dict).items():
        try:
            layer = model.get_submodule(layer_name)
        except AttributeError:
            continue  # not a layer of this model: the strict load reports the key mismatch
        if leaf == 'train_length':
            grid = int(value.reshape(-1)[0])
            if grid > 0 and any(k != grid for k in layer.source_grid):
                problems.append(f"{layer_name}: trained on a {grid}-point kernel grid, model has {layer.source_grid}")
        elif leaf == 'mask_threshold':
            threshold = float(value.reshape(-1)[0])
            if abs(threshold - layer.mask.threshold) > 1e-6:
                problems.append(f"{layer_name}: mask_threshold {threshold} in the checkpoint, {layer.mask.threshold} "
                                f"in the model")
    if problems:
        grids = sorted({int(v.reshape(-1)[0]) for (_, leaf), v in original_layer_buffers(state_dict).items()
                        if leaf == 'train_length'} - {0})
        hint = ''
        if grids:
            g = grids[0]
            hint = (f" Create the model for that grid: FlexNet img_size={g - 1} (grid = 2 * (img_size // 2) + 1), "
                    f"FlexTCN seq_len={g}; to run it at another resolution afterwards call model.set_input_size(...).")
        raise ValueError("Original FlexConv checkpoint does not match the model: " + '; '.join(problems[:4])
                         + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else '') + '.' + hint)


def convert_original_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename and reshape an original FlexConv state dict to this package's layout."""
    out = {}
    for key, value in state_dict.items():
        if key.rsplit('.', 1)[-1] in _ORIGINAL_DROPPED:
            continue
        key = _rename_original_key(key)
        if key.endswith('mask_params'):
            prefix = key[:-len('mask_params')]
            out[prefix + 'mask.mean'] = value[:, 0].clone()
            out[prefix + 'mask.sigma'] = value[:, 1].clone()
            continue
        is_pointwise_linear = '.kernel_net.' in key or key.startswith('head.fc.')
        if is_pointwise_linear and key.endswith('.weight') and value.dim() > 2:
            value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
        out[key] = value
    return out


def _adapt_stem_channels(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Adapt the first FlexConv's kernel-net output to ``model.in_chans`` input channels (timm's rule), and the
    plain convolutions that read the input beside it."""
    stem = next(model.flexconv_layers(), None)
    if stem is None:
        return
    prefix = next(n for n, m in model.named_modules() if m is stem) + '.kernel_net.output.'
    weight_key, bias_key = prefix + 'weight', prefix + 'bias'
    if weight_key not in state_dict:
        return
    out_chs, target_in = stem.out_channels, stem.in_channels
    rows = state_dict[weight_key].shape[0]
    if rows == out_chs * target_in or rows % out_chs:
        return  # already matching, or not ours to fix (load_state_dict reports it)
    source_in = rows // out_chs
    # Kernel-net output rows are ordered (out, in): view them as a conv weight (out, in, hidden, 1).
    weight = state_dict[weight_key].reshape(out_chs, source_in, -1, 1)
    state_dict[weight_key] = adapt_input_conv(target_in, weight, base_chans=source_in).reshape(
        out_chs * target_in, -1)
    if bias_key in state_dict:
        bias = state_dict[bias_key].reshape(out_chs, source_in, 1, 1)
        state_dict[bias_key] = adapt_input_conv(target_in, bias, base_chans=source_in).reshape(-1)
    _adapt_input_shortcuts(state_dict, model, source_in)


def _adapt_input_shortcuts(state_dict: Dict[str, torch.Tensor], model: nn.Module, source_in: int) -> None:
    """Adapt the plain convolutions that also read the input (FlexTCN's first 1x1 shortcut) like the stem."""
    for name, module in model.named_modules():
        key = name + '.weight'
        if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or key not in state_dict:
            continue
        weight, expected = state_dict[key], module.weight.shape
        if module.in_channels != model.in_chans or weight.shape[1] != source_in:
            continue
        if weight.shape[:1] + weight.shape[2:] != expected[:1] + expected[2:]:
            continue  # another layer than the model's: load_state_dict reports it
        as_2d = weight.reshape(*weight.shape, *([1] * (4 - weight.dim())))  # OIHW, as timm's rule takes
        state_dict[key] = adapt_input_conv(module.in_channels, as_2d, base_chans=source_in).reshape(expected)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm pretrained filter: unwrap, convert original checkpoints (grid-checked), adapt ``in_chans``."""
    for wrapper in ('model', 'state_dict', 'model_state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    if is_original_checkpoint(state_dict):
        check_original_grid(state_dict, model)
        state_dict = convert_original_state_dict(state_dict)
    state_dict = dict(state_dict)
    _adapt_stem_channels(state_dict, model)
    return state_dict

