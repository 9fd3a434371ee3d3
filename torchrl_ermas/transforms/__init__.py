"""TorchRL transforms for ERMAS: reward baselines (reality gap, DR, RR) and the KL trust region."""
from __future__ import annotations

from .kl import KLToReference
from .planner import PlannerFromAgents
from .reward import (
    ConcavePlannerReward,
    DomainRandomizedReward,
    isoelastic,
    PlannerRewardGap,
)

__all__ = [
    "ConcavePlannerReward",
    "DomainRandomizedReward",
    "KLToReference",
    "PlannerFromAgents",
    "PlannerRewardGap",
    "isoelastic",
]
