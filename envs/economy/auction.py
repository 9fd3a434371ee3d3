"""Continuous double auction for Stone and Wood, batched over environments.

Follows the AI Economist's ``ContinuousDoubleAuction`` component
(https://arxiv.org/abs/2004.13332): each agent holds at most ``max_orders`` open orders per
resource (bids and asks together); bids put coin in escrow, asks one unit of the resource.
Matching takes the best bid (price, then age, then agent index) of a buyer not yet excluded
and the best ask of another seller (lowest price, then age, then agent index); it trades at
the price of the older order, or excludes that buyer for this step. Orders older than
``order_duration`` steps expire and their escrow is refunded.

Order book tensors have shape ``[B, R, N, K]`` (envs, resources, agents, order slots);
prices and ages are int16. The step selects with arithmetic on masks (``x * mask``, keys
whose maximum marks the chosen slot) rather than ``torch.where`` and ``max`` with indices,
which are several times slower on a CPU for these small trailing dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase


class DoubleAuction:
    """The batched order book and its step.

    Args:
        n_agents: number of agents.
        n_resources: number of traded resources. Defaults to ``2``.
        max_price: prices are the integers ``0..max_price``. Defaults to ``10``.
        max_orders: open orders per agent and resource. Defaults to ``5``.
        order_duration: lifetime after which an order expires. Defaults to ``50``.
        order_labour: labour per created order. Defaults to ``0.25``.

    Examples:
        >>> auction = DoubleAuction(n_agents=4)
        >>> book = auction.empty_book(2)
        >>> book["active"].shape
        torch.Size([2, 2, 4, 5])
    """

    def __init__(
        self,
        n_agents: int,
        n_resources: int = 2,
        max_price: int = 10,
        max_orders: int = 5,
        order_duration: int = 50,
        order_labour: float = 0.25,
    ) -> None:
        self.n_agents = n_agents
        self.n_resources = n_resources
        self.n_prices = max_price + 1
        self.max_orders = max_orders
        self.order_duration = order_duration
        self.order_labour = order_labour

    def empty_book(self, n_envs: int, device: torch.device | str | None = None) -> TensorDict:
        """An empty order book and price history, a TensorDict of batch size ``[n_envs]``."""
        shape = (n_envs, self.n_resources, self.n_agents, self.max_orders)
        book = {
            "active": torch.zeros(shape, dtype=torch.bool, device=device),
            "is_bid": torch.zeros(shape, dtype=torch.bool, device=device),
            "price": torch.zeros(shape, dtype=torch.int16, device=device),
            "age": torch.zeros(shape, dtype=torch.int16, device=device),
            "price_history": torch.zeros(n_envs, self.n_resources, self.n_agents, self.n_prices, device=device),
        }
        return TensorDict(book, batch_size=[n_envs], device=device)

    def step(
        self,
        book: TensorDictBase,
        resource: torch.Tensor,
        is_bid: torch.Tensor,
        price: torch.Tensor,
        inventory: torch.Tensor,
        escrow: torch.Tensor,
        labour: torch.Tensor,
    ) -> torch.Tensor:
        """Create orders, match them and expire old ones; updates everything in place.

        Args:
            book: from :meth:`empty_book`.
            resource: ``[B, N]`` resource of each agent's new order, ``-1`` for none.
            is_bid: ``[B, N]`` bool, bid (buy) or ask (sell).
            price: ``[B, N]`` long price.
            inventory, escrow: ``[B, N, 1 + R]`` float: coin then the resources.
            labour: ``[B, N]`` float.

        Returns:
            the number of trades per environment ``[B]``.
        """
        # The helpers work on a plain dict of the book's tensors: they touch it dozens of
        # times per step, where a TensorDict's item access costs microseconds each.
        orders = dict(book.items())
        orders["price_history"].mul_(0.995)
        self._create(orders, resource, is_bid, price, inventory, escrow, labour)
        trades = self._match(orders, inventory, escrow)
        self._expire(orders, inventory, escrow)
        book.update(orders)
        return trades

    def _create(self, book, resource, is_bid, price, inventory, escrow, labour) -> None:
        # free slots ranked K..1 from the first, 0 for active ones: the first free slot of
        # each book holds the largest rank, which is 0 for a full book
        ranks = torch.arange(self.max_orders, 0, -1, dtype=torch.uint8, device=resource.device)
        first_rank = (~book["active"] * ranks).amax(-1)  # [B, R, N]
        r = resource.clamp_min(0)
        first = first_rank.gather(1, r.unsqueeze(1)).squeeze(1)  # [B, N], of the chosen resource
        coin = inventory[..., 0]
        stock = inventory[..., 1:].gather(-1, r.unsqueeze(-1)).squeeze(-1)
        ok = (resource >= 0) & (first > 0) & torch.where(is_bid, coin >= price, stock >= 1)
        slot = (self.max_orders - first.long()).clamp_max(self.max_orders - 1)
        self._write_slots(book, r, slot, ok, active=True, is_bid=is_bid, price=price, age=0)
        # into escrow: a bid's price in coin, an ask's unit of its resource
        ask = (ok & ~is_bid).float().unsqueeze(-1)
        moved = torch.zeros_like(inventory).scatter_(-1, r.unsqueeze(-1) + 1, ask)  # [B, N, 1 + R]
        moved[..., 0] = (ok & is_bid).float() * price
        inventory -= moved
        escrow += moved
        labour += ok.float() * self.order_labour

    def _write_slots(
        self,
        book: dict[str, torch.Tensor],
        resource: torch.Tensor,
        slot: torch.Tensor,
        where: torch.Tensor,
        **values: torch.Tensor | bool | int,
    ) -> None:
        """Write ``values`` (``[B, N]`` tensors or scalars) into the book's entries of the same
        names at each agent's ``resource`` and ``slot`` ``[B, N]``, where ``where``: one
        scatter per entry (each agent writes one slot) instead of [B, R, N, K] masks."""
        n_envs, n_agents = slot.shape
        envs = torch.arange(n_envs, device=slot.device).unsqueeze(-1) * self.n_resources
        agents = torch.arange(n_agents, device=slot.device)
        cells = (((envs + resource) * n_agents + agents) * self.max_orders + slot).flatten()
        where = where.flatten()
        for name, value in values.items():
            flat = book[name].view(-1)
            old = flat.gather(0, cells)
            if isinstance(value, torch.Tensor):
                value = value.to(old.dtype).flatten()
            flat.scatter_(0, cells, torch.where(where, value, old))

    def _match(self, book, inventory, escrow) -> torch.Tensor:
        """Matches the orders of the environments whose books cross (best bid >= best ask)."""
        active, is_bid, price = book["active"], book["is_bid"], book["price"]
        best_bid = ((price + 1) * (active & is_bid)).amax((2, 3)) - 1  # [B, R], -1 for none
        best_ask = self.n_prices - ((self.n_prices - price) * (active & ~is_bid)).amax((2, 3))
        rows = (best_bid >= best_ask).any(-1).nonzero().squeeze(-1)
        trades = torch.zeros(active.shape[0], device=active.device)
        if rows.numel() == 0:
            return trades
        sub = {key: value[rows] for key, value in book.items()}
        inv, esc = inventory[rows], escrow[rows]
        trades[rows] = self._match_rows(sub, inv, esc)
        book["active"][rows] = sub["active"]
        book["price_history"][rows] = sub["price_history"]
        inventory[rows], escrow[rows] = inv, esc
        return trades

    def _match_rows(self, book, inventory, escrow) -> torch.Tensor:
        """The matching rounds. Each order has a key, unique among the open orders (an agent
        places one order per step), that ranks it: bids by price, then age, then agent
        index; asks by lowest price, then age, then agent index. Price and age are read
        back from the best key."""
        n_envs = book["active"].shape[0]
        n, k = self.n_agents, self.max_orders
        flat = lambda x: x.flatten(2)  # noqa: E731  [B, R, N*K]
        active, is_bid = flat(book["active"]), flat(book["is_bid"])
        price, age = flat(book["price"]).int(), flat(book["age"]).int()
        device = active.device
        owner = torch.arange(n, device=device).repeat_interleave(k)  # [N*K]
        by_agent = lambda hot: hot.view(*hot.shape[:-1], n, k).any(-1)  # noqa: E731  [B, R, N*K] -> [B, R, N]
        base = (self.order_duration + 2) * n
        tie = n - 1 - owner  # lower agent index first
        bid_key = price * base + age * n + tie + 1  # > 0
        ask_key = (self.n_prices - 1 - price) * base + age * n + tie + 1
        excluded = torch.zeros_like(active)  # slots of buyers excluded for this step
        trades = torch.zeros(n_envs, device=device)
        for _ in range(2 * n):
            bids = bid_key * (active & is_bid & ~excluded)
            best_bid = bids.amax(-1, keepdim=True)  # [B, R, 1], 0 for none
            b_price = (best_bid - 1) // base
            if not (b_price >= self._lowest_ask(ask_key * (active & ~is_bid), base)).any():
                break  # no bid left reaches any ask: no trade in this round or any later one
            has_bid = best_bid > 0
            bid_hot = (bids == best_bid) & has_bid  # the best bid's slot
            buyer = by_agent(bid_hot)  # [B, R, N]
            buyer_slots = buyer.repeat_interleave(k, -1)
            asks = ask_key * (active & ~is_bid & ~buyer_slots)
            best_ask = asks.amax(-1, keepdim=True)
            ask_hot = (asks == best_ask) & (best_ask > 0)
            b_age = (best_bid - 1) % base // n
            a_price, a_age = self.n_prices - 1 - (best_ask - 1) // base, (best_ask - 1) % base // n
            trade = has_bid & (best_ask > 0) & (b_price >= a_price)
            excluded |= buyer_slots & ~trade
            deal = (a_price + (b_age > a_age) * (b_price - a_price)) * trade  # the older order's price
            active = active & ~((bid_hot | ask_hot) & trade)
            tf = trade.float()  # [B, R, 1]
            buy_hot = buyer * tf  # [B, R, N]
            sell_hot = by_agent(ask_hot) * tf
            inventory[..., 1:] += buy_hot.transpose(1, 2)
            escrow[..., 1:] -= sell_hot.transpose(1, 2)
            escrow[..., 0] -= (buy_hot * b_price).sum(1)
            inventory[..., 0] += (buy_hot * (b_price - deal) + sell_hot * deal).sum(1)
            book["price_history"] += sell_hot.unsqueeze(-1) * F.one_hot(
                deal.squeeze(-1).long(), self.n_prices
            ).unsqueeze(-2)
            trades += tf.sum((1, 2))
        book["active"] = active.view_as(book["active"])
        return trades

    def _lowest_ask(self, asks: torch.Tensor, base: int) -> torch.Tensor:
        """Lowest price ``[B, R, 1]`` among the ask keys ``asks`` (0 where no ask), ``n_prices``
        where there is none."""
        return self.n_prices - 1 - (asks.amax(-1, keepdim=True) - 1) // base

    def _expire(self, book, inventory, escrow) -> None:
        book["age"] = book["age"] + book["active"]
        expired = book["active"] & (book["age"] > self.order_duration)
        coin = (expired & book["is_bid"]).float() * book["price"]
        refund_coin = coin.sum(-1).sum(1)  # [B, N]; exact sums of integers, in any order
        refund_unit = (expired & ~book["is_bid"]).float().sum(-1).transpose(1, 2)  # [B, N, R]
        refund = torch.cat([refund_coin.unsqueeze(-1), refund_unit], -1)  # [B, N, 1 + R]
        inventory += refund
        escrow -= refund
        book["active"] &= ~expired

    def masks(self, book: TensorDictBase, inventory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which orders an agent may place: bids ``[B, N, R, P]`` and asks ``[B, N, R]``."""
        room = (book["active"].sum(-1) < self.max_orders).transpose(1, 2)  # [B, N, R]
        prices = torch.arange(self.n_prices, device=inventory.device)
        budget = torch.where(room, inventory[..., :1], -1)  # [B, N, R]: no price without room
        bids = prices <= budget.unsqueeze(-1)  # [B, N, R, P] in one comparison
        asks = room & (inventory[..., 1:] >= 1)
        return bids, asks

    def order_counts(self, book: TensorDictBase) -> torch.Tensor:
        """Open orders of each agent per price, ``[B, N, R, 2P]``: asks at prices ``0..P-1``,
        then bids (a view of a contiguous ``[B, R, N, 2P]`` tensor).

        Examples:
            >>> auction = DoubleAuction(n_agents=2, max_price=2)
            >>> book = auction.empty_book(1)
            >>> book["active"][0, 1, 0, 0] = book["is_bid"][0, 1, 0, 0] = True  # agent 0 bids for Wood
            >>> book["price"][0, 1, 0, 0] = 2
            >>> auction.order_counts(book)[0, 0, 1].tolist()
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        """
        bins = book["price"] + book["is_bid"].long() * self.n_prices  # [B, R, N, K]
        counts = torch.zeros(*bins.shape[:-1], 2 * self.n_prices, device=bins.device)
        return counts.scatter_add_(-1, bins, book["active"].float()).transpose(1, 2)

    def market_rate(self, history: torch.Tensor) -> torch.Tensor:
        """Average traded price ``[B, R]`` under the decayed price ``history`` ``[B, R, P]``
        of all agents (the book's ``price_history`` summed over the agents)."""
        hist = history
        prices = torch.arange(self.n_prices, device=hist.device, dtype=hist.dtype)
        return (hist * prices).sum(-1) / hist.sum(-1).clamp_min(0.001)
