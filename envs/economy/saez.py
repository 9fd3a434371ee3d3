"""The AI Economist's adaptation of the Saez optimal income tax formula, batched in torch.

Saez (2001), "Using elasticities to derive optimal income tax rates", Review of Economic
Studies 68(1) (NBER w7628), as adapted in ``PeriodicBracketTax`` of the AI Economist
(``redistribution.py``: ``estimate_uniform_income_elasticity``,
``get_binned_saez_welfare_weight_and_pareto_params``, ``get_saez_marginal_rates`` and
``bracketize_schedule``). Everything is computed in float64 on the buffer's device.
"""

from __future__ import annotations

from typing import Literal

import torch

ParetoWeight = Literal["inverse_income", "uniform"]


def estimate_elasticity(
    income: torch.Tensor,
    marginal_rate: torch.Tensor,
    previous: float,
    discount: float = 0.98,
) -> float:
    """Running OLS estimate of the elasticity of income to ``1 - marginal rate``.

    Regresses ``log z`` on ``log(1 - tau)`` (with intercept) over samples with ``z > 0``
    and ``tau < 1``; keeps ``previous`` with fewer than 10 such samples or when the rates
    barely vary. Returns ``(1 - discount) * max(slope, 0) + discount * previous``.

    Examples:
        >>> tau = torch.linspace(0.0, 0.5, 20, dtype=torch.float64)
        >>> z = 100 * (1 - tau) ** 2.0
        >>> round(estimate_elasticity(z, tau, previous=0.5), 6)
        0.53
    """
    keep = (income > 0) & (marginal_rate < 1)
    z, tau = income[keep].double(), marginal_rate[keep].double()
    if z.numel() < 10 or tau.std(correction=0).item() < 1e-6:
        return float(previous)
    x = torch.log((1 - tau).clamp_min(1e-9))
    y = torch.log(z.clamp_min(1e-9))
    design = torch.stack([x, torch.ones_like(x)], -1)
    slope = torch.linalg.solve(design.T @ design, design.T @ y)[0].item()
    return (1 - discount) * max(slope, 0.0) + discount * float(previous)


def income_bin_edges(top_cutoff: float, n_bins: int = 100, device=None) -> torch.Tensor:
    """``n_bins + 1`` equal-width edges on ``[0, top_cutoff]`` (numpy ``linspace`` values)."""
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=device) * (top_cutoff / n_bins)
    edges[-1] = top_cutoff
    return edges


def binned_welfare_weight_and_pareto_param(
    income: torch.Tensor,
    edges: torch.Tensor,
    pareto_weight: ParetoWeight = "inverse_income",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binned G(z) (average social welfare weight at or above z) and A(z) (local Pareto
    parameter), each ``[n_bins + 1]`` where the last entry is the open top bin.

    Bins follow ``np.histogram`` (right edge of the last bin included); incomes below 0 and
    above the top edge are counted apart. A(z) is NaN in empty bins.
    """
    z = income.double()
    n_bins = edges.numel() - 1
    top = edges[-1]
    below, above = z < 0, z > top
    inside = ~(below | above)
    idx = (torch.searchsorted(edges, z.contiguous(), right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.zeros(n_bins, dtype=torch.float64, device=z.device)
    counts.index_add_(0, idx[inside], torch.ones_like(z[inside]))
    n_below, n_above = below.sum().double(), above.sum().double()
    n_total = counts.sum() + n_below + n_above

    def weight(v: torch.Tensor) -> torch.Tensor:
        if pareto_weight == "uniform":
            return torch.ones_like(v)
        return 1.0 / v.clamp_min(1)

    mid = 0.5 * (edges[:-1] + edges[1:])
    weight_above = torch.where(above, weight(z), torch.zeros_like(z)).sum()
    per_bin = counts * weight(mid)
    norm = per_bin.sum() + n_below + weight_above + 1e-9
    density = torch.cat([per_bin, weight_above.reshape(1)]) / norm
    p = torch.cat([counts, n_above.reshape(1)]) / n_total
    density_geq = density.flip(0).cumsum(0).flip(0)
    p_geq = p.flip(0).cumsum(0).flip(0)
    avg_weight_geq = density_geq / (p_geq + 1e-9)
    g = torch.cat([0.5 * (avg_weight_geq[:-1] + avg_weight_geq[1:]), avg_weight_geq[-1:]])

    cum_p = p.clone()
    cum_p[0] = cum_p[0] + n_below / n_total
    cum_p = cum_p.cumsum(0).clamp_max(1.0)
    half_tail = (1 - cum_p + 0.5 * p)[:-1].clamp(0, 1)
    width = edges[1:] - edges[:-1]
    a_bins = mid * p[:-1] / (half_tail + 1e-9) / width
    a_bins = torch.where(p[:-1] == 0, torch.full_like(a_bins, float("nan")), a_bins)
    mean_above = torch.where(above, z, torch.zeros_like(z)).sum() / n_above.clamp_min(1)
    a_top = torch.where(n_above > 0, mean_above / (mean_above - top + 1e-9), torch.zeros_like(top))
    return g, torch.cat([a_bins, a_top.reshape(1)])


def saez_marginal_rates(g: torch.Tensor, a: torch.Tensor, elasticity: float) -> torch.Tensor:
    """``tau = (1 - G) / (1 - G + A e)`` per bin; NaN gaps are filled linearly, starting
    from rate 0 at a virtual bin before the first."""
    tau = (1.0 - g) / (1.0 - g + a * elasticity + 1e-9)
    n = tau.numel()
    real = ~torch.isnan(tau)
    pos = torch.arange(n, device=tau.device)
    prev_idx = torch.where(real, pos, torch.full_like(pos, -1)).cummax(0).values
    prev_idx = torch.cat([prev_idx.new_tensor([-1]), prev_idx[:-1]])
    nxt = torch.where(real, pos, torch.full_like(pos, n)).flip(0).cummin(0).values.flip(0)
    prev_val = torch.where(prev_idx >= 0, tau[prev_idx.clamp_min(0)], torch.zeros_like(tau))
    next_val = tau[nxt.clamp_max(n - 1)]
    step = (next_val - prev_val) / (nxt - prev_idx).double()
    filled = (pos - prev_idx).double() * step + prev_val
    return torch.where(real, tau, filled)


def bracketize(
    bin_rates: torch.Tensor,
    edges: torch.Tensor,
    cutoffs: torch.Tensor,
) -> torch.Tensor:
    """Average marginal rate of each tax bracket under a binned schedule.

    Bracket ``b`` gets ``(T(c_{b+1}) - T(c_b)) / size_b`` with ``T(c)`` the (non-negative)
    tax on an income of ``c``; the open top bracket gets the top bin's rate.
    """
    cut = cutoffs.double()
    sizes = torch.cat([edges[1:] - edges[:-1], edges.new_tensor([float("inf")])])
    starts = edges
    past = (cut[1:].unsqueeze(-1) - starts).clamp_min(0)
    due = (bin_rates * torch.minimum(sizes, past)).sum(-1).clamp_min(0)
    due = torch.cat([due.new_zeros(1), due])
    return torch.cat([(due[1:] - due[:-1]) / (cut[1:] - cut[:-1]), bin_rates[-1:]])


def saez_bracket_rates(
    income: torch.Tensor,
    cutoffs: torch.Tensor,
    elasticity: float,
    pareto_weight: ParetoWeight = "inverse_income",
    n_bins: int = 100,
) -> torch.Tensor:
    """Bracket rates in ``[0, 1]`` from the Saez formula on a buffer of incomes.

    Examples:
        >>> from torchrl_ermas.envs.economy.tax import BracketTax
        >>> incomes = torch.tensor([5.0, 20.0, 60.0, 150.0] * 50, dtype=torch.float64)
        >>> saez_bracket_rates(incomes, BracketTax().cutoffs, elasticity=3.0).shape
        torch.Size([7])
    """
    edges = income_bin_edges(float(cutoffs[-1]), n_bins, device=income.device)
    g, a = binned_welfare_weight_and_pareto_param(income, edges, pareto_weight)
    rates = saez_marginal_rates(g, a, elasticity)
    return bracketize(rates, edges, cutoffs.to(income.device)).clamp(0, 1)
