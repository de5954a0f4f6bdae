"""Spiking ViT backbones with I-SPS and A-SSA halting.

The names below load lazily, so that :mod:`~stas_sweep.models.configs` (the methods' configs, plain
data) can be imported without torch.
"""

from __future__ import annotations

import importlib

_WHERE = {"HaltingConfig": "configs", "HaltingState": "halting", "STASOutput": "vit", "SpikingViT": "vit",
          "create_model": "registry", "get_arch": "registry", "list_models": "registry"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
