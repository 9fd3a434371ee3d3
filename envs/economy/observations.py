"""Flat observation vectors of the agents and the planner (AI Economist features).

Agent features, in order: [map tiers: build payment / 10, build skill, gather bonus
probability]; [trade tier, per resource (Stone, Wood): market rate, price history x 0.01
(11), available asks (11), available bids (11), own asks (11), own bids (11)]; [labour tier:
skill]; tax block: is_tax_day, is_first_day, tax_phase, last incomes sorted / period (N),
current rates (K), own current marginal rate; time / episode length; inventory x 0.01
(Coin, Stone, Wood); [map tiers: row / H, column / W].

Planner features: time; the tax block without the marginal rate; per agent: inventory x
0.01 (3), last income / period, last marginal rate, current marginal rate; [trade tier,
per resource: market rate, price history x 0.01 (11), all asks (11), all bids (11)].
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .env import EconomyEnv


def _tax_block(env: EconomyEnv, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, 3 + N + K]``: is_tax_day, is_first_day, tax_phase, incomes, rates."""
    pos = (s["t"] % env.period + 1).float()
    flags = torch.stack([pos >= env.period, pos == 1, pos / env.period], -1).float()
    incomes = (s["last_income"] / env.period).sort(-1).values
    return torch.cat([flags, incomes, s["rates"]], -1)


def _current_marginal_rate(env: EconomyEnv, s: dict[str, torch.Tensor]) -> torch.Tensor:
    income = s["inventory"][..., 0] + s["escrow"][..., 0] - s["last_coin"]
    return env.tax.marginal_rate(income, s["rates"])


def agent_observation(
    env: EconomyEnv, s: dict[str, torch.Tensor], orders: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``[B, N, obs]`` agent features (see the module docstring).

    ``orders`` are the trade tier's :meth:`~.auction.DoubleAuction.order_histograms`,
    computed here if not given.

    Examples:
        >>> import torch
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> env = EconomyEnv(2, tier="labour", episode_length=20, period=10, seed=0)
        >>> td = env.reset()
        >>> obs = agent_observation(env, env._state)  # what the env reports, from its state
        >>> obs.shape, torch.equal(obs, td["agents", "observation"])
        (torch.Size([2, 4, 20]), True)
    """
    b, n = s["t"].shape[0], env.n_agents
    per_agent: list[torch.Tensor] = []
    if env.map_tier:
        pay = s["payment"] / 10
        per_agent += [torch.stack([pay, (pay - 1) / 2, s["bonus"]], -1)]
    if env.trade:
        bids, asks = env.auction.order_histograms(s) if orders is None else orders  # [B, R, N, P]
        full_bids, full_asks = bids.sum(2, keepdim=True), asks.sum(2, keepdim=True)
        rate = env.auction.market_rate(s).unsqueeze(-1).unsqueeze(-1).expand(-1, -1, n, 1)
        hist = (s["price_history"].sum(2, keepdim=True) * 0.01).expand(-1, -1, n, -1)
        market = torch.cat([rate, hist, full_asks - asks, full_bids - bids, asks, bids], -1)
        per_agent.append(market.permute(0, 2, 1, 3).flatten(2))
    if not env.map_tier:
        per_agent.append(env._skills[s["rank"]].unsqueeze(-1))
    time = (s["t"].float() / env.episode_length).view(b, 1, 1).expand(b, n, 1)
    per_agent += [
        _tax_block(env, s).unsqueeze(1).expand(b, n, -1),
        _current_marginal_rate(env, s).unsqueeze(-1),
        time,
        s["inventory"] * 0.01,
    ]
    if env.map_tier:
        w, h = env.world.layout.width, env.world.layout.height
        per_agent.append(torch.stack([(s["pos"] // w).float() / h, (s["pos"] % w).float() / w], -1))
    return torch.cat(per_agent, -1)


def planner_observation(
    env: EconomyEnv, s: dict[str, torch.Tensor], orders: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``[B, 1, obs_p]`` planner features (see the module docstring); ``orders`` as in
    :func:`agent_observation`.

    Examples:
        >>> import torch
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> env = EconomyEnv(2, tier="labour", episode_length=20, period=10, seed=0)
        >>> td = env.reset()
        >>> torch.equal(planner_observation(env, env._state), td["planner", "observation"])
        True
    """
    b = s["t"].shape[0]
    agents = torch.cat(
        [
            s["inventory"] * 0.01,
            (s["last_income"] / env.period).unsqueeze(-1),
            s["last_marginal_rate"].unsqueeze(-1),
            _current_marginal_rate(env, s).unsqueeze(-1),
        ],
        -1,
    ).flatten(1)
    parts = [(s["t"].float() / env.episode_length).unsqueeze(-1), _tax_block(env, s), agents]
    if env.trade:
        bids, asks = env.auction.order_histograms(s) if orders is None else orders
        rate = env.auction.market_rate(s).unsqueeze(-1)
        hist = s["price_history"].sum(2) * 0.01
        parts.append(torch.cat([rate, hist, asks.sum(2), bids.sum(2)], -1).flatten(1))
    return torch.cat(parts, -1).view(b, 1, -1)
