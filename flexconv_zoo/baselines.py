"""Reference CNNs that FlexNet is compared against (speed benchmark, paper tables).

CIFAR ResNet-44 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2): a 3x3 stem of
16 channels, three stages of 7 basic blocks (16, 32, 64 channels, stride 2 between stages), global average
pooling and a linear head. Shortcuts across stages are parameter-free (option A: subsample and zero-pad the
channels), which gives the paper's 0.66M parameters. Built from timm's :class:`~timm.models.resnet.BasicBlock`.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock

__all__ = ['CifarResNet', 'cifar_resnet44']


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the new channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts."""

    def __init__(
            self,
            depth: int = 44,
            widths: Sequence[int] = (16, 32, 64),
            in_chans: int = 3,
            num_classes: int = 10,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}.")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                down = PadShortcut(prev, width, stride) if stride != 1 or prev != width else None
                blocks.append(BasicBlock(prev, width, stride=stride, downsample=down))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x.mean((2, 3)))


def cifar_resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 for 32x32 images: 0.66M parameters with 10 classes."""
    return CifarResNet(depth=44, **kwargs)

