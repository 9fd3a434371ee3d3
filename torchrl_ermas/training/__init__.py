"""The ERMAS training loop, its baselines, transfer evaluation, checkpoints and configs."""
from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    ErmasConfig,
    LoggerConfig,
    PPOConfig,
    register_configs,
    RewardConfig,
    TrainConfig,
    validate,
)
from .trainer import ErmasTrainer, NonFiniteError

__all__ = [
    "ErmasConfig",
    "ErmasTrainer",
    "LoggerConfig",
    "NonFiniteError",
    "PPOConfig",
    "RewardConfig",
    "TrainConfig",
    "load_checkpoint",
    "register_configs",
    "save_checkpoint",
    "validate",
]
