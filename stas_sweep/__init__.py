"""stas-sweep: STAS spiking vision transformers, trained and swept for accuracy against energy."""

from .models import HaltingConfig, STASOutput, SpikingViT, create_model, list_models

__version__ = "0.1.0"
__all__ = ["HaltingConfig", "STASOutput", "SpikingViT", "create_model", "list_models", "__version__"]
