"""The AI Economist economy with a tax-setting planner, as a batched TorchRL environment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from torchrl_ermas.validation import as_batch_size, check_seed

from .actions import ActionLayout
from .auction import DoubleAuction
from .gather import GatherBuildWorld
from .layout import FIXED_BUILD_PAYMENTS, FIXED_START_LOCATIONS, WorldLayout, load_layout
from .observations import (
    agent_observation_size,
    current_marginal_rate,
    observations,
    planner_observation_size,
)
from .settings import TIERS, EconomySettings, PlannerAction, Tier
from .skills import gather_bonus, ranked_skills
from .social import coin_eq_times_productivity, equality, isoelastic_utility
from .specs import make_specs
from .tax import N_RATE_LEVELS, RATE_STEP, BracketTax

__all__ = ["TIERS", "EconomyEnv", "PlannerAction", "Tier"]


def _setting(name: str) -> property:
    """A read-only attribute forwarding to :attr:`EconomyEnv.settings`."""
    return property(lambda self: getattr(self.settings, name), doc=f"``settings.{name}``.")


class EconomyEnv(EnvBase):
    """Batched AI Economist economy (Zheng et al. 2020, https://arxiv.org/abs/2004.13332).

    Three tiers share one code path:

    - ``"labour"``: each step each agent works ``0..max_hours`` hours and earns
      ``skill x hours`` coin (skills: the four averaged Pareto multipliers, ranks permuted
      each episode);
    - ``"gather_build"``: the 25x25 open-quadrant map with four agents (fixed skill ranks
      and start corners): move, collect (with the gather bonus), build houses for the
      rank's payment, resource regrowth and labour costs; 6 actions (no-op, build, left,
      right, up, down);
    - ``"gather_trade_build"``: the above plus the continuous double auction for Stone and
      Wood; 50 actions (no-op, build, buy/sell Stone/Wood at prices 0..10, four moves).

    All tiers have the periodic bracket tax: at the first step of each period the planner's
    rates take effect; at the period's end each agent pays the tax on its income of the
    period (capped by its inventory coin) and the revenue is returned as an equal lump sum.
    Agent utility is ``(x^(1-eta) - 1) / (1 - eta) - energy_cost * labour`` with ``x`` the
    coin (inventory plus escrow) and a per-agent ``eta``; the agent reward is the change of
    utility. The planner reward is the change of equality x mean coin.

    The AI Economist's curricula are counted in each environment's completed episodes
    (:attr:`completed_episodes`, a buffer of the module named in ``persistent_buffers``, so
    ``state_dict`` carries it and the regret estimate's worlds share it with training):
    ``energy_warmup`` phases the labour cost in (its weight ``1 - exp(-k / energy_warmup)``
    is fixed for an episode at its reset) and ``tax_annealing`` caps the rates the planner
    can set (masked discrete choices; ``"rates"`` above the cap take the cap).

    Keys (``B`` = ``batch_size``, ``N`` agents, ``K`` brackets):

    - ``("agents", "observation")`` ``[B, N, obs]``, ``("agents", "action_mask")``
      ``[B, N, A]``, ``("agents", "action")`` ``[B, N]``, ``("next", "agents", "reward")``
      ``[B, N, 1]``; map tiers with ``spatial_observation`` add ``("agents", "world_map")``
      ``[B, N, 9, 11, 11]`` (channels in :data:`~torchrl_ermas.envs.economy.gather.VIEW_CHANNELS`);
      statistics ``("agents", "coin"/"labour"/"skill_rank")`` ``[B, N, 1]`` and, on map
      tiers, ``("agents", "builds")``.
    - ``("planner", "observation")`` ``[B, 1, obs_p]``; ``("planner", "action")``
      ``[B, 1, K]``: with ``planner_action="discrete"`` a categorical in ``0..21`` per
      bracket (0 keeps the previous rate, ``k`` sets rate ``(k - 1) * 0.05``) masked by
      ``("planner", "action_mask")`` ``[B, 1, K, 22]`` to 0 except on the first step of a
      period; with ``"rates"`` the rates themselves in ``[0, 1]`` (used by the fixed
      planners), read on the first step of a period only. ``("planner", "period_start")``,
      ``("planner", "taxes_enacted")`` ``[B, 1, 1]`` and the last period's
      ``("planner", "income")``, ``("planner", "marginal_rate")`` ``[B, 1, N]`` (the
      output of a reset after an episode that ended with a tax day reports that day, so a
      planner acting on what it observes, e.g. the Saez planner, sees every period);
      ``("next", "planner", "reward")`` ``[B, 1, 1]``.
    - ``"equality"``, ``"productivity"`` (sum of coin), ``"tax_revenue"`` (collected this
      episode), ``"labour"`` (mean per agent) ``[B, 1]``; ``"builds"`` (houses of all agents)
      on the map tiers; ``"trades"`` (this episode) on the trade tier; ``done``,
      ``terminated`` (always False) and ``truncated`` ``[B, 1]``.

    The constructor checks its arguments once into the immutable :attr:`settings`
    (:class:`~torchrl_ermas.envs.economy.settings.EconomySettings`); ``tier``, ``n_agents``,
    ``period`` and the other settings read as attributes of the environment too.

    Args:
        batch_size: number of environments in the batch, an int or a one-dim
            ``torch.Size`` (the name every environment of the project and the trainer use).
            Defaults to ``1``.

    Keyword Args:
        tier: ``"labour"``, ``"gather_build"`` or ``"gather_trade_build"`` (default).
        n_agents: agents; 4 on the map tiers. Defaults to ``4``.
        eta: isoelastic risk aversion in ``(0, 1]``: a float, ``[N]`` or ``[B, N]``.
            Defaults to ``0.23``.
        energy_cost: utility cost per unit of labour. Defaults to ``0.21``.
        energy_warmup: episodes of the labour-cost warm-up, ``0`` for none (the AI
            Economist's phase 1 used 10000 steps of its ``"auto"`` count). Defaults to ``0``.
        tax_annealing: ``(offset, slope)`` of the rate cap ``clip(slope * (k - offset),
            0, 1)`` after ``k`` episodes (the AI Economist's phase 2: ``(-100, 0.001)``), or
            ``None`` (default) for no cap.
        episode_length: steps per episode. Defaults to ``1000``.
        period: steps per tax period; must divide ``episode_length``. Defaults to ``100``.
        bracket_cutoffs: bracket lower edges (coin per period). Defaults to the US-2018
            cutoffs / 1000.
        planner_action: ``"discrete"`` (default) or ``"rates"``.
        map_name: layout of the map tiers. Defaults to ``"quadrant_25x25_20each_30clump"``.
        max_hours: largest hours choice of the labour tier. Defaults to ``10``.
        starting_coin: coin of every agent at reset. Defaults to ``0``.
        spatial_observation: emit ``("agents", "world_map")`` on map tiers. Defaults to
            ``True``.
        device: device of every tensor. Defaults to ``"cpu"``.
        seed: seed of the environment's generator. Defaults to ``None``.

    Examples:
        >>> env = EconomyEnv(batch_size=8, tier="gather_trade_build", episode_length=200)
        >>> td = env.rollout(5)
        >>> td["next", "agents", "reward"].shape, td["planner", "action"].shape
        (torch.Size([8, 5, 4, 1]), torch.Size([8, 5, 1, 7]))
    """

    #: the per-environment buffers that outlive episodes (:func:`~torchrl_ermas.regret.persistent_env_state`)
    persistent_buffers = ("completed_episodes",)

    def __init__(
        self,
        batch_size: int | Sequence[int] = 1,
        *,
        tier: Tier = "gather_trade_build",
        n_agents: int = 4,
        eta: float | Sequence[float] | torch.Tensor = 0.23,
        energy_cost: float = 0.21,
        energy_warmup: float = 0.0,
        tax_annealing: Sequence[float] | None = None,
        episode_length: int = 1000,
        period: int = 100,
        bracket_cutoffs: Sequence[float] | None = None,
        planner_action: PlannerAction = "discrete",
        map_name: str = "quadrant_25x25_20each_30clump",
        max_hours: int = 10,
        starting_coin: float = 0.0,
        spatial_observation: bool = True,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        batch_size = as_batch_size(batch_size, max_dims=1)
        check_seed("seed", seed, optional=True)
        device = torch.device("cpu" if device is None else device)
        tax = BracketTax(bracket_cutoffs, device=device)
        layout = load_layout(map_name, device) if tier != "labour" else None
        settings = EconomySettings(
            tier=tier,
            n_agents=n_agents,
            episode_length=episode_length,
            period=period,
            planner_action=planner_action,
            max_hours=max_hours,
            energy_cost=energy_cost,
            energy_warmup=energy_warmup,
            tax_annealing=None if tax_annealing is None else tuple(tax_annealing),
            starting_coin=starting_coin,
            spatial_observation=spatial_observation,
            n_brackets=tax.n_brackets,
            map_name=map_name,
            **({} if layout is None else {"map_height": layout.height, "map_width": layout.width}),
        )
        super().__init__(device=device, batch_size=batch_size)
        self.settings = settings
        self.actions = ActionLayout.from_settings(settings)
        self.tax = tax
        self._skills = ranked_skills(n_agents).to(device)
        self._eta = self._check_eta(eta)
        if layout is not None:
            self._init_world(layout)
        self.auction = (
            DoubleAuction(n_agents, n_resources=settings.n_resources, max_price=settings.n_prices - 1)
            if settings.trade
            else None
        )
        self._generator = torch.Generator(device=device)
        if seed is not None:
            self._generator.manual_seed(seed)
        self.register_buffer("completed_episodes", torch.zeros(batch_size, dtype=torch.long, device=device))
        self._state: TensorDict = self._initial_state()
        self._set_specs()

    def _init_world(self, layout: WorldLayout) -> None:
        """The map tiers' world on ``layout``, the fixed start locations and build payments."""
        self.world = GatherBuildWorld(layout, view_radius=self.settings.view_radius)
        self._start_pos = torch.tensor([r * layout.width + c for r, c in FIXED_START_LOCATIONS], device=self.device)
        self._payments = torch.tensor(FIXED_BUILD_PAYMENTS, device=self.device)

    def _set_specs(self) -> None:
        """The env's specs, from the settings (sizes by arithmetic)."""
        settings = self.settings
        specs = make_specs(
            settings,
            self.batch_size,
            self.device,
            n_actions=self.actions.n_actions,
            agent_obs=agent_observation_size(settings),
            planner_obs=planner_observation_size(settings),
        )
        for name, spec in specs.items():
            setattr(self, name, spec)

    # --------------------------------------------------------------- settings
    tier = _setting("tier")
    n_agents = _setting("n_agents")
    episode_length = _setting("episode_length")
    period = _setting("period")
    planner_action = _setting("planner_action")
    max_hours = _setting("max_hours")
    energy_cost = _setting("energy_cost")
    starting_coin = _setting("starting_coin")
    map_tier = _setting("map_tier")
    trade = _setting("trade")
    spatial_observation = _setting("spatial_views")

    @property
    def max_steps(self) -> int:
        """Steps per episode (``episode_length``), the rollout horizon of the training loop."""
        return self.episode_length

    @property
    def eta(self) -> torch.Tensor:
        """Per-agent risk aversion ``[B, N]``."""
        return self._eta

    def set_eta(self, eta: float | Sequence[float] | torch.Tensor) -> None:
        """Change the agents' risk aversion (takes effect from the next step's utility)."""
        self._eta = self._check_eta(eta)

    def _check_eta(self, eta) -> torch.Tensor:
        eta = torch.as_tensor(eta, dtype=torch.float32, device=self.device)
        shape = (*self.batch_size, self.n_agents)
        if eta.shape not in (torch.Size([]), torch.Size(shape[-1:]), torch.Size(shape)):
            raise ValueError(
                f"eta must be a float or have shape [n_agents]={[shape[-1]]} or "
                f"[batch_size, n_agents]={list(shape)}, got shape {list(eta.shape)}"
            )
        if not torch.isfinite(eta).all() or (eta <= 0).any() or (eta > 1).any():
            raise ValueError(f"eta must lie in (0, 1], got {eta.tolist()}")
        return eta.expand(shape).clone()

    @property
    def energy_weight(self) -> torch.Tensor:
        """``[B]`` weight of the labour cost in the utility of the current episodes (the
        counts change only when an environment is reset)."""
        if self.settings.energy_warmup == 0:
            return torch.ones(self.batch_size, device=self.device)
        return 1 - torch.exp(-self.completed_episodes / self.settings.energy_warmup)

    def _energy_cost(self) -> torch.Tensor:
        """``[B, 1]`` utility cost per unit of labour in the current episodes."""
        return (self.energy_cost * self.energy_weight).unsqueeze(-1)

    @property
    def rate_cap(self) -> torch.Tensor:
        """``[B]`` highest rate the planner can set in the current episodes (tax annealing)."""
        if self.settings.tax_annealing is None:
            return torch.ones(self.batch_size, device=self.device)
        offset, slope = self.settings.tax_annealing
        return (slope * (self.completed_episodes - offset)).clamp(0, 1)

    @property
    def n_actions(self) -> int:
        """Number of agent actions."""
        return self.actions.n_actions

    # ------------------------------------------------------------------ state
    def _initial_state(self) -> TensorDict:
        """A fresh state for every environment: the step ``t``, ``equality`` and social welfare
        ``swf`` ``[B]`` at the root, with the per-agent state in ``"agents"`` ``[B, N]``, the rates and
        revenue in ``"tax"``, the map in ``"world"`` (map tiers) and the order book in ``"book"``
        (trade tier), each given only to the component that owns it."""
        b, n, dev, gen = self.batch_size[0], self.n_agents, self.device, self._generator
        k = self.tax.n_brackets
        rank = torch.rand(b, n, device=dev, generator=gen).argsort(-1)
        inventory = torch.zeros(b, n, 3, device=dev)
        inventory[..., 0] = self.starting_coin
        zeros = torch.zeros(b, n, device=dev)
        agents = {
            "rank": rank,
            "inventory": inventory,
            "escrow": torch.zeros(b, n, 3, device=dev),
            "labour": zeros,
            "last_coin": inventory[..., 0].clone(),
            "last_income": zeros.clone(),
            "last_marginal_rate": zeros.clone(),
            # the previous episode's last tax day, reported by the reset (see _reset)
            "final_income": zeros.clone(),
            "final_marginal_rate": zeros.clone(),
        }
        tax = {
            "rate_index": torch.zeros(b, k, dtype=torch.long, device=dev),
            "rates": torch.zeros(b, k, device=dev),
            "revenue": torch.zeros(b, device=dev),
            "final_day": torch.zeros(b, dtype=torch.bool, device=dev),
        }
        state = TensorDict(
            {"t": torch.zeros(b, dtype=torch.long, device=dev), "tax": TensorDict(tax, [b])},
            batch_size=[b],
            device=dev,
        )
        if self.map_tier:
            agents["pos"] = self._start_pos[rank]
            agents["payment"] = self._payments[rank]
            agents["bonus"] = gather_bonus((b, n), gen, dev)
            agents["builds"] = zeros.clone()
            world = {"resource": self.world.initial_resources(b), "house": self.world.empty_houses(b)}
            state["world"] = TensorDict(world, [b])
        if self.trade:
            state["book"] = self.auction.empty_book(b, dev)
            state["trades"] = torch.zeros(b, device=dev)
        coin = inventory[..., 0] + agents["escrow"][..., 0]
        agents["utility"] = isoelastic_utility(coin, agents["labour"], self._eta, self._energy_cost())
        state["agents"] = TensorDict(agents, [b, n])
        state["equality"] = equality(coin)
        state["swf"] = coin_eq_times_productivity(coin, state["equality"])
        return state

    # --------------------------------------------------------------- TorchRL
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        s = self._state
        ended = s["t"] >= self.episode_length
        if mask is not None:
            ended = ended & mask.reshape(-1)
        self.completed_episodes += ended
        fresh = self._initial_state()
        # the tax day that ended an episode stays reported until the next step (through
        # repeated resets too), so a planner acting on what it observes sees every period
        fresh["tax", "final_day"] = (ended & (self.episode_length % self.period == 0)) | (
            s["tax", "final_day"] & (s["t"] == 0)
        )
        for name in ("income", "marginal_rate"):
            kept = torch.where(ended.unsqueeze(-1), s["agents", f"last_{name}"], s["agents", f"final_{name}"])
            fresh["agents", f"final_{name}"] = kept
        self._state = fresh if mask is None else fresh.where(mask.reshape(-1), s)
        return self._observe()

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        s = self._state
        agents = s["agents"]
        action = tensordict.get(("agents", "action"))
        s["t"] = s["t"] + 1
        first = (s["t"] - 1) % self.period == 0
        self._set_rates(s["tax"], tensordict.get(("planner", "action"))[:, 0], first)
        if self.map_tier:
            self._map_step(action)
        else:
            hours = self.actions.decode_hours(action)
            agents["inventory"][..., 0] += self._skills[agents["rank"]] * hours
            agents["labour"] = agents["labour"] + hours
        self._tax_step(s["t"] % self.period == 0)
        if self.map_tier:
            self.world.regenerate(s["world", "resource"], self._generator)
        return self._observe(self._rewards())

    def _set_seed(self, seed: int | None) -> None:
        self._generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)

    # -------------------------------------------------------------- dynamics
    def _set_rates(self, tax: TensorDictBase, action: torch.Tensor, first: torch.Tensor) -> None:
        if self.planner_action == "discrete":
            chosen = torch.where(action > 0, action - 1, tax["rate_index"]).clamp(0, N_RATE_LEVELS - 1)
            tax["rate_index"] = torch.where(first.unsqueeze(-1), chosen, tax["rate_index"])
            tax["rates"] = tax["rate_index"].float() * RATE_STEP
            return
        bad = first.unsqueeze(-1) & ~((action >= 0) & (action <= 1))
        if bad.any():
            raise ValueError(f"('planner', 'action') rates must lie in [0, 1], got {action[bad.any(-1)].tolist()}")
        rates = torch.minimum(action.float(), self.rate_cap.unsqueeze(-1))
        tax["rates"] = torch.where(first.unsqueeze(-1), rates, tax["rates"])

    def _map_step(self, action: torch.Tensor) -> None:
        s, world = self._state, self.world
        agents, house, resource = s["agents"], s["world", "house"], s["world", "resource"]
        inventory, labour, pos = agents["inventory"], agents["labour"], agents["pos"]
        decoded = self.actions.decode_map(action)
        built = world.build(decoded.build, pos, house, inventory, labour, agents["payment"])
        agents["builds"] = agents["builds"] + built.float()
        if self.trade:
            s["trades"] = s["trades"] + self.auction.step(
                s["book"], decoded.resource, decoded.is_bid, decoded.price, inventory, agents["escrow"], labour
            )
        pos = world.move(decoded.direction, pos, house, labour, self._generator)
        agents["pos"] = pos
        world.collect(pos, resource, inventory, labour, agents["bonus"], self._generator)

    def _tax_step(self, tax_day: torch.Tensor) -> None:
        if not tax_day.any():
            return  # no environment ends a tax period: nothing changes
        agents, tax = self._state["agents"], self._state["tax"]
        coin, escrow = agents["inventory"][..., 0], agents["escrow"][..., 0]
        out = self.tax.enact(coin, escrow, agents["last_coin"], tax["rates"])
        day = tax_day.unsqueeze(-1)
        coin.copy_(torch.where(day, out.coin, coin))
        agents["last_coin"] = torch.where(day, coin + escrow, agents["last_coin"])
        agents["last_income"] = torch.where(day, out.income, agents["last_income"])
        agents["last_marginal_rate"] = torch.where(day, out.marginal_rate, agents["last_marginal_rate"])
        tax["revenue"] = tax["revenue"] + torch.where(tax_day, out.revenue, 0)

    def _rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Agent ``[B, N, 1]`` and planner ``[B, 1, 1]`` rewards of the step just taken: the
        changes of utility and of social welfare, whose new values become the baselines."""
        s = self._state
        agents = s["agents"]
        coin = agents["inventory"][..., 0] + agents["escrow"][..., 0]
        utility = isoelastic_utility(coin, agents["labour"], self._eta, self._energy_cost())
        eq = equality(coin)
        swf = coin_eq_times_productivity(coin, eq)
        rewards = (utility - agents["utility"]).unsqueeze(-1), (swf - s["swf"]).view(-1, 1, 1)
        agents["utility"], s["equality"], s["swf"] = utility, eq, swf
        return rewards

    # ----------------------------------------------------------- observation
    def _observe(self, rewards: tuple[torch.Tensor, torch.Tensor] | None = None) -> TensorDictBase:
        """The output of the current state, with ``rewards`` (from :meth:`_rewards`) after a
        step; reads the state only."""
        s = self._state
        state = s["agents"]
        b, n = self.batch_size[0], self.n_agents
        coin = state["inventory"][..., 0] + state["escrow"][..., 0]
        period_start = (s["t"] % self.period == 0).view(b, 1, 1)
        report = (s["tax", "final_day"] & (s["t"] == 0)).view(b, 1)  # see _reset
        agent_obs, planner_obs = self._observations(s)
        agents = {
            "observation": agent_obs,
            "action_mask": self._agent_mask(),
            "coin": coin.unsqueeze(-1),
            "labour": state["labour"].unsqueeze(-1),
            "skill_rank": state["rank"].unsqueeze(-1),
        }
        if self.map_tier:
            agents["builds"] = state["builds"].unsqueeze(-1)
        if self.spatial_observation:
            agents["world_map"] = self.world.views(state["pos"], s["world", "resource"], s["world", "house"])
        planner = {
            "observation": planner_obs,
            "period_start": period_start,
            "taxes_enacted": period_start & (s["t"] > 0).view(b, 1, 1) | report.view(b, 1, 1),
            "income": torch.where(report, state["final_income"], state["last_income"]).unsqueeze(1),
            "marginal_rate": torch.where(report, state["final_marginal_rate"], state["last_marginal_rate"]).unsqueeze(
                1
            ),
        }
        if self.planner_action == "discrete":
            # choice k > 0 sets rate (k - 1) * RATE_STEP: open at period starts, up to the cap
            rates = torch.arange(-1, N_RATE_LEVELS, device=self.device) * RATE_STEP
            open_ = rates <= self.rate_cap.view(b, 1, 1, 1) + 1e-6
            planner["action_mask"] = (period_start.unsqueeze(-1) & open_).expand(b, 1, self.tax.n_brackets, -1).clone()
            planner["action_mask"][..., 0] = True
        done = (s["t"] >= self.episode_length).unsqueeze(-1)
        root = {
            "equality": s["equality"].unsqueeze(-1),
            "productivity": coin.sum(-1, keepdim=True),
            "tax_revenue": s["tax", "revenue"].unsqueeze(-1),
            "labour": state["labour"].mean(-1, keepdim=True),
            "done": done,
            "terminated": torch.zeros_like(done),
            "truncated": done.clone(),
        }
        if self.map_tier:
            root["builds"] = state["builds"].sum(-1, keepdim=True)
        if self.trade:
            root["trades"] = s["trades"].unsqueeze(-1)
        if rewards is not None:
            agents["reward"], planner["reward"] = rewards
        out = TensorDict(root, batch_size=self.batch_size, device=self.device)
        out["agents"] = TensorDict(agents, batch_size=(b, n), device=self.device)
        out["planner"] = TensorDict(planner, batch_size=(b, 1), device=self.device)
        return out

    def _observations(self, s: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """The agents' and the planner's flat observations of state ``s``."""
        cfg = self.settings
        rate = current_marginal_rate(self.tax, s)
        skill = None if cfg.map_tier else self._skills[s["agents", "rank"]]
        return observations(cfg, s, rate, skill=skill, auction=self.auction)

    def _agent_mask(self) -> torch.Tensor:
        s = self._state
        b, n = self.batch_size[0], self.n_agents
        if not self.map_tier:
            return torch.ones(b, n, self.n_actions, dtype=torch.bool, device=self.device)
        pos, house, inventory = s["agents", "pos"], s["world", "house"], s["agents", "inventory"]
        can_build = self.world.can_build(pos, house, inventory)
        orders = self.auction.masks(s["book"], inventory) if self.trade else ()
        return self.actions.map_mask(can_build, self.world.move_mask(pos, house), *orders)

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """Uniformly random actions among those the masks allow."""
        if tensordict is None:
            tensordict = self._observe()
        gen = self._generator
        tensordict.set(("agents", "action"), _uniform_among(tensordict.get(("agents", "action_mask")), gen))
        if self.planner_action == "discrete":
            tensordict.set(("planner", "action"), _uniform_among(tensordict.get(("planner", "action_mask")), gen))
        else:
            shape = (*self.batch_size, 1, self.tax.n_brackets)
            tensordict.set(("planner", "action"), torch.rand(shape, device=self.device, generator=gen))
        return tensordict


def _uniform_among(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``mask`` ``[..., A]``, uniform among its allowed entries (each
    row allows at least one): the ``k``-th allowed entry for a uniform ``k``, which takes
    one random number per row.

    Examples:
        >>> mask = torch.tensor([[False, True, False, True]]).expand(1000, 4)
        >>> sorted(_uniform_among(mask, torch.Generator().manual_seed(0)).unique().tolist())
        [1, 3]
    """
    dtype = torch.uint8 if mask.shape[-1] < 256 else torch.int32  # uint8 sums several times faster
    allowed = mask.cumsum(-1, dtype=dtype)
    count = allowed[..., -1:]
    k = (torch.rand(count.shape, device=mask.device, generator=generator) * count).int()
    return torch.searchsorted(allowed, (k + 1).to(dtype)).squeeze(-1)
