"""Plain ``nn.Module`` building blocks, usable without a Trainer."""

from jepa_lightning.modules.conv_predictor import ConvPredictor
from jepa_lightning.modules.masked_bn import MaskedBatchNorm2d
from jepa_lightning.modules.masked_resnet import (
    RESNETS,
    MaskedResNet,
    export_torchvision_state_dict,
    masked_average_pool,
)

__all__ = [
    "RESNETS",
    "ConvPredictor",
    "MaskedBatchNorm2d",
    "MaskedResNet",
    "export_torchvision_state_dict",
    "masked_average_pool",
]
