"""stas-sweep: STAS spiking vision transformers, trained and swept for accuracy against energy."""

from __future__ import annotations

from ._version import __version__
__all__ = ["HaltingConfig", "STASOutput", "SpikingViT", "create_model", "list_models", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import stas_sweep.cli` does not load torch: the command line sets
    # OMP_WAIT_POLICY first, and libgomp reads it only once, when torch loads it.
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'stas_sweep' has no attribute {name!r}")
