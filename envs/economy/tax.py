"""Periodic bracket tax: brackets, taxes due, marginal rates and lump-sum redistribution.

Follows ``PeriodicBracketTax`` of the AI Economist (Zheng et al. 2020,
https://arxiv.org/abs/2004.13332), ``ai_economist/foundation/components/redistribution.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from torchrl_ermas.validation import check_real

#: US federal single-filer 2018 bracket cutoffs in USD (``bracket_spacing="us-federal"``).
US_FEDERAL_CUTOFFS_USD: tuple[float, ...] = (0, 9700, 39475, 84200, 160725, 204100, 510300)
#: US federal single-filer 2018 marginal rates, one per bracket.
US_FEDERAL_2018_RATES: tuple[float, ...] = (0.10, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37)
#: Number of discrete rate levels a learned planner chooses from: 0, 0.05, ..., 1.
N_RATE_LEVELS = 21
#: Spacing of the discrete rate levels.
RATE_STEP = 0.05


def us_federal_cutoffs(usd_scaling: float = 1000.0) -> tuple[float, ...]:
    """The US-2018 bracket cutoffs divided by ``usd_scaling`` (coin per tax period).

    Examples:
        >>> us_federal_cutoffs()[:3]
        (0.0, 9.7, 39.475)
    """
    if usd_scaling <= 0:
        raise ValueError(f"usd_scaling must be > 0, got {usd_scaling}")
    return tuple(c / usd_scaling for c in US_FEDERAL_CUTOFFS_USD)


def validate_rates(rates: Sequence[float] | torch.Tensor, n_brackets: int, name: str) -> torch.Tensor:
    """Check a bracket rate schedule: ``n_brackets`` finite values in ``[0, 1]``.

    Raises:
        ValueError: naming ``name`` and the accepted values.
    """
    t = torch.as_tensor(rates, dtype=torch.float32)
    if t.shape != (n_brackets,):
        raise ValueError(f"{name} must hold one rate per bracket ({n_brackets} values), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"{name} must lie in [0, 1], got {t.tolist()}")
    return t


class TaxOutcome(NamedTuple):
    """Result of :meth:`BracketTax.enact`, all ``[*B, N]`` except ``revenue`` ``[*B]``."""

    coin: torch.Tensor
    income: torch.Tensor
    paid: torch.Tensor
    marginal_rate: torch.Tensor
    revenue: torch.Tensor


class BracketTax:
    """A bracketed income tax with lump-sum redistribution of the revenue.

    Args:
        cutoffs: lower edge of each bracket; starts at 0 and strictly increases. The
            top bracket is open. Defaults to the US-2018 cutoffs scaled by 1000.
        device: where the bracket tensors live.

    Examples:
        >>> tax = BracketTax()
        >>> rates = torch.tensor(US_FEDERAL_2018_RATES)
        >>> tax.taxes_due(torch.tensor([20.0]), rates)
        tensor([2.2060])
        >>> tax.marginal_rate(torch.tensor([20.0, -1.0]), rates)
        tensor([0.1200, 0.0000])
    """

    def __init__(
        self,
        cutoffs: Sequence[float] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if cutoffs is None:
            cutoffs = us_federal_cutoffs()
        else:
            cutoffs = tuple(check_real(f"bracket cutoffs[{i}]", c) for i, c in enumerate(cutoffs))
        increasing = all(b > a for a, b in zip(cutoffs, cutoffs[1:]))
        if len(cutoffs) < 2 or cutoffs[0] != 0 or not increasing:
            raise ValueError(
                f"bracket cutoffs must start at 0 and be strictly increasing (at least 2 brackets), got {list(cutoffs)}"
            )
        self.cutoffs = torch.tensor(cutoffs, dtype=torch.float32, device=device)
        edges = torch.cat([self.cutoffs, self.cutoffs.new_tensor([float("inf")])])
        self.sizes = edges[1:] - edges[:-1]

    @property
    def n_brackets(self) -> int:
        """Number of brackets."""
        return self.cutoffs.numel()

    def taxes_due(self, income: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """Tax owed on ``income`` ``[*B, N]`` under bracket ``rates`` ``[*B, K]`` (or ``[K]``)."""
        in_bracket = torch.minimum(self.sizes, (income.unsqueeze(-1) - self.cutoffs).clamp_min(0))
        return (in_bracket * rates.unsqueeze(-2)).sum(-1)

    def marginal_rate(self, income: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """Rate of the bracket holding ``income``; 0 for negative income."""
        idx = torch.searchsorted(self.cutoffs, income.contiguous(), right=True).clamp_min(1) - 1
        rate = torch.gather(rates.expand(*income.shape[:-1], -1), -1, idx)
        return torch.where(income < 0, torch.zeros_like(rate), rate)

    def enact(
        self,
        coin: torch.Tensor,
        escrow: torch.Tensor,
        last_coin: torch.Tensor,
        rates: torch.Tensor,
    ) -> TaxOutcome:
        """Collect taxes on the income since ``last_coin`` and return the revenue equally.

        Income counts escrowed coin; taxes are capped by inventory coin (escrow is never
        taxed).

        Args:
            coin: inventory coin ``[*B, N]``.
            escrow: escrowed coin ``[*B, N]``.
            last_coin: total coin after the previous redistribution ``[*B, N]``.
            rates: bracket rates ``[*B, K]``.
        """
        income = coin + escrow - last_coin
        paid = torch.minimum(coin, self.taxes_due(income, rates))
        revenue = paid.sum(-1)
        new_coin = coin - paid + (revenue / coin.shape[-1]).unsqueeze(-1)
        return TaxOutcome(new_coin, income, paid, self.marginal_rate(income, rates), revenue)
