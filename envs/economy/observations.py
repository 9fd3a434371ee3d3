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
    agent = _agent_observation(settings, s, marginal_rate, shared, skill, auction)
    return agent, _planner_observation(settings, s, marginal_rate, shared, agent)


def _tax_block(settings: EconomySettings, s: TensorDictBase) -> torch.Tensor:
    """``[B, 3 + N + K]``: is_tax_day, is_first_day, tax_phase, incomes, rates."""
    period = settings.period
    pos = (s["t"] % period + 1).float()
    flags = torch.stack([pos >= period, pos == 1, pos / period], -1).float()
    incomes = (s["agents", "last_income"] / period).sort(-1).values
    return torch.cat([flags, incomes, s["tax", "rates"]], -1)


class _Columns:
    """Fills the last dim of ``out`` part after part: a concatenation that writes each part
    (broadcast over the leading dims) in place, without expanded temporaries."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out, self.start = out, 0

    def take(self, width: int) -> torch.Tensor:
        """The next ``width`` columns of ``out``."""
        view = self.out[..., self.start : self.start + width]
        self.start += width
        return view

    def put(self, *parts: torch.Tensor) -> None:
        """Copy ``parts`` into the next columns."""
        for part in parts:
            self.take(part.shape[-1]).copy_(part)


def _agent_observation(
    settings: EconomySettings,
    s: TensorDictBase,
    marginal_rate: torch.Tensor,
    shared: torch.Tensor,
    skill: torch.Tensor | None,
    auction: DoubleAuction | None,
) -> torch.Tensor:
    b, n = shared.shape[0], settings.n_agents
    agents = s["agents"]
    out = shared.new_empty(b, n, agent_observation_size(settings))
    columns = _Columns(out)
    if settings.map_tier:
        pay = agents["payment"] / 10
        columns.put(pay.unsqueeze(-1), ((pay - 1) / 2).unsqueeze(-1), agents["bonus"].unsqueeze(-1))
    if settings.trade:
        book, p = s["book"], settings.n_prices
        hist = book["price_history"].sum(2)  # [B, R, P]
        rate = _require(auction, "auction", settings).market_rate(hist)
        orders = _Columns(columns.take(settings.n_resources * (1 + 5 * p)).unflatten(-1, (settings.n_resources, -1)))
        orders.put(rate.view(b, 1, -1, 1), (hist * 0.01).unsqueeze(1))
        available, own = orders.take(2 * p), orders.take(2 * p)  # asks then bids
        auction.order_counts(book, out=own)
        torch.sub(own.sum(1, keepdim=True), own, out=available)
    if not settings.map_tier:
        columns.put(_require(skill, "skill", settings).unsqueeze(-1))
    shared = shared.unsqueeze(1)
    columns.put(shared[..., 1:], marginal_rate.unsqueeze(-1), shared[..., :1], agents["inventory"] * 0.01)
    if settings.map_tier:
        w, h = settings.map_width, settings.map_height
        pos = agents["pos"]
        columns.put((pos // w).unsqueeze(-1) / h, (pos % w).unsqueeze(-1) / w)
    return out


def _planner_observation(
    settings: EconomySettings,
    s: TensorDictBase,
    marginal_rate: torch.Tensor,
    shared: torch.Tensor,
    agent_observation: torch.Tensor,
) -> torch.Tensor:
    """The planner's features; its market block is read from the agents' observation."""
    b, n, state = shared.shape[0], settings.n_agents, s["agents"]
    out = shared.new_empty(b, 1, planner_observation_size(settings))
    columns = _Columns(out[:, 0])
    columns.put(shared)
    per_agent = _Columns(columns.take(n * (settings.n_resources + 4)).unflatten(-1, (n, -1)))
    per_agent.put(
        state["inventory"] * 0.01,
        (state["last_income"] / settings.period).unsqueeze(-1),
        state["last_marginal_rate"].unsqueeze(-1),
        marginal_rate.unsqueeze(-1),
    )
    if settings.trade:
        p, r = settings.n_prices, settings.n_resources
        start = MAP_FEATURES if settings.map_tier else 0  # the market block follows them
        market = agent_observation[:, 0, start : start + r * (1 + 5 * p)].unflatten(-1, (r, -1))
        per_resource = _Columns(columns.take(r * (1 + 3 * p)).unflatten(-1, (r, -1)))
        # rate and history, then all asks and all bids: available + own of any agent
        per_resource.put(market[..., : 1 + p])
        torch.add(market[..., 1 + p : 1 + 3 * p], market[..., 1 + 3 * p :], out=per_resource.take(2 * p))
    return out


def _require(value, name: str, settings: EconomySettings):
    if value is None:
        raise ValueError(f"{name} is required on tier {settings.tier!r}")
    return value
