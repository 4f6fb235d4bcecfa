"""timm-registered FlexConv models."""
from ._base import FlexConvModelMixin
from ._checkpoint import checkpoint_filter_fn, convert_original_state_dict
from .flexnet import FlexNet, FlexNetBlock
from .flextcn import FlexTCN, FlexTCNBlock

__all__ = [
    'FlexConvModelMixin', 'FlexNet', 'FlexNetBlock', 'FlexTCN', 'FlexTCNBlock', 'checkpoint_filter_fn',
    'convert_original_state_dict',
]
