"""Regret estimation by unilateral deviations, and the meta-gradient of the agents' regret."""

from __future__ import annotations

from .deviation import DeviationPolicy
from .meta import MetaGradient, own_policy_gradient
from .reptile import ReptileRegretEstimator, persistent_env_state, seed_env
from .trust_region import PPODeviationStep, TrustRegionStep

__all__ = [
    "DeviationPolicy",
    "MetaGradient",
    "ReptileRegretEstimator",
    "PPODeviationStep",
    "TrustRegionStep",
    "own_policy_gradient",
    "persistent_env_state",
    "seed_env",
]
