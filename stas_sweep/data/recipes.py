"""Augmentation recipes: the published per-data-set defaults, overridable key by key.

Static images (CIFAR, ImageNet) are augmented with timm's own ``create_transform``, the
same code path the reference repositories run through timm's ``train.py``; the recipe keys
carry the names of timm's config files (``aa``, ``reprob``, ``remode``, ``scale`` ...), so a
value can be pasted from a reference ``.yml``. The defaults are the Spikformer /
Spikingformer configs (``reference/architectures.md`` section 6):

=============  ==========================  =====  ======  ===========  ==========  ========
data set       aa (RandAugment)            hflip  reprob  scale        ratio       crop_pct
=============  ==========================  =====  ======  ===========  ==========  ========
cifar10/100    rand-m9-n1-mstd0.4-inc1     0.5    0.25    (1.0, 1.0)   (1.0, 1.0)  1.0
imagenet       rand-m9-mstd0.5-inc1        0.5    0.25    (1.0, 1.0)   timm's      1.0
=============  ==========================  =====  ======  ===========  ==========  ========

(bicubic interpolation, constant random erasing; colour jitter 0 on CIFAR and 0.4 on
ImageNet, which timm switches off anyway whenever ``aa`` is set; CIFAR mean/std
(0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616), ImageNet timm's defaults.)

Event frames ([T, 2, H, W] counts) and the digits images are tensors, not PIL images, so
they get a small tensor augmentation of our own: horizontal flip with probability
``hflip`` (CIFAR10-DVS 0.5 as in Spikformer's DVS script; DVS128 Gesture 0, since it has
left- and right-hand classes; digits 0) and a random integer translation of up to
``translate * img_size`` pixels in x and y with zero fill (CIFAR10-DVS and digits 1/16,
Gesture 0). It draws from torch's RNG only, so it is reproducible under
``torch.manual_seed`` (and under the loaders of :mod:`stas_sweep.data.loaders`).
Event frames are integer event counts and are not normalised (mean 0, std 1), as in the
reference DVS code.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "DEFAULT_RECIPES", "resolve_recipe", "image_transforms", "TensorAugment",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)  # timm.data.IMAGENET_DEFAULT_STD

_CIFAR = {
    "aa": "rand-m9-n1-mstd0.4-inc1", "hflip": 0.5, "reprob": 0.25, "remode": "const",
    "scale": (1.0, 1.0), "ratio": (1.0, 1.0), "interpolation": "bicubic", "crop_pct": 1.0,
    "color_jitter": 0.0, "mean": CIFAR_MEAN, "std": CIFAR_STD,
}
_IMAGENET = {
    "aa": "rand-m9-mstd0.5-inc1", "hflip": 0.5, "reprob": 0.25, "remode": "const",
    "scale": (1.0, 1.0), "ratio": (3 / 4, 4 / 3), "interpolation": "bicubic", "crop_pct": 1.0,
    "color_jitter": 0.4, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
}

#: Per-data-set defaults. ``build_datasets(..., recipe={...})`` overrides single keys;
#: an unknown key is an error.
DEFAULT_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    "imagenet": dict(_IMAGENET),
    "cifar10-dvs": {"hflip": 0.5, "translate": 1 / 16},
    "dvs128-gesture": {"hflip": 0.0, "translate": 0.0},
    "digits": {"hflip": 0.0, "translate": 1 / 16},
    "digits-canvas": {"hflip": 0.0, "translate": 1 / 16},
}


def resolve_recipe(name: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The default recipe of ``name`` with ``overrides`` applied; unknown keys raise ValueError."""
    recipe = dict(DEFAULT_RECIPES[name])
    unknown = sorted(set(overrides or {}) - set(recipe))
    if unknown:
        raise DataError(
            f"unknown recipe key(s) {unknown} for data set {name!r}; accepted keys: {', '.join(sorted(recipe))}"
        )
    for key, value in (overrides or {}).items():
        _check_recipe_value(name, key, value, recipe[key])
    recipe.update(overrides or {})
    for key in ("scale", "ratio", "mean", "std"):
        if key in recipe and recipe[key] is not None:
            recipe[key] = tuple(float(v) for v in recipe[key])
    return recipe


# recipe keys that are probabilities or fractions of the image: [0, 1]
_UNIT_KEYS = ("hflip", "reprob", "translate", "color_jitter")


def _check_recipe_value(name: str, key: str, value: Any, default: Any) -> None:
    """An override has the kind of the default (a number, a text or null, a list of numbers);
    probabilities and fractions lie in [0, 1]. A :class:`DataError` naming ``data.recipe.<key>``."""
    import math

    from ..errors import short

    def fail(expected: str):
        raise DataError(f"data.recipe.{key} is {short(value, 80)} for data set {name!r}; expected {expected} "
                        f"(default {default!r})")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if not number(value):
            fail("a finite number")
        if key in _UNIT_KEYS and not 0 <= value <= 1:
            fail("a number in [0, 1]")
        if key == "crop_pct" and not 0 < value <= 1:
            fail("a number in (0, 1]")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default) or not all(number(v) for v in value):
            fail(f"a list of {len(default)} finite numbers")
    elif isinstance(default, str) or default is None:
        if value is not None and not isinstance(value, str):
            fail("a text or null")


def image_transforms(recipe: Mapping[str, Any], img_size: int, augment: bool):
    """(train, eval) torchvision transforms for PIL images, built by ``timm.data.create_transform``.

    With ``augment=False`` the training transform is the evaluation one (resize, centre
    crop at ``crop_pct``, normalise).
    """
    from timm.data import create_transform  # imported here: timm is slow to import

    common = dict(input_size=img_size, interpolation=recipe["interpolation"],
                  mean=recipe["mean"], std=recipe["std"])
    eval_tf = create_transform(is_training=False, crop_pct=recipe["crop_pct"], **common)
    if not augment:
        return eval_tf, eval_tf
    train_tf = create_transform(
        is_training=True, scale=recipe["scale"], ratio=recipe["ratio"], hflip=recipe["hflip"],
        color_jitter=recipe["color_jitter"], auto_augment=recipe["aa"] or None,
        re_prob=recipe["reprob"], re_mode=recipe["remode"], **common,
    )
    return train_tf, eval_tf


class TensorAugment:
    """Resize, flip and shift a ``[C, H, W]`` image or ``[T, C, H, W]`` frame stack.

    Args:
        img_size: output side; a different input side is resized (bilinear, antialiased),
            the same resize for every frame.
        hflip: probability of a horizontal flip (all frames together).
        translate: largest shift as a fraction of ``img_size``; the shift (dx, dy) is
            drawn uniformly from the integers in ``[-round(translate*img_size), +...]`` and
            the uncovered border is filled with zeros.
        augment: False gives the deterministic evaluation transform (resize only).

    Accepts numpy arrays (spikingjelly's frames) and returns float32 tensors. Random
    draws come from torch's global RNG (in DataLoader workers, the worker's seeded RNG).
    """

    def __init__(self, img_size: int, hflip: float = 0.0, translate: float = 0.0, augment: bool = True) -> None:
        self.img_size = int(img_size)
        self.hflip = float(hflip) if augment else 0.0
        self.max_shift = int(round(float(translate) * self.img_size)) if augment else 0

    def __call__(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.shape[-2:] != (self.img_size, self.img_size):
            size = (self.img_size, self.img_size)
            y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=size, mode="bilinear",
                              align_corners=False, antialias=True)  # [T*C or C, ...] as [N, C, H, W]
            x = y.reshape(*x.shape[:-2], *size)
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            x = x.flip(-1)
        if self.max_shift > 0:
            dx, dy = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            x = _shift(x, dx, dy)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_size={self.img_size}, hflip={self.hflip}, max_shift={self.max_shift})"


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx) pixels, zero fill: out[..., i+dy, j+dx] = x[..., i, j]."""
    if dx == 0 and dy == 0:
        return x
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out
