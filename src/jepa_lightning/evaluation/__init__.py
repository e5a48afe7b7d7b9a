"""Evaluation of pretrained encoders: linear (cached features), k-NN, fine-tuning.

Every module here is a LightningModule that runs through ``jepa-lightning`` with the same
DataModules as pretraining (configs in ``configs/eval/``); export is in
:mod:`jepa_lightning.export`.
"""

from jepa_lightning.evaluation.finetune import FineTune
from jepa_lightning.evaluation.knn import KNNEvaluation
from jepa_lightning.evaluation.linear import LinearEvaluation
from jepa_lightning.evaluation.pretrained import (
    EvaluationModule,
    build_method,
    load_pretrained,
    use_encoder,
)

__all__ = [
    "EvaluationModule",
    "FineTune",
    "KNNEvaluation",
    "LinearEvaluation",
    "build_method",
    "load_pretrained",
    "use_encoder",
]
