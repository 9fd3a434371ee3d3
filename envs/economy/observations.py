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

from collections.abc import Mapping
from typing import NamedTuple

import torch

from .settings import EconomySettings
from .tax import BracketTax

State = Mapping[str, torch.Tensor]


class Market(NamedTuple):
    """The trade tier's order book summary: open ``bids``, ``asks`` per price ``[B, R, N, P]``
    (:meth:`~.auction.DoubleAuction.order_histograms`) and the market ``rate`` ``[B, R]``
    (:meth:`~.auction.DoubleAuction.market_rate`)."""

    bids: torch.Tensor
    asks: torch.Tensor
    rate: torch.Tensor


def agent_observation_size(settings: EconomySettings) -> int:
    """Length of an agent's observation, by arithmetic over the features of the module docstring.

    Examples:
        >>> agent_observation_size(EconomySettings(tier="labour"))  # skill, tax block 3 + 4 + 7, 1 + 1 + 3
        20
        >>> agent_observation_size(EconomySettings(tier="gather_trade_build"))  # 3 + 2 x (1 + 5 x 11) + 19 + 2
        136
    """
    n, k = settings.n_agents, settings.n_brackets
    inventory = 1 + settings.n_resources
    size = (3 + n + k) + 1 + 1 + inventory  # tax block, own marginal rate, time, inventory
    size += 3 + 2 if settings.map_tier else 1  # payment, skill, bonus and position; or the skill
    if settings.trade:
        size += settings.n_resources * (1 + 5 * settings.n_prices)
    return size


def planner_observation_size(settings: EconomySettings) -> int:
    """Length of the planner's observation, by arithmetic over the features of the module docstring.

    Examples:
        >>> planner_observation_size(EconomySettings(tier="labour"))  # time, tax block 3 + 4 + 7, 4 x 6
        39
    """
    n, k = settings.n_agents, settings.n_brackets
    size = 1 + (3 + n + k) + n * (1 + settings.n_resources + 3)
    if settings.trade:
        size += settings.n_resources * (1 + 3 * settings.n_prices)
    return size


def _tax_block(settings: EconomySettings, s: State) -> torch.Tensor:
    """``[B, 3 + N + K]``: is_tax_day, is_first_day, tax_phase, incomes, rates."""
    period = settings.period
    pos = (s["t"] % period + 1).float()
    flags = torch.stack([pos >= period, pos == 1, pos / period], -1).float()
    incomes = (s["last_income"] / period).sort(-1).values
    return torch.cat([flags, incomes, s["rates"]], -1)


def current_marginal_rate(tax: BracketTax, s: State) -> torch.Tensor:
    """``[B, N]`` marginal rate of each agent's income so far this period.

    Examples:
        >>> s = {"inventory": torch.tensor([[[20.0, 0, 0]]]), "escrow": torch.zeros(1, 1, 3),
        ...      "last_coin": torch.zeros(1, 1), "rates": torch.tensor([[0.1, 0.2, 0.3]])}
        >>> current_marginal_rate(BracketTax([0, 10, 100]), s)
        tensor([[0.2000]])
    """
    income = s["inventory"][..., 0] + s["escrow"][..., 0] - s["last_coin"]
    return tax.marginal_rate(income, s["rates"])


def agent_observation(
    settings: EconomySettings,
    s: State,
    marginal_rate: torch.Tensor,
    *,
    skill: torch.Tensor | None = None,
    market: Market | None = None,
) -> torch.Tensor:
    """``[B, N, obs]`` agent features (see the module docstring).

    Args:
        settings: the economy.
        s: the state tensors (``t``, ``inventory``, ``last_income``, ``rates``; ``payment``,
            ``bonus``, ``pos`` on map tiers; ``price_history`` on the trade tier).
        marginal_rate: :func:`current_marginal_rate` ``[B, N]``.
        skill: ``[B, N]`` skill of each agent (labour tier).
        market: the order book summary (trade tier).

    Examples:
        >>> settings = EconomySettings(tier="labour", n_agents=2, n_brackets=3, episode_length=20, period=10)
        >>> s = {"t": torch.tensor([3]), "inventory": torch.zeros(1, 2, 3), "last_income": torch.zeros(1, 2),
        ...      "rates": torch.zeros(1, 3)}
        >>> obs = agent_observation(settings, s, torch.zeros(1, 2), skill=torch.tensor([[1.0, 2.0]]))
        >>> obs.shape, obs[0, :, 0].tolist()
        (torch.Size([1, 2, 14]), [1.0, 2.0])
    """
    b, n = s["t"].shape[0], settings.n_agents
    per_agent: list[torch.Tensor] = []
    if settings.map_tier:
        pay = s["payment"] / 10
        per_agent += [torch.stack([pay, (pay - 1) / 2, s["bonus"]], -1)]
    if settings.trade:
        bids, asks, rate = _require(market, "market", settings)  # [B, R, N, P]
        full_bids, full_asks = bids.sum(2, keepdim=True), asks.sum(2, keepdim=True)
        rate = rate.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, n, 1)
        hist = (s["price_history"].sum(2, keepdim=True) * 0.01).expand(-1, -1, n, -1)
        orders = torch.cat([rate, hist, full_asks - asks, full_bids - bids, asks, bids], -1)
        per_agent.append(orders.permute(0, 2, 1, 3).flatten(2))
    if not settings.map_tier:
        per_agent.append(_require(skill, "skill", settings).unsqueeze(-1))
    time = (s["t"].float() / settings.episode_length).view(b, 1, 1).expand(b, n, 1)
    per_agent += [
        _tax_block(settings, s).unsqueeze(1).expand(b, n, -1),
        marginal_rate.unsqueeze(-1),
        time,
        s["inventory"] * 0.01,
    ]
    if settings.map_tier:
        w, h = settings.map_width, settings.map_height
        per_agent.append(torch.stack([(s["pos"] // w).float() / h, (s["pos"] % w).float() / w], -1))
    return torch.cat(per_agent, -1)


def planner_observation(
    settings: EconomySettings, s: State, marginal_rate: torch.Tensor, *, market: Market | None = None
) -> torch.Tensor:
    """``[B, 1, obs_p]`` planner features (see the module docstring); arguments as in
    :func:`agent_observation`.

    Examples:
        >>> settings = EconomySettings(tier="labour", n_agents=2, n_brackets=3, episode_length=20, period=10)
        >>> s = {"t": torch.tensor([3]), "inventory": torch.zeros(1, 2, 3), "last_income": torch.zeros(1, 2),
        ...      "last_marginal_rate": torch.zeros(1, 2), "rates": torch.zeros(1, 3)}
        >>> planner_observation(settings, s, torch.zeros(1, 2)).shape
        torch.Size([1, 1, 21])
    """
    b = s["t"].shape[0]
    agents = torch.cat(
        [
            s["inventory"] * 0.01,
            (s["last_income"] / settings.period).unsqueeze(-1),
            s["last_marginal_rate"].unsqueeze(-1),
            marginal_rate.unsqueeze(-1),
        ],
        -1,
    ).flatten(1)
    parts = [(s["t"].float() / settings.episode_length).unsqueeze(-1), _tax_block(settings, s), agents]
    if settings.trade:
        bids, asks, rate = _require(market, "market", settings)
        hist = s["price_history"].sum(2) * 0.01
        parts.append(torch.cat([rate.unsqueeze(-1), hist, asks.sum(2), bids.sum(2)], -1).flatten(1))
    return torch.cat(parts, -1).view(b, 1, -1)


def _require(value, name: str, settings: EconomySettings):
    if value is None:
        raise ValueError(f"{name} is required on tier {settings.tier!r}")
    return value
