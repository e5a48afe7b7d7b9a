"""Load the pretrained JEPA method an evaluation needs: from a checkpoint, or randomly initialised.

Every evaluation (linear, k-NN, fine-tuning, export) works on a :class:`JEPAModule` through its
:meth:`~JEPAModule.embed` method (EMA target encoder, average-pooled), so any method — CNN-JEPA
today, the ViT methods later — is evaluated the same way.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from argparse import ArgumentError
from itertools import islice
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import instantiate_module
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from jepa_lightning.checkpointing import CheckpointError, read_checkpoint
from jepa_lightning.data.batch import split_batch
from jepa_lightning.methods.base import EncoderChoice, JEPAModule
from jepa_lightning.modules.masked_bn import recalibrate_batchnorm

#: ``{"class_path": "jepa_lightning.CNNJEPA", "init_args": {...}}``, as in a training config.
MethodSpec = dict[str, Any]


def import_class(class_path: str) -> type:
    """``"package.module.Name"`` -> the class (a bare ``Name`` is taken from ``jepa_lightning``)."""
    module_name, _, name = class_path.rpartition(".")
    module = importlib.import_module(module_name or "jepa_lightning")
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{class_path!r} does not name a class.")
    return cls


def _method_class(class_path: str) -> type[JEPAModule]:
    cls = import_class(class_path)
    if not issubclass(cls, JEPAModule):
        raise TypeError(f"{class_path!r} is not a JEPAModule subclass.")
    return cls


def checkpoint_class_path(checkpoint: str | Path) -> str | None:
    """The method class a checkpoint was trained with, when the CLI wrote it, else ``None``.

    Reads only the hyper-parameters (memory-mapped, weights not loaded).

    Raises:
        CheckpointError: The file is damaged or not a Lightning checkpoint (one sentence).
    """
    ckpt = read_checkpoint(checkpoint, weights_only=True, mmap=True)
    hparams = ckpt.get("hyper_parameters") or {}
    return hparams.get("_class_path")


def load_pretrained(checkpoint: str | Path, method: MethodSpec | None = None) -> JEPAModule:
    """Load a pretraining checkpoint as its method class, on the CPU, in eval mode.

    Args:
        checkpoint: Path of a Lightning checkpoint of a :class:`JEPAModule` subclass.
        method: Only for checkpoints written outside ``jepa-lightning fit`` (e.g. a
            ``Trainer`` in a notebook), which do not record their class: a spec whose
            ``class_path`` names it. Its ``init_args`` are ignored — the checkpoint's
            hyper-parameters are used.

    Returns:
        The method with its trained weights (both encoders, EMA target included).

    Raises:
        CheckpointError: The file is damaged, not a Lightning checkpoint, or not one of the
            named method (one sentence naming the file; nothing is written).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    class_path = checkpoint_class_path(path) or (method or {}).get("class_path")
    if class_path is None:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not record its method class (it was not written by "
            "`jepa-lightning fit`). Name it: method={'class_path': 'jepa_lightning.CNNJEPA'} "
            "(--model.init_args.method.class_path on the command line)."
        )
    try:
        cls = _method_class(class_path)
    except TypeError as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is not a pretraining checkpoint: {err}"
        ) from err
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu")
    except (RuntimeError, TypeError, KeyError, ValueError, ArgumentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not load as a {cls.__name__} (it holds another "
            f"method or architecture): {first}"
        ) from err
    return module.eval()


def build_method(method: MethodSpec, image_size: int | None = None) -> JEPAModule:
    """A randomly initialised method from a ``class_path``/``init_args`` spec.

    ``image_size`` is passed on when the class takes one and the spec does not set it.
    """
    if "class_path" not in method:
        raise ValueError(f"method needs a 'class_path' (and optional 'init_args'), got {method}.")
    cls = _method_class(method["class_path"])
    init_args = dict(method.get("init_args") or {})
    if image_size is not None and "image_size" in inspect.signature(cls.__init__).parameters:
        init_args.setdefault("image_size", image_size)
    # jsonargparse instantiates nested class_path/init_args values (e.g. masking), as the CLI does.
    module = instantiate_module(JEPAModule, {"_class_path": method["class_path"], **init_args})
    return module.eval()


def use_encoder(module: JEPAModule, encoder: EncoderChoice) -> JEPAModule:
    """Make ``module.features`` and ``module.embed`` run on the chosen encoder (in place).

    Sets :attr:`JEPAModule.features_from`; both encoders stay what they are (training,
    the EMA pairs and ``target_map`` are unchanged), :attr:`JEPAModule.feature_encoder` is the
    chosen one.
    """
    if encoder not in ("target", "context"):
        raise ValueError(f"encoder must be 'target' or 'context', got {encoder!r}.")
    module.features_from = encoder
    return module


def resolve_method(
    checkpoint: str | None,
    method: MethodSpec | JEPAModule | None,
    encoder: EncoderChoice,
    image_size: int | None,
) -> JEPAModule:
    """The method an evaluation module works on (see :class:`EvaluationModule`'s arguments)."""
    if isinstance(method, JEPAModule):
        if checkpoint is not None:
            raise ValueError("Give either a checkpoint or a method instance, not both.")
        # the caller's module must keep its own target encoder
        module = copy.deepcopy(method) if encoder == "context" else method
    elif checkpoint is not None:
        module = load_pretrained(checkpoint, method)
    elif method is not None:
        module = build_method(method, image_size)
    else:
        raise ValueError(
            "Nothing to evaluate: set `checkpoint` to a pretraining checkpoint, or `method` "
            "(class_path/init_args) for a randomly initialised backbone."
        )
    return use_encoder(module, encoder).eval()


def accuracy_metrics(num_classes: int) -> nn.ModuleDict:
    """``top1`` and ``top5`` accuracy (micro-averaged over samples); top-5 of fewer than 5
    classes is clipped to top-C (= 1.0), as :func:`~jepa_lightning.callbacks.knn_accuracy` does."""
    return nn.ModuleDict(
        {
            f"top{k}": MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")
            for k in (1, 5)
        }
    )


class EvaluationModule(pl.LightningModule):
    """Base of the evaluation modules: holds the pretrained method (``self.pretrained``) and
    embeds images with it. Runs through ``jepa-lightning`` like the pretraining modules.

    Args:
        checkpoint: Pretraining checkpoint (any :class:`JEPAModule` subclass). ``None`` builds a
            randomly initialised backbone from ``method`` — the baseline to compare against.
        method: The method as in its training config, ``{class_path, init_args}``: the
            architecture of the random-init baseline when ``checkpoint`` is ``None``; the class
            of a checkpoint written outside the CLI (then ``init_args`` are ignored). From
            Python a :class:`JEPAModule` instance may be passed instead (used as it is).
        encoder: ``target`` — the EMA target encoder (the paper's protocol; default) — or
            ``context``. The context encoder's BatchNorm running statistics were gathered on
            masked images; before it is evaluated they are recomputed on full images
            (:attr:`bn_recalibration_batches` batches of the training split with the evaluation
            transform; on CIFAR-10 this is worth 2.9 k-NN points: 34.3 -> 37.2).
        image_size: Side of the images the DataModule produces (linked by the CLI); used to
            build a random-init ``method``.
    """

    #: Batches the context encoder's BatchNorm statistics are recomputed on (0: never).
    bn_recalibration_batches: int = 50

    def __init__(
        self,
        checkpoint: str | None = None,
        method: MethodSpec | JEPAModule | None = None,
        encoder: EncoderChoice = "target",
        image_size: int = 224,
    ) -> None:
        super().__init__()
        # The optimiser factory is code, not a value (as in JEPAModule); an instance is a module.
        ignore = ["optimizer", *(["method"] if isinstance(method, JEPAModule) else [])]
        self.save_hyperparameters(ignore=ignore)
        self.image_size = image_size
        self.pretrained = resolve_method(checkpoint, method, encoder, image_size)
        self._bn_recalibrated = False

    def setup(self, stage: str) -> None:
        """Recompute the context encoder's BatchNorm statistics on full images (once)."""
        if self._bn_recalibrated or self.pretrained.features_from != "context":
            return
        self._bn_recalibrated = True
        dm = self.trainer.datamodule
        n = self.bn_recalibration_batches
        if n <= 0 or dm is None or not hasattr(dm, "train_eval_dataloader"):
            return
        device = self.trainer.strategy.root_device
        encoder = self.pretrained.feature_encoder.to(device)
        batches = (split_batch(b)[0].to(device) for b in islice(dm.train_eval_dataloader(), n))
        recalibrate_batchnorm(encoder, batches)

    def train(self, mode: bool = True) -> EvaluationModule:
        """Set the training mode; a frozen ``pretrained`` method always stays in eval mode (its
        BatchNorm statistics are never updated). Lightning warns once that modules are in eval
        mode at the start of training: that is intended."""
        super().train(mode)
        if self.frozen:
            self.pretrained.eval()
        return self

    @property
    def frozen(self) -> bool:
        """Whether the pretrained method is frozen (no parameter requires a gradient)."""
        return not any(p.requires_grad for p in self.pretrained.parameters())

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of the pretrained features."""
        return self.pretrained.embed_dim

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, D)`` pooled features of the chosen encoder (frozen)."""
        return self.pretrained.embed(images).float()

    def num_classes_from_data(self, num_classes: int | None) -> int:
        """``num_classes`` if set, else the attached DataModule's."""
        n = num_classes or getattr(self.trainer.datamodule, "num_classes", None)
        if n is None:
            raise ValueError("Set num_classes: the DataModule does not say how many there are.")
        return int(n)
