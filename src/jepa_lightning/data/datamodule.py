"""DataModules shared by every JEPA method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from jepa_lightning.data.folders import BadImagePolicy, CheckedImageFolder
from jepa_lightning.data.sampling import ResumableDataLoader, resumable_train_loader
from jepa_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SharedCropViews,
    eval_transform,
    ssl_transform,
)
from jepa_lightning.preemption import ignore_preemption_signals
from jepa_lightning.seeding import global_seed


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor ``(N, 3, H, W)`` with integer labels."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class SSLDataModule(pl.LightningDataModule):
    """Base DataModule: an SSL training loader (augmented, labels kept for monitors), a labelled
    validation loader and a labelled training loader with the evaluation transform (k-NN bank,
    linear evaluation). Subclasses implement :meth:`build_datasets`.

    Args:
        image_size: Training crop side in pixels (linked to the model by the CLI).
        batch_size: Batch size per process (global batch = this × devices × nodes).
        num_workers: DataLoader worker processes per process.
        crop_scale: RandomResizedCrop area range of the SSL augmentation.
        hflip: Random horizontal flip in the SSL augmentation.
        eval_resize_ratio: Evaluation resize side = ``image_size ×`` this, then centre crop.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        pin_memory: Pin host memory for faster copies to the GPU.
        persistent_workers: Keep workers alive across epochs (when ``num_workers > 0``).
        seed: Seed of the training order and augmentation: each image's crop and flip are a
            pure function of ``(seed, epoch, index)``, whatever the number of workers or
            processes, and training resumes mid-epoch exactly. ``None`` takes the
            ``seed_everything`` seed (0 when unset).
        num_views: Independently augmented views per training image. With ``1`` the SSL
            training set yields ``(image, label)``; with ``n > 1`` it yields
            ``([view_1, ..., view_n], label)`` (C-JEPA's two-view VICReg reading).
        color_jitter: Colour-jitter strength ``s`` of the SSL augmentation (brightness,
            contrast, saturation ``0.8 s``, hue ``0.2 s``, p = 0.8; lightly's CIFAR-10 value is
            0.5). 0 (default) = none, as CNN-JEPA and I-JEPA.
        grayscale: Probability of converting a training view to grayscale (0 = never).
        shared_crop: With ``num_views > 1``, the views share one crop and flip; the first is
            left without colour jitter and grayscale, the others get them. For CNN-JEPA's
            ``context_view: other`` (the context encoder sees a recoloured copy of the
            target's image). ``False``: every view is augmented independently.

    Example:
        >>> from jepa_lightning import DigitsDataModule, SSLDataModule
        >>> issubclass(DigitsDataModule, SSLDataModule)  # subclasses implement build_datasets
        True
    """

    num_classes: int

    def __init__(
        self,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 4,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        eval_resize_ratio: float = 256 / 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int | None = None,
        num_views: int = 1,
        color_jitter: float = 0.0,
        grayscale: float = 0.0,
        shared_crop: bool = False,
    ) -> None:
        super().__init__()
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if shared_crop and num_views < 2:
            raise ValueError(
                "shared_crop=True makes views of one crop that differ in colour, which needs "
                f"num_views >= 2 (got {num_views}): set data.init_args.num_views: 2."
            )
        if color_jitter < 0 or not 0 <= grayscale <= 1:
            raise ValueError(
                f"color_jitter must be >= 0 and grayscale a probability in [0, 1], got "
                f"color_jitter={color_jitter}, grayscale={grayscale}"
            )
        self.color_jitter, self.grayscale, self.shared_crop = color_jitter, grayscale, shared_crop
        self.num_views = num_views
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.eval_resize_ratio = eval_resize_ratio
        self.mean, self.std = tuple(mean), tuple(std)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed
        self._train_state: dict[str, int] = {}
        self._train_loader_built: ResumableDataLoader | None = None
        self.train_ssl: Dataset | None = None
        self.train_eval: Dataset | None = None
        self.val: Dataset | None = None

    @property
    def train_transform(self) -> Callable:
        colour = {"color_jitter": self.color_jitter, "grayscale": self.grayscale}
        if self.shared_crop:  # views of one crop, the first without colour changes
            return SharedCropViews(
                self.image_size, self.num_views, self.crop_scale, self.hflip, self.mean, self.std,
                **colour,
            )  # fmt: skip
        transform = ssl_transform(
            self.image_size, self.crop_scale, self.hflip, self.mean, self.std, **colour
        )
        if self.num_views > 1:  # several views: a list of independently augmented tensors
            return MultiViewTransform([transform] * self.num_views)
        return transform

    @property
    def eval_transform(self) -> Callable:
        return eval_transform(self.image_size, self.eval_resize_ratio, self.mean, self.std)

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return ``(train with SSL transform, train with eval transform, val with eval)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_ssl is None:
            self.train_ssl, self.train_eval, self.val = self.build_datasets()

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader:
        """In order, every sample (no shuffling, no dropped last batch)."""
        assert dataset is not None, "setup() builds the datasets"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=ignore_preemption_signals,  # SLURM signals workers too
        )

    def _train_loader(self, dataset: Dataset | None) -> DataLoader:
        """Seeded, sharded and resumable (see :mod:`jepa_lightning.data.sampling`)."""
        assert dataset is not None, "setup() builds the datasets"
        loader = resumable_train_loader(
            dataset,
            self.batch_size,
            seed=self.seed if self.seed is not None else global_seed(),
            trainer=self.trainer,
            state=self._train_state,  # resuming: continue where the checkpoint left the data
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=ignore_preemption_signals,  # SLURM signals workers too
        )
        self._train_state, self._train_loader_built = {}, loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training data position (epoch, batches consumed, seed), for exact resume."""
        loader = self._train_loader_built
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_state = dict(state_dict.get("train_loader", {}))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._train_loader(self.train_ssl)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self.val)

    def train_eval_dataloader(self) -> DataLoader:
        """The labelled training split with the evaluation transform, in a fixed order."""
        self.setup()
        return self._eval_loader(self.train_eval)


class DigitsDataModule(SSLDataModule):
    """The embedded default: scikit-learn's handwritten digits (1,797 real 8×8 grayscale images,
    10 classes), replicated to RGB and upsampled by the transforms. Needs no download.

    Args:
        val_fraction: Fraction of images held out for validation (stratified, fixed seed).
        split_seed: Seed of the train/validation split.
        image_size: Training crop side in pixels.
        batch_size: Batch size per process.
        num_workers: DataLoader worker processes (the data is in memory: 0 is fastest on CPU).
        eval_resize_ratio: Evaluation resize side = ``image_size ×`` this, then centre crop;
            1.0 (the whole digit: the 8×8 images have no border to spare).
        **kwargs: Further options of :class:`SSLDataModule`.

    Example:
        >>> from jepa_lightning import DigitsDataModule
        >>> data = DigitsDataModule(image_size=32, batch_size=8, num_views=2)
        >>> data.setup()
        >>> views, labels = next(iter(data.train_dataloader()))
        >>> len(views), views[0].shape, labels.shape
        (2, torch.Size([8, 3, 32, 32]), torch.Size([8]))
    """

    num_classes = 10

    def __init__(
        self,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        eval_resize_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        # NOTE: an explicit parameter, not a default injected into **kwargs: LightningCLI
        # passes every base-class argument explicitly, so an injected default never applied there.
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            eval_resize_ratio=eval_resize_ratio,
            **kwargs,
        )
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
        images = images[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, 8, 8)
        labels = torch.from_numpy(digits.target).long()
        idx_train, idx_val = train_test_split(
            range(len(labels)),
            test_size=self.val_fraction,
            random_state=self.split_seed,
            stratify=digits.target,
        )
        tr, va = torch.tensor(idx_train), torch.tensor(idx_val)
        return (
            TensorImageDataset(images[tr], labels[tr], self.train_transform),
            TensorImageDataset(images[tr], labels[tr], self.eval_transform),
            TensorImageDataset(images[va], labels[va], self.eval_transform),
        )


class ImageFolderDataModule(SSLDataModule):
    """Images in class sub-folders (``<root>/<split>/<class>/*.jpg``): CIFAR-10 from
    ``../shared/datasets``, ImageNet-100, ImageNet-1k or your own data.

    Args:
        root: Dataset directory holding the split folders.
        train_split: Name of the training split folder under ``root``.
        val_split: Name of the validation split folder under ``root`` (``val`` or ``test``).
        on_bad_image: A file that cannot be decoded (corrupt, truncated): ``raise`` an error
            naming it, or ``skip`` it with a warning naming it (the next image takes its place).
        **kwargs: Options of :class:`SSLDataModule` (``image_size``, ``batch_size``, ...).

    Example:
        >>> from jepa_lightning import ImageFolderDataModule
        >>> data = ImageFolderDataModule(root="/data/imagenet", image_size=224, batch_size=128)
        >>> data.root.name  # <root>/train and <root>/val are read by setup()
        'imagenet'
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        on_bad_image: BadImagePolicy = "raise",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.on_bad_image = on_bad_image
        self.train_split = train_split
        self.val_split = val_split
        self._num_classes: int | None = None

    def _folder(self, split: str) -> Path:
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"Dataset split folder {str(path)!r} does not exist. Set data.init_args.root to a "
                f"directory holding '{self.train_split}/' and '{self.val_split}/' with one "
                "sub-folder of images per class (e.g. --data.init_args.root /data/cifar10_jpg)."
            )
        return path

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        if self._num_classes is None:
            train = self._folder(self.train_split)
            self._num_classes = sum(1 for p in train.iterdir() if p.is_dir())
        return self._num_classes

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train, val = self._folder(self.train_split), self._folder(self.val_split)
        bad = self.on_bad_image
        train_ssl = CheckedImageFolder(train, self.train_transform, bad)
        train_eval = CheckedImageFolder(train, self.eval_transform, bad)
        val_ds = CheckedImageFolder(val, self.eval_transform, bad)
        if train_ssl.classes != val_ds.classes:
            raise ValueError(
                f"Train and val class folders differ under {str(self.root)!r}: "
                f"{train_ssl.classes} vs {val_ds.classes}."
            )
        self._num_classes = len(train_ssl.classes)
        return train_ssl, train_eval, val_ds
