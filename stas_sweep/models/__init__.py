"""Spiking ViT backbones with I-SPS and A-SSA halting."""

from .halting import Halting, HaltingConfig
from .registry import create_model, get_arch, list_models
from .vit import STASOutput, SpikingViT

__all__ = ["Halting", "HaltingConfig", "STASOutput", "SpikingViT", "create_model", "get_arch", "list_models"]
