"""Unilateral-deviation worlds: one batched policy in which agent ``i`` of world ``i`` deviates.

The environment batch ``[W * B]`` is split into ``W = n_agents`` contiguous worlds of ``B``
environments. In world ``i`` agent ``i`` acts with its own deviation parameters, stacked
along a leading world dim, while every other agent acts with the current parameters.
All worlds run in one batched call (the deviation parameters are ``vmap``-ed).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModuleBase
from torch import nn


def world_mask(n_worlds: int, device: torch.device | None = None) -> torch.Tensor:
    """``[W, N]`` boolean mask, true for the deviating agent of each world (``W == N``)."""
    return torch.eye(n_worlds, dtype=torch.bool, device=device)


def broadcast_world_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Views a ``[W, N]`` mask for a ``[W, *batch, N, event]`` tensor such as logits."""
    n_worlds, n_agents = mask.shape
    return mask.view(n_worlds, *(1,) * (like.dim() - 3), n_agents, 1)


def _uniform_over_support(dist: torch.distributions.Categorical) -> torch.Tensor:
    """Uniform probabilities over the actions ``dist`` allows (its ``mask``, if masked)."""
    support = getattr(dist, "mask", None)
    if support is None:
        return torch.full_like(dist.probs, 1.0 / dist.probs.shape[-1])
    support = support.to(dist.probs.dtype).expand_as(dist.probs)
    return support / support.sum(-1, keepdim=True)


class DeviationDistributions:
    """Distribution parameters of the agents in stacked deviation worlds.

    Args:
        actor: the agents' probabilistic policy (its own parameters are the current ones).
        dist_keys: the keys of the distribution parameters the actor writes.
    """

    def __init__(self, actor: ProbabilisticTensorDictSequential, dist_keys: list) -> None:
        self.actor = actor
        self.dist_keys = dist_keys

    def current(self, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters of the current policy, for data of any batch shape."""
        return self.actor.get_dist_params(td.copy()).select(*self.dist_keys)

    def deviating(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters under per-world ``params`` (``[W]``) for ``td`` (``[W, ...]``)."""
        return torch.vmap(self._call, (0, 0))(params, td.copy())

    def candidates(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters under candidate parameters ``[C, W]`` for ``td`` (``[W, ...]``)."""
        return torch.vmap(torch.vmap(self._call, (0, 0)), (0, None))(params, td.copy())

    def _call(self, p: TensorDictBase, t: TensorDictBase) -> TensorDictBase:
        with p.to_module(self.actor):
            return self.actor.get_dist_params(t).select(*self.dist_keys)

    def merged(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Current parameters for every agent except agent ``i`` of world ``i``."""
        current = self.current(td)
        deviating = self.deviating(params, td)
        mask = world_mask(params.batch_size[0], td.device)
        return current.apply(
            lambda c, d: torch.where(broadcast_world_mask(mask, c), d, c), deviating
        )


class DeviationPolicy(TensorDictModuleBase):
    """Acts in ``n_agents`` stacked deviation worlds (env batch ``[n_agents * B]``).

    The deviating agent of each world samples from its deviation policy mixed with the
    uniform distribution over its allowed actions (weight ``exploration``), so that actions
    the current policy no longer takes are still tried; the behaviour log-probability of
    every agent's action is written to ``behaviour_log_prob_key`` for importance
    weighting. The planner (if any) acts first with its own policy.
    """

    def __init__(
        self,
        dists: DeviationDistributions,
        *,
        n_agents: int,
        action_key,
        behaviour_log_prob_key,
        planner_policy: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.dists = dists
        self.n_agents = n_agents
        self.action_key = action_key
        self.behaviour_log_prob_key = behaviour_log_prob_key
        self.set_planner(planner_policy)
        self.in_keys = list(dists.actor.in_keys)
        self.out_keys = [action_key, behaviour_log_prob_key]
        self.params: TensorDictBase | None = None
        self.exploration = 0.0
        #: whether a step since :meth:`reset_non_finite` met NaN or inf probabilities
        self.non_finite = torch.zeros((), dtype=torch.bool)

    def reset_non_finite(self) -> None:
        """Clears :attr:`non_finite` (before a rollout)."""
        self.non_finite = torch.zeros((), dtype=torch.bool)

    def set_planner(self, planner_policy: nn.Module | None) -> None:
        """Acts with ``planner_policy`` first (kept out of this module's parameters)."""
        self.__dict__["planner_policy"] = planner_policy

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.planner_policy is not None:
            tensordict = self.planner_policy(tensordict)
        batch = tensordict.batch_size
        worlds = tensordict.reshape(self.n_agents, -1)
        if self.params is None:  # every agent plays the current policy
            dist_params = self.dists.current(worlds)
        else:
            dist_params = self.dists.merged(self.params, worlds)
        dist = self.dists.actor.build_dist_from_params(dist_params)
        probs = dist.probs  # [W, B, N, A]
        mask = broadcast_world_mask(world_mask(self.n_agents, probs.device), probs)
        explore = (1 - self.exploration) * probs + self.exploration * _uniform_over_support(dist)
        behaviour = torch.where(mask, explore, probs)
        # non-finite probabilities are flagged, not sampled (sampling would raise mid-rollout
        # without saying where they came from); the caller raises after the rollout
        finite = torch.isfinite(behaviour).all(-1, keepdim=True)
        self.non_finite = self.non_finite.to(finite.device) | ~finite.all()
        behaviour = torch.where(finite, behaviour, torch.ones_like(behaviour))
        action = torch.distributions.Categorical(probs=behaviour).sample()
        log_prob = behaviour.gather(-1, action.unsqueeze(-1)).squeeze(-1).log()
        tensordict.set(self.action_key, action.reshape(*batch, self.n_agents))
        tensordict.set(self.behaviour_log_prob_key, log_prob.reshape(*batch, self.n_agents))
        return tensordict
