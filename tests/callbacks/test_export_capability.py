"""Export is a capability the module declares (``JEPAModule.exports_to_torchvision``, read off
its backbone), not a class the callbacks know: a new variant on a ResNet backbone gets the
closing summary's export line and the export itself; a ViT method gets neither."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
from callback_toys import ToyData, ToyJEPA

from jepa_lightning import CJEPA, CNNJEPA, FitSummary
from jepa_lightning.export import export_backbone
from jepa_lightning.modules import MaskedResNet

EXPORT = "jepa-lightning-export"


class ResNetVariant(ToyJEPA):
    """A variant the library has never heard of, on the masked ResNet trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.context_encoder = MaskedResNet("resnet18", small_images=True)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)


def _summary(module: pl.LightningModule, **kwargs: object) -> str:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    return FitSummary(**kwargs).summary(trainer, module)  # type: ignore[arg-type]


def test_the_capability_comes_from_the_backbone() -> None:
    assert ResNetVariant().exports_to_torchvision
    assert not ToyJEPA().exports_to_torchvision  # a Linear "backbone"
    tiny_vit = CJEPA(arch="vit_tiny", patch_size=4, image_size=32, depth=1, predictor_depth=1,
                     predictor_embed_dim=48)  # fmt: skip
    assert not tiny_vit.exports_to_torchvision
    cnn = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
    assert cnn.exports_to_torchvision
    cnn.features_from = "context"  # either encoder: the same trunk class
    assert cnn.exports_to_torchvision


def test_summary_offers_the_export_by_capability_and_the_flag_still_wins() -> None:
    assert EXPORT in _summary(ResNetVariant())
    assert EXPORT not in _summary(ToyJEPA())
    assert EXPORT not in _summary(ResNetVariant(), export=False)
    assert EXPORT in _summary(ToyJEPA(), export=True)


def test_export_refuses_a_module_without_the_capability(tmp_path: Path) -> None:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(ToyJEPA(), ToyData(n_train=64, n_val=32))
    ckpt = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(TypeError, match="exports_to_torchvision is False"):
        export_backbone(ckpt, tmp_path / "out.pt", method="callback_toys.ToyJEPA")
    assert not (tmp_path / "out.pt").exists()
