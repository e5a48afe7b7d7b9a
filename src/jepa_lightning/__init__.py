"""jepa-lightning: Lightning modules for JEPA-style self-supervised pretraining."""

from jepa_lightning.callbacks import (
    CollapseMonitor,
    EMAMomentumSchedule,
    FitSummary,
    KNNMonitor,
    MaskImageLogger,
    OnlineLinearProbe,
)
from jepa_lightning.checkpointing import AtomicCheckpointIO, CheckpointError
from jepa_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SSLDataModule,
)
from jepa_lightning.evaluation import FineTune, KNNEvaluation, LinearEvaluation, load_pretrained
from jepa_lightning.faults import DistributedFailureReport
from jepa_lightning.methods import CJEPA, CNNJEPA, IJEPA, JEPAModule
from jepa_lightning.preemption import Preempted, PreemptionCheckpoint

__version__ = "0.1.0"

__all__ = [
    "CJEPA",
    "CNNJEPA",
    "IJEPA",
    "AtomicCheckpointIO",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CheckpointError",
    "CollapseMonitor",
    "DigitsDataModule",
    "DistributedFailureReport",
    "EMAMomentumSchedule",
    "FineTune",
    "FitSummary",
    "ImageFolderDataModule",
    "JEPAModule",
    "KNNEvaluation",
    "KNNMonitor",
    "LinearEvaluation",
    "MaskImageLogger",
    "OnlineLinearProbe",
    "Preempted",
    "PreemptionCheckpoint",
    "SSLDataModule",
    "__version__",
    "load_pretrained",
]
