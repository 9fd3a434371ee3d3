"""Agent utility and social-welfare metrics of the AI Economist.

Follows ``ai_economist/foundation/scenarios/utils/{rewards,social_metrics}.py``.
"""

from __future__ import annotations

import torch


def gini(coin: torch.Tensor) -> torch.Tensor:
    """Gini coefficient over the last dim, as the reference computes it.

    Exact pairwise formula, normalised by ``(N - 1) / N``, for fewer than 30 agents; the
    reference's sorted approximation from 30 agents on.

    Examples:
        >>> gini(torch.tensor([0.0, 0.0, 0.0, 4.0]))
        tensor(1.)
    """
    n = coin.shape[-1]
    total = coin.sum(-1)
    if n < 30:
        diff = (coin.unsqueeze(-1) - coin.unsqueeze(-2)).abs().sum((-1, -2))
        return diff / (2 * n * total + 1e-10) / ((n - 1) / n)
    cum = coin.sort(-1).values.cumsum(-1).sum(-1)
    return 1 - (2 / (n + 1)) * cum / (total + 1e-10)


def equality(coin: torch.Tensor) -> torch.Tensor:
    """``1 - gini(coin)``; all-zero coin gives 1.

    Examples:
        >>> equality(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        tensor(1.)
    """
    return 1 - gini(coin)


def coin_eq_times_productivity(coin: torch.Tensor, eq: torch.Tensor | None = None) -> torch.Tensor:
    """The planner's social welfare: equality times **mean** coin (the reference's scaling);
    ``eq`` is :func:`equality` of ``coin`` when the caller has it already.

    Examples:
        >>> coin_eq_times_productivity(torch.tensor([2.0, 2.0, 2.0, 2.0]))
        tensor(2.)
    """
    return (equality(coin) if eq is None else eq) * coin.mean(-1)


def isoelastic_utility(
    coin: torch.Tensor, labour: torch.Tensor, eta: torch.Tensor, energy_cost: float = 0.21
) -> torch.Tensor:
    """``(x^(1-eta) - 1) / (1 - eta) - energy_cost * labour``, elementwise.

    ``eta == 1`` uses ``log(max(1, x))`` (the reference's intent; its code is broken there).

    Examples:
        >>> isoelastic_utility(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.23]))
        tensor([-1.2987])
    """
    one_minus = 1 - eta
    safe = torch.where(one_minus == 0, torch.ones_like(one_minus), one_minus)
    iso = (coin.clamp_min(0).pow(one_minus) - 1) / safe
    util = torch.where(one_minus == 0, coin.clamp_min(1).log(), iso)
    return util - energy_cost * labour
