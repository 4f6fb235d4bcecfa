"""flexconv_zoo: FlexConv (ICLR 2022) layers and models as a timm model zoo.

Importing the package registers ``flexnet8/12/16`` and ``flextcn2/4/6`` with timm::

    import timm, flexconv_zoo
    model = timm.create_model("flexnet16", num_classes=10)
    model = timm.create_model("flexnet16", pretrained=True)   # the shipped CIFAR-10 weights, checked (loading.py)
"""
from . import layers, loading, models
from .layers import FlexConv1d, FlexConv2d
from .loading import PretrainedWeightsError, WeightsUnavailableError
from .models import FlexNet, FlexTCN

__version__ = '0.1.0'

__all__ = ['layers', 'loading', 'models', 'FlexConv1d', 'FlexConv2d', 'FlexNet', 'FlexTCN', 'PretrainedWeightsError',
           'WeightsUnavailableError', '__version__']
