"""LightningModules: thin wiring around the nn.Modules in ``jepa_lightning.modules``."""

from jepa_lightning.methods.base import JEPAModule
from jepa_lightning.methods.c_jepa import CJEPA, IJEPA
from jepa_lightning.methods.cnn_jepa import CNNJEPA

__all__ = ["CJEPA", "CNNJEPA", "IJEPA", "JEPAModule"]
