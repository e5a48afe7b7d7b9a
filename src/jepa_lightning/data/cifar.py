"""CIFAR-10 and CIFAR-100 on torchvision's dataset classes, downloaded on request."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.vision import StandardTransform

from jepa_lightning.data.datamodule import SSLDataModule

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Reading files already on disk: torchvision's CIFAR classes compare every file's md5 with the
# official archive's, so any other file in the same pickle-batch format is refused as "not found
# or corrupted" — a re-pickled copy, a subset, the tiny datasets the tests write. These
# subclasses give every file the md5 ``None``, which torchvision's ``check_integrity`` documents
# as "the file exists" (no private method is overridden). The md5s are still verified where they
# protect something: ``download=True`` goes through torchvision's own classes, which check the
# archive and the extracted files and download again when they do not match.


def _with_transform(dataset: CIFAR10, transform: Callable) -> CIFAR10:
    """A shallow copy of ``dataset`` (sharing its images) with its own ``transform``."""
    dataset = copy.copy(dataset)
    dataset.transform, dataset.transforms = transform, StandardTransform(transform)
    return dataset


class LocalCIFAR10(CIFAR10):
    """``torchvision.datasets.CIFAR10`` reading the files under ``root`` as they are."""

    train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**CIFAR10.meta, "md5": None}


class LocalCIFAR100(CIFAR100):
    """``torchvision.datasets.CIFAR100`` reading the files under ``root`` as they are."""

    train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR100.train_list]
    test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR100.test_list]
    meta: ClassVar[dict[str, Any]] = {**CIFAR100.meta, "md5": None}


class CIFAR10DataModule(SSLDataModule):
    """CIFAR-10 (50,000 training and 10,000 test images of 32 px, 10 classes) in torchvision's
    format (``<root>/cifar-10-batches-py/``), downloaded there with ``download=True``. The test
    split is the validation split. Transforms, views, seeded sampling and resuming are those of
    :class:`SSLDataModule`.

    Args:
        root: Folder holding (or receiving) ``cifar-10-batches-py/``.
        download: Download and extract the dataset (163 MB) into ``root`` unless the files are
            there with the official md5s. With ``False`` a missing dataset is an error naming
            the folder looked in.
        image_size: Training crop side in pixels.
        eval_resize_ratio: Evaluation resize side = ``image_size ×`` this, then centre crop;
            1.0 keeps the whole 32 px image.
        mean: Normalisation mean (CIFAR-10's).
        std: Normalisation standard deviation (CIFAR-10's).
        **kwargs: Further options of :class:`SSLDataModule` (``batch_size``, ``num_views``, ...).

    Example:
        >>> from jepa_lightning import CIFAR10DataModule
        >>> data = CIFAR10DataModule(root="/no/such/folder", batch_size=256, num_views=2)
        >>> data.folder.as_posix(), data.num_classes
        ('/no/such/folder/cifar-10-batches-py', 10)
        >>> len(data.missing_files())  # setup() would fail naming the folder and the flag
        7
    """

    num_classes = 10
    name: ClassVar[str] = "CIFAR-10"
    remote: ClassVar[type[CIFAR10]] = CIFAR10
    local: ClassVar[type[CIFAR10]] = LocalCIFAR10

    def __init__(
        self,
        root: str,
        download: bool = False,
        image_size: int = 32,
        eval_resize_ratio: float = 1.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image_size=image_size, eval_resize_ratio=eval_resize_ratio, mean=mean, std=std, **kwargs
        )
        self.root = Path(root).expanduser()
        self.download = download

    @property
    def folder(self) -> Path:
        """The folder the dataset files are read from."""
        return self.root / self.remote.base_folder

    def missing_files(self) -> list[str]:
        """Names of the dataset files absent from :attr:`folder`."""
        names = [n for n, _ in self.remote.train_list + self.remote.test_list]
        names.append(self.remote.meta["filename"])
        return [n for n in names if not (self.folder / n).is_file()]

    def prepare_data(self) -> None:
        """Download (once per node, before ``setup``) when ``download`` is on."""
        if not self.download:
            return
        try:
            self.remote(str(self.root), train=False, download=True)
        except Exception as exc:  # network errors come as URLError, OSError, RuntimeError, ...
            raise RuntimeError(
                f"Downloading {self.name} from {self.remote.url} into {str(self.root)!r} failed "
                f"({type(exc).__name__}: {exc}). Check the network connection, or download the "
                f"archive yourself and extract it so that {str(self.folder)!r} exists, then "
                "run with --data.init_args.download false."
            ) from exc

    def _dataset(self, train: bool) -> CIFAR10:
        missing = self.missing_files()
        if missing and self.download:  # used without a Trainer, which calls prepare_data
            self.prepare_data()
            missing = self.missing_files()
        if missing:
            raise FileNotFoundError(
                f"{self.name} not found: looked in {str(self.folder)!r} (data.init_args.root = "
                f"{str(self.root)!r}) and found no {', '.join(missing)}. Set "
                "--data.init_args.download true (data.init_args.download: true in a config) "
                "to download it there, or set --data.init_args.root to the folder that holds "
                f"{self.remote.base_folder}/."
            )
        try:
            return self.local(str(self.root), train=train)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"Cannot read {self.name} from {str(self.folder)!r} "
                f"({type(exc).__name__}: {exc}): the files are not torchvision's pickled "
                "batches or are damaged. Delete the folder and set "
                "--data.init_args.download true to download it again."
            ) from exc

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train, val = self._dataset(train=True), self._dataset(train=False)
        return (
            _with_transform(train, self.train_transform),
            _with_transform(train, self.eval_transform),  # the same image array, loaded once
            _with_transform(val, self.eval_transform),
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50,000 / 10,000 images of 32 px, the 100 fine labels) in torchvision's format
    (``<root>/cifar-100-python/``); everything else as :class:`CIFAR10DataModule`.

    Args:
        root: Folder holding (or receiving) ``cifar-100-python/``.
        download: Download and extract the dataset (161 MB) into ``root`` (see
            :class:`CIFAR10DataModule`).
        image_size: Training crop side in pixels.
        eval_resize_ratio: Evaluation resize side = ``image_size ×`` this, then centre crop.
        mean: Normalisation mean (CIFAR-100's).
        std: Normalisation standard deviation (CIFAR-100's).
        **kwargs: Further options of :class:`SSLDataModule`.

    Example:
        >>> from jepa_lightning import CIFAR100DataModule
        >>> CIFAR100DataModule(root="data", download=False).folder.as_posix()
        'data/cifar-100-python'
    """

    num_classes = 100
    name: ClassVar[str] = "CIFAR-100"
    remote: ClassVar[type[CIFAR10]] = CIFAR100
    local: ClassVar[type[CIFAR10]] = LocalCIFAR100

    def __init__(
        self,
        root: str,
        download: bool = False,
        image_size: int = 32,
        eval_resize_ratio: float = 1.0,
        mean: Sequence[float] = CIFAR100_MEAN,
        std: Sequence[float] = CIFAR100_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root,
            download=download,
            image_size=image_size,
            eval_resize_ratio=eval_resize_ratio,
            mean=mean,
            std=std,
            **kwargs,
        )
