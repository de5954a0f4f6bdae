"""scikit-learn's handwritten digits: the offline data set for demos and tests.

Nothing on disk: ``sklearn.datasets.load_digits`` ships the 1,797 8x8 images (values
0..16, 10 classes) inside scikit-learn. They are scaled to [0, 1], resized bilinearly to
``img_size`` (default 32) and kept in memory as one ``[N, 1, S, S]`` float tensor.

The split is fixed: a stratified 80/20 ``train_test_split`` with ``random_state=0``
(1,437 train / 360 val), the same in every run and process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .recipes import TensorAugment

__all__ = ["DigitsDataset", "digits_split", "DIGITS_VAL_FRACTION", "DIGITS_SPLIT_SEED"]

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_split(y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``load_digits()`` order) of the fixed stratified (train, val) split, each sorted.

    ``y``: the labels of ``load_digits()``, to save loading them again.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target if y is None else y
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=DIGITS_VAL_FRACTION,
                                          stratify=y, random_state=DIGITS_SPLIT_SEED)
    return np.sort(train_idx), np.sort(val_idx)


class DigitsDataset(Dataset):
    """One split of the digits, in memory; items are ``(image [1, S, S] float32 in [0, 1], label int)``.

    Args:
        train: the 80 % training split, else the 20 % validation split.
        img_size: side S of the resized images.
        transform: applied to each ``[1, S, S]`` tensor (e.g. :class:`TensorAugment`), or None.

    Attributes:
        images: ``[N, 1, S, S]`` float32 tensor (before ``transform``).
        targets: ``[N]`` int64 tensor of labels 0..9.
        indices: ``[N]`` positions of these samples in ``load_digits()`` order.
    """

    num_classes = 10

    def __init__(self, train: bool = True, img_size: int = 32, transform=None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        train_idx, val_idx = digits_split(digits.target)
        self.indices = torch.from_numpy(train_idx if train else val_idx)
        images = torch.from_numpy(digits.images[self.indices.numpy()]).float().div_(16.0)  # [N, 8, 8] in [0, 1]
        images = images.unsqueeze(1)  # [N, 1, 8, 8]
        if img_size != images.shape[-1]:
            # bilinear without antialias is a convex combination: values stay in [0, 1]
            images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = images.clamp_(0.0, 1.0).contiguous()
        self.targets = torch.from_numpy(digits.target[self.indices.numpy()]).long()
        self.train, self.img_size, self.transform = train, img_size, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def __repr__(self) -> str:
        split = "train" if self.train else "val"
        return f"DigitsDataset(split={split}, n={len(self)}, img_size={self.img_size}, transform={self.transform})"


def build_digits(img_size: int, recipe: dict, augment: bool) -> tuple[DigitsDataset, DigitsDataset]:
    train_tf = TensorAugment(img_size, recipe["hflip"], recipe["translate"], augment=True) if augment else None
    return DigitsDataset(True, img_size, train_tf), DigitsDataset(False, img_size, None)
