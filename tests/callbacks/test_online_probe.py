"""OnlineLinearProbe: learns separable features, never touches the SSL module, checkpoints."""

from __future__ import annotations

import torch
from callback_toys import ToyData, ToyJEPA, quiet_trainer, sgd

from jepa_lightning import OnlineLinearProbe
from jepa_lightning.callbacks.online_probe import LinearProbeHead


def _fit(probe: OnlineLinearProbe | None, epochs: int = 4) -> tuple[ToyJEPA, object]:
    torch.manual_seed(0)
    model = ToyJEPA(optimizer=sgd(0.03))
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[probe] if probe else [])
    trainer.fit(model, datamodule=ToyData())
    return model, trainer


def test_probe_learns_and_leaves_the_ssl_module_alone(tmp_path) -> None:
    probe = OnlineLinearProbe(lr=0.05)
    model, trainer = _fit(probe)
    assert float(trainer.callback_metrics["probe/val_top1"]) > 0.95
    assert float(trainer.callback_metrics["probe/val_top5"]) >= float(
        trainer.callback_metrics["probe/val_top1"]
    )
    assert "probe/train_loss" in trainer.callback_metrics
    # read from the DataModule / module, not repeated
    assert (probe.num_classes, probe.embed_dim) == (10, 8)

    # the probe is invisible to the SSL optimiser and to the module's state
    probe_ids = {id(p) for p in probe.probe.parameters()}
    ssl_ids = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
    assert not probe_ids & ssl_ids
    assert not probe_ids & {id(p) for p in model.parameters()}
    assert not any("probe" in k for k in model.state_dict())
    assert trainer.optimizers[0].param_groups[0]["lr"] != probe.optimizer.param_groups[0]["lr"]

    # SSL training is bit-identical with and without the probe: its optimiser steps change no
    # module parameter, and it draws nothing from the global RNG (data order unchanged)
    baseline, _ = _fit(None)
    for (name, p), q in zip(
        model.state_dict().items(), baseline.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert not torch.equal(model.context_encoder.weight, ToyJEPA().context_encoder.weight)

    # checkpoint round trip: the callback state restores the probe, and validating the saved
    # checkpoint with a fresh probe gives the same accuracy
    ckpt = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any("OnlineLinearProbe" in k for k in state)
    fresh = OnlineLinearProbe(lr=0.05)
    quiet_trainer(callbacks=[fresh]).validate(ToyJEPA(), datamodule=ToyData(), ckpt_path=ckpt)
    assert torch.equal(fresh.probe.linear.weight, probe.probe.linear.weight)
    assert torch.equal(fresh.probe.running_var, probe.probe.running_var)
    assert (
        fresh.optimizer.state_dict()["state"][0]["step"]
        == probe.optimizer.state_dict()["state"][0]["step"]
    )


def test_probe_without_step_embedding_uses_embed_in_eval_mode() -> None:
    probe = OnlineLinearProbe(lr=0.05, use_step_embedding=False)
    _, trainer = _fit(probe, epochs=3)
    assert float(trainer.callback_metrics["probe/val_top1"]) > 0.9


def test_probe_head_standardises_with_batch_then_running_statistics() -> None:
    head = LinearProbeHead(4, 3)
    head.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.randn(256, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 1000.0
    seen = []
    head.linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    head.forward_train(x, lambda t: t)
    z = seen[-1]
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4), atol=2e-3, rtol=0)
    torch.testing.assert_close(head.running_mean, 0.1 * x.mean(0))
    # evaluation: a fixed affine map of the features, then the linear layer
    head.running_mean.copy_(x.mean(0))
    head.running_var.copy_(x.var(0))
    torch.testing.assert_close(head(x), head.linear((x - x.mean(0)) / (x.var(0) + 1e-5).sqrt()))
    plain = LinearProbeHead(4, 3, standardize=False)
    torch.testing.assert_close(plain(x), plain.linear(x))
