"""flexconv_zoo: FlexConv (ICLR 2022) layers and models as a timm model zoo.

Importing the package registers ``flexnet8/12/16`` and ``flextcn2/4/6`` with timm::

    import timm, flexconv_zoo
    model = timm.create_model("flexnet16", num_classes=10)
"""
from . import hub, layers, models
from .layers import FlexConv1d, FlexConv2d
from .models import FlexNet, FlexTCN

__version__ = '0.1.0'

# Route timm's pretrained loading of FlexConv models through flexconv_zoo.hub (Hub download, bundled
# fallback before publication, clear errors for corrupt or mismatched files).
hub.install_pretrained_loader()
__all__ = ['hub', 'layers', 'models', 'FlexConv1d', 'FlexConv2d', 'FlexNet', 'FlexTCN', '__version__']
