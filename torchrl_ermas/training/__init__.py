"""The ERMAS training loop, its baselines, transfer evaluation, checkpoints and configs."""

from __future__ import annotations

from .checkpoint import component_state, load_checkpoint, save_checkpoint
from .config import (
    ErmasConfig,
    LoggerConfig,
    PPOConfig,
    RewardConfig,
    TrainConfig,
    as_config,
    register_configs,
    validate,
)
from .experiments import (
    LaunchConfig,
    launch_settings,
    mean_sem,
    method_seed_configs,
    multiplier_settling,
    relative_summary,
    run,
    run_many,
    transfer_config,
    transfer_grid,
    validate_experiment,
    with_overrides,
)
from .population import PER_RUN_KEYS, PopulationPolicy, PopulationTrainer, check_population
from .probe import probe_regret
from .trainer import ErmasTrainer, NonFiniteError
from .variants import VARIANTS, Variant

__all__ = [
    "PER_RUN_KEYS",
    "VARIANTS",
    "Variant",
    "as_config",
    "check_population",
    "component_state",
    "ErmasConfig",
    "ErmasTrainer",
    "LoggerConfig",
    "NonFiniteError",
    "PopulationPolicy",
    "PopulationTrainer",
    "PPOConfig",
    "RewardConfig",
    "TrainConfig",
    "LaunchConfig",
    "launch_settings",
    "load_checkpoint",
    "mean_sem",
    "method_seed_configs",
    "multiplier_settling",
    "probe_regret",
    "register_configs",
    "relative_summary",
    "run",
    "run_many",
    "save_checkpoint",
    "transfer_config",
    "transfer_grid",
    "validate",
    "validate_experiment",
    "with_overrides",
]
