"""Policies and critics of a group (the agents or the planner), built from the env specs."""
from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import EnvBase
from torchrl.modules import MultiAgentMLP, ProbabilisticActor

from .config import PPOConfig


def group_sizes(env: EnvBase, group: str) -> tuple[int, int]:
    """``(n_members, observation_dim)`` of ``group`` in ``env``."""
    obs = env.full_observation_spec[group, "observation"]
    return obs.shape[-2], obs.shape[-1]


def has_action(env: EnvBase, group: str) -> bool:
    """Whether ``group`` acts in ``env`` (a passive planner does not)."""
    return (group, "action") in env.full_action_spec.keys(True, True)


def make_policy(
    env: EnvBase, group: str, cfg: PPOConfig, device: torch.device
) -> ProbabilisticActor:
    """A categorical policy over ``(group, "action")`` reading ``(group, "observation")``."""
    n, obs_dim = group_sizes(env, group)
    action_spec = env.full_action_spec[group, "action"]
    net = MultiAgentMLP(
        obs_dim, action_spec.space.n, n_agents=n, centralized=False,
        share_params=cfg.share_params, depth=cfg.depth, num_cells=cfg.hidden,
        activation_class=torch.nn.Tanh, device=device,
    )
    module = TensorDictModule(net, [(group, "observation")], [(group, "logits")])
    return ProbabilisticActor(
        module, in_keys=[(group, "logits")], out_keys=[(group, "action")],
        distribution_class=torch.distributions.Categorical, return_log_prob=True,
    )


def make_critic(
    env: EnvBase, group: str, cfg: PPOConfig, device: torch.device
) -> TensorDictModule:
    """A per-member state-value network writing ``(group, "state_value")``."""
    n, obs_dim = group_sizes(env, group)
    net = MultiAgentMLP(
        obs_dim, 1, n_agents=n, centralized=False, share_params=cfg.share_params,
        depth=cfg.depth, num_cells=cfg.hidden, activation_class=torch.nn.Tanh, device=device,
    )
    return TensorDictModule(net, [(group, "observation")], [(group, "state_value")])
