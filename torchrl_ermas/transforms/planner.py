"""A passive planner (for example a regulator) computed from the agents' data.

Gives any multi-agent environment with an ``("agents", ...)`` group the planner group of the
torchrl-ermas contract: ``("planner", "observation")`` ``[*B, 1, N * F]`` and
``("next", "planner", "reward")`` ``[*B, 1, 1]``, both derived from the agents' observations
``[*B, N, F]``. With it, an external simulator (for example a VMAS scenario through
:class:`~torchrl.envs.libs.vmas.VmasEnv`) can be used for ERMAS' Agent-Adv-Search: the
agents search for the epsilon-equilibrium that is worst for this planner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import Transform

from torchrl_ermas.validation import check_real

__all__ = ["PlannerFromAgents"]

BUILTIN_RULES = ("speed", "separation")

Rule = Callable[[torch.Tensor], torch.Tensor]


def _speed(features: torch.Tensor) -> torch.Tensor:
    """Minus the mean over agents of the squared norm of ``features`` ``[*B, N, F]``."""
    return -features.square().sum(-1).mean(-1)


def _separation(features: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over the pairs of agents of ``features`` ``[*B, N, F]``."""
    n = features.shape[-2]
    first, second = torch.triu_indices(n, n, offset=1, device=features.device)
    gap = features[..., first, :] - features[..., second, :]
    return gap.norm(dim=-1).mean(-1)


class PlannerFromAgents(Transform):
    """Adds a passive planner whose observation and reward are computed from the agents' data.

    The planner (for example a regulator who wants low speeds or wide separation) takes no
    action. Its observation is the concatenation of the agents' observations,
    ``(planner_group, "observation")`` of shape ``[*B, 1, N * F]``, written at reset and at
    every step. Its reward, ``(planner_group, "reward")`` of shape ``[*B, 1, 1]``, is written
    at every step and computed from the agents' next observations ``[*B, N, F]``, restricted to
    the last-dim slice ``features``, by ``rule``:

    - ``"speed"``: ``-scale * mean_i ||x_i||^2``, with ``x_i`` agent ``i``'s features (its
      velocity, for a regulator who wants low speeds);
    - ``"separation"``: ``scale * mean_{i<j} ||x_i - x_j||`` (positions, for a regulator who
      wants the agents far apart); needs at least two agents;
    - a callable ``rule(features) -> reward``: ``features`` is ``[*B, N, F']`` and the reward
      has one value per environment (shape ``[*B]``, ``[*B, 1]`` or ``[*B, 1, 1]``); it is
      multiplied by ``scale``.

    The transform is environment-agnostic: it reads ``(agent_group, "observation")`` only.
    Offline, :meth:`forward` writes the planner observation at the root and, when the data has
    a ``"next"`` entry, the planner observation and reward under ``"next"``; without
    ``"next"`` the root is treated as the transition and gets both.

    Args:
        rule (str or callable): ``"speed"``, ``"separation"`` or a callable (see above).

    Keyword Args:
        features (sequence of two ints, optional): ``(start, stop)``, the slice of the agents'
            observation features the rule reads. Defaults to ``None`` (all features).
        scale (float): multiplies the reward; finite. Defaults to ``1.0``.
        agent_group (str): the agents' group. Defaults to ``"agents"``.
        planner_group (str): the planner's group, added by the transform; the environment
            must not have it already. Defaults to ``"planner"``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> from torchrl.envs.utils import check_env_specs
        >>> base = VmasEnv("navigation", num_envs=4, n_agents=2, max_steps=10,
        ...                continuous_actions=False, categorical_actions=True)
        >>> # navigation observations start with position (0:2) and velocity (2:4)
        >>> env = TransformedEnv(base, PlannerFromAgents("speed", features=(2, 4)))
        >>> check_env_specs(env)
        >>> data = env.rollout(10)
        >>> data["planner", "observation"].shape, data["next", "planner", "reward"].shape
        (torch.Size([4, 10, 1, 36]), torch.Size([4, 10, 1, 1]))
        >>> velocity = data["next", "agents", "observation"][..., 2:4]
        >>> expected = -velocity.square().sum(-1).mean(-1)
        >>> torch.allclose(data["next", "planner", "reward"].view(4, 10), expected)
        True
    """

    def __init__(
        self,
        rule: str | Rule,
        *,
        features: Sequence[int] | None = None,
        scale: float = 1.0,
        agent_group: str = "agents",
        planner_group: str = "planner",
    ) -> None:
        if not (callable(rule) or (isinstance(rule, str) and rule in BUILTIN_RULES)):
            raise ValueError(f"rule must be one of {BUILTIN_RULES} or a callable, got {rule!r}.")
        if features is not None:
            ok = (
                isinstance(features, Sequence)
                and len(features) == 2
                and all(isinstance(f, int) and not isinstance(f, bool) for f in features)
                and 0 <= features[0] < features[1]
            )
            if not ok:
                raise ValueError(f"features must be None or (start, stop) with 0 <= start < stop, got {features!r}.")
            features = (features[0], features[1])
        check_real("scale", scale)
        for name, group in (("agent_group", agent_group), ("planner_group", planner_group)):
            if not isinstance(group, str) or not group:
                raise ValueError(f"{name} must be a non-empty string, got {group!r}.")
        if planner_group == agent_group:
            raise ValueError(f"planner_group must differ from agent_group, both are {planner_group!r}.")
        self.rule = rule
        self.features = features
        self.scale = float(scale)
        self.agent_group = agent_group
        self.planner_group = planner_group
        self.agent_observation_key = (agent_group, "observation")
        self.planner_observation_key = (planner_group, "observation")
        self.planner_reward_key = (planner_group, "reward")
        super().__init__(
            in_keys=[self.agent_observation_key],
            out_keys=[self.planner_observation_key, self.planner_reward_key],
        )

    # ------------------------------------------------------------------ computation
    def planner_observation(self, agent_observation: torch.Tensor) -> torch.Tensor:
        """``[*B, N, F]`` agent observations -> ``[*B, 1, N * F]`` planner observation."""
        return agent_observation.flatten(-2).unsqueeze(-2)

    def planner_reward(self, agent_observation: torch.Tensor) -> torch.Tensor:
        """``[*B, N, F]`` agent observations -> ``[*B, 1, 1]`` planner reward."""
        features = agent_observation
        if self.features is not None:
            features = features[..., self.features[0] : self.features[1]]
        if self.rule == "speed":
            reward = _speed(features)
        elif self.rule == "separation":
            reward = _separation(features)
        else:
            reward = self.rule(features)
            batch = agent_observation.shape[:-2]
            if not isinstance(reward, torch.Tensor) or reward.numel() != batch.numel():
                shape = tuple(reward.shape) if isinstance(reward, torch.Tensor) else reward
                raise ValueError(f"rule must return one reward per environment (shape {tuple(batch)}), got {shape!r}.")
        return (self.scale * reward).reshape(*agent_observation.shape[:-2], 1, 1)

    def _group(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The planner sub-tensordict of ``tensordict``, created with its group dim of 1."""
        if self.planner_group not in tensordict.keys():
            group = TensorDict({}, [*tensordict.batch_size, 1], device=tensordict.device)
            tensordict.set(self.planner_group, group)
        return tensordict.get(self.planner_group)

    def _observe(self, tensordict: TensorDictBase, *, reward: bool) -> TensorDictBase:
        observation = tensordict.get(self.agent_observation_key)
        group = self._group(tensordict)
        group.set("observation", self.planner_observation(observation))
        if reward:
            group.set("reward", self.planner_reward(observation))
        return tensordict

    # ------------------------------------------------------------------ online / offline
    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._observe(next_tensordict, reward=True)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._observe(tensordict_reset, reward=False)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        next_td = tensordict.get("next", None)
        if next_td is None:
            return self._observe(tensordict, reward=True)
        self._observe(tensordict, reward=False)
        self._observe(next_td, reward=True)
        return tensordict

    # ------------------------------------------------------------------ specs
    def transform_output_spec(self, output_spec: Composite) -> Composite:
        output_spec = output_spec.clone()
        observation_spec = output_spec["full_observation_spec"]
        reward_spec = output_spec["full_reward_spec"]
        if any(self.planner_group in spec.keys() for spec in (observation_spec, reward_spec)):
            raise ValueError(
                f"planner_group={self.planner_group!r}: the environment already has this "
                f"group; choose another planner_group."
            )
        if self.agent_observation_key not in observation_spec.keys(True, True):
            raise ValueError(
                f"agent_group={self.agent_group!r}: the environment has no {self.agent_observation_key} observation."
            )
        agents = observation_spec[self.agent_observation_key]
        batch = observation_spec.shape
        if agents.ndim != len(batch) + 2:
            raise ValueError(
                f"agent_group={self.agent_group!r}: {self.agent_observation_key} must be "
                f"[*B, N, F], got shape {tuple(agents.shape)}."
            )
        n_agents, n_features = agents.shape[-2:]
        if self.features is not None and self.features[1] > n_features:
            raise ValueError(f"features={self.features} is out of range for {n_features} observation features.")
        if self.rule == "separation" and n_agents < 2:
            raise ValueError(f"rule='separation' needs at least 2 agents, got {n_agents}.")
        like = {"device": agents.device, "dtype": agents.dtype}
        observation_spec[self.planner_group] = Composite(
            observation=Unbounded(shape=(*batch, 1, n_agents * n_features), **like),
            shape=(*batch, 1),
            device=observation_spec.device,
        )
        reward_spec[self.planner_group] = Composite(
            reward=Unbounded(shape=(*batch, 1, 1), **like),
            shape=(*batch, 1),
            device=reward_spec.device,
        )
        return output_spec

    def __repr__(self) -> str:
        rule = self.rule if isinstance(self.rule, str) else getattr(self.rule, "__name__", "?")
        return (
            f"{type(self).__name__}(rule={rule!r}, features={self.features}, "
            f"scale={self.scale}, agent_group={self.agent_group!r}, "
            f"planner_group={self.planner_group!r})"
        )
