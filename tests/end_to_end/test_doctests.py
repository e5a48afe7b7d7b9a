"""The ``Example:`` sections of the public classes' docstrings run as doctests (tiny shapes, no
downloads)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "jepa_lightning.methods.cnn_jepa",
    "jepa_lightning.methods.c_jepa",
    "jepa_lightning.callbacks.collapse",
    "jepa_lightning.callbacks.ema",
    "jepa_lightning.callbacks.knn",
    "jepa_lightning.callbacks.mask_images",
    "jepa_lightning.callbacks.online_probe",
    "jepa_lightning.callbacks.summary",
    "jepa_lightning.data.batch",
    "jepa_lightning.data.cifar",
    "jepa_lightning.data.datamodule",
    "jepa_lightning.evaluation.finetune",
    "jepa_lightning.evaluation.knn",
    "jepa_lightning.evaluation.linear",
    "jepa_lightning.losses.sigreg",
    "jepa_lightning.losses.vicreg",
    "jepa_lightning.losses.visreg",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    torch.manual_seed(0)
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
