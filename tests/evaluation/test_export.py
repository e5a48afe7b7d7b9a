"""Export: torchvision state dicts that load with strict=True and give the same features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from jepa_lightning import load_pretrained
from jepa_lightning.evaluation import use_encoder
from jepa_lightning.export import export_backbone, main, torchvision_resnet
from jepa_lightning.modules.masked_resnet import (
    MaskedResNet,
    export_torchvision_state_dict,
    masked_average_pool,
)


def test_export_command_loads_strict_and_matches_features(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "backbone.pt"
    info = main([str(tiny_checkpoint), str(out)])
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[0]) == info
    assert info["arch"] == "resnet18" and info["small_images"] and info["encoder"] == "target"
    assert "model.maxpool = nn.Identity()" in printed and "strict=True" in printed
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)

    # The recipe from the README, in plain torchvision.
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    head = model.fc
    model.fc = nn.Identity()  # type: ignore[assignment]
    model.load_state_dict(state, strict=True)
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    method = load_pretrained(tiny_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(model(images), method.embed(images), rtol=1e-5, atol=1e-5)
    # With the head kept, only the head is missing.
    model.fc = head
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_export_context_encoder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "context.pt"
    info = export_backbone(tiny_checkpoint, out, encoder="context")
    assert info["encoder"] == "context"
    model = torchvision_resnet("resnet18", small_images=True)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    method = use_encoder(load_pretrained(tiny_checkpoint), "context")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = masked_average_pool(method.context_encoder(images))
        torch.testing.assert_close(model.eval()(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "small_images"),
    [("resnet18", False), ("resnet34", False), ("resnet50", False), ("resnet50", True),
     ("wide_resnet50_2", False)],
)  # fmt: skip
def test_every_resnet_exports_to_torchvision(arch: str, small_images: bool) -> None:
    torch.manual_seed(0)
    encoder = MaskedResNet(arch, small_images=small_images).eval()
    for m in encoder.modules():  # non-trivial running statistics
        if hasattr(m, "running_var"):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model = torchvision_resnet(arch, small_images=small_images).eval()
    model.load_state_dict(export_torchvision_state_dict(encoder), strict=True)
    size = 32 if small_images else 64
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images), masked_average_pool(encoder(images)), rtol=1e-4, atol=1e-5
        )
    stock = getattr(torchvision.models, arch)()
    if small_images:  # the stock stem does not fit: the documented change is needed
        with pytest.raises(RuntimeError, match=r"conv1\.weight"):
            stock.load_state_dict(export_torchvision_state_dict(encoder), strict=False)
    else:
        missing, unexpected = stock.load_state_dict(
            export_torchvision_state_dict(encoder), strict=False
        )
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    head = torchvision_resnet(arch, small_images=small_images, num_classes=7).fc
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_console_script_errors_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jepa_lightning.export", str(tmp_path / "nope.ckpt"),
         str(tmp_path / "out.pt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "jepa-lightning-export: error" in result.stderr and "does not exist" in result.stderr
