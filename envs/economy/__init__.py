"""The AI Economist economy (labour, Gather-Build, Gather-Trade-Build) with tax planners."""

from __future__ import annotations

from .env import TIERS, EconomyEnv
from .planners import FixedRatePlanner, FreeMarketPlanner, SaezPlanner, USFederalPlanner
from .settings import EconomySettings
from .tax import US_FEDERAL_2018_RATES, BracketTax, us_federal_cutoffs

__all__ = [
    "TIERS",
    "US_FEDERAL_2018_RATES",
    "BracketTax",
    "EconomyEnv",
    "EconomySettings",
    "FixedRatePlanner",
    "FreeMarketPlanner",
    "SaezPlanner",
    "USFederalPlanner",
    "us_federal_cutoffs",
]
