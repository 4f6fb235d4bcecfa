"""FlexConv building blocks: kernel networks, the Gaussian mask and its crop, FFT/direct convolution, the layers."""
from .config import FlexConvConfig
from .dropout import FastDropout
from .fftconv import choose_conv_method, conv_direct, conv_fft, conv_nd, next_fast_len
from .flexconv import FlexConv1d, FlexConv2d, FlexConvNd
from .kernelnet import (
    KERNEL_NETS, SIREN, FourierNet, GaborNet, MAGNet, MLPKernelNet, MultiplicativeFilterNet, create_kernel_net,
)
from .mask import GaussianMask
from .resolution import grid_size_for_input, sampling_rate_scale

__all__ = [
    'FastDropout', 'FlexConvNd', 'FlexConv1d', 'FlexConv2d', 'FlexConvConfig', 'GaussianMask', 'MAGNet', 'GaborNet', 'FourierNet',
    'SIREN', 'MLPKernelNet', 'MultiplicativeFilterNet', 'KERNEL_NETS', 'create_kernel_net', 'conv_nd', 'conv_direct',
    'conv_fft', 'choose_conv_method', 'next_fast_len', 'grid_size_for_input', 'sampling_rate_scale',
]
