"""Batched multi-agent environments following the torchrl-ermas TensorDict contract.

Every environment here is a batched TorchRL :class:`~torchrl.envs.EnvBase` with an
``"agents"`` group (``[*B, N, ...]``), a ``"planner"`` group (``[*B, 1, ...]``) and shared
``done`` / ``terminated`` / ``truncated`` flags at the root.
"""

from __future__ import annotations

from .bimatrix import SequentialBimatrixEnv, dilemma_payoffs, seed0_payoffs
from .economy import (
    BracketTax,
    EconomyEnv,
    FixedRatePlanner,
    FreeMarketPlanner,
    SaezPlanner,
    USFederalPlanner,
)
from .nmatrix import NMatrixGameEnv, nmatrix_payoffs

__all__ = [
    "BracketTax",
    "EconomyEnv",
    "FixedRatePlanner",
    "FreeMarketPlanner",
    "NMatrixGameEnv",
    "SaezPlanner",
    "USFederalPlanner",
    "SequentialBimatrixEnv",
    "dilemma_payoffs",
    "nmatrix_payoffs",
    "seed0_payoffs",
]
