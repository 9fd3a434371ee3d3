"""TensorDict specs of :class:`~torchrl_ermas.envs.economy.EconomyEnv`, declared once."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchrl.data import Bounded, Categorical, Composite, Unbounded

from .gather import VIEW_CHANNELS
from .tax import N_RATE_LEVELS

if TYPE_CHECKING:
    from .env import EconomyEnv


def n_agent_actions(env: EconomyEnv) -> int:
    """Agent actions: hours ``0..max_hours``; no-op, build, 4 moves; plus 44 orders with trade.

    Examples:
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> labour = EconomyEnv(1, tier="labour", episode_length=20, period=10)
        >>> n_agent_actions(labour) == labour.max_hours + 1
        True
        >>> n_agent_actions(EconomyEnv(1, tier="gather_trade_build", episode_length=20, period=10))
        50
    """
    if not env.map_tier:
        return env.max_hours + 1
    return 6 + (4 * env.auction.n_prices if env.trade else 0)


def make_specs(env: EconomyEnv, agent_obs: int, planner_obs: int) -> dict[str, Composite]:
    """The four full specs of the environment, keyed by attribute name.

    Examples:
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> env = EconomyEnv(2, tier="labour", episode_length=20, period=10)
        >>> specs = make_specs(env, agent_obs=5, planner_obs=7)
        >>> sorted(specs)
        ['full_action_spec', 'full_done_spec', 'full_observation_spec', 'full_reward_spec']
        >>> specs["full_observation_spec"]["agents", "observation"].shape
        torch.Size([2, 4, 5])
    """
    bs, dev = env.batch_size, env.device
    n, k = env.n_agents, env.tax.n_brackets
    ag, pl = (*bs, n), (*bs, 1)

    def flag(shape):
        return Categorical(2, shape=shape, dtype=torch.bool, device=dev)

    agents = Composite(
        observation=Unbounded((*ag, agent_obs), device=dev),
        action_mask=flag((*ag, env.n_actions)),
        coin=Unbounded((*ag, 1), device=dev),
        labour=Unbounded((*ag, 1), device=dev),
        skill_rank=Categorical(n, shape=(*ag, 1), dtype=torch.long, device=dev),
        shape=ag,
        device=dev,
    )
    if env.map_tier:
        agents["builds"] = Unbounded((*ag, 1), device=dev)
    if env.spatial_observation:
        side = 2 * env.world.radius + 1
        agents["world_map"] = Unbounded((*ag, len(VIEW_CHANNELS), side, side), device=dev)
    planner = Composite(
        observation=Unbounded((*pl, planner_obs), device=dev),
        period_start=flag((*pl, 1)),
        taxes_enacted=flag((*pl, 1)),
        income=Unbounded((*pl, n), device=dev),
        marginal_rate=Unbounded((*pl, n), device=dev),
        shape=pl,
        device=dev,
    )
    if env.planner_action == "discrete":
        planner["action_mask"] = flag((*pl, k, N_RATE_LEVELS + 1))
        planner_action = Categorical(N_RATE_LEVELS + 1, shape=(*pl, k), device=dev)
    else:
        planner_action = Bounded(0.0, 1.0, shape=(*pl, k), device=dev)
    observation = Composite(
        agents=agents,
        planner=planner,
        equality=Unbounded((*bs, 1), device=dev),
        productivity=Unbounded((*bs, 1), device=dev),
        tax_revenue=Unbounded((*bs, 1), device=dev),
        shape=bs,
        device=dev,
    )
    if env.trade:
        observation["trades"] = Unbounded((*bs, 1), device=dev)
    action = Composite(
        agents=Composite(action=Categorical(env.n_actions, shape=ag, device=dev), shape=ag, device=dev),
        planner=Composite(action=planner_action, shape=pl, device=dev),
        shape=bs,
        device=dev,
    )
    reward = Composite(
        agents=Composite(reward=Unbounded((*ag, 1), device=dev), shape=ag, device=dev),
        planner=Composite(reward=Unbounded((*pl, 1), device=dev), shape=pl, device=dev),
        shape=bs,
        device=dev,
    )
    done = Composite(
        done=flag((*bs, 1)), terminated=flag((*bs, 1)), truncated=flag((*bs, 1)), shape=bs, device=dev
    )
    return {
        "full_observation_spec": observation,
        "full_action_spec": action,
        "full_reward_spec": reward,
        "full_done_spec": done,
    }
