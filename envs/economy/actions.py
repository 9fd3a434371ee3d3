"""The agents' discrete action layout, in one place: where each kind of action lives.

Actions, in order: hours ``0..max_hours`` (labour tier only); no-op and build (map tiers);
the orders of the trade tier, per resource (Stone, Wood) bids at prices ``0..P-1`` then asks
at prices ``0..P-1``; the moves left, right, up, down
(:data:`~torchrl_ermas.envs.economy.gather.MOVES`, map tiers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .gather import MOVES
from .settings import EconomySettings


class MapAction(NamedTuple):
    """A decoded map-tier action, all ``[B, N]``: ``build`` (bool); ``resource`` of the order
    (``-1`` for none), ``is_bid`` and ``price`` (meaningful where ``resource >= 0``; all three
    ``None`` without trade); ``direction`` of the move (``-1`` for none)."""

    build: torch.Tensor
    resource: torch.Tensor | None
    is_bid: torch.Tensor | None
    price: torch.Tensor | None
    direction: torch.Tensor


@dataclass(frozen=True)
class ActionLayout:
    """Offsets and counts of the agent actions.

    Attributes:
        n_hours: hours choices ``0..n_hours - 1`` at offsets ``0..n_hours - 1`` (labour tier).
        n_special: 2 (no-op, build) on the map tiers, else 0.
        n_resources, n_prices: orders per resource and price kind (0 without trade).
        n_moves: moves (4 on the map tiers, else 0).

    Examples:
        >>> layout = ActionLayout.from_settings(EconomySettings(tier="gather_trade_build"))
        >>> layout.noop, layout.build, layout.orders, layout.n_orders, layout.moves, layout.n_actions
        (0, 1, 2, 44, 46, 50)
        >>> decoded = layout.decode_map(torch.tensor([[1, 2 + 11 + 3, 2 + 22 + 5, 46 + 2]]))
        >>> decoded.build.tolist(), decoded.resource.tolist(), decoded.direction.tolist()
        ([[True, False, False, False]], [[-1, 0, 1, -1]], [[-1, -1, -1, 2]])
        >>> decoded.is_bid[0, 1:3].tolist(), decoded.price[0, 1:3].tolist()  # an ask at 3, a bid at 5
        ([False, True], [3, 5])
        >>> ActionLayout.from_settings(EconomySettings(tier="labour", max_hours=10)).n_actions
        11
    """

    n_hours: int = 0
    n_special: int = 0
    n_resources: int = 0
    n_prices: int = 0
    n_moves: int = 0

    @classmethod
    def from_settings(cls, settings: EconomySettings) -> ActionLayout:
        """The layout of an economy."""
        if not settings.map_tier:
            return cls(n_hours=settings.max_hours + 1)
        trade = settings.trade
        return cls(
            n_special=2,
            n_resources=settings.n_resources if trade else 0,
            n_prices=settings.n_prices if trade else 0,
            n_moves=len(MOVES),
        )

    @property
    def noop(self) -> int:
        """The no-op action (map tiers)."""
        return self.n_hours

    @property
    def build(self) -> int:
        """The build action (map tiers)."""
        return self.n_hours + 1

    @property
    def orders(self) -> int:
        """First order action."""
        return self.n_hours + self.n_special

    @property
    def n_orders(self) -> int:
        """Order actions: bids and asks at every price for every resource."""
        return 2 * self.n_resources * self.n_prices

    @property
    def moves(self) -> int:
        """First move action."""
        return self.orders + self.n_orders

    @property
    def n_actions(self) -> int:
        """Number of agent actions."""
        return self.moves + self.n_moves

    def decode_hours(self, action: torch.Tensor) -> torch.Tensor:
        """Hours worked ``[B, N]`` float of labour-tier actions (the hours are the actions)."""
        return action.float()

    def decode_map(self, action: torch.Tensor) -> MapAction:
        """Split map-tier actions ``[B, N]`` into build, order and move parts."""
        build = action == self.build
        resource = is_bid = price = None
        if self.n_orders:
            offset = action - self.orders
            order = (offset >= 0) & (action < self.moves)
            per_resource = 2 * self.n_prices
            resource = torch.where(order, offset // per_resource, -1)
            within = offset % per_resource
            is_bid, price = within < self.n_prices, within % self.n_prices
        direction = torch.where(action >= self.moves, action - self.moves, -1)
        return MapAction(build, resource, is_bid, price, direction)

    def map_mask(
        self,
        can_build: torch.Tensor,
        can_move: torch.Tensor,
        bids: torch.Tensor | None = None,
        asks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, N, n_actions]`` map-tier mask from ``can_build`` ``[B, N]``, ``can_move``
        ``[B, N, 4]`` and, with trade, the allowed ``bids`` ``[B, N, R, P]`` and ``asks``
        ``[B, N, R]`` (an ask is allowed at every price or none).

        Examples:
            >>> layout = ActionLayout.from_settings(EconomySettings(tier="gather_build"))
            >>> layout.map_mask(torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 4, 4, dtype=torch.bool))[0, 0]
            tensor([ True, False,  True,  True,  True,  True])
        """
        parts = [torch.ones_like(can_build).unsqueeze(-1), can_build.unsqueeze(-1)]
        if self.n_orders:
            for r in range(self.n_resources):
                parts += [bids[:, :, r], asks[:, :, r : r + 1].expand(-1, -1, self.n_prices)]
        parts.append(can_move)
        return torch.cat(parts, -1)
