"""``build_datasets``: one entry point from a data set name to (train, val, DataInfo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import Dataset

from .recipes import resolve_recipe
from .errors import DataError

__all__ = ["DataInfo", "DATASET_NAMES", "DEFAULT_IMG_SIZE", "DATA_ROOT_ENV", "default_root", "build_datasets",
           "check_dataset"]

#: The accepted names, in the order the docs list them.
DATASET_NAMES = ("digits", "digits-canvas", "cifar10", "cifar100", "imagenet", "cifar10-dvs", "dvs128-gesture")

#: Labels per data set; ImageNet's come from its class folders (a subset may have fewer).
DATASET_CLASSES = {"digits": 10, "digits-canvas": 10, "cifar10": 10, "cifar100": 100, "cifar10-dvs": 10, "dvs128-gesture": 11}

DEFAULT_IMG_SIZE = {"digits": 32, "digits-canvas": 32, "cifar10": 32, "cifar100": 32, "imagenet": 224,
                    "cifar10-dvs": 128, "dvs128-gesture": 128}

#: ``root=None`` means ``$STAS_SWEEP_DATA/<name>``, or ``./data/<name>`` when the variable is unset.
DATA_ROOT_ENV = "STAS_SWEEP_DATA"


@dataclass(frozen=True)
class DataInfo:
    """What a model and a trainer need to know about the items of a data set.

    Attributes:
        name: canonical data set name (one of ``DATASET_NAMES``).
        num_classes: number of labels (labels are ``0..num_classes-1``).
        in_channels: image channels (1 digits, 3 CIFAR/ImageNet, 2 event polarities).
        img_size: side of the square images / frames the items have.
        mean, std: per-channel normalisation already applied to the items (identity, i.e.
            0 and 1, for digits and event frames); undo with ``x * std + mean`` to display.
        timesteps: frames per item for event data, None for static images.
        event_frames: (derived) True when an item is a ``[T, C, H, W]`` frame stack (a batch
            is ``[B, T, C, H, W]``), False for ``[C, H, W]`` images.
    """

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    timesteps: int | None = None

    @property
    def event_frames(self) -> bool:
        return self.timesteps is not None


def canonical_name(name: str) -> str:
    """``'CIFAR10_DVS'`` -> ``'cifar10-dvs'``; ValueError listing the valid names otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASET_NAMES:
        raise DataError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def default_root(name: str) -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, "data")) / canonical_name(name)


def check_dataset(name: str, root: str | os.PathLike | None = None, *, timesteps: int = 4,
                  download: bool = False) -> None:
    """Raise :class:`DatasetNotFoundError` unless ``build_datasets`` could find ``name`` under
    ``root`` (or, with ``download``, fetch it). Reads only and imports no data library, so a
    sweep can run it before Ray starts and before anything is written to the tracking store."""
    name = canonical_name(name)
    root_ = Path(root) if root is not None else default_root(name)
    if name in ("cifar10", "cifar100"):
        from .images import check_cifar
        check_cifar(name, root_, download)
    elif name == "imagenet":
        from .images import check_imagenet
        check_imagenet(root_)
    elif name in ("cifar10-dvs", "dvs128-gesture"):
        from .events import check_events
        check_events(name, root_, timesteps, download)
    # the bundled data sets (digits) need nothing on disk


def build_datasets(name: str, root: str | os.PathLike | None = None, *, img_size: int | None = None,
                   timesteps: int = 4, download: bool = False, augment: bool = True,
                   recipe: Mapping[str, Any] | None = None,
                   verify_checksums: bool = True) -> tuple[Dataset, Dataset, DataInfo]:
    """Build the (train, val) data sets called ``name`` and their :class:`DataInfo`.

    Items are ``(x, label)`` with ``x`` a float tensor ``[C, S, S]`` (static images) or
    ``[T, 2, S, S]`` (event frames), ``S = img_size``; the training set is augmented as
    its published recipe (``stas_sweep.data.recipes``), the validation set is not.

    ==================  ===========================================================  =======  ====
    name                on disk under ``root`` (details: module docstrings)          classes  S
    ==================  ===========================================================  =======  ====
    ``digits``          nothing (scikit-learn's bundled 8x8 digits; fixed 80/20      10       32
                        stratified split)
    ``digits-canvas``   nothing (the same digits at half the side, each at a fixed   10       32
                        random position on an empty canvas; the same split)
    ``cifar10``         ``cifar-10-batches-py/`` (torchvision pickles; 50k/10k)      10       32
    ``cifar100``        ``cifar-100-python/`` (torchvision pickles; 50k/10k)         100      32
    ``imagenet``        ``train/<class>/*``, ``val/<class>/*`` (ImageFolder)          folders  224
    ``cifar10-dvs``     ``download/*.zip`` or ``events_np/<class>/*.npz``            10       128
                        (spikingjelly; split 9:1 inside each class)
    ``dvs128-gesture``  ``download/{DvsGesture.tar.gz, gesture_mapping.csv, ...}``   11       128
                        or ``events_np/{train,test}/<label>/*.npz`` (spikingjelly)
    ==================  ===========================================================  =======  ====

    Args:
        name: one of ``DATASET_NAMES`` (case and ``_``/``-`` are forgiven).
        root: the data set's folder; None means ``$STAS_SWEEP_DATA/<name>`` (default
            ``./data/<name>``). Ignored by ``digits`` and ``digits-canvas``.
        img_size: side of the output images; None takes the table's default. Static images
            are resized by the timm transform, digits bilinearly, frames bilinearly
            (antialiased) if not 128.
        timesteps: frames per sample (spikingjelly's ``frames_number``) for the event data
            sets; ignored by static ones (the model repeats or integrates the image).
        download: let torchvision (CIFAR) or spikingjelly (CIFAR10-DVS) download what is
            missing. ImageNet and DVS128 Gesture cannot be downloaded.
        augment: False gives the training set the evaluation transform.
        recipe: overrides of the data set's default augmentation recipe
            (``stas_sweep.data.recipes.DEFAULT_RECIPES``), e.g. ``{"aa": None, "reprob": 0}``.
        verify_checksums: CIFAR only: check every file's MD5 against the official release
            (torchvision's behaviour). False accepts any files in the same pickle layout.

    Raises:
        ValueError: unknown name or recipe key.
        DatasetNotFoundError: the data are not under ``root`` (or are incomplete or
            corrupted); raised before any loading or preprocessing, so nothing under
            ``root`` is created or changed. The message gives the absolute path, the
            expected layout and how to get the data.
    """
    name = canonical_name(name)
    recipe_ = resolve_recipe(name, recipe)
    size = int(img_size) if img_size is not None else DEFAULT_IMG_SIZE[name]
    if size <= 0:
        raise DataError(f"img_size must be positive, got {img_size!r}")
    root_ = Path(root) if root is not None else default_root(name)

    if name in ("digits", "digits-canvas"):
        from .digits import build_digits
        train, val = build_digits(size, recipe_, augment, canvas=name == "digits-canvas")
        return train, val, DataInfo(name, 10, 1, size, (0.0,), (1.0,))

    if name in ("cifar10", "cifar100"):
        from .images import build_cifar, check_cifar
        from .recipes import image_transforms
        check_cifar(name, root_, download)  # first: fail fast, before timm is imported
        train_tf, eval_tf = image_transforms(recipe_, size, augment)
        train, val = build_cifar(name, root_, download, verify_checksums, train_tf, eval_tf)
        return train, val, DataInfo(name, 10 if name == "cifar10" else 100, 3, size,
                                    recipe_["mean"], recipe_["std"])

    if name == "imagenet":
        from .images import build_imagenet, check_imagenet
        from .recipes import image_transforms
        root_ = check_imagenet(root_)  # first: fail fast, before timm is imported
        train_tf, eval_tf = image_transforms(recipe_, size, augment)
        train, val = build_imagenet(root_, train_tf, eval_tf)
        return train, val, DataInfo(name, len(train.classes), 3, size, recipe_["mean"], recipe_["std"])

    from .events import EVENT_DATASETS, build_events
    train, val = build_events(name, root_, timesteps, size, recipe_, augment, download)
    return train, val, DataInfo(name, EVENT_DATASETS[name]["num_classes"], 2, size, (0.0, 0.0), (1.0, 1.0),
                                timesteps)
