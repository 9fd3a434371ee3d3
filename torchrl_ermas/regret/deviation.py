"""Unilateral-deviation worlds: one batched policy in which agent ``i`` of world ``i`` deviates.

The environment batch ``[W * B]`` is split into ``W`` contiguous worlds of ``B``
environments, ``n_agents`` per run: world ``r * n_agents + i`` is run ``r``'s world in which
agent ``i`` acts with its own deviation parameters, stacked along a leading world dim, while
every other agent acts with the run's current parameters. A single run (``W = n_agents``)
acts with the actor's own parameters; the runs of a population with their own, stacked per
world. All worlds run in one batched call (the parameters are ``vmap``-ed).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModuleBase
from torch import nn


def world_mask(n_worlds: int, device: torch.device | None = None, *, n_agents: int | None = None) -> torch.Tensor:
    """``[W, N]`` boolean mask, true for the deviating agent ``w % N`` of each world ``w``.

    ``n_agents`` defaults to ``n_worlds`` (one run); ``n_worlds`` must be a multiple of it.

    Examples:
        >>> world_mask(2)
        tensor([[ True, False],
                [False,  True]])
        >>> world_mask(4, n_agents=2).int()  # two runs of two agents
        tensor([[1, 0],
                [0, 1],
                [1, 0],
                [0, 1]], dtype=torch.int32)
    """
    n_agents = n_worlds if n_agents is None else n_agents
    if n_worlds % n_agents:
        raise ValueError(f"n_worlds ({n_worlds}) must be a multiple of n_agents ({n_agents}).")
    return torch.eye(n_agents, dtype=torch.bool, device=device).repeat(n_worlds // n_agents, 1)


def broadcast_world_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Views a ``[W, N]`` mask for a ``[W, *batch, N, event]`` tensor such as logits."""
    n_worlds, n_agents = mask.shape
    return mask.view(n_worlds, *(1,) * (like.dim() - 3), n_agents, 1)


#: how the deviating agent's exploration distribution is made from the policy's parameters
_EXPLORATION_PARAMS = {
    "logits": lambda x: torch.zeros_like(x),  # uniform over the allowed actions
    "scale": lambda x: 2.0 * x,  # the same distribution, twice as wide
}


def exploration_params(dist_params: TensorDictBase) -> TensorDictBase:
    """The parameters of the exploration distribution: uniform logits, or twice the scale.

    The exploration distribution is the policy's own family built from these parameters, so
    a mixture ``(1 - e) pi' + e q`` keeps the importance weights ``pi' / behaviour`` below
    ``1 / (1 - e)`` for categorical and continuous (Normal, TanhNormal) policies alike.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> params = TensorDict({"loc": torch.zeros(2), "scale": torch.ones(2)})
        >>> exploration_params(params)["scale"], exploration_params(params)["loc"]
        (tensor([2., 2.]), tensor([0., 0.]))
        >>> exploration_params(TensorDict({"logits": torch.tensor([3.0, -1.0])}))["logits"]
        tensor([0., 0.])
    """
    out = dist_params.clone(False)
    for key, value in dist_params.items(True, True):
        name = key[-1] if isinstance(key, tuple) else key
        if name in _EXPLORATION_PARAMS:
            out.set(key, _EXPLORATION_PARAMS[name](value))
    return out


def check_explorable(dist_keys: list) -> None:
    """The policy's distribution must have ``logits`` (categorical) or ``scale`` parameters."""
    names = {k[-1] if isinstance(k, tuple) else k for k in dist_keys}
    if not names & set(_EXPLORATION_PARAMS):
        raise ValueError(
            "the agents' distribution must be parameterised by 'logits' (categorical) or "
            f"'loc' and 'scale' (Normal, TanhNormal) to explore; got {sorted(map(str, dist_keys))}."
        )


class DeviationDistributions:
    """Distribution parameters of the agents in stacked deviation worlds.

    Args:
        actor: the agents' probabilistic policy (its own parameters are the current ones).
        dist_keys: the keys of the distribution parameters the actor writes.
    """

    def __init__(self, actor: ProbabilisticTensorDictSequential, dist_keys: list) -> None:
        self.actor = actor
        self.dist_keys = dist_keys
        #: the current parameters per world (``[W]``, the runs of a population), or ``None``:
        #: the actor's own parameters in every world
        self.current_params: TensorDictBase | None = None

    def current(self, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters of the current policy: the actor's own for data of any batch
        shape, or :attr:`current_params` for ``td`` ``[W, ...]``."""
        if self.current_params is not None:
            return self.deviating(self.current_params, td)
        return self.actor.get_dist_params(td.copy()).select(*self.dist_keys)

    def deviating(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters under per-world ``params`` (``[W]``) for ``td`` (``[W, ...]``)."""
        return torch.vmap(self._call, (0, 0))(params, td.copy())

    def candidates(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Distribution parameters under candidate parameters ``[C, W]`` for ``td`` (``[W, ...]``)."""
        return torch.vmap(torch.vmap(self._call, (0, 0)), (0, None))(params, td.copy())

    def deviating_dist(self, params: TensorDictBase, td: TensorDictBase) -> torch.distributions.Distribution:
        """The agents' distribution under per-world ``params`` (``[W]``) or candidate ones
        (``[C, W]``) for ``td`` (``[W, ...]``)."""
        if params.batch_dims == 2:
            return self.actor.build_dist_from_params(self.candidates(params, td))
        return self.actor.build_dist_from_params(self.deviating(params, td))

    def _call(self, p: TensorDictBase, t: TensorDictBase) -> TensorDictBase:
        with p.to_module(self.actor):
            return self.actor.get_dist_params(t).select(*self.dist_keys)

    def merged(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        """Current parameters for every agent except agent ``i`` of world ``i``."""
        current = self.current(td)
        deviating = self.deviating(params, td)
        n_worlds = params.batch_size[0]

        def merge(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:  # c, d: [W, *batch, N, event]
            mask = world_mask(n_worlds, td.device, n_agents=c.shape[-2])
            return torch.where(broadcast_world_mask(mask, c), d, c)

        return current.apply(merge, deviating)


class DeviationPolicy(TensorDictModuleBase):
    """Acts in ``W`` stacked deviation worlds (env batch ``[W * B]``): ``n_agents`` per run,
    one run unless the distributions hold per-world current parameters
    (:attr:`DeviationDistributions.current_params`, ``[W]``).

    The deviating agent of each world samples from its deviation policy mixed (weight
    ``exploration``) with an exploration distribution of the same family
    (:func:`exploration_params`: uniform over its allowed actions for categorical policies,
    twice the scale for Normal / TanhNormal ones), so that actions the current policy no
    longer takes are still tried; the behaviour log-probability of every agent's action is
    written to ``behaviour_log_prob_key`` for importance weighting. The planner (if any)
    acts first with its own policy.
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

    @property
    def n_worlds(self) -> int:
        """``W``: ``n_agents`` per run."""
        current = self.dists.current_params
        return self.n_agents if current is None else current.batch_size[0]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.planner_policy is not None:
            tensordict = self.planner_policy(tensordict)
        batch = tensordict.batch_size
        n_worlds = self.n_worlds
        worlds = tensordict.reshape(n_worlds, -1)
        if self.params is None:  # every agent plays the current policy
            dist_params = self.dists.current(worlds)
        else:
            dist_params = self.dists.merged(self.params, worlds)
        dist_params = self._flag_non_finite(dist_params)
        build = self.dists.actor.build_dist_from_params
        dist = build(dist_params)
        action = dist.sample()  # [W, B, N, *event]
        mask = world_mask(n_worlds, action.device, n_agents=self.n_agents).view(n_worlds, 1, self.n_agents)
        if self.exploration > 0:
            wide = build(exploration_params(dist_params))
            explore = mask & (torch.rand(dist.batch_shape, device=action.device) < self.exploration)
            event = (1,) * (action.dim() - explore.dim())
            action = torch.where(explore.view(*explore.shape, *event), wide.sample(), action)
        log_prob = dist.log_prob(action)  # [W, B, N]
        if self.exploration > 0:
            mixture = torch.logaddexp(
                math.log1p(-self.exploration) + log_prob,
                math.log(self.exploration) + wide.log_prob(action),
            )
            log_prob = torch.where(mask, mixture, log_prob)
        tensordict.set(self.action_key, action.reshape(*batch, *action.shape[2:]))
        tensordict.set(self.behaviour_log_prob_key, log_prob.reshape(*batch, self.n_agents))
        return tensordict

    def _flag_non_finite(self, dist_params: TensorDictBase) -> TensorDictBase:
        """Flags NaN or inf distribution parameters and replaces them by ones.

        Non-finite parameters are flagged, not sampled (sampling would raise mid-rollout
        without saying where they came from); the caller raises after the rollout.
        """
        floats = [v for v in dist_params.values(True, True) if v.is_floating_point()]
        bad = torch.stack([~torch.isfinite(v).all() for v in floats]).any()
        self.non_finite = self.non_finite.to(bad.device) | bad
        return dist_params.apply(
            lambda v: torch.nan_to_num(v, nan=1.0, posinf=1.0, neginf=1.0) if v.is_floating_point() else v
        )
