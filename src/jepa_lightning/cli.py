"""The ``jepa-lightning`` command: a LightningCLI over every JEPA module, the evaluation modules
(linear, k-NN, fine-tuning) and the DataModules."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import jepa_lightning.evaluation  # noqa: F401  (registers the evaluation modules as subclasses)
from jepa_lightning.data.datamodule import SSLDataModule
from jepa_lightning.precision import cpu_precision_fallback


class JEPACLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with shared values linked once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Say each value once: the DataModule owns the image size. Every module run through
        # this CLI (pretraining and evaluation) therefore takes an ``image_size`` argument.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")

    def before_instantiate_classes(self) -> None:
        """bf16 resolved to a CPU without native bf16 runs in 32-bit, with one warning (see
        :mod:`jepa_lightning.precision`; ``JEPA_FORCE_CPU_BF16=1`` keeps bf16). The config is
        changed before the trainer is built, so the saved ``config.yaml`` says what ran."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        fallback = cpu_precision_fallback(trainer.accelerator, trainer.precision)
        if fallback is not None:
            trainer.precision = fallback


def main(args: list[str] | None = None, run: bool = True) -> JEPACLI:
    """Entry point of ``jepa-lightning``; pass ``args`` to call it from Python or tests.
    ``run=False`` only builds the trainer, model and DataModule (``args`` without a subcommand)."""
    return JEPACLI(
        pl.LightningModule,
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def run() -> None:
    """Console-script entry point (``jepa-lightning``): exit status 0 on success."""
    main()


if __name__ == "__main__":
    run()
