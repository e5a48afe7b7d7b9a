"""The learning-curve benchmark's own claims (``benchmarks/curves/learning_curve.py``): the
budget-to-steps arithmetic, a clock that counts the whole iteration, every method of the race built
and trained on tiny data, each schedule at its final value on the last planned step, BYOL as
lightly runs it, the encoder each method is reported with, and a selection split disjoint from the
k-NN bank."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the benchmarks are a package at the repository root
    sys.path.insert(0, str(REPO))

from benchmarks.curves.curve_methods import (  # noqa: E402
    PEERS,
    PROTOCOL,
    build_method,
    eval_encoders,
    fresh_encoder,
    jepa_overrides,
    protocol_encoder,
)
from benchmarks.curves.curve_report import EvalSets, _row  # noqa: E402
from benchmarks.curves.learning_curve import (  # noqa: E402
    REF_BYOL_STEP_S,
    IterationClock,
    Snapshots,
    calibrated_step_s,
    planned_steps,
)
from benchmarks.curves.lightly_baselines import BYOL  # noqa: E402

from jepa_lightning import CJEPA, CNNJEPA  # noqa: E402

# ViTs at depth 2 keep this fast; every option is otherwise the shipped recipe's.
METHODS = ["cnn_jepa", "cnn_jepa_paper", "cjepa:depth=2", "ijepa:depth=2", "byol", "simclr",
           "vicreg", "lejepa", "lejepa_vit:depth=2"]  # fmt: skip


def _args(root: Path, **kw: Any) -> argparse.Namespace:
    base = dict(data=str(root), batch_size=4, workers=0, bank_size=8, sel_size=4, test_size=6,
                seed=0)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_planned_steps_fill_the_budget() -> None:
    # 30 reference-minutes on a machine twice as slow as the reference (BYOL 1.24 s against
    # 0.62 s) are 3600 s here; at 2 s per iteration that is 1800 steps.
    assert planned_steps(30, 1.24, 2.0, evals=6) == 1800
    assert planned_steps(30, 0.62, 0.5, evals=6) == 3600
    assert planned_steps(30, 0.31, 0.5, evals=6) == 1800  # a twice-faster machine: half the time
    assert planned_steps(0.001, 0.62, 10.0, evals=6) == 6  # never fewer steps than evaluations
    # The calibrated time is the mean after start-up, so slow data steps count (a median of
    # these iterations would say 1.0 s and overspend the budget).
    assert calibrated_step_s([9.0, 9.0, 9.0, 1.0, 1.0, 4.0]) == pytest.approx(2.0)


class _SlowData(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.02)  # loading one image
        return torch.randn(3)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.lin(batch).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _AfterStep(pl.Callback):
    """A per-step update placed after the clock (as the JEPAs' EMA callback is), and a save the
    benchmark excludes."""

    def __init__(self, clock: IterationClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.03)  # e.g. the EMA update
        t0 = time.perf_counter()
        time.sleep(0.5)  # e.g. a checkpoint: overhead of the benchmark, not the method
        self.clock.exclude(time.perf_counter() - t0)


def test_iteration_clock_counts_data_loading_and_late_callbacks() -> None:
    clock = IterationClock()
    trainer = pl.Trainer(max_steps=5, callbacks=[clock, _AfterStep(clock)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(_Tiny(), DataLoader(_SlowData(), batch_size=2))
    assert len(clock.times) == 5
    # Every iteration after the first holds the previous step's late callback (0.03 s) and this
    # step's loading of two images (0.04 s), but none of the excluded 0.5 s saves.
    for t in clock.times[1:]:
        assert 0.07 <= t < 0.45


def test_measured_minutes_follow_the_machine_segment_by_segment(tmp_path: Path) -> None:
    # The machine is 2x the reference when training starts, 3x at the first snapshot and 4x at
    # the second: 60 s here before the first is 60 / 2.5 reference seconds (the mean of its two
    # ends), the next 60 s are 60 / 3.5. Timed once at the start (2x), both would count 30 s.
    ref = REF_BYOL_STEP_S
    later = iter([3 * ref, 4 * ref])
    snaps = Snapshots(tmp_path, [0, 10, 20], 2 * ref, retime=lambda: next(later))
    snaps.times = [30.0, 30.0]
    snaps.close_segment()
    snaps.times = [60.0]
    snaps.close_segment()
    snaps.times = [8.0]  # the open segment counts at the last reference step (4x)
    wall = snaps.wall()
    assert wall["train_s"] == pytest.approx(128.0)
    assert wall["train_s_ref"] == pytest.approx(60 / 2.5 + 60 / 3.5 + 8 / 4)
    assert wall["ref_byol_steps_s"] == pytest.approx([2 * ref, 3 * ref, 4 * ref])
    # A resumed run goes on from what the killed one wrote, at its own starting reference step.
    snaps.write_wall()
    resumed = Snapshots(tmp_path, [0, 10, 20], 5 * ref)
    resumed.times = [10.0]
    assert resumed.wall()["train_s"] == pytest.approx(138.0)
    assert resumed.wall()["train_s_ref"] == pytest.approx(wall["train_s_ref"] + 10 / 5)
    resumed.close_segment()  # without a retime function nothing is re-timed
    assert resumed.wall()["ref_byol_steps_s"][-1] == pytest.approx(5 * ref)


def _train(spec: str, root: Path, steps: int) -> tuple[pl.LightningModule, list[dict]]:
    """``spec`` built as the benchmark builds it, trained ``steps`` planned steps; the lr and
    weight decay of the first parameter group as the optimiser used them at each step."""
    pl.seed_everything(0, verbose=False)
    model, dm, _ = build_method(spec, _args(root), steps)
    used: list[dict] = []

    class Record(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:  # type: ignore[no-untyped-def]
            group = optimizer.param_groups[0]
            used.append({k: group[k] for k in ("lr", "initial_lr", "weight_decay")})

    trainer = pl.Trainer(max_steps=steps, callbacks=[Record()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0)  # fmt: skip
    trainer.fit(model, dm)
    assert trainer.global_step == steps
    return model, [*used, {"metrics": dict(trainer.callback_metrics)}]


@pytest.mark.slow
@pytest.mark.parametrize("spec", METHODS)
def test_every_method_trains_and_ends_its_schedules_on_the_last_step(
    spec: str, image_folder: Path
) -> None:
    steps = 5
    model, used = _train(spec, image_folder, steps)
    metrics, used = used[-1]["metrics"], used[:-1]
    assert len(used) == steps and torch.isfinite(metrics["train/loss"])
    final_ratio = getattr(model, "final_lr_ratio", 0.0)
    # lr: the planned schedule's final value on the last planned step, not one step later.
    assert used[-1]["lr"] == pytest.approx(used[-1]["initial_lr"] * final_ratio, abs=1e-12)
    assert used[-2]["lr"] > used[-1]["lr"]
    if isinstance(model, (CNNJEPA, CJEPA)):  # EMA ramp ends at 1 on the last step
        assert float(metrics["train/ema_momentum"]) == pytest.approx(model.ema_end)
        if model.final_weight_decay is not None:  # C-JEPA/I-JEPA: weight decay 0.04 -> 0.4
            assert used[-1]["weight_decay"] == pytest.approx(model.final_weight_decay)
    encoders = eval_encoders(model)
    assert protocol_encoder(spec) in encoders
    for enc in encoders.values():  # every evaluated encoder maps images to a feature grid
        out = enc.eval()(torch.zeros(2, 3, 32, 32))
        assert out.ndim == 4 and out.shape[0] == 2


def test_jepa_warmup_is_the_recipes_fraction_of_the_planned_steps() -> None:
    # 1512 planned steps at batch 128 on 50,000 images: CNN-JEPA's 10 of 200 warm-up epochs are
    # 5 % of the steps, however many epochs the budget buys.
    args = jepa_overrides("cnn_jepa", {}, 128, 1512, 50_000)
    epochs = float(args[args.index("--model.init_args.warmup_epochs") + 1])
    assert round(epochs * (50_000 // 128)) == round(0.05 * 1512)


def test_regularizer_specs_reach_the_module(image_folder: Path) -> None:
    # The screening specs of issue 33: regulariser, weight and projector widths ("x": a comma
    # would end the option) become the CLI's regulariser slot.
    from jepa_lightning.losses import SIGRegTerms, VICRegTerms

    spec = "cnn_jepa:regularizer=sigreg,regularizer_weight=0.05,projector=64x16"
    model, _, _ = build_method(spec, _args(image_folder), steps=10)
    assert isinstance(model, CNNJEPA) and isinstance(model.regularizer, SIGRegTerms)
    assert model.regularizer_weight == 0.05
    widths = [m.out_features for m in model.regularizer_projector.modules()  # type: ignore[union-attr]
              if isinstance(m, torch.nn.Linear)]  # fmt: skip
    assert widths == [64, 16]
    plain, _, _ = build_method("cnn_jepa:projector=null", _args(image_folder), steps=10)
    assert isinstance(plain.regularizer, VICRegTerms) and plain.regularizer_projector is None


def test_byol_is_lightlys_constant_momentum_scored_online() -> None:
    torch.manual_seed(0)
    byol = BYOL(batch_size=4)
    with torch.no_grad():  # make online and target differ, as after some training
        for p in byol.backbone.parameters():
            p.add_(0.1)
    t0 = [p.clone() for p in byol.backbone_momentum.parameters()]
    o0 = [p.clone() for p in byol.backbone.parameters()]
    byol.loss([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    for t, before, online in zip(byol.backbone_momentum.parameters(), t0, o0, strict=True):
        torch.testing.assert_close(t, 0.99 * before + 0.01 * online)
    encoders = byol.encoders()
    assert encoders["online"] is byol.backbone and encoders["target"] is byol.backbone_momentum
    assert PROTOCOL["byol"] == "online"


def test_vicreg_uses_lightlys_lr_rule_and_views() -> None:
    from benchmarks.curves.lightly_baselines import MultiViewDataModule
    from lightly.transforms.vicreg_transform import VICRegTransform

    vicreg, views = PEERS["vicreg"]
    opt = vicreg(batch_size=128).make_optimizer()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * 128 / 256)
    dm = MultiViewDataModule(views=views, root=".", image_size=32)
    assert isinstance(dm.train_transform, VICRegTransform)


def test_reported_encoder_is_fixed_by_the_protocol() -> None:
    # JEPAs report the EMA target (their papers), the peers their online trunk (lightly).
    assert {
        m: PROTOCOL[m] for m in ("cnn_jepa", "cnn_jepa_paper", "cjepa", "ijepa")
    } == dict.fromkeys(("cnn_jepa", "cnn_jepa_paper", "cjepa", "ijepa"), "target")
    assert {PROTOCOL[m] for m in ("byol", "simclr", "vicreg", "lejepa", "lejepa_vit")} == {"online"}
    plan = {"steps": 10, "batch_size": 4, "step_s": 1.0, "scale": 1.0}
    saved = {"train_s": 60.0, "train_s_ref": 66.0}
    scores = {"online": {"test": 40.0, "sel": 41.0, "rankme": 5.0},
              "target": {"test": 30.0, "sel": 31.0, "rankme": 4.0}}  # fmt: skip
    snap = Path("snap_000010.pt")
    for spec, want in (("byol", 40.0), ("cnn_jepa", 30.0), ("cjepa:depth=2", 30.0)):
        row = _row(spec, plan, snap, saved, scores)
        assert row["knn_top1"] == want and row["encoder"] == protocol_encoder(spec)
        assert (row["knn_test_online"], row["knn_test_target"]) == (40.0, 30.0)
    row = _row("byol", plan, snap, saved, scores)
    assert (row["minutes_planned"], row["minutes_measured"]) == (
        pytest.approx(10 / 60, abs=1e-3),
        1.1,
    )


def test_selection_queries_are_training_images_outside_the_bank(image_folder: Path) -> None:
    sets = EvalSets(_args(image_folder))
    assert len(sets.bank) == 8 and len(sets.sel) == 4 and len(sets.test) == 6
    for q in sets.sel:  # no selection query is a bank image
        assert not any(torch.equal(q, b) for b in sets.bank)
    for q in sets.test:  # nor a test image
        assert not any(torch.equal(q, s) for s in sets.sel)
    with pytest.raises(ValueError, match="exceed"):
        EvalSets(_args(image_folder, sel_size=5))


def _byol_snapshots(tmp_path: Path, name: str = "byol") -> Path:
    """A BYOL run of 4 planned steps with snapshots at 0, 2 and 4 (random weights, seeded by the
    step: runs made by this function have the same weights)."""
    d = tmp_path / name
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"steps": 4, "batch_size": 4, "step_s": 1.0,
                                             "scale": 1.0}))  # fmt: skip
    for step in (0, 2, 4):
        torch.manual_seed(step)
        online = fresh_encoder("byol").state_dict()
        target = online if step == 0 else fresh_encoder("byol").state_dict()
        states = {"online": online, "target": target}
        torch.save({"states": states, "train_s": 1.0 * step, "train_s_ref": 1.0 * step},
                   d / f"snap_{step:06d}.pt")  # fmt: skip
    return d


def test_the_ends_are_evaluated_first_and_the_curve_filled_in_later(
    image_folder: Path, tmp_path: Path
) -> None:
    from benchmarks.curves.curve_report import evaluate_snapshots, read_rows

    d = _byol_snapshots(tmp_path)
    args = _args(image_folder, csv=tmp_path / "curve.csv", other_encoders="final")
    evaluate_snapshots(argparse.Namespace(**vars(args), snapshots="ends"), [("byol", d)])
    assert [int(r["step"]) for r in read_rows(args.csv)] == [0, 4]
    evaluate_snapshots(argparse.Namespace(**vars(args), snapshots="all"), [("byol", d)])
    rows = read_rows(args.csv)
    assert [int(r["step"]) for r in rows] == [0, 4, 2]  # appended, nothing evaluated twice
    # A CSV written by a harness with other columns is refused, not appended to misaligned.
    args.csv.write_text("method,step\n")
    with pytest.raises(SystemExit, match="older harness"):
        evaluate_snapshots(argparse.Namespace(**vars(args), snapshots="all"), [("byol", d)])


def test_an_encoder_is_evaluated_once_across_snapshots_and_runs(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.curves import curve_report

    scored: list[int] = []
    real = curve_report.EvalSets.score

    def counted(self: Any, encoder: torch.nn.Module) -> dict[str, float]:
        scored.append(1)
        return real(self, encoder)

    monkeypatch.setattr(curve_report.EvalSets, "score", counted)
    byol, twin = _byol_snapshots(tmp_path), _byol_snapshots(tmp_path, "vicreg")
    args = _args(image_folder, csv=tmp_path / "curve.csv", other_encoders="final")
    curve_report.evaluate_snapshots(args, [("byol", byol)])
    # step 0: the online encoder (its target is a copy), step 2: online, step 4: both
    assert len(scored) == 4
    curve_report.evaluate_snapshots(args, [("vicreg", twin)])  # the same weights: nothing new
    assert len(scored) == 4
    rows = curve_report.read_rows(args.csv)
    by = {(r["method"], r["step"]): r["knn_test_online"] for r in rows}
    assert all(by[("vicreg", s)] == by[("byol", s)] for s in ("0", "2", "4"))
    # Other evaluation sets are other scores: nothing is reused.
    other = _args(image_folder, csv=tmp_path / "other.csv", other_encoders="final", bank_size=7)
    curve_report.evaluate_snapshots(other, [("byol", byol)])
    assert len(scored) == 8


def test_a_screening_never_reads_the_test_images(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --test-size 0: recipes are screened on the selection split alone. The test images of this
    # copy are not images any more, so reading one would fail the run.
    import shutil

    from benchmarks.curves.curve_report import evaluate_snapshots, read_rows, report

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    for f in (root / "test").rglob("*.png"):
        f.write_bytes(b"not an image")
    args = _args(root, csv=tmp_path / "screen.csv", other_encoders="final", test_size=0,
                 budget_min=10.0, png=tmp_path / "screen.png")  # fmt: skip
    sets = EvalSets(args)
    assert sets.test is None and len(sets.sel) == 4
    d = _byol_snapshots(tmp_path)
    evaluate_snapshots(args, [("byol", d)])
    rows = read_rows(args.csv)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for r in rows:  # selection scores only; the test columns stay empty
        assert r["sel_knn_top1"] and r["knn_sel_online"] and float(r["rankme"]) > 0
        assert r["knn_top1"] == r["knn_test_online"] == r["knn_test_target"] == ""
    assert rows[2]["knn_sel_target"]  # the other encoder at the final snapshot
    report(args, [("byol", d)])
    out = capsys.readouterr().out
    sel_line = next(line for line in out.splitlines() if line.startswith("sel_knn_top1@10min:"))
    assert f" byol={float(rows[2]['sel_knn_top1']):.2f} " in sel_line
    assert "\nknn_top1@" not in out and (tmp_path / "screen.png").stat().st_size > 0
    assert "test queries none (a screening never reads them)" in out
    # The race's own settings still read the test images (and fail on these).
    with pytest.raises(Exception):  # noqa: B017 - PIL's error for a file that is not an image
        EvalSets(_args(root, test_size=6))


@pytest.mark.parametrize("other", ["final", "all"])
def test_the_other_encoder_is_scored_where_asked(
    image_folder: Path, tmp_path: Path, other: str
) -> None:
    # BYOL is reported on its online trunk; its EMA target is scored at the final snapshot (or
    # at every one), and at step 0, where it is a copy of the online trunk, for free.
    from benchmarks.curves.curve_report import evaluate_snapshots, read_rows

    d = _byol_snapshots(tmp_path)
    args = _args(image_folder, csv=tmp_path / "curve.csv", other_encoders=other)
    evaluate_snapshots(args, [("byol", d)])
    rows = {int(r["step"]): r for r in read_rows(args.csv)}
    assert sorted(rows) == [0, 2, 4] and all(r["knn_test_online"] for r in rows.values())
    assert rows[0]["knn_test_target"] == rows[0]["knn_test_online"]  # the free twin
    assert bool(rows[2]["knn_test_target"]) == (other == "all")
    assert rows[4]["knn_test_target"] and rows[4]["knn_sel_target"]
    assert all(r["knn_top1"] == r["knn_test_online"] for r in rows.values())


def test_random_line_counts_each_initialisation_once() -> None:
    from benchmarks.curves.curve_report import random_init

    def row(method: str, knn: str, step: int = 0) -> dict[str, str]:
        return {"method": method, "step": str(step), "knn_top1": knn, "sel_knn_top1": knn,
                "rankme": "70.0"}  # fmt: skip

    # Three peers share one trunk initialisation (31.22), the two CNN-JEPAs another (31.40):
    # the random line is their plain mean, 31.31, not the row mean 31.29 (weighted 3:2).
    rows = [row(m, "31.22") for m in ("byol", "simclr", "vicreg")]
    rows += [row("cnn_jepa", "31.40"), row("cnn_jepa_paper", "31.40"), row("byol", "40.0", 5)]
    specs = ["cnn_jepa", "cnn_jepa_paper", "byol", "simclr", "vicreg"]
    value, how = random_init(rows, specs, vit=False)
    assert value == pytest.approx(31.31) and how.startswith("mean of 2 distinct")
    assert math.isnan(random_init(rows, specs, vit=True)[0])
