"""The methods of ``learning_curve.py``: CNN-JEPA and C-JEPA/I-JEPA built through the real CLI
from the shipped CIFAR-10 configs (so the benchmark measures exactly what users run), the peers
(lightly's BYOL, SimCLR, VICReg; LeJEPA on both architectures), every encoder each one has, and
the one its authors report (``PROTOCOL``, fixed before any run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from torch import nn

from benchmarks.common import cifar_datamodule_args
from benchmarks.curves.lejepa_baselines import LeJEPA, LeJEPAViT, TokenGrid, vit_tiny
from benchmarks.curves.lightly_baselines import (
    BASELINES,
    MultiViewDataModule,
    MultiViewMethod,
    ViewKind,
    small_resnet18,
)
from jepa_lightning import CJEPA, CNNJEPA
from jepa_lightning.cli import main as cli_main
from jepa_lightning.modules import MaskedResNet

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: The shipped config each JEPA method is built from, and how its lr scales with the batch.
JEPA_CONFIGS: dict[str, tuple[Path, str]] = {
    "cnn_jepa": (CONFIGS / "cifar10_cnn_jepa_resnet18.yaml", "linear"),
    "cjepa": (CONFIGS / "cifar10_cjepa_vit_tiny.yaml", "sqrt"),  # C-JEPA / I-JEPA: sqrt rule
}

#: The paper's CNN-JEPA on top of the config's data and backbone (lr at batch 512, scaled).
PAPER: dict[str, Any] = {
    "target_norm": "none",
    "zero_init_residual": False,
    "regularizer": None,
    "masking": None,
    "predictor_depth": 3,
    "lr@512": 0.01,
    "wd": 0.01,
    "ema": 0.996,
    "warmup": 10 / 200,  # 10 warm-up epochs of 200
    "crop_min": 0.2,
    "hflip": True,
}

#: Method options that are DataModule settings (the rest go to the model).
DATA_KEYS = {"color_jitter", "grayscale", "shared_crop"}

#: ``regularizer=<name>`` -> (class in ``jepa_lightning.losses``, its options): on one view.
REGULARIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "varcov": ("VICRegTerms", {"sim_weight": 0}),  # C-JEPA's variance/covariance
    "sigreg": ("SIGRegTerms", {}),
    "visreg": ("VISRegTerms", {}),
}

MASKINGS = {
    "mixed": "jepa_lightning.masking.MixedMasking",
    "multiblock": "jepa_lightning.masking.MultiBlockMasking",
    "random": "jepa_lightning.masking.RandomMasking",
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> ``(name, {key: value})`` with YAML-typed values."""
    name, _, rest = spec.partition(":")
    pairs = [kv.split("=", 1) for kv in rest.split(",") if kv]
    return name, {k: yaml.safe_load(v) for k, v in pairs}


#: Method name -> (config family, options applied before the user's).
JEPA_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "cnn_jepa": ("cnn_jepa", {}),
    "cnn_jepa_paper": ("cnn_jepa", PAPER),
    "cjepa": ("cjepa", {}),
    "ijepa": ("cjepa", {"regularizer_weight": 0.0, "views": 1}),  # I-JEPA: no VICReg, one view
}


#: The peers: name -> (module class, views). ``lejepa_vit`` runs on the C-JEPA config's ViT.
PEERS: dict[str, tuple[type[MultiViewMethod], ViewKind]] = {
    **BASELINES,
    "lejepa": (LeJEPA, "lejepa"),
    "lejepa_vit": (LeJEPAViT, "lejepa_global4"),
}
VIT_METHODS = ("cjepa", "ijepa", "lejepa_vit")

#: The encoder each method is *reported* with, as its authors (or lightly's benchmark) score it:
#: the EMA target for the JEPAs (CNN-JEPA and I-JEPA evaluate the target encoder), the online
#: backbone for lightly's BYOL (its k-NN callback scores ``backbone``) and for the one-encoder
#: methods. Fixed here before the runs; the other encoder is evaluated beside it, never swapped in.
PROTOCOL: dict[str, str] = {
    "cnn_jepa": "target",
    "cnn_jepa_paper": "target",
    "cjepa": "target",
    "ijepa": "target",
    "byol": "online",
    "simclr": "online",
    "vicreg": "online",
    "lejepa": "online",
    "lejepa_vit": "online",
}


def protocol_encoder(spec: str) -> str:
    """``online`` or ``target``: the encoder ``spec``'s rows report."""
    return PROTOCOL[parse_spec(spec)[0]]


def is_vit(spec: str) -> bool:
    return parse_spec(spec)[0] in VIT_METHODS


def num_train_images(root: str) -> int:
    return sum(1 for f in (Path(root) / "train").rglob("*") if f.is_file())


def jepa_overrides(
    family: str, options: dict[str, Any], batch: int, steps: int | None, train_images: int
) -> list[str]:
    """CLI arguments turning the config's recipe into ``options`` at ``batch`` for ``steps``."""
    path, scaling = JEPA_CONFIGS[family]
    cfg = yaml.safe_load(path.read_text())
    model = cfg["model"]["init_args"]
    cfg_batch = cfg["data"]["init_args"]["batch_size"]
    ratio = batch / cfg_batch if scaling == "linear" else (batch / cfg_batch) ** 0.5
    opts = dict(options)
    if "lr@512" in opts:
        opts.setdefault("lr", opts.pop("lr@512") * batch / 512)
    lr = opts.pop("lr", model["optimizer"]["init_args"]["lr"] * ratio)
    frac = opts.pop("warmup", model.get("warmup_epochs", 10) / cfg["trainer"]["max_epochs"])
    out = ["--model.init_args.optimizer.init_args.lr", str(lr)]
    if "wd" in opts:
        out += ["--model.init_args.optimizer.init_args.weight_decay", str(opts.pop("wd"))]
    if "ema" in opts:
        out += ["--model.init_args.ema_start", str(opts.pop("ema"))]
    steps_per_epoch = max(1, train_images // batch)
    out += ["--model.init_args.warmup_epochs", str(frac * (steps or 0) / steps_per_epoch)]
    if "crop_min" in opts:
        out += ["--data.init_args.crop_scale", f"[{opts.pop('crop_min')}, 1.0]"]
    if "hflip" in opts:
        out += ["--data.init_args.hflip", str(opts.pop("hflip")).lower()]
    if "views" in opts:
        out += ["--data.init_args.num_views", str(opts.pop("views"))]
    for key in DATA_KEYS & opts.keys():
        out += [f"--data.init_args.{key}", str(opts.pop(key)).lower()]
    if "masking" in opts:
        kind = opts.pop("masking")
        out += ["--model.init_args.masking", "null" if kind is None else MASKINGS[kind]]
    if "vicreg" in opts:  # the spelling of earlier ablation specs (cnn_jepa:vicreg=varcov)
        opts["regularizer"] = opts.pop("vicreg")
    if opts.get("regularizer") in REGULARIZERS:  # e.g. regularizer=sigreg
        cls, init = REGULARIZERS[opts.pop("regularizer")]
        out += ["--model.init_args.regularizer", f"jepa_lightning.losses.{cls}"]
        out += [f"--model.init_args.regularizer.init_args.{k}={v}" for k, v in init.items()]
    if "projector" in opts:  # projector=2048x128 (a comma would end the spec's option)
        widths = opts.pop("projector")
        text = "null" if widths is None else f"[{str(widths).replace('x', ',')}]"
        out += ["--model.init_args.regularizer_projector", text]
    for key, value in opts.items():
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        out += [f"--model.init_args.{key}", str(text)]
    return out


def build_method(
    spec: str, args: argparse.Namespace, steps: int | None = None
) -> tuple[pl.LightningModule, pl.LightningDataModule, str]:
    """``(model, datamodule, kind)`` for a method spec; ``steps`` sets the warm-up length."""
    name, options = parse_spec(spec)
    batch = options.pop("batch", args.batch_size)
    data = cifar_datamodule_args(args.data, batch, args.workers)
    if name in PEERS:
        cls, views = PEERS[name]
        allowed = {"depth"} if name == "lejepa_vit" else set()
        if options.keys() - allowed:
            raise ValueError(f"{name} takes no options (its authors' recipe), got {options}")
        dm = MultiViewDataModule(views=views, persistent_workers=False, **data)
        return cls(batch_size=batch, **options), dm, "peer"
    if name not in JEPA_METHODS:
        raise ValueError(f"unknown method {name!r}; known: {[*JEPA_METHODS, *PEERS]}")
    family, preset = JEPA_METHODS[name]
    options = {**preset, **options}
    cli_args = [
        "--config", str(JEPA_CONFIGS[family][0]),
        "--trainer.accelerator", "cpu", "--trainer.precision", "32", "--trainer.logger", "false",
        # The configs default to torchvision's CIFAR-10 files; the benchmark reads the JPEG
        # tree of ../shared (every other data setting of the config carries over).
        "--data", "jepa_lightning.ImageFolderDataModule",
        "--data.init_args.root", data["root"],
        "--data.init_args.val_split", "test",
        "--data.init_args.batch_size", str(batch),
        "--data.init_args.num_workers", str(args.workers),
        "--data.init_args.persistent_workers", "false",
        *jepa_overrides(family, options, batch, steps, num_train_images(data["root"])),
    ]  # fmt: skip
    cli = cli_main(cli_args, run=False)
    return cli.model, cli.datamodule, "jepa"


def eval_encoders(module: pl.LightningModule) -> dict[str, nn.Module]:
    """Every encoder of a trained method by name: ``online`` (the trunk that gets gradients; the
    JEPAs' context encoder) and, for EMA methods, ``target``."""
    if isinstance(module, CNNJEPA):
        return {"online": module.context_encoder, "target": module.target_encoder}
    if isinstance(module, CJEPA):
        return {
            "online": TokenGrid(module.context_encoder),
            "target": TokenGrid(module.target_encoder),
        }
    if isinstance(module, MultiViewMethod):
        return module.encoders()
    raise TypeError(f"no encoders known for {type(module).__name__}")


def fresh_encoder(spec: str) -> nn.Module:
    """An encoder of the snapshot's architecture (online or target alike), to load into."""
    name, options = parse_spec(spec)
    if is_vit(spec):
        return vit_tiny(depth=options.get("depth"))
    if name in PEERS:
        return small_resnet18()
    return MaskedResNet("resnet18", small_images=True, last_stride=options.get("last_stride", 2))
