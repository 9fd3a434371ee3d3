"""World maps and the fixed four-agent skill layout of the Gather-Trade-Build game.

The map is ``quadrant_25x25_20each_30clump.txt`` from the AI Economist's
``scenarios/simple_wood_and_stone/map_txt`` (rows separated by ``;``; ``W`` wood source,
``S`` stone source, ``@`` water, space empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_QUADRANT_25X25_20EACH_30CLUMP = (
    "WWWWW  W    @ W          ;WW W        @ W      W WW;"
    " W          @         W W;SW S S      @            ;"
    "            @   W      W ; SS                      ;"
    " S                       ;                         ;"
    "                         ;S      S    @            ;"
    "            @            ;            @            ;"
    "@@@@@    @@@@@@@    @@@@@; S          @            ;"
    "S S         @            ;   S        @            ;"
    "SS                       ; SS                      ;"
    "SS                       ;  S                      ;"
    "            @            ;            @            ;"
    "            @            ;            @            ;"
    "S           @            "
)

#: Maps known by name.
MAPS: dict[str, str] = {"quadrant_25x25_20each_30clump": _QUADRANT_25X25_20EACH_30CLUMP}

#: Build payment per house of skill ranks 0 (worst) .. 3 (best) with fixed skills:
#: ``10 x`` the mean of the sorted ``min(3, 2 Lomax(4) + 1)`` over 100,000 draws, seed 1.
FIXED_BUILD_PAYMENTS: tuple[float, ...] = (11.33, 13.27, 16.47, 22.25)
#: Start tile (row, col) of skill ranks 0..3 on a 25x25 map.
FIXED_START_LOCATIONS: tuple[tuple[int, int], ...] = ((0, 24), (24, 0), (0, 0), (24, 24))

#: Resource order used everywhere: 0 = Stone, 1 = Wood (the reference's sorted order).
RESOURCES: tuple[str, ...] = ("Stone", "Wood")


@dataclass(frozen=True)
class WorldLayout:
    """Static tensors of a map.

    Attributes:
        height, width: map size.
        water: ``[H, W]`` bool.
        source_rc: ``[S, 2]`` long, row and column of each resource source tile.
        source_kind: ``[S]`` long, resource of each source (0 Stone, 1 Wood).
        source_index: ``[H, W]`` long, index into the sources or ``-1``.
    """

    height: int
    width: int
    water: torch.Tensor
    source_rc: torch.Tensor
    source_kind: torch.Tensor
    source_index: torch.Tensor

    @property
    def n_sources(self) -> int:
        """Number of resource source tiles."""
        return self.source_kind.numel()

    @property
    def landmark(self) -> torch.Tensor:
        """``[H, W]`` bool: water or a source block (no building there)."""
        return self.water | (self.source_index >= 0)


def load_layout(name: str, device: torch.device | str | None = None) -> WorldLayout:
    """Parse a named map.

    Raises:
        ValueError: for an unknown map name, listing the known ones.

    Examples:
        >>> layout = load_layout("quadrant_25x25_20each_30clump")
        >>> layout.water.sum().item(), (layout.source_kind == 0).sum().item(), layout.n_sources
        (33, 20, 40)
    """
    if name not in MAPS:
        raise ValueError(f"unknown map {name!r}; accepted values: {sorted(MAPS)}")
    rows = MAPS[name].split(";")
    height, width = len(rows), len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError(f"map {name!r} has rows of unequal length")
    water = torch.tensor([[ch == "@" for ch in r] for r in rows], device=device)
    sources = [(i, j, "SW".index(ch)) for i, r in enumerate(rows) for j, ch in enumerate(r) if ch in "SW"]
    source_rc = torch.tensor([(i, j) for i, j, _ in sources], dtype=torch.long, device=device)
    source_kind = torch.tensor([k for _, _, k in sources], dtype=torch.long, device=device)
    source_index = torch.full((height, width), -1, dtype=torch.long, device=device)
    source_index[source_rc[:, 0], source_rc[:, 1]] = torch.arange(len(sources), device=device)
    return WorldLayout(height, width, water, source_rc, source_kind, source_index)
