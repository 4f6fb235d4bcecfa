"""Checkpoint conversion shared by FlexNet and FlexTCN.

Reads this package's own state dicts and the original FlexConv code's checkpoints
(github.com/rjbruin/flexconv: ``{"model": state_dict}`` with ``cconv1.Kernel.*``, ``mask_params``,
``train_length`` keys and 1x1-conv "linear" layers), and adapts the stem to another ``in_chans``.
"""
import re
from typing import Dict

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

__all__ = ['checkpoint_filter_fn', 'convert_original_state_dict', 'is_original_checkpoint']

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


def is_original_checkpoint(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any('.Kernel.' in k or k.endswith('mask_params') for k in state_dict)


def convert_original_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename and reshape an original FlexConv state dict to this package's layout."""
    out = {}
    for key, value in state_dict.items():
        if key.rsplit('.', 1)[-1] in _ORIGINAL_DROPPED:
            continue
        for pattern, repl in _ORIGINAL_RENAMES:
            key = re.sub(pattern, repl, key)
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
    """Adapt the first FlexConv's kernel-net output to ``model.in_chans`` input channels (timm's rule)."""
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


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm pretrained filter: unwrap, convert original checkpoints, adapt ``in_chans``."""
    for wrapper in ('model', 'state_dict', 'model_state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    if is_original_checkpoint(state_dict):
        state_dict = convert_original_state_dict(state_dict)
    state_dict = dict(state_dict)
    _adapt_stem_channels(state_dict, model)
    return state_dict
