"""timm-registered FlexConv models."""
from .flexnet import FlexNet, FlexNetBlock
from .flextcn import FlexTCN, FlexTCNBlock
from ._checkpoint import checkpoint_filter_fn, convert_original_state_dict

__all__ = ['FlexNet', 'FlexNetBlock', 'FlexTCN', 'FlexTCNBlock', 'checkpoint_filter_fn', 'convert_original_state_dict']
