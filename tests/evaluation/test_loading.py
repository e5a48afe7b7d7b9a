"""Loading pretraining checkpoints for evaluation: class from the checkpoint, encoder choice,
random-init baselines."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from jepa_lightning import CNNJEPA, DigitsDataModule, LinearEvaluation, load_pretrained
from jepa_lightning.evaluation import build_method, use_encoder
from jepa_lightning.evaluation.pretrained import checkpoint_class_path
from jepa_lightning.modules.masked_resnet import masked_average_pool

SPEC = {
    "class_path": "jepa_lightning.CNNJEPA",
    "init_args": {"backbone": "resnet18", "small_images": True},
}


@pytest.fixture(scope="module")
def python_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by a plain Trainer (no CLI: the class is not recorded)."""
    tmp = tmp_path_factory.mktemp("python_ckpt")
    pl.seed_everything(0)
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32, warmup_epochs=0)
    trainer = pl.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(image_size=32, batch_size=8))
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_cli_checkpoint_records_its_class_and_loads(tiny_checkpoint: Path) -> None:
    assert checkpoint_class_path(tiny_checkpoint) == "jepa_lightning.CNNJEPA"
    module = load_pretrained(tiny_checkpoint)
    assert isinstance(module, CNNJEPA) and not module.training
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the EMA target encoder differs from the context encoder after training
    assert not torch.equal(
        module.target_encoder.layer4[1].conv2.weight, module.context_encoder.layer4[1].conv2.weight
    )


def test_python_checkpoint_needs_the_method_class(python_checkpoint: Path) -> None:
    assert checkpoint_class_path(python_checkpoint) is None
    with pytest.raises(ValueError, match="does not record its method class"):
        load_pretrained(python_checkpoint)
    module = load_pretrained(python_checkpoint, {"class_path": "jepa_lightning.CNNJEPA"})
    assert isinstance(module, CNNJEPA) and module.hparams.backbone == "resnet18"


def test_missing_checkpoint_and_nothing_to_evaluate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        LinearEvaluation()
    with pytest.raises(TypeError, match="not a JEPAModule"):
        build_method({"class_path": "torch.nn.Linear"})


def test_encoder_choice_and_embed(tiny_checkpoint: Path) -> None:
    images = torch.randn(3, 3, 32, 32)
    target = load_pretrained(tiny_checkpoint)
    context = use_encoder(load_pretrained(tiny_checkpoint), "context")
    expected_t = masked_average_pool(target.target_encoder(images))
    expected_c = masked_average_pool(context.context_encoder(images))
    evaluator_t = LinearEvaluation(checkpoint=str(tiny_checkpoint), num_classes=10)
    evaluator_c = LinearEvaluation(checkpoint=str(tiny_checkpoint), encoder="context")
    torch.testing.assert_close(evaluator_t.embed(images), expected_t)
    torch.testing.assert_close(evaluator_c.embed(images), expected_c)
    assert not torch.allclose(expected_t, expected_c)
    assert not any(p.requires_grad for p in evaluator_t.pretrained.parameters())


def test_random_init_follows_the_spec_and_image_size() -> None:
    module = build_method(SPEC, image_size=64)
    assert isinstance(module, CNNJEPA)
    assert module.hparams.image_size == 64 and module.grid == 8
    assert module.context_encoder.small_images and module.embed_dim == 512
    evaluator = LinearEvaluation(method=SPEC, image_size=32)
    assert evaluator.pretrained.grid == 4
    # an instance is used as it is (from Python), and is not stored in the hyper-parameters
    evaluator = LinearEvaluation(method=module)
    assert evaluator.pretrained is module and "method" not in evaluator.hparams
