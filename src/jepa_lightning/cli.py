"""The ``jepa-lightning`` command: a LightningCLI over every JEPA module and DataModule."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from jepa_lightning.data.datamodule import SSLDataModule
from jepa_lightning.methods.base import JEPAModule


class JEPACLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with shared values linked once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Say each value once: the DataModule owns the image size.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")


def main(args: list[str] | None = None) -> JEPACLI:
    """Entry point of ``jepa-lightning``; pass ``args`` to call it from Python or tests."""
    return JEPACLI(
        JEPAModule,
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def run() -> None:
    """Console-script entry point (``jepa-lightning``): exit status 0 on success."""
    main()


if __name__ == "__main__":
    run()
