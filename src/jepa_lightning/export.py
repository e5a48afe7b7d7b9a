"""Export a pretrained backbone as a torchvision state dict, in one command.

    jepa-lightning-export runs/quickstart/version_0/checkpoints/last.ckpt backbone.pt
    python -m jepa_lightning.export CKPT OUT.pt --encoder context

The file holds only tensors under torchvision's key names (no ``fc``), so it loads with
``torch.load(path, weights_only=True)`` into ``torchvision.models.<arch>()`` with
``strict=True`` once the classifier is removed (``model.fc = nn.Identity()``). Backbones
pretrained with ``small_images=True`` (3×3/1 stem, no max-pool) need the same two changes in the
torchvision model; :func:`torchvision_resnet` makes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from jepa_lightning.evaluation.pretrained import EncoderChoice, load_pretrained, use_encoder
from jepa_lightning.modules.masked_resnet import (
    MaskedResNet,
    export_torchvision_state_dict,
    set_last_stride,
)


def torchvision_resnet(
    arch: str = "resnet50",
    small_images: bool = False,
    num_classes: int | None = None,
    last_stride: int = 2,
) -> torchvision.models.ResNet:
    """The torchvision ResNet an exported backbone loads into (``strict=True``).

    Args:
        arch: torchvision constructor name (``resnet18`` ... ``wide_resnet101_2``).
        small_images: Replace the 7×7/2 stem by a 3×3/1 conv and the max-pool by ``Identity``,
            as the backbone was pretrained (total stride 8).
        num_classes: ``None`` replaces ``fc`` by ``Identity`` (the model returns the pooled
            features, exactly the evaluation features); an int puts a fresh linear head.
        last_stride: Stride of ``layer4`` the backbone was pretrained with (default 2).
    """
    model: torchvision.models.ResNet = getattr(torchvision.models, arch)(weights=None)
    if small_images:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()  # type: ignore[assignment]
    set_last_stride(model, last_stride)
    width = model.fc.in_features
    model.fc = nn.Identity() if num_classes is None else nn.Linear(width, num_classes)  # type: ignore[assignment]
    return model


def export_backbone(
    checkpoint: str | Path,
    output: str | Path,
    encoder: EncoderChoice = "target",
    method: str | None = None,
) -> dict[str, Any]:
    """Write the chosen encoder of a pretraining checkpoint as a torchvision state dict.

    Args:
        checkpoint: Lightning checkpoint of a CNN method (e.g. CNN-JEPA).
        output: Path of the ``.pt`` file to write (parent folders are created).
        encoder: ``target`` (EMA; what the evaluations use) or ``context``.
        method: Class path of the method, only for checkpoints written outside the CLI.

    Returns:
        ``arch``, ``small_images``, ``num_features``, ``encoder``, ``num_tensors`` and
        ``output``: what the loading recipe needs.
    """
    module = load_pretrained(checkpoint, {"class_path": method} if method else None)
    module = use_encoder(module, encoder)
    backbone = module.feature_encoder
    if not module.exports_to_torchvision or not isinstance(backbone, MaskedResNet):
        raise TypeError(
            f"Export to torchvision supports ResNet backbones; {type(module).__name__}'s "
            f"encoder is a {type(backbone).__name__} (exports_to_torchvision is False)."
        )
    state: dict[str, Tensor] = export_torchvision_state_dict(backbone)
    out = Path(output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return {
        "arch": backbone.arch,
        "small_images": backbone.small_images,
        "last_stride": backbone.last_stride,
        "num_features": backbone.num_features,
        "encoder": encoder,
        "num_tensors": len(state),
        "output": str(out),
    }


def loading_recipe(info: dict[str, Any]) -> str:
    """Python code that loads an exported backbone into plain torchvision."""
    lines = [
        "import torch, torchvision",
        "from torch import nn",
        f"model = torchvision.models.{info['arch']}()",
    ]
    if info["small_images"]:
        lines += [
            "# pretrained with small_images=True: 3x3/1 stem, no max-pool (total stride 8)",
            "model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)",
            "model.maxpool = nn.Identity()",
        ]
    if info.get("last_stride", 2) == 1:
        lines += [
            "# pretrained with last_stride=1: layer4 keeps the resolution",
            "model.layer4[0].conv1.stride = model.layer4[0].downsample[0].stride = (1, 1)"
            if info["arch"] in ("resnet18", "resnet34")
            else "model.layer4[0].conv2.stride = model.layer4[0].downsample[0].stride = (1, 1)",
        ]
    lines += [
        "model.fc = nn.Identity()  # the export has no classifier; put your own head here",
        f"model.load_state_dict(torch.load({info['output']!r}, weights_only=True), strict=True)",
        f"features = model.eval()(images)  # (B, {info['num_features']}): average-pooled",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, export, print a summary and the loading recipe; returns the summary."""
    parser = argparse.ArgumentParser(
        prog="jepa-lightning-export",
        description="Export the backbone of a pretraining checkpoint as a torchvision ResNet "
        "state dict (no fc).",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) of a CNN method")
    parser.add_argument("output", help="state-dict file to write (.pt)")
    parser.add_argument(
        "--encoder",
        choices=["target", "context"],
        default="target",
        help="EMA target encoder (default; what the paper evaluates) or the context encoder",
    )
    parser.add_argument(
        "--method",
        default=None,
        help="class path of the method (e.g. jepa_lightning.CNNJEPA), only for checkpoints "
        "written outside `jepa-lightning fit`",
    )
    args = parser.parse_args(argv)
    info = export_backbone(args.checkpoint, args.output, args.encoder, args.method)
    print(json.dumps(info))
    print("\n# Load it with torchvision alone:\n" + loading_recipe(info))
    return info


def run() -> None:
    """Console-script entry point (``jepa-lightning-export``)."""
    try:
        main()
    except (FileNotFoundError, ValueError, TypeError) as err:
        sys.exit(f"jepa-lightning-export: error: {err}")


if __name__ == "__main__":
    run()
