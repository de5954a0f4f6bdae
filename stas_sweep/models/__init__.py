"""Spiking ViT backbones with I-SPS and A-SSA halting."""

from .halting import HaltingConfig, HaltingState
from .registry import create_model, get_arch, list_models
from .vit import STASOutput, SpikingViT

__all__ = ["HaltingConfig", "HaltingState", "STASOutput", "SpikingViT", "create_model", "get_arch", "list_models"]
