"""Reward transforms for the ERMAS baselines: reality gap, domain randomization, risk aversion.

Each transform works on any environment following the torchrl-ermas TensorDict contract
(per-agent rewards ``[*B, N, 1]`` and a planner reward ``[*B, 1, 1]``), both inside a
:class:`~torchrl.envs.TransformedEnv` (online) and on collected data through
:meth:`forward` (offline). Offline, the rewards are read and written under ``"next"`` when
the data has a ``"next"`` entry (collector batches, rollouts, replay-buffer samples), and at
the root otherwise. Rewards are transformed in place; applying a transform offline to data
collected through the same transform applies it twice.

Reference: "ERMAS: Learning Policies Robust to Reality Gaps in Multi-Agent Simulations",
Zhao et al., https://arxiv.org/abs/2106.05492 (reality gap ``Q``, DR and RR baselines).
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey, expand_as_right, unravel_key
from torchrl.data import Bounded, Composite, TensorSpec, Unbounded
from torchrl.envs.transforms import Transform

from torchrl_ermas.validation import check_choice, check_real, check_seed

__all__ = [
    "ConcavePlannerReward",
    "DomainRandomizedReward",
    "PlannerRewardGap",
    "isoelastic",
]

RESAMPLE_MODES = ("episode", "step")


def _transition(tensordict: TensorDictBase) -> TensorDictBase:
    """The part of offline data that holds the rewards: ``"next"`` if present, else the root."""
    next_td = tensordict.get("next", None)
    return tensordict if next_td is None else next_td


def _unbounded(spec: TensorSpec) -> Unbounded:
    return Unbounded(shape=spec.shape, device=spec.device, dtype=spec.dtype)


def _coefficient(module: Transform, name: str, value: float | torch.Tensor, low: float | None = None) -> None:
    """Sets ``module.<name>`` to a number, or to a buffer of one value per environment (a
    float tensor shaped like the leading batch dims of the data), each finite and ``>= low``."""
    if not isinstance(value, torch.Tensor):
        setattr(module, name, check_real(name, value, low=low))
        return
    ok = value.is_floating_point() and value.ndim >= 1 and bool(value.isfinite().all())
    if not ok or (low is not None and not bool((value >= low).all())):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(
            f"{name} must be a finite number{bound} or a 1-d or larger float tensor of them "
            f"(one per environment), got {value!r}."
        )
    module.register_buffer(name, value.clone())  # moves with the transform (.to(device))


def _per_env(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A coefficient of :func:`_coefficient` broadcast to ``like`` (leading batch dims first)."""
    return expand_as_right(value, like) if isinstance(value, torch.Tensor) else value


class PlannerRewardGap(Transform):
    """Reality gap ``Q``: each agent's reward becomes ``r_i - q * r_p``.

    The planner reward ``r_p`` (``[*B, 1, 1]``) is broadcast over the agent dim of the
    agent rewards (``[*B, N, 1]``); the planner reward itself is left unchanged. ``q > 0``
    makes the agents partly adversarial to the planner, ``q < 0`` partly aligned with it.
    The paper's ``r_i' = r_i - Q r_p`` reads ``r_p`` from the raw payoff matrix; this
    transform reads whatever the environment writes under ``planner_reward_key``.

    Args:
        q (float or torch.Tensor): the gap coefficient ``Q``, finite; or one per environment, a
            tensor shaped like the leading batch dims of the data (e.g. ``[num_envs]``), so that
            environments of one batch can have different gaps.

    Keyword Args:
        agent_reward_key (NestedKey): the per-agent reward, transformed in place.
            Defaults to ``("agents", "reward")``.
        planner_reward_key (NestedKey): the planner reward. Defaults to
            ``("planner", "reward")``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> base = SequentialBimatrixEnv(4, max_steps=5)
        >>> env = TransformedEnv(base, PlannerRewardGap(0.5))
        >>> _ = torch.manual_seed(0); _ = env.set_seed(0)
        >>> data = env.rollout(5)
        >>> _ = torch.manual_seed(0); _ = base.set_seed(0)
        >>> raw = base.rollout(5)
        >>> gap = raw["next", "agents", "reward"] - 0.5 * raw["next", "planner", "reward"]
        >>> torch.allclose(data["next", "agents", "reward"], gap)
        True
        >>> per_env = TransformedEnv(base, PlannerRewardGap(torch.tensor([0.0, 0.0, 0.5, 0.5])))
        >>> _ = torch.manual_seed(0); _ = per_env.set_seed(0)
        >>> mixed = per_env.rollout(5)["next", "agents", "reward"]
        >>> torch.equal(mixed[:2], raw["next", "agents", "reward"][:2]), torch.allclose(mixed[2:], gap[2:])
        (True, True)
    """

    def __init__(
        self,
        q: float | torch.Tensor,
        *,
        agent_reward_key: NestedKey = ("agents", "reward"),
        planner_reward_key: NestedKey = ("planner", "reward"),
    ) -> None:
        self.agent_reward_key = unravel_key(agent_reward_key)
        self.planner_reward_key = unravel_key(planner_reward_key)
        super().__init__(
            in_keys=[self.agent_reward_key, self.planner_reward_key],
            out_keys=[self.agent_reward_key],
        )
        _coefficient(self, "q", q)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        reward = next_tensordict.get(self.agent_reward_key)
        planner = next_tensordict.get(self.planner_reward_key)
        next_tensordict.set(self.agent_reward_key, reward - _per_env(self.q, planner) * planner)
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._call(_transition(tensordict))
        return tensordict

    def set_container(self, container) -> None:
        super().set_container(container)
        parent = self.parent
        if parent is not None:  # attached to an env: check the keys now, not at step time
            self._check_keys(parent.output_spec)

    def _check_keys(self, output_spec: Composite) -> None:
        rewards = list(output_spec["full_reward_spec"].keys(True, True))
        outputs = [*output_spec["full_observation_spec"].keys(True, True), *rewards]
        for name, key, accepted in (
            ("agent_reward_key", self.agent_reward_key, rewards),
            ("planner_reward_key", self.planner_reward_key, outputs),
        ):
            if key not in accepted:
                raise ValueError(
                    f"{type(self).__name__}: {name}={key} is not an output of the "
                    f"environment; accepted keys: {accepted}."
                )

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        reward_spec[self.agent_reward_key] = _unbounded(reward_spec[self.agent_reward_key])
        return reward_spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(q={self.q}, agent_reward_key={self.agent_reward_key}, "
            f"planner_reward_key={self.planner_reward_key})"
        )


def isoelastic(x: torch.Tensor, eta: float | torch.Tensor) -> torch.Tensor:
    """The isoelastic utility ``((x + 1)^(1 - eta) - 1) / (1 - eta)``; ``log1p(x)`` at ``eta = 1``.

    Defined for ``x > -1``; ``eta = 0`` is the identity. Computed as
    ``expm1((1 - eta) * log1p(x)) / (1 - eta)`` for accuracy near ``x = 0``. ``eta`` may be
    a tensor broadcastable to ``x`` (one value per element); elements with ``eta = 0`` are
    then returned unchanged.

    Examples:
        >>> isoelastic(torch.tensor([0.0, 3.0]), 2.0)
        tensor([0.0000, 0.7500])
        >>> isoelastic(torch.tensor([3.0, 3.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]))
        tensor([3.0000, 1.3863, 0.7500])
    """
    if isinstance(eta, torch.Tensor):
        power = 1 - eta
        curved = torch.expm1(power * torch.log1p(x)) / torch.where(power == 0, 1.0, power)
        return torch.where(eta == 0, x, torch.where(power == 0, torch.log1p(x), curved))
    if eta == 0:
        return x
    if eta == 1:
        return torch.log1p(x)
    return torch.expm1((1 - eta) * torch.log1p(x)) / (1 - eta)


class ConcavePlannerReward(Transform):
    """Risk-robustness (RR) baseline: the planner reward passes through an isoelastic utility.

    ``r_p <- ((r_p + 1)^(1 - eta) - 1) / (1 - eta)``, and ``log(r_p + 1)`` at ``eta = 1``
    (see :func:`isoelastic`). ``eta = 0`` leaves the reward unchanged; larger ``eta`` is more
    risk-averse. The agent rewards are untouched.

    The transform is defined for planner rewards ``> -1`` only. Nothing is clipped: a planner
    reward ``<= -1`` (or NaN) raises a ``ValueError`` when it is transformed. (The ERMAS
    authors' code maps such rewards to ``-10``, and uses ``log(x)`` at ``eta = 1``.) The check
    is one ``.all()`` per call, which synchronises with the device.

    Args:
        eta (float or torch.Tensor): the risk aversion ``eta >= 0``, finite; or one per
            environment, a tensor shaped like the leading batch dims of the data (e.g.
            ``[num_envs]``; environments with ``eta = 0`` keep their reward, whatever it is).

    Keyword Args:
        planner_reward_key (NestedKey): the planner reward, transformed in place.
            Defaults to ``("planner", "reward")``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> reward = torch.tensor([[[0.0]], [[1.0]]])  # [B, 1, 1]
        >>> data = TensorDict({("next", "planner", "reward"): reward}, [2])
        >>> ConcavePlannerReward(1.0)(data)["next", "planner", "reward"].flatten()
        tensor([0.0000, 0.6931])
    """

    def __init__(self, eta: float, *, planner_reward_key: NestedKey = ("planner", "reward")) -> None:
        planner_reward_key = unravel_key(planner_reward_key)
        super().__init__(in_keys=[planner_reward_key], out_keys=[planner_reward_key])
        self.planner_reward_key = planner_reward_key
        _coefficient(self, "eta", eta, low=0)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        reward = next_tensordict.get(self.planner_reward_key)
        eta = _per_env(self.eta, reward)
        outside = ~(reward > -1) & (eta != 0)  # eta = 0 keeps any reward
        if bool(outside.any()):
            raise ValueError(
                f"{type(self).__name__} is defined for planner rewards > -1, but "
                f"{self.planner_reward_key} holds {reward[outside].min().item()} (or NaN)."
            )
        next_tensordict.set(self.planner_reward_key, isoelastic(reward, eta))
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._call(_transition(tensordict))
        return tensordict

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        reward_spec[self.planner_reward_key] = _unbounded(reward_spec[self.planner_reward_key])
        return reward_spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eta={self.eta}, planner_reward_key={self.planner_reward_key})"


class DomainRandomizedReward(Transform):
    """Domain-randomization (DR) baseline: adds ``sigma_i ~ U[-scale, scale]`` to agent rewards.

    One ``sigma`` is drawn per agent and per environment, either at every reset for the
    environments being reset (``resample="episode"``; partial resets through the ``"_reset"``
    mask only re-draw the masked environments) or at every step (``resample="step"``). The
    noise is kept in a buffer and added to the environment's reward afresh at each step, so it
    never accumulates. The noise added to the reward of each transition is also written under
    ``noise_key`` (an observation entry shaped like the agent reward; at reset it holds the
    coming episode's noise in ``"episode"`` mode and zeros in ``"step"`` mode).

    Randomness comes from the transform's own CPU :class:`torch.Generator` (the draws are moved
    to the data's device), so results do not depend on the device. In torchrl 0.14
    ``env.set_seed`` does not reach transforms: seed with ``seed=`` or :meth:`set_seed`.

    Offline, :meth:`forward` draws fresh noise for the whole batch. If the data has a dim named
    ``"time"`` (collector batches and rollouts have one), ``"step"`` draws one ``sigma`` per
    time step and ``"episode"`` one per trajectory, where trajectories are split along the time
    dim by ``done_key`` (a step whose ``done`` is set ends its trajectory). Without a time dim,
    every element of the batch is treated as a trajectory of its own. Draws are time-major, so
    with the same seed, offline noise reproduces the online noise of a rollout whose
    environments all reset together.

    Args:
        scale (float or torch.Tensor): half-width of the uniform noise, finite and ``>= 0``;
            or one per environment, a tensor shaped like the leading batch dims of the data
            (e.g. ``[num_envs]``, ``0`` for environments without noise). Defaults to ``1.0``
            (the ERMAS paper's ``U[-1, 1]``).
        resample (str): ``"episode"`` or ``"step"``. Defaults to ``"episode"``.

    Keyword Args:
        agent_reward_key (NestedKey): the per-agent reward, transformed in place.
            Defaults to ``("agents", "reward")``.
        noise_key (NestedKey): where the noise is written. Defaults to
            ``("agents", "reward_noise")``.
        reset_key (NestedKey): the partial-reset mask. Defaults to ``"_reset"``.
        done_key (NestedKey): the done flag splitting trajectories offline.
            Defaults to ``"done"``.
        seed (int, optional): seed of the generator; ``None`` draws one from torch's global
            generator (so ``torch.manual_seed`` makes it reproducible). Defaults to ``None``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_ermas.envs import NMatrixGameEnv
        >>> env = TransformedEnv(
        ...     NMatrixGameEnv(4, n_agents=3, grid_size=5, max_steps=10),
        ...     DomainRandomizedReward(0.5, seed=0),
        ... )
        >>> data = env.rollout(10)
        >>> noise = data["next", "agents", "reward_noise"]
        >>> noise.shape, bool(noise.abs().max() <= 0.5)
        (torch.Size([4, 10, 3, 1]), True)
        >>> bool((noise == noise[:, :1]).all())  # one draw per episode
        True
    """

    def __init__(
        self,
        scale: float = 1.0,
        resample: Literal["episode", "step"] = "episode",
        *,
        agent_reward_key: NestedKey = ("agents", "reward"),
        noise_key: NestedKey = ("agents", "reward_noise"),
        reset_key: NestedKey = "_reset",
        done_key: NestedKey = "done",
        seed: int | None = None,
    ) -> None:
        check_choice("resample", resample, RESAMPLE_MODES)
        self.resample = resample
        self.agent_reward_key = unravel_key(agent_reward_key)
        self.noise_key = unravel_key(noise_key)
        self.reset_key = unravel_key(reset_key)
        self.done_key = unravel_key(done_key)
        super().__init__(in_keys=[self.agent_reward_key], out_keys=[self.agent_reward_key, self.noise_key])
        _coefficient(self, "scale", scale, low=0)
        self.register_buffer("_noise", None, persistent=False)
        self._generator = torch.Generator()
        self.set_seed(seed)

    @property
    def noise(self) -> torch.Tensor | None:
        """The noise added to the agent rewards online, ``None`` before the first reset."""
        return self._noise

    def set_seed(self, seed: int | None = None) -> None:
        """Seeds the noise generator; ``None`` draws a seed from torch's global generator."""
        check_seed("seed", seed, optional=True)
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_())
        self._generator.manual_seed(seed)

    def _draw(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """``U[-1, 1]`` draws of ``shape`` on the device and dtype of ``like``."""
        unit = torch.rand(shape, generator=self._generator)
        return (2 * unit - 1).to(device=like.device, dtype=like.dtype)

    def _scaled(self, unit: torch.Tensor) -> torch.Tensor:
        """``U[-scale, scale]`` noise from :meth:`_draw`'s (leading batch dims first)."""
        return unit * _per_env(self.scale, unit)

    # ------------------------------------------------------------------ online
    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        zero = self.parent.full_reward_spec[self.agent_reward_key].zero()
        fresh = self._scaled(self._draw(zero.shape, zero)) if self.resample == "episode" else zero
        old = self._noise
        if old is None or old.shape != fresh.shape:
            self._noise = fresh
        else:
            mask = tensordict.get(self.reset_key, None)
            if mask is not None:
                batch = tensordict_reset.batch_size
                fresh = torch.where(expand_as_right(mask.reshape(*batch, -1).any(-1), old), fresh, old)
            self._noise = fresh
        tensordict_reset.set(self.noise_key, self._noise)
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        reward = next_tensordict.get(self.agent_reward_key)
        if self.resample == "step":
            self._noise = self._scaled(self._draw(reward.shape, reward))
        elif self._noise is None:
            raise RuntimeError(f"{type(self).__name__}: reset the environment before stepping.")
        next_tensordict.set(self.agent_reward_key, reward + self._noise)
        next_tensordict.set(self.noise_key, self._noise)
        return next_tensordict

    # ------------------------------------------------------------------ offline
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        data = _transition(tensordict)
        reward = data.get(self.agent_reward_key)
        names = tensordict.names
        if "time" not in names:
            noise = self._scaled(self._draw(reward.shape, reward))
        else:
            time_dim = names.index("time")
            # time-major draws, [T, *other batch dims, *reward feature dims]
            noise = self._draw(reward.movedim(time_dim, 0).shape, reward)
            if self.resample == "episode":
                done = data.get(self.done_key)
                done = done.reshape(*tensordict.batch_size, -1).any(-1).long()
                episode = (done.cumsum(time_dim) - done).movedim(time_dim, 0)
                index = expand_as_right(episode, noise)
                noise = noise.gather(0, index)
            noise = self._scaled(noise.movedim(0, time_dim))
        data.set(self.agent_reward_key, reward + noise)
        data.set(self.noise_key, noise)
        return tensordict

    # ------------------------------------------------------------------ specs
    def transform_output_spec(self, output_spec: Composite) -> Composite:
        output_spec = output_spec.clone()
        reward_spec = output_spec["full_reward_spec"][self.agent_reward_key]
        output_spec["full_reward_spec"][self.agent_reward_key] = _unbounded(reward_spec)
        scale = _per_env(self.scale, torch.zeros(reward_spec.shape, device=reward_spec.device))
        output_spec["full_observation_spec"][self.noise_key] = Bounded(
            low=-scale,
            high=scale,
            shape=reward_spec.shape,
            device=reward_spec.device,
            dtype=reward_spec.dtype,
        )
        return output_spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale={self.scale}, resample={self.resample!r}, "
            f"agent_reward_key={self.agent_reward_key}, noise_key={self.noise_key})"
        )
