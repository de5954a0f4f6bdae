"""Named configurations ``<family>-<L>-<D>`` and the one entry point :func:`create_model`.

A name fixes the architecture (family, depth L, width D, heads); the task and input shape
(classes, image size, channels, timesteps), the stem and halting are arguments, as in timm.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .families import FAMILIES
from .vit import SpikingViT


@dataclass(frozen=True)
class Arch:
    family: str
    depth: int
    embed_dim: int
    num_heads: int


# Heads as in the reference configs: 12 at 384 (Spikformer CIFAR), 8 at 512 (ImageNet),
# 16 at 256 (DVS). Parameter counts do not depend on the head count.
_PUBLISHED = [(4, 384), (2, 256), (2, 384), (4, 256), (8, 384), (8, 512), (8, 768), (2, 512)]
_HEADS = {256: 16, 384: 12, 512: 8, 768: 12}
_TINY = [(1, 16, 2), (1, 32, 4), (2, 32, 4), (2, 64, 4), (4, 48, 4)]  # for tests and CPU demos

_REGISTRY: dict[str, Arch] = {}
for _family in FAMILIES:
    for _L, _D in _PUBLISHED:
        _REGISTRY[f"{_family}-{_L}-{_D}"] = Arch(_family, _L, _D, _HEADS[_D])
    for _L, _D, _h in _TINY:
        _REGISTRY[f"{_family}-{_L}-{_D}"] = Arch(_family, _L, _D, _h)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (e.g. ``'spikingformer-*'``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_arch(name: str) -> Arch:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(name: str, *, num_classes: int = 10, img_size: int = 32, in_channels: int = 3,
                 timesteps: int = 4, stem: str = "isps", halting: dict | None = None,
                 **kwargs) -> SpikingViT:
    """Build a registered model.

    Args:
        name: ``<family>-<L>-<D>``, see :func:`list_models`.
        num_classes, img_size, in_channels, timesteps: task and input; 32 -> 64 tokens,
            224 -> 196 tokens, 128 (DVS, ``in_channels=2``) -> 64 tokens.
        stem: ``sps`` (per-timestep stem) or ``isps`` (STAS's one-pass stem).
        halting: ``None`` for a static model, or ``{alpha, beta, epsilon, accumulation}``.
        kwargs: passed to :class:`SpikingViT` (e.g. ``mlp_ratio``, ``qkv_bias``).
    """
    arch = get_arch(name)
    # Spikformer's CIFAR code uses biased Linear q/k/v; its ImageNet code and the others do not.
    kwargs.setdefault("qkv_bias", img_size < FAMILIES[arch.family].qkv_bias_below)
    return SpikingViT(
        family=arch.family, depth=arch.depth, embed_dim=arch.embed_dim, num_heads=arch.num_heads,
        num_classes=num_classes, img_size=img_size, in_channels=in_channels, timesteps=timesteps,
        stem=stem, halting=halting, **kwargs,
    )
