"""ERMAS objectives: the agent loss and the per-agent Lagrange multipliers."""
from __future__ import annotations

from torchrl_ermas.objectives.ermas import ErmasLoss
from torchrl_ermas.objectives.lagrange import LagrangeMultiplier

__all__ = ["ErmasLoss", "LagrangeMultiplier"]
