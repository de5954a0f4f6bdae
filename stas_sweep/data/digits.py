"""scikit-learn's handwritten digits: the offline data set for demos and tests.

Nothing on disk to fetch: scikit-learn ships the 1,797 8x8 images (values 0..16, 10
classes) as ``sklearn/datasets/data/digits.csv.gz``. That file is read here with numpy,
without importing scikit-learn (its import takes about 2 s, paid again in every trial
process). The images are scaled to [0, 1], resized bilinearly to ``img_size`` (default
32) and kept in memory as one ``[N, 1, S, S]`` float tensor.

The split is fixed: the stratified 80/20 ``train_test_split(..., stratify=y,
random_state=0)`` of scikit-learn (1,437 train / 360 val), stored below as a bit mask so
that it is the same in every run, process and scikit-learn version (a test recomputes it).

``digits-canvas`` (:class:`DigitsCanvasDataset`) places each digit, resized to half the
side, at a random position on an empty ``img_size`` canvas: most tokens then see only
background, which is what token halting is for (the paper's silent background tokens). The
position of every sample is drawn once from ``seed``, so it is the same in every run, split
and process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import DatasetNotFoundError
from .recipes import TensorAugment

__all__ = ["DigitsDataset", "DigitsCanvasDataset", "digits_split", "canvas_positions", "load_digits_arrays",
           "DIGITS_VAL_FRACTION", "DIGITS_SPLIT_SEED", "DIGITS_CANVAS_SEED"]

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
N_DIGITS = 1797  # samples in the file
DIGITS_CANVAS_SEED = 0  # draws the digits' positions on the canvas of ``digits-canvas``
# bit i (most significant first) set: sample i of the file is in the validation split
_VAL_MASK = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a000080a88"
    "20441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020ec409000224840083"
    "a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a810216004480004042a0a4180a5000840b"
    "8561c608108008004c80c02004068e00010882008100380803c008190000100e01008410a0210033282904c044c08068"
    "0e0102830082008822a6402c24042108a860809081a00c02820242120138a41500"
)


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] float64 in 0..16, labels [1797] int64)``, in the file's order
    (that of ``sklearn.datasets.load_digits``)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0] if spec else "sklearn") / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"digits: {path} not found; it comes with scikit-learn (pip install scikit-learn)")
    data = np.loadtxt(path, delimiter=",")  # [1797, 65]: 64 pixels, then the label
    data.setflags(write=False)
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the file's order) of the fixed stratified (train, val) split, each sorted."""
    val = np.unpackbits(np.frombuffer(bytes.fromhex(_VAL_MASK), dtype=np.uint8))[:N_DIGITS].astype(bool)
    return np.flatnonzero(~val), np.flatnonzero(val)


class DigitsDataset(Dataset):
    """One split of the digits, in memory; items are ``(image [1, S, S] float32 in [0, 1], label int)``.

    Args:
        train: the 80 % training split, else the 20 % validation split.
        img_size: side S of the resized images.
        transform: applied to each ``[1, S, S]`` tensor (e.g. :class:`TensorAugment`), or None.

    Attributes:
        images: ``[N, 1, S, S]`` float32 tensor (before ``transform``).
        targets: ``[N]`` int64 tensor of labels 0..9.
        indices: ``[N]`` positions of these samples in the file (``load_digits()``'s order).
    """

    num_classes = 10

    def __init__(self, train: bool = True, img_size: int = 32, transform=None) -> None:
        all_images, labels = load_digits_arrays()
        train_idx, val_idx = digits_split()
        self.indices = torch.from_numpy(train_idx if train else val_idx)
        images = torch.from_numpy(all_images[self.indices.numpy()]).float().div_(16.0)  # [N, 8, 8] in [0, 1]
        images = images.unsqueeze(1)  # [N, 1, 8, 8]
        if img_size != images.shape[-1]:
            # bilinear without antialias is a convex combination: values stay in [0, 1]
            images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = images.clamp_(0.0, 1.0).contiguous()
        self.targets = torch.from_numpy(labels[self.indices.numpy()]).long()
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


def canvas_positions(img_size: int, digit_size: int, seed: int = DIGITS_CANVAS_SEED) -> np.ndarray:
    """``[1797, 2]`` int64 (row, column) of each digit's top-left corner on the canvas, in the
    file's order: uniform over the positions where the digit fits, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, img_size - digit_size + 1, size=(N_DIGITS, 2), dtype=np.int64)


class DigitsCanvasDataset(DigitsDataset):
    """One split of ``digits-canvas``: each digit resized (bilinearly) to ``digit_size`` and
    placed on an empty ``img_size`` canvas at its position from :func:`canvas_positions`.

    Args:
        train, transform: as :class:`DigitsDataset`.
        img_size: side S of the canvas.
        digit_size: side of the placed digit; None means ``img_size // 2``.
        seed: draws the positions.

    Attributes:
        images, targets, indices: as :class:`DigitsDataset` (images ``[N, 1, S, S]``).
        positions: ``[N, 2]`` (row, column) of each digit's top-left corner.
    """

    def __init__(self, train: bool = True, img_size: int = 32, transform=None, digit_size: int | None = None,
                 seed: int = DIGITS_CANVAS_SEED) -> None:
        digit_size = img_size // 2 if digit_size is None else digit_size
        if not 1 <= digit_size <= img_size:
            raise ValueError(f"digit_size must lie in [1, img_size={img_size}], got {digit_size}")
        super().__init__(train, digit_size, transform)  # self.images: [N, 1, d, d]
        self.positions = torch.from_numpy(canvas_positions(img_size, digit_size, seed)[self.indices.numpy()])
        canvas = torch.zeros(len(self.targets), 1, img_size, img_size)
        for i, (row, col) in enumerate(self.positions.tolist()):
            canvas[i, :, row:row + digit_size, col:col + digit_size] = self.images[i]
        self.images, self.img_size, self.digit_size, self.seed = canvas, img_size, digit_size, seed

    def __repr__(self) -> str:
        return super().__repr__().replace("DigitsDataset(", "DigitsCanvasDataset(", 1).replace(
            ", transform=", f", digit_size={self.digit_size}, seed={self.seed}, transform=", 1)


def build_digits(img_size: int, recipe: dict, augment: bool,
                 canvas: bool = False) -> tuple[DigitsDataset, DigitsDataset]:
    """The (train, val) splits of ``digits`` or, with ``canvas``, of ``digits-canvas``."""
    cls = DigitsCanvasDataset if canvas else DigitsDataset
    train_tf = TensorAugment(img_size, recipe["hflip"], recipe["translate"], augment=True) if augment else None
    return cls(True, img_size, train_tf), cls(False, img_size, None)
