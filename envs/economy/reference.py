"""Reference statistics of the original AI Economist under random masked agents, and the
same statistics measured on :class:`~torchrl_ermas.envs.economy.EconomyEnv`.

The reference numbers were measured with ``ai-economist==1.7.1`` in the paper configuration
(4 agents, fixed skills and locations, starting coin 0): episode-end values, mean and
standard error over the episodes given with each row. The first three rows (notes 6.2:
uniform agents, free market and US federal) leave some standard errors unrecorded
(``None``). The other rows, 100 episodes each, record all of them; their planners are
fixed rates (the original's ``tax_model="fixed-bracket-rates"``) or Saez with the ERMAS
elasticity 3 (``tax_model="saez"``, ``saez_fixed_elas=3.0``, measured after a warm-up of 15
episodes), and their agents draw uniformly or, ``"builder"``, with the weights of
:data:`REFERENCE_POLICIES` (they mostly move, rarely trade and build whenever they can).
``benchmarks/economy_parity.py`` configures the original for every row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from tensordict.nn import TensorDictModuleBase

from .env import EconomyEnv
from .planners import FixedRatePlanner, FreeMarketPlanner, SaezPlanner, USFederalPlanner
from .settings import Tier

#: Kinds of map-tier agent actions, in action order, that ``action_bias`` weighs.
ACTION_KINDS: tuple[str, ...] = ("noop", "build", "order", "move")
#: The progressive schedule of the reference rows named ``"progressive"``.
PROGRESSIVE_RATES: tuple[float, ...] = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)

#: The reference tax planners by name. The Saez planner keeps one episode (40 samples) per
#: environment, so that every period of an episode weighs the same in its schedule, as in the
#: original's buffer (500 samples: 12.5 episodes of its one environment).
REFERENCE_PLANNERS: dict[str, Callable[[], TensorDictModuleBase]] = {
    "free_market": FreeMarketPlanner,
    "us_federal": USFederalPlanner,
    "flat_0.3": lambda: FixedRatePlanner([0.3] * 7),
    "progressive": lambda: FixedRatePlanner(PROGRESSIVE_RATES),
    "saez": lambda: SaezPlanner(fixed_elasticity=3.0, buffer_size=40),
}
#: The reference agent policies by name: the ``action_bias`` of :func:`random_policy_statistics`.
REFERENCE_POLICIES: dict[str, dict[str, float] | None] = {
    "uniform": None,
    "builder": {"noop": 0.1, "build": 50.0, "order": 0.02},
}


class ReferenceStat(NamedTuple):
    """Mean and standard error (``None`` if not recorded) of an episode-end statistic."""

    mean: float
    stderr: float | None


#: ``(tier, planner, policy) -> (number of reference episodes, {statistic: ReferenceStat})``,
#: with planners from :data:`REFERENCE_PLANNERS` and policies from :data:`REFERENCE_POLICIES`.
REFERENCE_RANDOM_POLICY: dict[tuple[Tier, str, str], tuple[int, dict[str, ReferenceStat]]] = {
    ("gather_trade_build", "free_market", "uniform"): (
        20,
        {
            "coin_sum": ReferenceStat(412, 30),
            "equality": ReferenceStat(0.49, 0.03),
            "swf": ReferenceStat(51, 5),
            "builds": ReferenceStat(28.2, None),
            "trades": ReferenceStat(308, None),
            "labour": ReferenceStat(697, None),
            "coin_rank0": ReferenceStat(70, None),
            "coin_rank1": ReferenceStat(104, None),
            "coin_rank2": ReferenceStat(201, None),
            "coin_rank3": ReferenceStat(38, None),
        },
    ),
    ("gather_trade_build", "us_federal", "uniform"): (
        20,
        {
            "coin_sum": ReferenceStat(424, 36),
            "equality": ReferenceStat(0.53, 0.03),
            "swf": ReferenceStat(55, 5),
            "builds": ReferenceStat(28.4, None),
            "trades": ReferenceStat(326, None),
            "tax": ReferenceStat(63, None),
            "labour": ReferenceStat(693, None),
            "coin_rank0": ReferenceStat(62, None),
            "coin_rank1": ReferenceStat(102, None),
            "coin_rank2": ReferenceStat(212, None),
            "coin_rank3": ReferenceStat(48, None),
        },
    ),
    ("gather_build", "free_market", "uniform"): (
        60,
        {
            "coin_sum": ReferenceStat(332, 22),
            "equality": ReferenceStat(0.11, 0.02),
            "builds": ReferenceStat(21.1, 1.5),
            "labour": ReferenceStat(852, 4),
        },
    ),
    ("gather_trade_build", "flat_0.3", "uniform"): (
        100,
        {
            "coin_sum": ReferenceStat(471.0, 17.9),
            "equality": ReferenceStat(0.640, 0.012),
            "swf": ReferenceStat(75.1, 3.3),
            "builds": ReferenceStat(30.9, 1.2),
            "trades": ReferenceStat(337.1, 8.0),
            "tax": ReferenceStat(162.6, 5.5),
            "labour": ReferenceStat(697.4, 2.2),
            "coin_rank0": ReferenceStat(84.4, 3.9),
            "coin_rank1": ReferenceStat(107.7, 5.8),
            "coin_rank2": ReferenceStat(203.1, 9.8),
            "coin_rank3": ReferenceStat(75.9, 5.6),
        },
    ),
    ("gather_trade_build", "saez", "uniform"): (
        100,
        {
            "coin_sum": ReferenceStat(462.2, 16.5),
            "equality": ReferenceStat(0.601, 0.014),
            "swf": ReferenceStat(69.9, 3.2),
            "builds": ReferenceStat(30.5, 1.1),
            "trades": ReferenceStat(341.9, 7.7),
            "tax": ReferenceStat(159.3, 4.3),
            "labour": ReferenceStat(694.3, 2.2),
            "coin_rank0": ReferenceStat(82.0, 4.2),
            "coin_rank1": ReferenceStat(111.9, 6.5),
            "coin_rank2": ReferenceStat(204.7, 9.6),
            "coin_rank3": ReferenceStat(63.6, 4.8),
        },
    ),
    ("gather_trade_build", "free_market", "builder"): (
        100,
        {
            "coin_sum": ReferenceStat(565.2, 22.6),
            "equality": ReferenceStat(0.450, 0.015),
            "swf": ReferenceStat(64.1, 3.4),
            "builds": ReferenceStat(37.5, 1.5),
            "trades": ReferenceStat(93.5, 1.9),
            "labour": ReferenceStat(1003.8, 3.5),
            "coin_rank0": ReferenceStat(90.9, 7.4),
            "coin_rank1": ReferenceStat(120.6, 8.4),
            "coin_rank2": ReferenceStat(290.5, 16.3),
            "coin_rank3": ReferenceStat(63.2, 8.4),
        },
    ),
    ("gather_trade_build", "progressive", "builder"): (
        100,
        {
            "coin_sum": ReferenceStat(595.6, 22.7),
            "equality": ReferenceStat(0.576, 0.014),
            "swf": ReferenceStat(86.6, 3.9),
            "builds": ReferenceStat(39.1, 1.5),
            "trades": ReferenceStat(101.5, 1.8),
            "tax": ReferenceStat(96.9, 5.0),
            "labour": ReferenceStat(1001.2, 3.3),
            "coin_rank0": ReferenceStat(103.6, 5.9),
            "coin_rank1": ReferenceStat(140.4, 8.4),
            "coin_rank2": ReferenceStat(263.8, 13.4),
            "coin_rank3": ReferenceStat(87.7, 7.7),
        },
    ),
    ("gather_trade_build", "saez", "builder"): (
        100,
        {
            "coin_sum": ReferenceStat(627.2, 22.2),
            "equality": ReferenceStat(0.582, 0.014),
            "swf": ReferenceStat(91.2, 4.0),
            "builds": ReferenceStat(40.7, 1.4),
            "trades": ReferenceStat(105.3, 1.5),
            "tax": ReferenceStat(219.6, 5.2),
            "labour": ReferenceStat(1001.9, 3.4),
            "coin_rank0": ReferenceStat(104.9, 5.7),
            "coin_rank1": ReferenceStat(120.9, 5.9),
            "coin_rank2": ReferenceStat(301.9, 14.7),
            "coin_rank3": ReferenceStat(99.4, 7.4),
        },
    ),
    ("gather_build", "free_market", "builder"): (
        100,
        {
            "coin_sum": ReferenceStat(389.0, 19.5),
            "equality": ReferenceStat(0.186, 0.018),
            "swf": ReferenceStat(18.4, 2.0),
            "builds": ReferenceStat(25.3, 1.3),
            "labour": ReferenceStat(1052.1, 3.3),
            "coin_rank0": ReferenceStat(53.5, 7.1),
            "coin_rank1": ReferenceStat(36.6, 8.4),
            "coin_rank2": ReferenceStat(277.6, 18.0),
            "coin_rank3": ReferenceStat(21.4, 5.1),
        },
    ),
    ("gather_build", "progressive", "builder"): (
        100,
        {
            "coin_sum": ReferenceStat(381.2, 17.3),
            "equality": ReferenceStat(0.328, 0.013),
            "swf": ReferenceStat(33.0, 2.3),
            "builds": ReferenceStat(24.5, 1.2),
            "tax": ReferenceStat(75.8, 4.8),
            "labour": ReferenceStat(1049.5, 3.0),
            "coin_rank0": ReferenceStat(56.3, 6.2),
            "coin_rank1": ReferenceStat(46.9, 5.5),
            "coin_rank2": ReferenceStat(241.9, 12.5),
            "coin_rank3": ReferenceStat(36.2, 5.2),
        },
    ),
}


def _action_weights(env: EconomyEnv, action_bias: Mapping[str, float]) -> torch.Tensor:
    """Per-action weights ``[n_actions]`` of a map tier from weights by kind of action."""
    if not env.map_tier:
        raise ValueError(f"action_bias needs a map tier, got tier={env.tier!r}")
    unknown = set(action_bias) - set(ACTION_KINDS)
    if unknown or not all(w > 0 for w in action_bias.values()):
        raise ValueError(f"action_bias maps kinds of {ACTION_KINDS} to positive weights, got {dict(action_bias)}")
    layout = env.actions
    weight = dict.fromkeys(ACTION_KINDS, 1.0) | dict(action_bias)
    counts = {"noop": 1, "build": 1, "order": layout.n_orders, "move": layout.n_moves}
    return torch.cat([torch.full((counts[kind],), float(weight[kind])) for kind in ACTION_KINDS]).to(env.device)


@torch.no_grad()
def random_policy_statistics(
    env: EconomyEnv,
    planner: TensorDictModuleBase,
    action_bias: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Run one episode per environment with random masked agents and ``planner``.

    Agents draw uniformly among the actions their masks allow, or, with ``action_bias``
    (map tiers), with probability proportional to the weight of each allowed action's kind
    (``"noop"``, ``"build"``, ``"order"``, ``"move"``; 1 for a kind not named), from the
    environment's generator. The planner keeps its state between calls (run a
    :class:`~torchrl_ermas.envs.economy.SaezPlanner` once to warm it up; the episode's last
    tax day reaches it through the next call's reset).

    Returns episode-end statistics, one value per environment: ``coin_sum``,
    ``equality``, ``swf`` (equality x mean coin), ``builds``, ``trades``, ``tax``,
    ``labour`` (mean per agent) and ``coin_rank{k}`` (coin of the skill-rank-k agent).

    Examples:
        >>> from torchrl_ermas.envs.economy import FreeMarketPlanner
        >>> env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=20, period=10)
        >>> stats = random_policy_statistics(env, FreeMarketPlanner())
        >>> stats["coin_sum"].shape
        torch.Size([4])
        >>> env = EconomyEnv(4, tier="gather_build", planner_action="rates", episode_length=50, period=10)
        >>> stats = random_policy_statistics(env, FreeMarketPlanner(), {"noop": 0.5, "build": 50.0})
        >>> stats["builds"].shape
        torch.Size([4])
    """
    weights = None if action_bias is None else _action_weights(env, action_bias)
    td = env.reset()
    for _ in range(env.episode_length):
        if weights is None:
            td = env.rand_action(td)
        else:
            # an allowed action with probability proportional to its weight: the argmax of
            # log(u) / w over the allowed actions, u uniform (Efraimidis and Spirakis 2006)
            mask = td["agents", "action_mask"]
            u = torch.rand(mask.shape, device=env.device, generator=env._generator)
            td["agents", "action"] = torch.where(mask, u.log() / weights, float("-inf")).argmax(-1)
        out = env.step(planner(td))
        td = env.step_mdp(out)
    final = out["next"]
    coin = final["agents", "coin"].squeeze(-1)
    rank = final["agents", "skill_rank"].squeeze(-1)
    zeros = torch.zeros_like(coin[:, 0])
    stats = {
        "coin_sum": final["productivity"].squeeze(-1),
        "equality": final["equality"].squeeze(-1),
        "swf": final["equality"].squeeze(-1) * coin.mean(-1),
        "builds": final["agents", "builds"].squeeze(-1).sum(-1) if env.map_tier else zeros,
        "trades": final["trades"].squeeze(-1) if env.trade else zeros,
        "tax": final["tax_revenue"].squeeze(-1),
        "labour": final["agents", "labour"].squeeze(-1).mean(-1),
    }
    for k in range(env.n_agents):
        stats[f"coin_rank{k}"] = (coin * (rank == k)).sum(-1)
    return stats


def reference_statistics(
    tier: Tier, planner: str, policy: str, batch_size: int, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """:func:`random_policy_statistics` in the configuration of a reference row:
    ``batch_size`` episodes of an :class:`EconomyEnv` with ``tier``, the planner named
    ``planner`` in :data:`REFERENCE_PLANNERS` and the agent policy named ``policy`` in
    :data:`REFERENCE_POLICIES`. A Saez planner is warmed up by one episode first, which fills
    its buffer.

    Examples:
        >>> stats = reference_statistics("gather_build", "progressive", "builder", batch_size=2, seed=0)
        >>> sorted(stats)[:3], stats["tax"].shape
        (['builds', 'coin_rank0', 'coin_rank1'], torch.Size([2]))
    """
    env = EconomyEnv(batch_size, tier=tier, planner_action="rates", spatial_observation=False, seed=seed)
    module = REFERENCE_PLANNERS[planner]()
    bias = REFERENCE_POLICIES[policy]
    if isinstance(module, SaezPlanner):
        random_policy_statistics(env, module, bias)
    return random_policy_statistics(env, module, bias)


def compare_to_reference(
    stats: dict[str, torch.Tensor], reference: dict[str, ReferenceStat], n_reference: int
) -> dict[str, tuple[float, float, float, float, float]]:
    """Per statistic: ``(ours, our s.e., reference, reference s.e., z-score)``.

    A reference standard error that was not recorded is estimated from our per-episode
    spread and the reference's episode count.
    """
    rows = {}
    for name, ref in reference.items():
        values = stats[name].double()
        sd = values.std().item()
        se = sd / values.numel() ** 0.5
        ref_se = ref.stderr if ref.stderr is not None else sd / n_reference**0.5
        z = (values.mean().item() - ref.mean) / max((se**2 + ref_se**2) ** 0.5, 1e-12)
        rows[name] = (values.mean().item(), se, ref.mean, ref_se, z)
    return rows
