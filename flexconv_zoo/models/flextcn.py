"""FlexTCN: causal temporal convolutional networks of FlexConvs for sequences.

Paper: "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel Sizes"
    David W. Romero, Robert-Jan Bruintjes, Jakub M. Tomczak, Erik J. Bekkers, Mark Hoogendoorn,
    Jan C. van Gemert. ICLR 2022. https://arxiv.org/abs/2110.08059
Original code (MIT): https://github.com/rjbruin/flexconv

N residual blocks of width 30, each ``FlexConv1d -> BN -> ReLU -> Dropout`` twice, a shortcut
(1x1 conv when widths differ) and a ReLU; the head is a linear layer on the last time step.
FlexTCN-2/4/6 have 105,548 / 239,436 / 373,324 parameters with 1 input channel and 10 classes (raw audio);
FlexTCN-6 reaches 91.73 % on raw Speech Commands (paper).

Inputs are ``(batch, channels, length)``. timm's tooling thinks in images, so ``(batch, channels, 1, length)``
is accepted as well and the pretrained configs describe sequences that way (``input_size = (C, 1, L)``).
``seq_len`` fixes the kernel grid (the paper's horizon: the kernel can span the whole training sequence).
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import FastDropout, FlexConv1d, FlexConvConfig
from ..layers.resolution import check_size
from ..loading import hub_weights
from ._base import (
    FlexConvModelMixin, as_sequence, create_flexconv_model, flexconv_cfg, restore_layout,
)

__all__ = ['FlexTCN', 'FlexTCNBlock']

SEQUENCE_POOLS = ('last', 'avg', '')


class FlexTCNBlock(nn.Module):
    """``[FlexConv1d -> BN -> ReLU -> Dropout] x 2 -> (+ shortcut) -> ReLU`` (Bai et al. 2018 TCN block)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            conv_layer: Callable[..., nn.Module],
            drop_rate: float = 0.1,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, **dd)
        self.norm1 = nn.BatchNorm1d(out_chs, **dd)
        self.conv2 = conv_layer(out_chs, out_chs, **dd)
        self.norm2 = nn.BatchNorm1d(out_chs, **dd)
        self.drop = FastDropout(drop_rate)
        self.act = nn.ReLU()
        self.shortcut = nn.Conv1d(in_chs, out_chs, 1, **dd) if in_chs != out_chs else nn.Identity()

    def forward_taps(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outputs after the first FlexConv stage and after the whole block."""
        hidden = self.drop(self.act(self.norm1(self.conv1(x))))
        out = self.drop(self.act(self.norm2(self.conv2(hidden))))
        return hidden, self.act(out + self.shortcut(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[1]


class SequenceHead(nn.Module):
    """Pool a ``(B, C, L)`` (or ``(B, C, 1, L)``) sequence ('last' step, 'avg', or '' for none) -> dropout -> linear.

    The linear acts on the channel axis: without pooling it classifies every step, ``(B, num_classes, L)``
    (or ``(B, num_classes, 1, L)``), and never mixes time steps."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = 'last', drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.pool_type = self._check_pool(pool_type)
        self.drop = FastDropout(drop_rate)
        self.fc = self._make_fc(num_classes, device=device, dtype=dtype)

    @staticmethod
    def _check_pool(pool_type: str) -> str:
        if pool_type not in SEQUENCE_POOLS:
            raise ValueError(f"FlexTCN global_pool must be one of {SEQUENCE_POOLS}, got {pool_type!r}.")
        return pool_type

    def _make_fc(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype)
        if not fc.weight.is_meta:
            nn.init.normal_(fc.weight, std=0.01)  # original code's head init
            nn.init.zeros_(fc.bias)
        return fc

    def reset(
            self,
            num_classes: int,
            pool_type: Optional[str] = None,
            in_features: Optional[int] = None,
            device=None,
            dtype=None,
    ) -> None:
        if pool_type is not None:
            self.pool_type = self._check_pool(pool_type)
        if in_features is not None:
            self.in_features = in_features
        self.fc = self._make_fc(num_classes, **get_device_dtype(self, device=device, dtype=dtype))
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == 'last':
            x = x[..., -1].flatten(1)
        elif self.pool_type == 'avg':
            x = x.flatten(2).mean(-1)
        x = self.drop(x)
        if pre_logits:
            return x
        # Channels to the last axis and back: a no-op for pooled (B, C) features, per-step logits without pooling.
        # Unconditional, so that torch.fx traces one graph for every pool type.
        return self.fc(x.movedim(1, -1)).movedim(-1, 1)


class FlexTCN(FlexConvModelMixin, nn.Module):
    """FlexTCN sequence classifier.

    Args:
        widths: Width of each residual block (paper: 30 for every block).
        in_chans: Input channels (1 for raw audio, 20 for MFCC features, 3 for CharacterTrajectories).
        num_classes: Classes of the head (0 removes the classifier).
        global_pool: 'last' (paper: classify from the last step), 'avg', or '' for no pooling (features, or
            per-step logits ``(B, num_classes, L)`` with a classifier).
        seq_len: Sequence length the model trains on; the kernel grid has ``seq_len`` points.
        drop_rate: Dropout before the classifier.
        block_drop_rate: Dropout inside each block.
        config: Options of every causal :class:`~flexconv_zoo.layers.FlexConv1d`
            (:class:`~flexconv_zoo.layers.FlexConvConfig`); its fields may also be given as keyword arguments.
    """
    size_arg = 'seq_len'
    size_unit = 'steps'

    def __init__(
            self,
            widths: Sequence[int] = (30, 30, 30, 30, 30, 30),
            in_chans: int = 1,
            num_classes: int = 10,
            global_pool: str = 'last',
            seq_len: int = 16000,
            drop_rate: float = 0.0,
            block_drop_rate: float = 0.1,
            config: Optional[FlexConvConfig] = None,
            device=None,
            dtype=None,
            **flexconv_args: Any,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.init_model_attributes(widths, in_chans, num_classes, drop_rate)
        self.flexconv_config = FlexConvConfig.from_kwargs('FlexTCN', config, **flexconv_args)

        conv_layer = partial(FlexConv1d, causal=True, config=self.flexconv_config)
        blocks, self.feature_info = [], []
        prev_chs = in_chans
        for i, width in enumerate(widths):
            blocks.append(FlexTCNBlock(prev_chs, width, conv_layer, drop_rate=block_drop_rate, **dd))
            # Two feature taps per block (after each FlexConv stage), so even FlexTCN-2 has 4 levels.
            self.feature_info += [
                dict(num_chs=width, reduction=1, module=f'blocks.{i}.norm1', stage=i),
                dict(num_chs=width, reduction=1, module=f'blocks.{i}', stage=i),
            ]
            prev_chs = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = prev_chs
        self.head = SequenceHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.set_source_size(seq_len)

    @staticmethod
    def spatial_size(size: Union[int, Sequence[int]], in_chans: Optional[int] = None) -> Tuple[int]:
        """``L``, ``(L,)``, ``(1, L)`` or timm's ``(C, 1, L)`` -> ``(L,)``: image-style sizes carry the length last."""
        if isinstance(size, (str, bytes)) or not (isinstance(size, int) or hasattr(size, '__getitem__')):
            raise TypeError(f"seq_len must be an int or a size ending in the length, got {size!r}.")
        if not isinstance(size, int) and len(size) == 3 and in_chans is not None and size[0] != in_chans:
            raise ValueError(f"input size {tuple(size)} has {size[0]} channels, the model {in_chans}.")
        return check_size(size if isinstance(size, int) else size[-1], 1, 'seq_len')

    @staticmethod
    def full_input_size(in_chans: int, spatial: Sequence[int]) -> Tuple[int, int, int]:
        return (in_chans, 1, spatial[-1])

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^blocks\.0\.', blocks=r'^blocks\.(\d+)')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCL',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns intermediate features (see timm's ``forward_intermediates``).

        There are two taps per block: tap ``2i`` follows block ``i``'s first FlexConv stage, tap ``2i + 1``
        is block ``i``'s output. ``output_fmt='NCL'`` gives ``(B, C, L)``, ``'NCHW'`` gives ``(B, C, 1, L)``.
        """
        if output_fmt not in ('NCL', 'NCHW'):
            raise ValueError(f"FlexTCN intermediates are 'NCL' or 'NCHW' (B, C, 1, L), got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        inputs = x
        x = as_sequence(x, self.in_chans, type(self).__name__)
        blocks = self.blocks[:max_index // 2 + 1] if stop_early else self.blocks
        intermediates = []
        for idx, block in enumerate(blocks):
            for tap, feat in zip((2 * idx, 2 * idx + 1), block.forward_taps(x)):
                if tap in take_indices:
                    intermediates.append(feat.unsqueeze(2) if output_fmt == 'NCHW' else feat)
                x = feat
        if intermediates_only:
            return intermediates
        return restore_layout(x, inputs), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, L)`` -> ``(B, width, L)``; ``(B, C, 1, L)`` -> ``(B, width, 1, L)``."""
        return restore_layout(self.forward_blocks(as_sequence(x, self.in_chans, type(self).__name__)), x)

    # Defined here, not in the mixin: FX wraps the input checks through the globals of the module of ``forward``.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_flextcn(variant: str, pretrained: bool = False, **kwargs: Any) -> FlexTCN:
    num_blocks = len(kwargs.get('widths', ()))
    # Features come from forward_intermediates, which accepts both (B, C, L) and (B, C, 1, L).
    feature_cfg = dict(feature_cls='getter', out_indices=tuple(range(2 * num_blocks)))
    return create_flexconv_model(FlexTCN, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return flexconv_cfg(**{
        'num_classes': 10, 'input_size': (1, 1, 16000), 'pool_size': (1, 16000), 'mean': (0.0,), 'std': (1.0,),
        'first_conv': 'blocks.0.conv1.kernel_net.output', **kwargs})


def _mnist1d_cfg(name: str, sha256: str) -> Dict[str, Any]:
    # MNIST-1D (Greydanus 2020): 10 classes of length-40, 1-channel sequences, generated offline by `mnist1d`.
    return _cfg(**hub_weights(f'{name}.mnist1d', sha256), input_size=(1, 1, 40), pool_size=(1, 40),
                label_names=tuple(str(digit) for digit in range(10)))


def _japanese_vowels_cfg(name: str, sha256: str) -> Dict[str, Any]:
    # UEA JapaneseVowels (Kudo et al. 1999): 9 speakers (labels '1'-'9'), 12 LPC cepstrum channels, utterances of
    # 7-29 steps end-aligned in 29 (flexconv_zoo.data.datasets.load_japanese_vowels; the files ship with the package).
    return _cfg(**hub_weights(f'{name}.japanese_vowels', sha256), num_classes=9, input_size=(12, 1, 29),
                pool_size=(1, 29), mean=(0.0,) * 12, std=(1.0,) * 12,
                label_names=tuple(str(speaker) for speaker in range(1, 10)))


# Published tags: the shipped copy is the source (no network), hf_hub_id once published, sha256 of the bytes.
default_cfgs = generate_default_cfgs({
    'flextcn2.mnist1d': _mnist1d_cfg('flextcn2', 'd594d66d9bca432f2b9de54598320a46b180ae0bc092387aa3699c88188a1204'),
    'flextcn4.mnist1d': _mnist1d_cfg('flextcn4', '8e104d7fc80d13538fbdb0d79362225e23f19c012802d061a2c9ac2fa5659d37'),
    'flextcn6.mnist1d': _mnist1d_cfg('flextcn6', '0e3c992f97b39532100c8a42a28f231b42e29a67e35306ccd28b6ff0417540c5'),
    'flextcn4.japanese_vowels': _japanese_vowels_cfg(
        'flextcn4', '692f16cd8808aa3a224849b606c9b7e0d6024192c70e3d35c9880668f7ac7c13'),
    'flextcn2.untrained': _cfg(),
    'flextcn4.untrained': _cfg(),
    'flextcn6.untrained': _cfg(),
})


@register_model
def flextcn2(pretrained: bool = False, **kwargs: Any) -> FlexTCN:
    """FlexTCN-2: 2 blocks of width 30, 105,548 parameters (1 channel, 10 classes)."""
    return _create_flextcn('flextcn2', pretrained=pretrained, **dict(dict(widths=(30,) * 2), **kwargs))


@register_model
def flextcn4(pretrained: bool = False, **kwargs: Any) -> FlexTCN:
    """FlexTCN-4: 4 blocks of width 30, 239,436 parameters (1 channel, 10 classes)."""
    return _create_flextcn('flextcn4', pretrained=pretrained, **dict(dict(widths=(30,) * 4), **kwargs))


@register_model
def flextcn6(pretrained: bool = False, **kwargs: Any) -> FlexTCN:
    """FlexTCN-6: 6 blocks of width 30, 373,324 parameters (1 channel, 10 classes)."""
    return _create_flextcn('flextcn6', pretrained=pretrained, **dict(dict(widths=(30,) * 6), **kwargs))
