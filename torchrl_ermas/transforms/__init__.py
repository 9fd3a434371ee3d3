"""TorchRL transforms for ERMAS: reward baselines (reality gap, DR, RR), the KL trust region,
the regulator planner and time limits as truncation."""

from __future__ import annotations

from .kl import KLToReference
from .planner import PlannerFromAgents
from .reward import (
    ConcavePlannerReward,
    DomainRandomizedReward,
    PlannerRewardGap,
    isoelastic,
)
from .time_limit import TimeLimitAsTruncated

__all__ = [
    "ConcavePlannerReward",
    "DomainRandomizedReward",
    "KLToReference",
    "PlannerFromAgents",
    "PlannerRewardGap",
    "TimeLimitAsTruncated",
    "isoelastic",
]
