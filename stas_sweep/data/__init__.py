"""Data sets, augmentation recipes and reproducible loaders.

    train_ds, val_ds, info = build_datasets("cifar100", "/data/cifar100", timesteps=4)
    train_loader, val_loader = build_loaders(train_ds, val_ds, batch_size=64, workers=8, seed=0)
    mixup = build_mixup(0.5, 0.0, 0.1, info.num_classes)        # None when both alphas are 0
    for epoch in range(start, epochs):
        train_loader.set_epoch(epoch)                           # same batches after a resume
        for x, y in train_loader:                               # x [B, C, H, W] or [B, T, C, H, W]
            ...

Names: ``digits`` (offline, bundled with scikit-learn), ``digits-canvas`` (the same digits
placed on an empty canvas), ``cifar10``, ``cifar100``,
``imagenet``, ``cifar10-dvs``, ``dvs128-gesture``. What each expects on disk is in
:func:`build_datasets` and the module docstrings of ``images`` and ``events``; a missing
data set raises :class:`DatasetNotFoundError` saying where it looked, the layout and how
to get it. torchvision, timm and spikingjelly are imported only when a data set needs them.
"""

from .errors import DataError, DatasetNotFoundError
from .factory import (DATA_ROOT_ENV, DATASET_NAMES, DEFAULT_IMG_SIZE, DataInfo, build_datasets, check_dataset,
                      default_root)
from .loaders import EpochDataLoader, EpochShuffleSampler, build_loaders, build_mixup, epoch_seed
from .recipes import CIFAR_MEAN, CIFAR_STD, DEFAULT_RECIPES, IMAGENET_MEAN, IMAGENET_STD, TensorAugment

__all__ = [
    "build_datasets", "check_dataset", "DataInfo", "DataError", "DatasetNotFoundError", "DATASET_NAMES", "DEFAULT_IMG_SIZE", "DATA_ROOT_ENV",
    "default_root", "build_loaders", "build_mixup", "EpochDataLoader", "EpochShuffleSampler", "epoch_seed",
    "DEFAULT_RECIPES", "TensorAugment", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]
