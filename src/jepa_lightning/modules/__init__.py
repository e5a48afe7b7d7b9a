"""Plain ``nn.Module`` building blocks, usable without a Trainer."""

from jepa_lightning.modules.conv_predictor import ConvPredictor
from jepa_lightning.modules.masked_bn import MaskedBatchNorm2d, recalibrate_batchnorm
from jepa_lightning.modules.masked_resnet import (
    RESNETS,
    MaskedResNet,
    export_torchvision_state_dict,
    masked_average_pool,
)
from jepa_lightning.modules.vit import VIT_ARCHS, ViTEncoder, sincos_pos_embed_2d
from jepa_lightning.modules.vit_predictor import ViTPredictor

__all__ = [
    "RESNETS",
    "VIT_ARCHS",
    "ConvPredictor",
    "MaskedBatchNorm2d",
    "MaskedResNet",
    "ViTEncoder",
    "ViTPredictor",
    "export_torchvision_state_dict",
    "masked_average_pool",
    "recalibrate_batchnorm",
    "sincos_pos_embed_2d",
]
