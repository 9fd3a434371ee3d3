"""Skill draws of the AI Economist agents (Pareto/Lomax based)."""

from __future__ import annotations

import torch

from .layout import FIXED_BUILD_PAYMENTS


def lomax(shape: tuple[int, ...], alpha: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Samples of ``numpy.random.pareto(alpha)`` (Lomax): ``U^(-1/alpha) - 1``."""
    u = 1 - torch.rand(shape, generator=generator, device=device)
    return u.pow(-1.0 / alpha) - 1


def gather_bonus(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Probability of a bonus unit per collection: ``min(2, Lomax(3)) / 2``."""
    return lomax(shape, 3.0, generator, device).clamp_max(2) / 2


def ranked_skills(n_agents: int) -> torch.Tensor:
    """Average sorted skill multipliers ``min(3, 2 Lomax(4) + 1)``, worst first.

    Four agents get the reference's recorded values (its build payments / 10); other
    counts average 100,000 draws from a generator seeded with 1.

    Examples:
        >>> ranked_skills(4)
        tensor([1.1330, 1.3270, 1.6470, 2.2250])
    """
    if n_agents == len(FIXED_BUILD_PAYMENTS):
        return torch.tensor(FIXED_BUILD_PAYMENTS) / 10
    gen = torch.Generator().manual_seed(1)
    draws = (2 * lomax((100_000, n_agents), 4.0, gen) + 1).clamp_max(3)
    return draws.sort(-1).values.mean(0)
