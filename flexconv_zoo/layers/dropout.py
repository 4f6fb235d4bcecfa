"""Dropout whose mask comes from ``torch.rand`` on the CPU.

Same distribution and scaling as :class:`torch.nn.Dropout` (each element kept with probability ``1 - p`` and
scaled by ``1 / (1 - p)``), but PyTorch's CPU ``bernoulli_`` is slow: forward + backward of one FlexNet-16 block's
dropout (batch 64, 24 channels, 32x32, 2 threads) took 13.2 ms with ``F.dropout`` and 6.0 ms with a mask drawn as
``rand >= p``, about 4 % of a whole 32 px training step over the seven blocks. Other devices and dtypes use
``nn.Dropout`` itself: a bfloat16 ``rand`` has too few levels to hit ``p`` exactly.
"""
import torch
import torch.nn as nn
from timm.layers import register_notrace_module

__all__ = ['FastDropout']


@register_notrace_module  # the path depends on the device and dtype: FX keeps the module as a leaf
class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with a faster mask on the CPU for float32 / float64 inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.p in (0.0, 1.0) or x.device.type != 'cpu'
                or x.dtype not in (torch.float32, torch.float64)):
            return super().forward(x)
        scale = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # one buffer: the scaled keep mask
        return x.mul_(scale) if self.inplace else x * scale
