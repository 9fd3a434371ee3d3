"""Per-agent regret of the current agent policy by trust-region unilateral deviations (ERMAS)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential
from torch import nn
from torchrl.envs import Compose, EnvBase, Transform
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.value.functional import reward2go

from ..defaults import default_of
from ..transforms.kl import KLToReference
from ..validation import (
    check_bool,
    check_choice,
    check_int,
    check_module_params,
    check_number,
    check_real,
    check_seed,
)
from .deviation import DeviationDistributions, DeviationPolicy, check_explorable
from .meta import own_policy_gradient
from .trust_region import DeviationBatch, PPODeviationStep, TrustRegionStep, own

_BEHAVIOUR_LOG_PROB = "behaviour_log_prob"
#: how the deviations improve within the trust region
DEVIATION_OPTIMIZERS = ("line_search", "ppo")
#: the settings of the PPO deviations (``ppo_kwargs``)
PPO_SETTINGS = ("lr", "epochs", "minibatches", "clip_epsilon")


def _transforms(transform: Transform | None) -> Iterator[Transform]:
    """The transforms of a (possibly nested) ``Compose``, or the single transform."""
    if isinstance(transform, Compose):
        for child in transform:
            yield from _transforms(child)
    elif transform is not None:
        yield transform


def seed_env(env: EnvBase, seed: int) -> None:
    """Seeds ``env`` and every transform of it that draws its own random numbers.

    ``TransformedEnv.set_seed`` seeds the base environment only; transforms with a
    generator of their own (e.g. domain randomization) expose ``set_seed`` too. The
    transform may be a single one or a ``Compose``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> from torchrl_ermas.transforms import DomainRandomizedReward
        >>> env = TransformedEnv(SequentialBimatrixEnv(2, max_steps=3), DomainRandomizedReward(1.0))
        >>> def rewards(seed):  # a policy-less rollout: random actions from torch's RNG
        ...     _ = torch.manual_seed(0)
        ...     seed_env(env, seed)
        ...     return env.rollout(3)["next", "agents", "reward"]
        >>> torch.equal(rewards(1), rewards(1)), torch.equal(rewards(1), rewards(2))
        (True, False)
    """
    env.set_seed(seed)
    for transform in _transforms(getattr(env, "transform", None)):
        if hasattr(transform, "set_seed"):
            transform.set_seed(seed)


def persistent_env_state(env: EnvBase) -> dict[str, torch.Tensor]:
    """The state of ``env``'s environments that outlives their episodes, by buffer name.

    An environment declares it by naming, in its class attribute ``persistent_buffers``, the
    module buffers with one entry per environment that its resets do not re-initialise (e.g.
    the economy's completed-episode counts, which set its curricula); the default is none.
    Checkpoints carry them, populations split them among their runs, and the regret
    estimate's deviation worlds take the training environments' values.

    Examples:
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> {name: buffer.shape for name, buffer in persistent_env_state(EconomyEnv(4, tier="labour")).items()}
        {'completed_episodes': torch.Size([4])}
    """
    base = getattr(env, "base_env", env)
    state = {name: base.get_buffer(name) for name in getattr(base, "persistent_buffers", ())}
    for name, buffer in state.items():
        if tuple(buffer.shape[:1]) != tuple(env.batch_size[:1]):
            raise ValueError(
                f"persistent buffer {name!r} of {type(base).__name__} must hold one entry per environment "
                f"(leading dim {list(env.batch_size[:1])}), got shape {list(buffer.shape)}."
            )
    return state


def _deviation_worlds(env: EnvBase, group: str) -> int:
    """The number of agents of ``group``: one deviation world per agent must divide
    ``env``'s batch, and ``(group, "action")`` must hold one action per agent."""
    action_key = (group, "action")
    if action_key not in env.full_action_spec.keys(True, True):
        raise ValueError(
            f"group {group!r}: the environment has no action {action_key}; "
            f"its actions are {list(env.full_action_spec.keys(True, True))}."
        )
    action_spec = env.full_action_spec[action_key]
    group_shape = env.full_action_spec[group].shape
    if action_spec.shape[: len(group_shape)] != group_shape:
        raise ValueError(
            f"{action_key} must hold one action per agent, shape "
            f"{list(group_shape)} + [*action dims]; got {list(action_spec.shape)}."
        )
    n_agents = group_shape[-1]
    if len(env.batch_size) != 1 or env.batch_size[0] % n_agents:
        raise ValueError(
            f"env.batch_size must be [n_agents * B] = [{n_agents} * B] to hold one "
            f"deviation world per agent, got {list(env.batch_size)}."
        )
    return n_agents


def _check_settings(
    trust_region: float, deviation_steps: int, exploration: float, gamma: float, meta_gradient: object, seed: int
) -> None:
    """The estimator's scalar settings, each named with its accepted range."""
    check_number("trust_region", trust_region)
    check_int("deviation_steps", deviation_steps, 1)
    check_seed("seed", seed)
    check_real("exploration", exploration, low=0, high=1, high_inclusive=False)
    check_real("gamma", gamma, low=0, low_inclusive=False, high=1)
    check_bool("meta_gradient", meta_gradient)


def _deviation_step(
    dists: DeviationDistributions,
    kl: KLToReference,
    optimizer: str,
    line_search: dict[str, Any],
    ppo_kwargs: dict[str, Any] | None,
) -> TrustRegionStep | PPODeviationStep:
    """The estimator's deviation step; settings of the other optimizer are refused."""
    check_choice("deviation_optimizer", optimizer, DEVIATION_OPTIMIZERS)
    if optimizer == "line_search":
        if ppo_kwargs is not None:
            raise ValueError("ppo_kwargs applies to deviation_optimizer='ppo' only, got 'line_search'.")
        return TrustRegionStep(dists, kl, **line_search)
    changed = sorted(name for name, value in line_search.items() if value != default_of(TrustRegionStep, name))
    if changed:
        raise ValueError(f"{changed} set the line search, which deviation_optimizer='ppo' does not use.")
    unknown = sorted(set(ppo_kwargs or {}) - set(PPO_SETTINGS))
    if unknown:
        raise ValueError(f"ppo_kwargs: unknown settings {unknown}; accepted: {list(PPO_SETTINGS)}.")
    return PPODeviationStep(dists, kl, **(ppo_kwargs or {}))


class ReptileRegretEstimator:
    """Estimates each agent's regret by a trust-region unilateral deviation (ERMAS).

    For every agent ``i`` the estimator improves a deviation ``theta_i'`` of the current
    agent policy on agent ``i``'s own reward, with every other agent and the planner
    frozen, inside the trust region ``KL(pi_i || pi_i') <= trust_region`` (Eqs. 11-12, one
    :class:`~torchrl_ermas.regret.trust_region.TrustRegionStep` or
    :class:`~torchrl_ermas.regret.trust_region.PPODeviationStep` per deviation step, the KL
    measured by :class:`~torchrl_ermas.transforms.KLToReference`). A selection rollout
    keeps, per agent, the best of the current policy and the deviation after each step (a
    noisy step that hurts neither undoes the steps before it nor is reported as a negative
    regret). It then
    measures ``regret_i = J_i(deviation) - J_i(current)`` on independent fresh rollouts
    under the same planner, using the same environment seed and the same sampling seed for
    both (common random numbers), so the selection does not bias the reported value.
    ``J_i`` is agent ``i``'s undiscounted return over ``horizon`` steps, so the regret is
    in the units of the ERMAS ``epsilon``.

    Each call starts from the current policy and spreads the budget over its steps
    (``trust_region * (k + 1) / deviation_steps`` at step ``k``). Deviations carried over from
    earlier calls (re-based on the moved current policy) were measured and dropped: they
    settle in worse basins than a fresh start once the agents' regret is large (the
    estimate stalled at 70 % of the exact regret where a fresh start found 98 %).

    Every rollout of an estimate starts from the environment's per-environment state at
    the start of the call (:func:`persistent_env_state`, e.g. the economy's curriculum counts,
    which its resets would advance), and the call leaves that state as it found it: the
    current policy and the deviations are measured in one and the same environment. A
    trainer gives that state the training environments' values before each estimate.

    The trust region makes the estimate local by design: ``epsilon`` bounds the gain of
    the best deviation within ``trust_region`` nats of the current policy, which is at
    most the exact (global best-response) regret.

    All ``n_agents`` deviations run in one batched rollout: the environment batch
    ``[n_agents * B]`` is split into ``n_agents`` worlds of ``B`` environments, agent ``i``
    deviates in world ``i``, and the per-world parameters are ``vmap``-ed. The deviating
    agent explores with probability ``exploration`` (uniform actions, importance-weighted),
    so a near-deterministic current policy still produces data about the actions it no
    longer takes. The policies of ``R`` runs (e.g. a population's) estimate in one call
    too (:meth:`estimate` with ``params``): the batch then holds ``R * n_agents`` worlds, and
    each world's trust region is centred on its own run's policy.

    Reference: "ERMAS: Learning Policies Robust to Reality Gaps in Multi-Agent
    Simulations", ICLR 2021 submission, Sec. 3 (Eqs. 9-13).

    Args:
        actor (ProbabilisticTensorDictSequential): the agents' policy (e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` over a categorical distribution with
            per-agent logits, or over a Normal / TanhNormal with per-agent ``loc`` and
            ``scale`` for continuous actions). Its own parameters are the current policy; they are only
            never changed by the estimator.
        env (EnvBase): a batched environment following the torchrl-ermas contract whose
            batch ``[n_agents * B]`` holds the deviation worlds. The estimator seeds and
            resets it; give it an environment of its own.

    Keyword Args:
        planner_policy (nn.Module, optional): the planner's policy, frozen during the
            estimate: every rollout acts with a fresh copy of it, sampling its actions as
            in training (``ExplorationType.RANDOM``), so a stateful planner
            (e.g. the economy's Saez planner) starts each rollout in the same state and
            is left untouched. ``None`` for a passive planner. Defaults to ``None``.
        value_network (TensorDictModule, optional): a state-value network of the agents'
            own rewards (e.g. the critic of :class:`~torchrl_ermas.objectives.ErmasLoss`),
            writing ``(group, "state_value")``. When given, the deviation advantages are
            ``reward-to-go - V(s)`` (a state-dependent baseline; use the critic's discount
            as ``gamma``); otherwise the baseline is the mean reward-to-go of the world's
            environments at the same time step. Defaults to ``None``.
        horizon (int, optional): rollout length in steps; defaults to ``env.max_steps``.
        trust_region (float): the KL bound ``eta`` (nats, mean over visited states).
            Defaults to ``3.0``.
        deviation_steps (int): deviation steps ``K`` per call. Defaults to ``3``.
        exploration (float): probability that the deviating agent acts uniformly in the
            training rollouts, in ``[0, 1)``. Defaults to ``0.2``.
        gamma (float): discount of the reward-to-go in the deviation gradient.
            Defaults to ``0.95``.
        deviation_optimizer (str): how each deviation step improves the deviations:
            ``"line_search"`` (default), one importance-weighted policy-gradient direction
            per rollout and a line search within the budget
            (:class:`~torchrl_ermas.regret.trust_region.TrustRegionStep`: long steps that
            recover the regret of saturated policies), or ``"ppo"``, PPO epochs within the
            budget (:class:`~torchrl_ermas.regret.trust_region.PPODeviationStep`: the
            deviations train like the agents, for environments whose returns are noisy
            against their regret, such as the economy on a map).
        max_step_scale, line_search_points, bisection_steps, line_search_samples, confidence:
            the line search's settings (defaults ``2.0``, ``12``, ``6``, ``1024``, ``1.0``);
            with ``deviation_optimizer="ppo"`` they must keep their defaults.
        ppo_kwargs (dict, optional): keyword arguments of
            :class:`~torchrl_ermas.regret.trust_region.PPODeviationStep` (``lr``,
            ``epochs``, ``minibatches``, ``clip_epsilon``; e.g. the agents' own PPO
            settings) with ``deviation_optimizer="ppo"``. Defaults to ``None``: its defaults.
        meta_gradient (bool): whether :meth:`estimate` also returns each agent's policy
            gradient at its deviation, the input of
            :class:`~torchrl_ermas.regret.MetaGradient` (Eq. 13). Defaults to ``False``.
        group (str): the agents' group in the data. Defaults to ``"agents"``.
        seed (int): seed of the estimator's rollouts; each call uses fresh seeds drawn
            from it. Defaults to ``0``.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MultiAgentMLP, ProbabilisticActor
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> from torchrl_ermas.regret import MetaGradient, ReptileRegretEstimator
        >>> env = SequentialBimatrixEnv(2 * 16, max_steps=20)
        >>> net = MultiAgentMLP(18, 3, n_agents=2, centralized=False, share_params=True,
        ...                     depth=1, num_cells=16)
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(net, [("agents", "observation")], [("agents", "logits")]),
        ...     in_keys=[("agents", "logits")], out_keys=[("agents", "action")],
        ...     distribution_class=torch.distributions.Categorical, return_log_prob=True)
        >>> estimator = ReptileRegretEstimator(
        ...     actor, env, deviation_steps=2, meta_gradient=True)
        >>> result = estimator.estimate()
        >>> result["regret"].shape, result["kl"].shape
        (torch.Size([2]), torch.Size([2]))
        >>> bool((result["kl"] <= 3.0 + 1e-4).all())
        True
        >>> meta = MetaGradient(estimator.params, scale=0.2)  # a term of the agents' loss
        >>> meta.update(result["meta_gradient"], torch.tensor([8.0, 8.0]))
    """

    def __init__(
        self,
        actor: ProbabilisticTensorDictSequential,
        env: EnvBase,
        *,
        planner_policy: nn.Module | None = None,
        value_network: nn.Module | None = None,
        horizon: int | None = None,
        trust_region: float = 3.0,
        deviation_steps: int = 3,
        exploration: float = 0.2,
        gamma: float = 0.95,
        max_step_scale: float = 2.0,
        line_search_points: int = 12,
        line_search_samples: int = 1024,
        bisection_steps: int = 6,
        confidence: float = 1.0,
        deviation_optimizer: str = "line_search",
        ppo_kwargs: dict[str, Any] | None = None,
        meta_gradient: bool = False,
        group: str = "agents",
        seed: int = 0,
    ) -> None:
        _check_settings(trust_region, deviation_steps, exploration, gamma, meta_gradient, seed)
        horizon = getattr(env, "max_steps", None) if horizon is None else horizon
        check_int("horizon (or env.max_steps when horizon is None)", horizon, 1)
        self.n_agents = _deviation_worlds(env, group)
        self.actor = actor
        self.env = env
        self.planner_policy = planner_policy
        self.value_network = value_network
        self.horizon = horizon
        self.trust_region = trust_region
        self.deviation_steps = deviation_steps
        self.exploration = exploration
        self.gamma = gamma
        self.meta_gradient = meta_gradient
        self.group = group
        self.reward_key = (group, "reward")
        self.action_key = (group, "action")
        self._seeds = torch.Generator().manual_seed(seed)
        self._env_state: dict[str, torch.Tensor] = {}
        dist_keys = list(actor.module[-1].in_keys)
        check_explorable(dist_keys)
        self.dists = DeviationDistributions(actor, dist_keys)
        self.kl = KLToReference(actor, in_keys=list(actor.in_keys))
        line_search = {
            "max_step_scale": max_step_scale,
            "line_search_points": line_search_points,
            "line_search_samples": line_search_samples,
            "bisection_steps": bisection_steps,
            "confidence": confidence,
        }
        self.step = _deviation_step(self.dists, self.kl, deviation_optimizer, line_search, ppo_kwargs)
        self.policy = DeviationPolicy(
            self.dists,
            n_agents=self.n_agents,
            action_key=self.action_key,
            behaviour_log_prob_key=(group, _BEHAVIOUR_LOG_PROB),
            planner_policy=planner_policy,
        )

    # ------------------------------------------------------------------ public API
    @property
    def params(self) -> TensorDictBase:
        """The current agent-policy parameters (shared storage with the actor)."""
        return TensorDict.from_module(self.actor)

    def estimate(self, seed: int | None = None, params: TensorDictBase | None = None) -> TensorDictBase:
        """Runs the deviations and returns a TensorDict of batch ``[n_agents]``.

        Its entries are ``regret``, ``kl``, ``deviation_return``, ``current_return``,
        the stacked ``deviation_params`` (the deviations whose returns give the regret)
        and, with ``meta_gradient``, ``meta_gradient``: agent ``i``'s policy gradient at
        ``deviation_params[i]`` (:func:`~torchrl_ermas.regret.own_policy_gradient`) on the
        deviation's own evaluation rollout.

        Args:
            seed (int, optional): re-seeds the estimator first, which makes this call
                reproducible on its own (e.g. after resuming a run).
            params (TensorDictBase, optional): the current agent-policy parameters of ``R``
                runs stacked on a leading dim (``batch_size=[R]``, e.g. the runs of a
                population), which then deviate in one batch: run ``r``'s ``n_agents`` worlds
                are the ``r``-th of ``R`` contiguous chunks of the environment batch, and the
                result has batch ``[R, n_agents]``. The planner policy and the value network
                must then act per run, too (e.g.
                :class:`~torchrl_ermas.training.PopulationPolicy`). Defaults to ``None``: one
                run, the actor's own parameters.
        """
        check_seed("seed", seed, optional=True)
        current = self._current(params)
        if seed is not None:
            self._seeds.manual_seed(seed)
        self._env_state = {name: buffer.clone() for name, buffer in persistent_env_state(self.env).items()}
        self.dists.current_params = None if params is None else current
        try:
            result = self._estimate(current, self.params.data if params is None else current)
        finally:
            self.dists.current_params = None
            self._restore_env_state()
        return result if params is None else result.reshape(-1, self.n_agents)

    def _current(self, params: TensorDictBase | None) -> TensorDictBase:
        """The current parameters of every world, ``[W]``: ``params`` ``[R]`` repeated for each
        run's ``n_agents`` worlds, or the actor's own."""
        n_agents = self.n_agents
        if params is None:
            return self.params.data.expand(n_agents).clone()
        check_module_params("params", params, self.actor, stacked=(True,))
        runs = params.batch_size[0]
        if self.env.batch_size[0] % (runs * n_agents):
            raise ValueError(
                f"env.batch_size must be [R * n_agents * B] = [{runs} * {n_agents} * B] to hold the "
                f"deviation worlds of R={runs} runs, got {list(self.env.batch_size)}."
            )
        return params.data.unsqueeze(1).expand(runs, n_agents).reshape(runs * n_agents).clone()

    def _estimate(self, current: TensorDictBase, reference: TensorDictBase) -> TensorDictBase:
        """The estimate from ``current`` ``[W]``, within the trust region around ``reference``."""
        self.kl.update_reference(reference)
        path, kls = [current], [torch.zeros(current.batch_size[0], device=self._device)]
        for k in range(self.deviation_steps):
            # the first step's deviations are the current policy: one evaluation per step
            acting = None if k == 0 else path[-1]
            batch = self._batch(self._rollout(acting, exploration=self.exploration))
            budget = self.trust_region * (k + 1) / self.deviation_steps
            deviation, kl = self.step(path[-1], batch, budget)
            path.append(deviation)
            kls.append(kl)
        deviation, kl = self._select(path, kls)
        eval_seed = self._next_seed()
        current_return = self._returns(self._rollout(None, seed=eval_seed))
        deviation_data = self._rollout(deviation, seed=eval_seed)
        deviation_return = self._returns(deviation_data)
        result = TensorDict(
            {
                "regret": deviation_return - current_return,
                "kl": kl,
                "deviation_return": deviation_return,
                "current_return": current_return,
                "deviation_params": deviation,
            },
            batch_size=[current.batch_size[0]],
        )
        if self.meta_gradient:
            result["meta_gradient"] = own_policy_gradient(self.dists, deviation, self._batch(deviation_data))
        return result

    def _select(self, path: list[TensorDictBase], kls: list[torch.Tensor]) -> tuple[TensorDictBase, torch.Tensor]:
        """Each world's best policy on ``path`` (the current one, then the deviation after
        each step) on one selection rollout, and its KL.

        The measurement that follows is on an independent rollout, so this choice does not
        bias the reported regret. A step that makes the deviation worse (a line search
        taking a long step on a surrogate gain at the level of its noise, from a deviation
        that had already found the local best response) does not undo the steps before it,
        and a deviation worse than the current policy does not show up as a negative regret.
        """
        seed = self._next_seed()
        returns = torch.stack(
            [self._returns(self._rollout(None if k == 0 else params, seed=seed)) for k, params in enumerate(path)]
        )
        best = returns.argmax(0)  # the first of equal returns: the current policy, then the earliest step
        worlds = torch.arange(best.shape[0], device=best.device)
        return torch.stack(path)[best, worlds], torch.stack(kls)[best, worlds]

    # ------------------------------------------------------------------ internals
    @property
    def _device(self) -> torch.device:
        return self.env.device if self.env.device is not None else torch.device("cpu")

    def _restore_env_state(self) -> None:
        state = persistent_env_state(self.env)
        for name, saved in self._env_state.items():
            state[name].copy_(saved)

    def _next_seed(self) -> int:
        return int(torch.randint(2**31 - 1, (), generator=self._seeds))

    @torch.no_grad()
    def _rollout(
        self,
        deviation: TensorDictBase | None,
        *,
        exploration: float = 0.0,
        seed: int | None = None,
    ) -> TensorDictBase:
        """Rollout of the deviation worlds (``deviation=None``: everyone plays current)."""
        seed = self._next_seed() if seed is None else seed
        self.policy.params = deviation
        self.policy.exploration = exploration
        if self.planner_policy is not None:
            self.policy.set_planner(copy.deepcopy(self.planner_policy))
        devices = [self._device] if self._device.type == "cuda" else []
        # the planner samples its actions, as when the agents train against it
        with torch.random.fork_rng(devices=devices), set_exploration_type(ExplorationType.RANDOM):
            torch.manual_seed(seed)
            seed_env(self.env, seed)
            self.policy.reset_non_finite()
            start = self.env.reset()
            self._restore_env_state()  # after the reset, which may have counted an episode
            data = self.env.rollout(
                self.horizon, self.policy, auto_reset=False, tensordict=start, break_when_any_done=False
            )
        if self.policy.non_finite:  # one check per rollout, not one device sync per step
            raise FloatingPointError(
                "non-finite action probabilities in the regret estimate's rollouts (NaN or "
                "inf in the agent policy's parameters or in the observations)"
            )
        return data.reshape(self.policy.n_worlds, -1, self.horizon)  # [W, B, T]

    def _own_reward(self, data: TensorDictBase) -> torch.Tensor:
        """Agent ``i``'s reward in world ``i``, ``[W, B, T]``."""
        return own(data.get(("next", *self.reward_key)).squeeze(-1))

    def _returns(self, data: TensorDictBase) -> torch.Tensor:
        return self._own_reward(data).sum(-1).mean(-1)

    def _batch(self, data: TensorDictBase) -> DeviationBatch:
        """The deviation step's data: the transitions of each world, flattened ``[W, B * T]``."""
        reward = self._own_reward(data)
        done = data.get(("next", "done")).squeeze(-1)
        togo = reward2go(reward, done, self.gamma, time_dim=-1)
        if self.value_network is None:  # per-time baseline over the world's environments
            baseline = togo.mean(1, keepdim=True)
        else:
            with torch.no_grad():
                values = self.value_network(data.exclude("next").copy())
            baseline = own(values.get((self.group, "state_value")).squeeze(-1))
        # centred and scaled per world: an offset common to all transitions only adds
        # variance to the importance-weighted surrogate of the line search
        advantage = (togo - baseline).flatten(1)
        advantage = (advantage - advantage.mean(-1, keepdim=True)) / advantage.std(-1, keepdim=True).clamp_min(1e-8)
        data = data.flatten(1, 2)
        return DeviationBatch(
            observation=data.exclude("next"),
            action=data.get(self.action_key),
            behaviour_log_prob=own(data.get((self.group, _BEHAVIOUR_LOG_PROB))),
            advantage=advantage,
        )
