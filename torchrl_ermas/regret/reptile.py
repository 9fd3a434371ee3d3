"""Per-agent regret of the current agent policy, and the Reptile meta step of ERMAS."""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential
from torch import nn
from torch.distributions import kl_divergence
from torchrl.envs import Compose, EnvBase, Transform
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.value.functional import reward2go

from ..validation import check_int, check_number, check_real, check_seed
from .deviation import DeviationDistributions, DeviationPolicy, world_mask

_BEHAVIOUR_LOG_PROB = "behaviour_log_prob"


def _world_norm(params: TensorDictBase) -> torch.Tensor:
    """Euclidean norm of each world's parameters, ``[W]``."""
    squares = [x.flatten(1).square().sum(-1) for x in params.values(True, True)]
    return torch.stack(squares).sum(0).sqrt()


def _feasible(kl: torch.Tensor, budget: float) -> torch.Tensor:
    """``kl <= budget`` (false for NaN), with the zero step (row 0) always allowed."""
    feasible = kl <= budget
    feasible[0] = True
    return feasible


def _best_within(surrogate: torch.Tensor, kl: torch.Tensor, budget: float) -> torch.Tensor:
    """Per world, the row of the best surrogate among candidates with ``kl <= budget``."""
    return torch.where(_feasible(kl, budget), surrogate, -torch.inf).argmax(0)


def _centred_logit(dist: torch.distributions.Categorical, action: torch.Tensor) -> torch.Tensor:
    """``log pi(a | s)`` minus its mean over the allowed actions (the logit, centred)."""
    log_probs = dist.logits
    support = getattr(dist, "mask", None)
    if support is None:
        mean = log_probs.mean(-1)
    else:
        support = support.expand_as(log_probs)
        mean = torch.where(support, log_probs, 0.0).sum(-1) / support.sum(-1)
    return log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1) - mean


def _select(mask: torch.Tensor, a: TensorDictBase, b: TensorDictBase) -> TensorDictBase:
    """Per world ``w``: ``a[w]`` where ``mask[w]`` else ``b[w]``."""
    return a.apply(lambda x, y: torch.where(mask.view(-1, *(1,) * (x.dim() - 1)), x, y), b)


def _scale(params: TensorDictBase, factor: torch.Tensor) -> TensorDictBase:
    """Multiplies each world's parameters by ``factor[w]``."""
    return params.apply(lambda x: x * factor.view(-1, *(1,) * (x.dim() - 1)))


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


class ReptileRegretEstimator:
    """Estimates each agent's regret by a trust-region unilateral deviation (ERMAS).

    For every agent ``i`` the estimator copies the current agent policy and takes
    ``num_steps`` policy-gradient steps on agent ``i``'s own reward, with every other agent
    and the planner frozen, inside the trust region ``KL(pi_i || pi_i') <= trust_region``
    (the mean KL over the states the deviation visits). A selection rollout keeps the
    deviation only where it beats the current policy (else agent ``i`` keeps the current
    policy: a noisy step that hurts is not reported as a negative regret). It then measures
    ``regret_i = J_i(deviation) - J_i(current)`` on independent fresh rollouts under the
    same planner, using the same environment seed and the same sampling seed for both
    (common random numbers), so the selection does not bias the reported value. ``J_i``
    is agent ``i``'s undiscounted return over ``horizon`` steps, so the regret is in the
    units of the ERMAS ``epsilon``.

    All ``n_agents`` deviations run in one batched rollout: the environment batch
    ``[n_agents * B]`` is split into ``n_agents`` worlds of ``B`` environments, agent ``i``
    deviates in world ``i``, and the per-world parameters are ``vmap``-ed.

    Each deviation step is sized in KL, not in parameter space: the importance-weighted
    policy gradient gives a direction, and a line search over step lengths keeps the
    candidate with the best importance-weighted surrogate whose KL to the current policy
    stays within the step's share of the budget (``trust_region * (k + 1) / num_steps``
    at step ``k``). The deviating agent explores with probability ``exploration``
    (uniform actions, importance-weighted), so a near-deterministic current policy still
    produces data about the actions it no longer takes.

    Reference: "ERMAS: Learning Policies Robust to Reality Gaps in Multi-Agent
    Simulations", ICLR 2021 submission, Sec. 3 (Eqs. 9-13).

    Args:
        actor (ProbabilisticTensorDictSequential): the agents' policy (e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` over a categorical distribution with
            per-agent logits). Its own parameters are the current policy; they are only
            changed by :meth:`meta_step`.
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
        num_steps (int): deviation steps ``K``. Defaults to ``3``.
        exploration (float): probability that the deviating agent acts uniformly in the
            training rollouts, in ``[0, 1)``. Defaults to ``0.2``.
        gamma (float): discount of the reward-to-go in the deviation gradient.
            Defaults to ``0.95``.
        max_step_scale (float): the longest step tried by the line search, relative to
            the norm of the parameters (at least 1): saturated policies with large
            weights get proportionally longer steps. Defaults to ``2.0``.
        line_search_points (int): number of step lengths tried, halving from
            ``max_step_scale``. Defaults to ``12``.
        bisection_steps (int): bisection steps refining the longest feasible length
            between the grid points around the trust-region boundary (the KL of a
            saturated policy can jump by orders of magnitude between two grid points).
            Defaults to ``6``.
        line_search_samples (int): transitions per world on which the line search
            evaluates the surrogate and the KL (a random subset of the step's data).
            Defaults to ``1024``.
        meta_scale (float): Reptile scale ``beta`` of :meth:`meta_step`; ``0`` disables it.
            Defaults to ``0.2``.
        meta_trust_region (float): KL bound of the inner adaptation returned as
            ``meta_params`` (the first deviation step, restricted to this bound): a short
            adaptation, like the authors' two PPO iterations, rather than the long
            regret-measuring deviation. Defaults to ``0.002``.
        meta_cap (float): cap of the per-agent meta step ``min(beta * lambda_i, cap)``.
            Defaults to ``2.0``.
        group (str): the agents' group in the data. Defaults to ``"agents"``.
        seed (int): seed of the estimator's rollouts; each call uses fresh seeds drawn
            from it. Defaults to ``0``.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MultiAgentMLP, ProbabilisticActor
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> from torchrl_ermas.regret import ReptileRegretEstimator
        >>> env = SequentialBimatrixEnv(2 * 16, max_steps=20)
        >>> net = MultiAgentMLP(18, 3, n_agents=2, centralized=False, share_params=True,
        ...                     depth=1, num_cells=16)
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(net, [("agents", "observation")], [("agents", "logits")]),
        ...     in_keys=[("agents", "logits")], out_keys=[("agents", "action")],
        ...     distribution_class=torch.distributions.Categorical, return_log_prob=True)
        >>> estimator = ReptileRegretEstimator(actor, env, num_steps=2)
        >>> result = estimator.estimate()
        >>> result["regret"].shape, result["kl"].shape
        (torch.Size([2]), torch.Size([2]))
        >>> bool((result["kl"] <= 3.0 + 1e-4).all())
        True
        >>> estimator.meta_step(result["meta_params"], torch.tensor([8.0, 8.0]))
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
        num_steps: int = 3,
        exploration: float = 0.2,
        gamma: float = 0.95,
        max_step_scale: float = 2.0,
        line_search_points: int = 12,
        line_search_samples: int = 1024,
        bisection_steps: int = 6,
        meta_scale: float = 0.2,
        meta_trust_region: float = 0.002,
        meta_cap: float = 2.0,
        group: str = "agents",
        seed: int = 0,
    ) -> None:
        check_number("trust_region", trust_region)
        check_number("max_step_scale", max_step_scale)
        check_number("meta_scale", meta_scale, strict=False)
        check_number("meta_cap", meta_cap, strict=False)
        check_number("meta_trust_region", meta_trust_region)
        check_int("num_steps", num_steps, 1)
        check_int("line_search_points", line_search_points, 1)
        check_int("line_search_samples", line_search_samples, 1)
        check_int("bisection_steps", bisection_steps, 0)
        check_seed("seed", seed)
        check_real("exploration", exploration, low=0, high=1, high_inclusive=False)
        check_real("gamma", gamma, low=0, low_inclusive=False, high=1)
        horizon = getattr(env, "max_steps", None) if horizon is None else horizon
        check_int("horizon (or env.max_steps when horizon is None)", horizon, 1)
        action_key = (group, "action")
        if action_key not in env.full_action_spec.keys(True, True):
            raise ValueError(
                f"group {group!r}: the environment has no action {action_key}; "
                f"its actions are {list(env.full_action_spec.keys(True, True))}."
            )
        action_spec = env.full_action_spec[action_key]
        if action_spec.shape != env.full_action_spec[group].shape:
            raise ValueError(
                f"{action_key} must hold one categorical action per agent, shape "
                f"{list(env.full_action_spec[group].shape)}; got {list(action_spec.shape)}."
            )
        self.n_agents = action_spec.shape[-1]
        if len(env.batch_size) != 1 or env.batch_size[0] % self.n_agents:
            raise ValueError(
                f"env.batch_size must be [n_agents * B] = [{self.n_agents} * B] to hold one "
                f"deviation world per agent, got {list(env.batch_size)}."
            )
        self.actor = actor
        self.env = env
        self.planner_policy = planner_policy
        self.value_network = value_network
        self.horizon = horizon
        self.trust_region = trust_region
        self.num_steps = num_steps
        self.exploration = exploration
        self.gamma = gamma
        self.step_scales = max_step_scale * 0.5 ** torch.arange(line_search_points)
        self.line_search_samples = line_search_samples
        self.bisection_steps = bisection_steps
        self.meta_scale = meta_scale
        self.meta_cap = meta_cap
        self.meta_trust_region = meta_trust_region
        self.group = group
        self.reward_key = (group, "reward")
        self.action_key = action_key
        self._seeds = torch.Generator().manual_seed(seed)
        dist_keys = list(actor.module[-1].in_keys)
        self.dists = DeviationDistributions(actor, dist_keys)
        self.policy = DeviationPolicy(
            self.dists,
            n_agents=self.n_agents,
            action_key=action_key,
            behaviour_log_prob_key=(group, _BEHAVIOUR_LOG_PROB),
            planner_policy=planner_policy,
        )

    # ------------------------------------------------------------------ public API
    @property
    def params(self) -> TensorDictBase:
        """The current agent-policy parameters (shared storage with the actor)."""
        return TensorDict.from_module(self.actor)

    def estimate(self, seed: int | None = None) -> TensorDictBase:
        """Runs the deviations and returns a TensorDict of batch ``[n_agents]``.

        Its entries are ``regret``, ``kl``, ``deviation_return``, ``current_return``,
        the stacked ``deviation_params`` (the deviations whose returns give the regret)
        and ``meta_params`` (the inner adaptation for :meth:`meta_step`: the first
        deviation step restricted to ``KL <= meta_trust_region``).

        Args:
            seed (int, optional): re-seeds the estimator first, which makes this call
                reproducible on its own (e.g. after resuming a run).
        """
        check_seed("seed", seed, optional=True)
        if seed is not None:
            self._seeds.manual_seed(seed)
        current = self.params.data
        deviation = current.expand(self.n_agents).clone()
        for k in range(self.num_steps):
            budget = self.trust_region * (k + 1) / self.num_steps
            data = self._rollout(deviation, exploration=self.exploration)
            first = k == 0
            deviation, kl, small = self._deviation_step(
                deviation, data, budget, self.meta_trust_region if first else None
            )
            if first:
                meta = small
        # keep a world's deviation only if it beats the current policy on a selection
        # rollout, then measure on an independent one: the choice among {current,
        # deviation} does not bias the reported regret, and a deviation made worse by a
        # noisy step does not show up as a negative regret
        selection_seed = self._next_seed()
        better = self._returns(self._rollout(deviation, seed=selection_seed)) > self._returns(
            self._rollout(None, seed=selection_seed)
        )
        deviation = _select(better, deviation, current.expand(self.n_agents))
        kl = torch.where(better, kl, torch.zeros_like(kl))
        eval_seed = self._next_seed()
        current_return = self._returns(self._rollout(None, seed=eval_seed))
        deviation_return = self._returns(self._rollout(deviation, seed=eval_seed))
        return TensorDict(
            {
                "regret": deviation_return - current_return,
                "kl": kl,
                "deviation_return": deviation_return,
                "current_return": current_return,
                "deviation_params": deviation,
                "meta_params": meta,
            },
            batch_size=[self.n_agents],
        )

    @torch.no_grad()
    def meta_step(self, deviation_params: TensorDictBase, lagrange: torch.Tensor) -> None:
        """Reptile step ``theta <- theta - min(beta * lambda_i, cap) * (theta_i' - theta)``.

        Applied in place to the actor's parameters for each agent in turn, as the ERMAS
        authors' code does; ``meta_scale = 0`` leaves them unchanged.

        The Reptile step is meant for a short inner adaptation (the authors used two PPO
        iterations): pass ``estimate()["meta_params"]``, not the long trust-region
        deviation ``deviation_params``, which can be far from ``theta``.

        Args:
            deviation_params (TensorDictBase): stacked ``[n_agents]`` adapted parameters,
                usually ``estimate()["meta_params"]``.
            lagrange (torch.Tensor): the multipliers ``lambda`` of shape ``[n_agents]``.
        """
        lagrange = torch.as_tensor(lagrange).reshape(-1)
        if lagrange.numel() != self.n_agents:
            raise ValueError(
                f"lagrange must hold n_agents={self.n_agents} values, got {lagrange.numel()}."
            )
        params = self.params.data
        scales = (self.meta_scale * lagrange).clamp(max=self.meta_cap).tolist()
        for agent, scale in enumerate(scales):
            params.sub_((deviation_params[agent] - params) * scale)

    # ------------------------------------------------------------------ internals
    @property
    def _device(self) -> torch.device:
        return self.env.device if self.env.device is not None else torch.device("cpu")

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
            data = self.env.rollout(
                self.horizon, self.policy, auto_reset=True, break_when_any_done=False
            )
        if self.policy.non_finite:  # one check per rollout, not one device sync per step
            raise FloatingPointError(
                "non-finite action probabilities in the regret estimate's rollouts (NaN or "
                "inf in the agent policy's parameters or in the observations)"
            )
        return data.reshape(self.n_agents, -1, self.horizon)  # [W, B, T]

    def _own(self, x: torch.Tensor, world_dim: int = 0) -> torch.Tensor:
        """Selects agent ``i`` in world ``i`` (the agent dim is last and is removed)."""
        shape = [1] * x.dim()
        shape[world_dim] = shape[-1] = self.n_agents
        return (x * world_mask(self.n_agents, x.device).view(shape)).sum(-1)

    def _own_reward(self, data: TensorDictBase) -> torch.Tensor:
        """Agent ``i``'s reward in world ``i``, ``[W, B, T]``."""
        return self._own(data.get(("next", *self.reward_key)).squeeze(-1))

    def _returns(self, data: TensorDictBase) -> torch.Tensor:
        return self._own_reward(data).sum(-1).mean(-1)

    def _advantages(self, data: TensorDictBase) -> torch.Tensor:
        reward = self._own_reward(data)
        done = data.get(("next", "done")).squeeze(-1)
        togo = reward2go(reward, done, self.gamma, time_dim=-1)
        if self.value_network is None:  # per-time baseline over the world's environments
            baseline = togo.mean(1, keepdim=True)
        else:
            with torch.no_grad():
                values = self.value_network(data.exclude("next").copy())
            baseline = self._own(values.get((self.group, "state_value")).squeeze(-1))
        # centred and scaled per world: an offset common to all transitions only adds
        # variance to the importance-weighted surrogate of the line search
        advantage = (togo - baseline).flatten(1)
        advantage = (advantage - advantage.mean(-1, keepdim=True)) / advantage.std(
            -1, keepdim=True
        ).clamp_min(1e-8)
        return advantage.view_as(togo)

    def _deviation_step(
        self,
        deviation: TensorDictBase,
        data: TensorDictBase,
        budget: float,
        meta_budget: float | None = None,
    ) -> tuple[TensorDictBase, torch.Tensor, TensorDictBase | None]:
        """One KL-sized step; also the best grid candidate within ``meta_budget``."""
        advantage = self._advantages(data).flatten(1)  # [W, B * T]
        data = data.flatten(1, 2)
        action = data.get(self.action_key)
        behaviour = self._own(data.get((self.group, _BEHAVIOUR_LOG_PROB)))
        obs = data.exclude("next")

        def log_prob(dist_params: TensorDictBase, world_dim: int = 0) -> tuple:
            dist = self.actor.build_dist_from_params(dist_params)
            lp = dist.log_prob(action.expand(*dist.batch_shape))
            return dist, self._own(lp, world_dim)

        # Direction: sum_t (A_t / behaviour_t) grad l'(a_t) with l the logits centred over
        # the allowed actions; its expectation sum_a A(s, a) grad l'(a | s) weights every
        # action by its advantage alone, not by its probability, so a saturated policy
        # still gets a direction towards the actions it no longer takes. Centring makes it
        # blind to any baseline error c(s) (sum_a grad l'(a | s) = 0), which with log-probs
        # instead would add c(s) grad sum_a log pi'(a | s) and can reverse the direction.
        leaves = deviation.clone().requires_grad_()
        dist = self.actor.build_dist_from_params(self.dists.deviating(leaves, obs))
        centred = self._own(_centred_logit(dist, action.expand(*dist.batch_shape)))
        direction_objective = (advantage / behaviour.exp() * centred).mean(-1).sum()
        grads = torch.autograd.grad(direction_objective, list(leaves.values(True, True)))
        subset = torch.randperm(obs.shape[1], device=advantage.device)[: self.line_search_samples]
        obs, action, behaviour, advantage = (
            x[:, subset] for x in (obs, action, behaviour, advantage)
        )
        with torch.no_grad():
            reference = self.actor.build_dist_from_params(self.dists.current(obs))
        grad = deviation.empty().update(dict(zip(deviation.keys(True, True), grads)))
        direction = _scale(grad, 1.0 / _world_norm(grad).clamp_min(1e-12))
        unit = _world_norm(deviation).clamp_min(1.0)  # steps are relative to the weights

        @torch.no_grad()
        def evaluate(lengths: torch.Tensor) -> tuple:
            """Candidates ``deviation + lengths[c, w] * direction``: surrogate and KL."""
            candidates = torch.stack(
                [deviation + _scale(direction, length * unit) for length in lengths]
            )  # [C, W]
            dist, lp = log_prob(self.dists.candidates(candidates, obs), 1)  # [C, W, S]
            surrogate = ((lp - behaviour).exp() * advantage).mean(-1)  # [C, W]
            kl = self._own(kl_divergence(reference, dist), 1).mean(-1)
            return candidates, surrogate, kl

        # coarse grid of halving lengths, then bisection on the trust-region boundary
        grid = torch.cat([torch.zeros(1), self.step_scales.flip(0)]).to(unit.device)
        grid = grid[:, None].expand(-1, self.n_agents)  # [C, W]: 0, then small to large
        candidates, surrogate, kl = evaluate(grid)
        worlds = torch.arange(self.n_agents, device=kl.device)
        meta = None
        if meta_budget is not None:
            best_small = _best_within(surrogate, kl, meta_budget)
            meta = candidates[best_small, worlds]
        best = _best_within(surrogate, kl, budget)
        chosen, chosen_kl = candidates[best, worlds], kl[best, worlds]
        chosen_score = surrogate[best, worlds]
        # end of the feasible prefix of the grid: bisect between it and the next length
        last_feasible = _feasible(kl, budget).long().cumprod(0).sum(0) - 1
        low = grid[last_feasible, worlds]
        high = grid[(last_feasible + 1).clamp_max(grid.shape[0] - 1), worlds]
        for _ in range(self.bisection_steps):
            mid = (low + high) / 2
            candidate, score, mid_kl = evaluate(mid[None])
            ok = mid_kl <= budget
            better = ok[0] & (score[0] > chosen_score)
            chosen = _select(better, candidate[0], chosen)
            chosen_kl = torch.where(better, mid_kl[0], chosen_kl)
            chosen_score = torch.where(better, score[0], chosen_score)
            low, high = torch.where(ok[0], mid, low), torch.where(ok[0], high, mid)
        return chosen, chosen_kl, meta
