"""``recalibrate_batchnorm``: running statistics recomputed on full images, as torch's
``update_bn`` for plain BatchNorm and by brute force for the masked BatchNorm."""

from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import update_bn
from torchvision.models import resnet18

from jepa_lightning.modules import MaskedResNet, recalibrate_batchnorm


def test_equals_torch_update_bn_on_a_torchvision_resnet() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    batches = list(torch.randn(48, 3, 32, 32).split(16))
    ours = recalibrate_batchnorm(copy.deepcopy(model), batches)
    reference = copy.deepcopy(model)
    update_bn(batches, reference)
    for (name, a), (_, b) in zip(ours.named_buffers(), reference.named_buffers(), strict=True):
        if "running" in name:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not ours.training  # the mode is restored
    assert ours.bn1.momentum == model.bn1.momentum


def test_masked_resnet_statistics_are_the_mean_over_the_images() -> None:
    torch.manual_seed(0)
    encoder = MaskedResNet("resnet18", small_images=True)
    encoder.train()
    encoder(torch.randn(8, 3, 32, 32) * 5 + 3)  # stale statistics from other data
    images = torch.randn(64, 3, 32, 32)
    recalibrate_batchnorm(encoder, images.split(16))
    stem = encoder.conv1(images)  # (N, C, H, W): what the first BatchNorm sees
    torch.testing.assert_close(encoder.bn1.running_mean, stem.mean(dim=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    per_batch = torch.stack([b.var(dim=(0, 2, 3)) for b in stem.split(16)])  # unbiased, per batch
    torch.testing.assert_close(encoder.bn1.running_var, per_batch.mean(dim=0), rtol=1e-4, atol=1e-5)
    assert encoder.training and encoder.bn1.momentum == 0.1
