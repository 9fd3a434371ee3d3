"""Regret estimation by unilateral deviations, and the Reptile meta step."""
from __future__ import annotations

from .deviation import DeviationPolicy
from .reptile import ReptileRegretEstimator, seed_env

__all__ = ["DeviationPolicy", "ReptileRegretEstimator", "seed_env"]
