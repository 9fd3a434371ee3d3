"""Regret estimation by unilateral deviations, and the Reptile meta step."""

from __future__ import annotations

from .deviation import DeviationPolicy
from .meta import ReptileStep
from .reptile import ReptileRegretEstimator, seed_env
from .trust_region import TrustRegionStep

__all__ = ["DeviationPolicy", "ReptileRegretEstimator", "ReptileStep", "TrustRegionStep", "seed_env"]
