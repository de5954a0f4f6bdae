"""Training and evaluation: configs, the trainer, checkpoints, epsilon tables, halting maps."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .evaluate import epsilon_table, evaluate, format_table, halting_maps
from .trainer import NonFiniteLossError, Trainer, model_from_checkpoint

__all__ = [
    "CheckpointError", "ConfigError", "NonFiniteLossError", "TrainConfig", "Trainer", "config_from_dict",
    "epsilon_table", "evaluate", "format_table", "halting_maps", "load_checkpoint", "load_config",
    "model_from_checkpoint", "save_checkpoint",
]
