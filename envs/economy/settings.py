"""The immutable settings of an :class:`~torchrl_ermas.envs.economy.EconomyEnv`, checked once.

The environment builds one :class:`EconomySettings` in its constructor; the observation and
spec builders read the settings (and state tensors passed to them), never the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torchrl_ermas.validation import check_bool, check_choice, check_int, check_real

from .layout import FIXED_START_LOCATIONS, RESOURCES

Tier = Literal["labour", "gather_build", "gather_trade_build"]
TIERS: tuple[str, ...] = ("labour", "gather_build", "gather_trade_build")
PlannerAction = Literal["discrete", "rates"]


@dataclass(frozen=True)
class EconomySettings:
    """What an economy is: tier, sizes, horizons and the shape-defining component settings.

    Construction checks every field and raises a ``ValueError`` naming the field and the
    accepted values.

    Attributes:
        tier: ``"labour"``, ``"gather_build"`` or ``"gather_trade_build"``.
        n_agents: agents; 4 on the map tiers.
        episode_length: steps per episode.
        period: steps per tax period, a divisor of ``episode_length``.
        planner_action: ``"discrete"`` or ``"rates"``.
        max_hours: largest hours choice of the labour tier.
        energy_cost: utility cost per unit of labour.
        energy_warmup: episodes of the labour-cost warm-up (``0``: none). The cost is
            weighed by ``1 - exp(-k / energy_warmup)`` after ``k`` completed episodes of
            the environment (the AI Economist's ``energy_warmup_constant`` with the
            ``"decay"`` method).
        tax_annealing: ``(offset, slope)``: after ``k`` completed episodes no rate above
            ``clip(slope * (k - offset), 0, 1)`` is available (the AI Economist's
            ``tax_annealing_schedule``, ``(-100, 0.001)`` in its phase 2); ``None``: none.
        starting_coin: coin of every agent at reset.
        spatial_observation: egocentric views requested (emitted on map tiers only, see
            :attr:`spatial_views`).
        n_brackets: tax brackets.
        map_name: layout of the map tiers.
        map_height, map_width: map size of the map tiers.
        view_radius: half-width of the egocentric views.
        n_resources: traded resources of the trade tier.
        n_prices: order prices ``0..n_prices - 1`` of the trade tier.

    Examples:
        >>> s = EconomySettings(tier="gather_trade_build", episode_length=20, period=10)
        >>> s.map_tier, s.trade, s.spatial_views, s.view_side
        (True, True, True, 11)
        >>> EconomySettings(tier="labour", period=3, episode_length=20)
        Traceback (most recent call last):
        ...
        ValueError: period must be a positive divisor of episode_length, got period=3, episode_length=20
    """

    tier: Tier = "gather_trade_build"
    n_agents: int = 4
    episode_length: int = 1000
    period: int = 100
    planner_action: PlannerAction = "discrete"
    max_hours: int = 10
    energy_cost: float = 0.21
    energy_warmup: float = 0.0
    tax_annealing: tuple[float, float] | None = None
    starting_coin: float = 0.0
    spatial_observation: bool = True
    n_brackets: int = 7
    map_name: str = "quadrant_25x25_20each_30clump"
    map_height: int = 25
    map_width: int = 25
    view_radius: int = 5
    n_resources: int = len(RESOURCES)
    n_prices: int = 11

    def __post_init__(self) -> None:
        check_choice("tier", self.tier, TIERS)
        check_choice("planner_action", self.planner_action, ("discrete", "rates"))
        check_int("episode_length", self.episode_length, 1)
        check_int("period", self.period, 1)
        if self.episode_length % self.period:
            raise ValueError(
                f"period must be a positive divisor of episode_length, got period={self.period}, "
                f"episode_length={self.episode_length}"
            )
        check_int("n_agents", self.n_agents, 2)
        if self.tier != "labour" and self.n_agents != len(FIXED_START_LOCATIONS):
            raise ValueError(f"n_agents must be 4 for tier {self.tier!r} (fixed skill ranks), got {self.n_agents}")
        check_int("max_hours", self.max_hours, 1)
        object.__setattr__(self, "energy_cost", check_real("energy_cost", self.energy_cost, low=0))
        object.__setattr__(self, "energy_warmup", check_real("energy_warmup", self.energy_warmup, low=0))
        if self.tax_annealing is not None:
            if len(self.tax_annealing) != 2:
                raise ValueError(f"tax_annealing must be (offset, slope) or None, got {self.tax_annealing!r}")
            offset = check_real("tax_annealing offset", self.tax_annealing[0])
            slope = check_real("tax_annealing slope", self.tax_annealing[1], low=0, low_inclusive=False)
            object.__setattr__(self, "tax_annealing", (offset, slope))
        object.__setattr__(self, "starting_coin", check_real("starting_coin", self.starting_coin, low=0))
        check_bool("spatial_observation", self.spatial_observation)
        for name in ("n_brackets", "map_height", "map_width", "n_resources", "n_prices"):
            check_int(name, getattr(self, name), 1)
        check_int("view_radius", self.view_radius, 0)

    @property
    def map_tier(self) -> bool:
        """Whether agents live on the map (every tier but ``"labour"``)."""
        return self.tier != "labour"

    @property
    def trade(self) -> bool:
        """Whether the double auction runs (``"gather_trade_build"``)."""
        return self.tier == "gather_trade_build"

    @property
    def spatial_views(self) -> bool:
        """Whether ``("agents", "world_map")`` is emitted: requested and on a map tier."""
        return self.spatial_observation and self.map_tier

    @property
    def view_side(self) -> int:
        """Side ``2 * view_radius + 1`` of an egocentric view."""
        return 2 * self.view_radius + 1
