"""Map dynamics of Gather-(Trade-)Build: build, move, collect, regrow, masks and views.

Follows the AI Economist's ``Build``, ``Gather`` components and the ``LayoutFromFile``
scenario step (https://arxiv.org/abs/2004.13332), batched over environments. State
tensors (``B`` envs, ``N`` agents, ``S`` source tiles):

- ``pos`` ``[B, N]`` long: flat tile index ``row * W + col``;
- ``resource`` ``[B, S]`` bool: a unit waits on the source tile;
- ``house`` ``[B, Hp * Wp]`` int8: owner of the house on each tile of the map padded by
  the view radius, ``-1`` for none;
- ``inventory`` ``[B, N, 3]`` float: Coin, Stone, Wood.
"""

from __future__ import annotations

import torch

from .layout import WorldLayout

#: Row and column change of the moves left, right, up, down (the reference's order).
MOVES: tuple[tuple[int, int], ...] = ((0, -1), (0, 1), (-1, 0), (1, 0))
#: Channels of an agent's egocentric view.
VIEW_CHANNELS: tuple[str, ...] = (
    "stone",
    "wood",
    "house",
    "water",
    "stone_source",
    "wood_source",
    "in_bounds",
    "house_owner",
    "agent",
)


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along the first dim of ``table``, by ``index_select``: several times
    faster than advanced indexing on a CPU for the small tables of the map.

    Examples:
        >>> lookup(torch.tensor([[0, 1], [2, 3], [4, 5]]), torch.tensor([[2, 0]])).tolist()
        [[[4, 5], [0, 1]]]
    """
    return table.index_select(0, index.flatten()).view(*index.shape, *table.shape[1:])


class GatherBuildWorld:
    """Batched map dynamics for one layout.

    Args:
        layout: the static map.
        view_radius: half-width of the egocentric views. Defaults to ``5`` (11x11).
        build_labour: labour of a successful build. Defaults to ``10``.
        move_labour: labour of a successful move. Defaults to ``1``.
        collect_labour: labour per collected resource. Defaults to ``1``.
        regen_prob: per-step regrowth probability of an empty source. Defaults to ``0.01``.

    Examples:
        >>> from torchrl_ermas.envs.economy.layout import load_layout
        >>> world = GatherBuildWorld(load_layout("quadrant_25x25_20each_30clump"))
        >>> world.initial_resources(3).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        layout: WorldLayout,
        view_radius: int = 5,
        build_labour: float = 10.0,
        move_labour: float = 1.0,
        collect_labour: float = 1.0,
        regen_prob: float = 0.01,
    ) -> None:
        self.layout = layout
        self.radius = view_radius
        self.build_labour = build_labour
        self.move_labour = move_labour
        self.collect_labour = collect_labour
        self.regen_prob = regen_prob
        h, w, r = layout.height, layout.width, view_radius
        dev = layout.water.device
        self.padded_width = w + 2 * r
        self.padded_size = (h + 2 * r) * self.padded_width
        self.moves = torch.tensor(MOVES, device=dev)
        self.landmark_flat = layout.landmark.flatten()
        tiles = torch.arange(h * w, device=dev)
        # per tile: its padded index; per tile and move: the target tile (clamped to the
        # map), its padded index and whether the map allows the move (inside, not water)
        self.padded_tiles = (tiles // w + r) * self.padded_width + tiles % w + r
        row = tiles.unsqueeze(-1) // w + self.moves[:, 0]
        col = tiles.unsqueeze(-1) % w + self.moves[:, 1]
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        self.neighbours = row.clamp(0, h - 1) * w + col.clamp(0, w - 1)
        self.neighbours_padded = self.padded_tiles[self.neighbours]
        self.passable = inside & ~layout.water.flatten()[self.neighbours]
        side = torch.arange(-r, r + 1, device=dev)
        self.view_offsets = (side[:, None] * self.padded_width + side[None, :]).flatten()
        # the view from each tile with its static channels (water, stone source, wood
        # source, in bounds) filled in and the others 0, [H * W, 9, side^2]
        src = layout.source_index
        kind = torch.where(src >= 0, layout.source_kind[src.clamp_min(0)], -1)
        static = torch.stack([layout.water, kind == 0, kind == 1, torch.ones_like(layout.water)])
        static = torch.nn.functional.pad(static.float(), (r, r, r, r)).flatten(1)
        windows = static[:, self.padded_index(tiles).unsqueeze(-1) + self.view_offsets].movedim(0, 1)
        self.tile_views = torch.zeros(h * w, len(VIEW_CHANNELS), windows.shape[-1], dtype=torch.uint8, device=dev)
        self.tile_views[:, 3:7] = windows
        # padded index of each source tile, and its view code (1 Stone, 2 Wood)
        self.source_cells = self.padded_index(layout.source_rc[:, 0] * w + layout.source_rc[:, 1])
        self.source_codes = (layout.source_kind + 1).to(torch.int8)

    # ------------------------------------------------------------------ state
    def initial_resources(self, n_envs: int) -> torch.Tensor:
        """Every source holds one unit at reset."""
        return torch.ones(n_envs, self.layout.n_sources, dtype=torch.bool, device=self.moves.device)

    def empty_houses(self, n_envs: int) -> torch.Tensor:
        """A padded house-owner map without houses."""
        return torch.full((n_envs, self.padded_size), -1, dtype=torch.int8, device=self.moves.device)

    def padded_index(self, pos: torch.Tensor) -> torch.Tensor:
        """Flat index of tile ``pos`` in the padded map."""
        return lookup(self.padded_tiles, pos)

    # --------------------------------------------------------------- dynamics
    def build(
        self,
        wants: torch.Tensor,
        pos: torch.Tensor,
        house: torch.Tensor,
        inventory: torch.Tensor,
        labour: torch.Tensor,
        payment: torch.Tensor,
    ) -> torch.Tensor:
        """Build where asked and possible; updates the state in place, returns successes."""
        ok = wants & self.can_build(pos, house, inventory)
        okf = ok.float()
        inventory[..., 0] += okf * payment
        inventory[..., 1:] -= okf.unsqueeze(-1)
        labour += okf * self.build_labour
        owner = torch.arange(pos.shape[-1], device=pos.device, dtype=torch.int8).expand_as(pos)
        idx = self.padded_index(pos)
        house.scatter_(1, idx, torch.where(ok, owner, house.gather(1, idx)))
        return ok

    def can_build(self, pos: torch.Tensor, house: torch.Tensor, inventory: torch.Tensor) -> torch.Tensor:
        """Has one stone and one wood and stands on a tile without landmark or house."""
        free = ~lookup(self.landmark_flat, pos) & (house.gather(1, self.padded_index(pos)) < 0)
        return free & (inventory[..., 1] >= 1) & (inventory[..., 2] >= 1)

    def _targets(self, pos: torch.Tensor, house: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target tile of each move ``[B, N, 4]`` and whether the map allows it."""
        owner = house.gather(1, lookup(self.neighbours_padded, pos).flatten(1)).view(*pos.shape, -1)
        me = torch.arange(pos.shape[-1], device=pos.device, dtype=owner.dtype).view(1, -1, 1)
        return lookup(self.neighbours, pos), lookup(self.passable, pos) & ((owner < 0) | (owner == me))

    def move_mask(self, pos: torch.Tensor, house: torch.Tensor) -> torch.Tensor:
        """``[B, N, 4]``: the move is accessible and the target is not occupied."""
        target, ok = self._targets(pos, house)
        # one comparison per agent: several times faster than a broadcast [B, N, 4, N] one
        occupied = target == pos[:, None, :1]
        for agent in range(1, pos.shape[-1]):
            occupied |= target == pos[:, None, agent : agent + 1]
        return ok & ~occupied

    def move(
        self,
        direction: torch.Tensor,
        pos: torch.Tensor,
        house: torch.Tensor,
        labour: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Move agents (``direction`` in 0..3, ``-1`` stays) one by one in a random order.

        Returns the new ``pos``; charges move labour in place.
        """
        n_envs, n_agents = pos.shape
        target, ok = self._targets(pos, house)
        wants = direction >= 0
        d = direction.clamp_min(0).unsqueeze(-1)
        target = target.gather(-1, d).squeeze(-1)
        ok = ok.gather(-1, d).squeeze(-1) & wants
        order = torch.rand(n_envs, n_agents, device=pos.device, generator=generator).argsort(-1)
        new = pos.clone()
        for k in range(n_agents):
            agent = order[:, k : k + 1]
            tgt = target.gather(1, agent)
            free = ~(new == tgt).any(-1, keepdim=True)
            moved = ok.gather(1, agent) & free
            new.scatter_(1, agent, torch.where(moved, tgt, new.gather(1, agent)))
        labour += (new != pos).float() * self.move_labour
        return new

    def collect(
        self,
        pos: torch.Tensor,
        resource: torch.Tensor,
        inventory: torch.Tensor,
        labour: torch.Tensor,
        bonus: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        """Every agent on a tile holding a unit collects it (1, plus 1 with its bonus
        probability) for ``collect_labour``; updates in place."""
        src = lookup(self.layout.source_index.flatten(), pos)
        has = (src >= 0) & resource.gather(1, src.clamp_min(0))
        extra = torch.rand(pos.shape, device=pos.device, generator=generator) < bonus
        amount = has.float() * (1 + extra.float())
        kind = lookup(self.layout.source_kind, src.clamp_min(0))
        inventory[..., 1:] += amount.unsqueeze(-1) * torch.nn.functional.one_hot(kind, 2)
        labour += has.float() * self.collect_labour
        resource.scatter_(1, src.clamp_min(0), resource.gather(1, src.clamp_min(0)) & ~has)

    def regenerate(self, resource: torch.Tensor, generator: torch.Generator | None) -> None:
        """Each empty source regrows a unit with probability ``regen_prob``; in place."""
        resource |= torch.rand(resource.shape, device=resource.device, generator=generator) < self.regen_prob

    # ----------------------------------------------------------- observation
    def views(self, pos: torch.Tensor, resource: torch.Tensor, house: torch.Tensor) -> torch.Tensor:
        """Egocentric views ``[B, N, 9, 2r+1, 2r+1]`` uint8 with :data:`VIEW_CHANNELS`.

        ``house_owner`` and ``agent`` are 0 for none, 1 for the viewer, ``k + 2`` for agent k.

        The views start from the tile's static channels (:attr:`tile_views`); the
        dynamic ones are read from one padded code map per environment, ``4 * (house owner
        + 1) + resource`` (resource 0 none, 1 Stone, 2 Wood: a source tile never holds a
        house), with one gather per view.
        """
        n_envs, n_agents = pos.shape
        side = 2 * self.radius + 1
        cells = side * side
        out = self.tile_views.index_select(0, pos.flatten()).view(n_envs, n_agents, len(VIEW_CHANNELS), cells)
        codes = torch.add(torch.full((), 4, dtype=house.dtype, device=house.device), house, alpha=4)  # one pass
        codes.index_add_(1, self.source_cells, resource.to(torch.int8) * self.source_codes)
        idx = self.padded_index(pos).unsqueeze(-1) + self.view_offsets  # [B, N, side^2]
        window = codes.gather(1, idx.flatten(1)).view(n_envs, n_agents, cells)
        found, owner = window & 3, window >> 2  # owner + 1, 0 for none
        # each channel written in place (out=), without a temporary and its copy
        torch.eq(found, 1, out=out[:, :, 0])
        torch.eq(found, 2, out=out[:, :, 1])
        torch.gt(owner, 0, out=out[:, :, 2])
        torch.add(out[:, :, 2], owner, out=out[:, :, 7])  # k + 2 for agent k's houses
        viewer = torch.arange(1, n_agents + 1, device=pos.device, dtype=owner.dtype).view(1, -1, 1)  # owner + 1
        out[:, :, 7].masked_fill_(owner == viewer, 1)
        # the other agents inside the window (agents stand on distinct tiles)
        me = torch.arange(n_agents, device=pos.device).view(1, -1, 1)
        w = self.layout.width
        dr = pos.view(n_envs, 1, -1) // w - (pos // w).unsqueeze(-1)
        dc = pos.view(n_envs, 1, -1) % w - (pos % w).unsqueeze(-1)
        inside = (dr.abs() <= self.radius) & (dc.abs() <= self.radius)
        cell = torch.where(inside, (dr + self.radius) * side + dc + self.radius, 0)
        code = torch.where(me.transpose(1, 2) == me, 1, me.transpose(1, 2) + 2) * inside
        out[:, :, 8].scatter_add_(2, cell, code.to(torch.uint8))
        return out.view(n_envs, n_agents, len(VIEW_CHANNELS), side, side)
