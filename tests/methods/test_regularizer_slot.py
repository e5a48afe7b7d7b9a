"""The regulariser slot of CNN-JEPA and C-JEPA: SIGReg and VISReg on the embeddings each method
regularises, the optional projector, the deprecated ``vicreg`` spelling, CLI runs, and SIGReg's
directions after a resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from jepa_lightning import CJEPA, CNNJEPA
from jepa_lightning.cli import main
from jepa_lightning.losses import SIGRegTerms, VICRegTerms, VISRegTerms, normalized_smooth_l1

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
B, SIZE = 4, 32
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
       "--trainer.strategy", "auto", "--trainer.logger", "false"]  # fmt: skip
VIT = {"arch": "vit_tiny", "patch_size": 4, "image_size": SIZE, "depth": 1,
       "predictor_embed_dim": 48, "predictor_depth": 1}  # fmt: skip


def _cnn(**kwargs: Any) -> CNNJEPA:
    torch.manual_seed(0)
    return CNNJEPA(backbone="resnet18", small_images=True, image_size=SIZE, **kwargs).train()


def test_cnn_jepa_sigreg_on_the_projected_visible_mean_of_the_context() -> None:
    """loss = L_JEPA + w · SIGReg(projector(pooled context)), recomputed by brute force."""
    weight, reg = 0.05, SIGRegTerms(num_vectors=32, seed=1)
    model = _cnn(regularizer=reg, regularizer_weight=weight, regularizer_projector=[32, 8])
    images = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model.mask_generator.manual_seed(7)
    out = model.shared_step(images)
    out["loss"].backward()
    model.mask_generator.manual_seed(7)
    masks = model.sample_masks(B)
    with torch.no_grad():
        target = model.target_encoder(images)
        context = model.context_encoder(images, masks.context)  # (B, C, h, w)
        prediction = model.predictor(context, masks.context)
        z = torch.stack([f[:, m].mean(1) for f, m in zip(context, masks.context, strict=True)])
        projected = model.regularizer_projector(z)  # type: ignore[misc]
    assert projected.shape == (B, 8)
    expected = SIGRegTerms(num_vectors=32, seed=1)(projected, step=0)
    torch.testing.assert_close(out["sigreg_statistic"], expected.statistic, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out["jepa_loss"], normalized_smooth_l1(prediction, target, masks.target)
    )
    torch.testing.assert_close(out["loss"], out["jepa_loss"] + weight * out["sigreg_loss"])
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    projector = model.regularizer_projector
    assert projector is not None
    assert {f"regularizer_projector.{n}" for n, _ in projector.named_parameters()} <= grads
    assert any(n.startswith("context_encoder.") for n in grads)
    assert not any(n.startswith("target_encoder.") for n in grads)
    in_groups = {id(p) for g in model.parameter_groups() for p in g["params"]}
    assert all(id(p) in in_groups for p in projector.parameters())


def test_cjepa_visreg_on_the_patch_means_of_two_views() -> None:
    weight = 0.5
    torch.manual_seed(0)
    model = CJEPA(**VIT, regularizer=VISRegTerms(num_slices=32, sim_weight=1.0),
                  regularizer_weight=weight)  # fmt: skip
    assert model.num_views == 2 and model.uses_regularizer
    views = torch.randn(4, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    model.mask_generator.manual_seed(3)
    out = model.shared_step(views)
    out["loss"].backward()
    model.mask_generator.manual_seed(3)
    batch = torch.cat([views[:, 0], views[:, 1]])  # (2B, 3, H, W): views one after the other
    with torch.no_grad():
        fwd = model.forward_masked(batch, model.sample_masks(8))
    z1, z2 = fwd.context.mean(dim=1).chunk(2)  # patch means of the context tokens, per view
    expected = VISRegTerms(num_slices=32, sim_weight=1.0)(z1, z2, step=0)
    torch.testing.assert_close(out["visreg_loss"], expected.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], out["jepa_loss"] + weight * out["visreg_loss"])
    assert all(p.grad is not None for p in model.context_encoder.parameters())


def test_projector_is_optional_loads_without_the_regulariser_and_needs_one_to_train(
    tmp_path: Path,
) -> None:
    plain = _cnn(regularizer=SIGRegTerms())
    assert plain.regularizer_projector is None
    assert not any(k.startswith("regularizer") for k in plain.state_dict())
    model = _cnn(regularizer=SIGRegTerms(), regularizer_weight=0.05, regularizer_projector=[16])
    # The regulariser is not a hyper-parameter (a module), the projector's widths are: a
    # checkpoint loads with strict keys into a model built without the regulariser.
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, path)  # fmt: skip
    loaded = CNNJEPA.load_from_checkpoint(path)
    assert loaded.regularizer is None and loaded.regularizer_projector is not None
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    with pytest.raises(ValueError, match="regularizer_projector"):
        loaded.check_regularizer("fit")  # nothing would train the projector
    loaded.check_regularizer("validate")
    with pytest.raises(ValueError, match="positive"):
        _cnn(regularizer=SIGRegTerms(), regularizer_projector=[])


def test_old_spellings_warn_with_the_new_one_and_still_win() -> None:
    with pytest.warns(FutureWarning) as said:
        old = _cnn(vicreg=VICRegTerms(sim_weight=0.0), vicreg_weight=0.1)
    messages = [str(w.message) for w in said]
    assert any("--model.init_args.regularizer jepa_lightning" in m for m in messages)
    assert any("regularizer_weight: 0.1" in m for m in messages)
    assert isinstance(old.regularizer, VICRegTerms) and old.regularizer.sim_weight == 0.0
    assert old.regularizer_weight == 0.1 and old.vicreg is old.regularizer and old.uses_vicreg
    with pytest.warns(FutureWarning):
        off = _cnn(regularizer=SIGRegTerms(), vicreg=None, vicreg_weight=0.0)
    assert off.regularizer is None and not off.uses_regularizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cnn(regularizer=VISRegTerms(), regularizer_weight=1.0)  # the new spelling: no warning


@pytest.mark.parametrize(
    ("config", "extra", "expected"),
    [
        ("quickstart.yaml", [], ("VICRegTerms", 0.0, 0.1)),
        ("quickstart.yaml", ["--model.init_args.vicreg", "null"], (None, None, 0.1)),
        # benchmarks/curves/curve_methods.py's spelling of variance + covariance on one view
        ("cifar10_cnn_jepa_resnet18.yaml",
         ["--model.init_args.vicreg", "jepa_lightning.losses.VICRegTerms",
          "--model.init_args.vicreg.init_args.sim_weight", "0",
          "--model.init_args.vicreg_weight", "0.3"], ("VICRegTerms", 0.0, 0.3)),
        ("quickstart_cjepa.yaml", ["--model.init_args.vicreg_weight", "0"],
         ("VICRegTerms", 25.0, 0.0)),
    ],
    ids=["new-spelling", "vicreg-null", "curve-methods-varcov", "ijepa"],
)  # fmt: skip
def test_old_spellings_through_the_cli(
    config: str, extra: list[str], expected: tuple, image_folder: Path
) -> None:
    args = ["--config", str(CONFIGS / config), "--data.init_args.num_workers", "0", *CPU, *extra]
    if "cifar10" in config:
        args += ["--data.init_args.root", str(image_folder)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(args, run=False)
    said = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert bool(said) == bool(extra)  # the shipped configs use the new spelling
    assert all("regularizer" in s for s in said)
    reg = cli.model.regularizer
    name = type(reg).__name__ if reg is not None else None
    assert (name, getattr(reg, "sim_weight", None), cli.model.regularizer_weight) == expected


@pytest.mark.slow
@pytest.mark.parametrize("method", ["quickstart.yaml", "quickstart_cjepa.yaml"])
@pytest.mark.parametrize(
    ("regularizer", "options"),
    [
        ("SIGRegTerms", ["--model.init_args.regularizer.init_args.num_vectors", "64",
                         "--model.init_args.regularizer_weight", "0.05",
                         "--model.init_args.regularizer_projector", "[64, 16]"]),
        ("VISRegTerms", ["--model.init_args.regularizer.init_args.num_slices", "64",
                         "--model.init_args.regularizer_weight", "1.5"]),
    ],
    ids=["sigreg-projector", "visreg"],
)  # fmt: skip
def test_sigreg_and_visreg_train_through_the_cli(
    method: str, regularizer: str, options: list[str], tmp_path: Path
) -> None:
    args = ["fit", "--config", str(CONFIGS / method), *CPU, "--trainer.fast_dev_run", "1",
            "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0",
            "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path),
            "--model.init_args.regularizer", f"jepa_lightning.losses.{regularizer}",
            *options]  # fmt: skip
    if method == "quickstart_cjepa.yaml":
        args += ["--model.init_args.depth", "1"]
    cli = main(args)
    assert type(cli.model.regularizer).__name__ == regularizer
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    key = "train/sigreg_loss" if regularizer == "SIGRegTerms" else "train/visreg_loss"
    assert metrics[key].isfinite() and metrics[key] > 0
    torch.testing.assert_close(
        metrics["train/loss"],
        metrics["train/jepa_loss"] + cli.model.regularizer_weight * metrics[key],
    )


class _Record(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, *args: Any
    ) -> None:
        loss, stat = outputs["loss"].item(), outputs["sigreg_statistic"].item()
        self.rows.append((trainer.global_step, loss, stat))


def test_sigreg_directions_continue_exactly_after_a_resume(tmp_path: Path) -> None:
    """Uninterrupted 3 steps against 2 steps, a checkpoint, and a resumed third step: the
    same directions (a function of the global step) and so the same loss, bit for bit."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, SIZE, SIZE, generator=g), torch.arange(8))

    def fit(ckpt: str | None, callbacks: list[Callback]) -> _Record:
        torch.manual_seed(0)
        model = CJEPA(**VIT, vicreg_mode="encoders",
                      regularizer=SIGRegTerms(num_vectors=16), regularizer_weight=0.05)  # fmt: skip
        record = _Record()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, callbacks=[record, *callbacks],
                             default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(model, DataLoader(data, batch_size=4), ckpt_path=ckpt)
        return record

    checkpoint = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    full = fit(None, [checkpoint])  # one epoch = 2 steps: the checkpoint ends epoch 0
    resumed = fit(str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"), [])
    assert [r[0] for r in full.rows] == [1, 2, 3] and [r[0] for r in resumed.rows] == [3]
    assert resumed.rows[0] == full.rows[2]
    assert full.rows[2][2] != full.rows[1][2]  # (the directions do change between steps)
