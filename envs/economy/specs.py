"""TensorDict specs of :class:`~torchrl_ermas.envs.economy.EconomyEnv`, declared once."""

from __future__ import annotations

import torch
from torchrl.data import Bounded, Categorical, Composite, Unbounded

from .gather import VIEW_CHANNELS
from .settings import EconomySettings
from .tax import N_RATE_LEVELS


def make_specs(
    settings: EconomySettings,
    batch_size: torch.Size,
    device: torch.device,
    n_actions: int,
    agent_obs: int,
    planner_obs: int,
) -> dict[str, Composite]:
    """The four full specs of an economy, keyed by attribute name.

    Examples:
        >>> settings = EconomySettings(tier="labour", episode_length=20, period=10)
        >>> specs = make_specs(settings, torch.Size([2]), torch.device("cpu"), n_actions=11, agent_obs=5, planner_obs=7)
        >>> sorted(specs)
        ['full_action_spec', 'full_done_spec', 'full_observation_spec', 'full_reward_spec']
        >>> specs["full_observation_spec"]["agents", "observation"].shape
        torch.Size([2, 4, 5])
    """
    bs, dev = batch_size, device
    n, k = settings.n_agents, settings.n_brackets
    ag, pl = (*bs, n), (*bs, 1)

    def flag(shape):
        return Categorical(2, shape=shape, dtype=torch.bool, device=dev)

    agents = Composite(
        observation=Unbounded((*ag, agent_obs), device=dev),
        action_mask=flag((*ag, n_actions)),
        coin=Unbounded((*ag, 1), device=dev),
        labour=Unbounded((*ag, 1), device=dev),
        skill_rank=Categorical(n, shape=(*ag, 1), dtype=torch.long, device=dev),
        shape=ag,
        device=dev,
    )
    if settings.map_tier:
        agents["builds"] = Unbounded((*ag, 1), device=dev)
    if settings.spatial_views:
        side = settings.view_side
        agents["world_map"] = Bounded(0, n + 1, (*ag, len(VIEW_CHANNELS), side, side), dtype=torch.uint8, device=dev)
    planner = Composite(
        observation=Unbounded((*pl, planner_obs), device=dev),
        period_start=flag((*pl, 1)),
        taxes_enacted=flag((*pl, 1)),
        income=Unbounded((*pl, n), device=dev),
        marginal_rate=Unbounded((*pl, n), device=dev),
        shape=pl,
        device=dev,
    )
    if settings.planner_action == "discrete":
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
        labour=Unbounded((*bs, 1), device=dev),
        shape=bs,
        device=dev,
    )
    if settings.map_tier:
        observation["builds"] = Unbounded((*bs, 1), device=dev)
    if settings.trade:
        observation["trades"] = Unbounded((*bs, 1), device=dev)
    action = Composite(
        agents=Composite(action=Categorical(n_actions, shape=ag, device=dev), shape=ag, device=dev),
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
    done = Composite(done=flag((*bs, 1)), terminated=flag((*bs, 1)), truncated=flag((*bs, 1)), shape=bs, device=dev)
    return {
        "full_observation_spec": observation,
        "full_action_spec": action,
        "full_reward_spec": reward,
        "full_done_spec": done,
    }
