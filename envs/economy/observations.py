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

import torch
from tensordict import TensorDictBase

from .auction import DoubleAuction
from .settings import EconomySettings
from .tax import BracketTax

#: leading agent features on the map tiers: build payment / 10, build skill, gather bonus
MAP_FEATURES = 3


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
    size += MAP_FEATURES + 2 if settings.map_tier else 1  # and the position; or the skill
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


def current_marginal_rate(tax: BracketTax, s: TensorDictBase) -> torch.Tensor:
    """``[B, N]`` marginal rate of each agent's income so far this period.

    Examples:
        >>> from tensordict import TensorDict
        >>> agents = {"inventory": torch.tensor([[[20.0, 0, 0]]]), "escrow": torch.zeros(1, 1, 3),
        ...           "last_coin": torch.zeros(1, 1)}
        >>> s = TensorDict({"agents": agents, "tax": {"rates": torch.tensor([[0.1, 0.2, 0.3]])}}, [1])
        >>> current_marginal_rate(BracketTax([0, 10, 100]), s)
        tensor([[0.2000]])
    """
    agents = s["agents"]
    income = agents["inventory"][..., 0] + agents["escrow"][..., 0] - agents["last_coin"]
    return tax.marginal_rate(income, s["tax", "rates"])


def observations(
    settings: EconomySettings,
    s: TensorDictBase,
    marginal_rate: torch.Tensor,
    *,
    skill: torch.Tensor | None = None,
    auction: DoubleAuction | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The agents' ``[B, N, obs]`` and the planner's ``[B, 1, obs_p]`` features (see the
    module docstring); the tax block they share is computed once.

    Args:
        settings: the economy.
        s: the state: ``t``; ``("agents", key)`` for ``inventory``, ``last_income``,
            ``last_marginal_rate`` and, on map tiers, ``payment``, ``bonus``, ``pos``;
            ``("tax", "rates")``; on the trade tier ``("book", "price_history")``.
        marginal_rate: :func:`current_marginal_rate` ``[B, N]``.
        skill: ``[B, N]`` skill of each agent (labour tier).
        auction: the double auction, whose book is ``s["book"]`` (trade tier).

    Examples:
        >>> from tensordict import TensorDict
        >>> settings = EconomySettings(tier="labour", n_agents=2, n_brackets=3, episode_length=20, period=10)
        >>> agents = {"inventory": torch.zeros(1, 2, 3), "last_income": torch.zeros(1, 2),
        ...           "last_marginal_rate": torch.zeros(1, 2)}
        >>> s = TensorDict({"t": torch.tensor([3]), "agents": agents, "tax": {"rates": torch.zeros(1, 3)}}, [1])
        >>> agent, planner = observations(settings, s, torch.zeros(1, 2), skill=torch.tensor([[1.0, 2.0]]))
        >>> agent.shape, agent[0, :, 0].tolist(), planner.shape
        (torch.Size([1, 2, 14]), [1.0, 2.0], torch.Size([1, 1, 21]))
    """
    time = (s["t"].float() / settings.episode_length).unsqueeze(-1)
    shared = torch.cat([time, _tax_block(settings, s)], -1)  # [B, 4 + N + K]
    markets = _market_blocks(settings, s["book"], _require(auction, "auction", settings)) if settings.trade else None
    agent = _agent_observation(settings, s, marginal_rate, shared, skill, markets)
    return agent, _planner_observation(settings, s, marginal_rate, shared, markets)


def _tax_block(settings: EconomySettings, s: TensorDictBase) -> torch.Tensor:
    """``[B, 3 + N + K]``: is_tax_day, is_first_day, tax_phase, incomes, rates."""
    period = settings.period
    pos = (s["t"] % period + 1).float()
    flags = torch.stack([pos >= period, pos == 1, pos / period], -1).float()
    incomes = (s["agents", "last_income"] / period).sort(-1).values
    return torch.cat([flags, incomes, s["tax", "rates"]], -1)


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` of ``parts`` along the last dim, made contiguous first: on one thread
    that takes the row-by-row copy, several times faster than filling the column blocks
    of a wide tensor one after the other (or than ``cat`` of broadcast views)."""
    return torch.cat([part.contiguous() for part in parts], -1)


def _market_blocks(
    settings: EconomySettings, book: TensorDictBase, auction: DoubleAuction
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The agents' market features, per resource ``[B, N, 1]`` market rate, ``[B, N, P]`` price
    history x 0.01, ``[B, N, 2P]`` available asks and bids (the other agents' open orders)
    and ``[B, N, 2P]`` own asks and bids, as parts of the observation; and the planner's
    ``[B, R, 1 + 3P]``: rate, history, all asks and bids."""
    b, n = book.shape[0], settings.n_agents
    hist = book["price_history"].sum(2)  # [B, R, P]
    market = torch.cat([auction.market_rate(hist).unsqueeze(-1), hist * 0.01], -1)
    own = auction.order_counts(book).transpose(1, 2)  # [B, R, N, 2P], contiguous: asks then bids
    every = own.sum(2)
    agent = []
    for r in range(settings.n_resources):
        agent += [market[:, r : r + 1].expand(b, n, -1), every[:, r : r + 1] - own[:, r], own[:, r]]
    return agent, torch.cat([market, every], -1)


def _agent_observation(
    settings: EconomySettings,
    s: TensorDictBase,
    marginal_rate: torch.Tensor,
    shared: torch.Tensor,
    skill: torch.Tensor | None,
    markets: tuple[list[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    b, n = shared.shape[0], settings.n_agents
    agents = s["agents"]
    parts = []
    if settings.map_tier:
        pay = agents["payment"] / 10
        parts.append(torch.stack([pay, (pay - 1) / 2, agents["bonus"]], -1))
    if settings.trade:
        parts += markets[0]
    if not settings.map_tier:
        parts.append(_require(skill, "skill", settings).unsqueeze(-1))
    shared = shared.unsqueeze(1).expand(b, n, -1)
    parts += [shared[..., 1:], marginal_rate.unsqueeze(-1), shared[..., :1], agents["inventory"] * 0.01]
    if settings.map_tier:
        w, h = settings.map_width, settings.map_height
        pos = agents["pos"]
        parts.append(torch.stack([(pos // w) / h, (pos % w) / w], -1))
    return _concat(parts)


def _planner_observation(
    settings: EconomySettings,
    s: TensorDictBase,
    marginal_rate: torch.Tensor,
    shared: torch.Tensor,
    markets: tuple[list[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """The planner's features (its market block is the second of ``markets``)."""
    state = s["agents"]
    per_agent = _concat(
        [
            state["inventory"] * 0.01,
            (state["last_income"] / settings.period).unsqueeze(-1),
            state["last_marginal_rate"].unsqueeze(-1),
            marginal_rate.unsqueeze(-1),
        ]
    )
    parts = [shared, per_agent.flatten(1)]
    if settings.trade:
        parts.append(markets[1].flatten(1))
    return _concat(parts).unsqueeze(1)


def _require(value, name: str, settings: EconomySettings):
    if value is None:
        raise ValueError(f"{name} is required on tier {settings.tier!r}")
    return value
