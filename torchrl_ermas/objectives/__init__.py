"""ERMAS objectives: the agent loss, the per-agent Lagrange multipliers and the planner side."""

from __future__ import annotations

from torchrl_ermas.objectives.ermas import ErmasLoss
from torchrl_ermas.objectives.lagrange import LagrangeMultiplier
from torchrl_ermas.objectives.planner import PlannerAdvantage

__all__ = ["ErmasLoss", "LagrangeMultiplier", "PlannerAdvantage"]
