"""The trust-region deviation steps of ERMAS (Eqs. 11-12): a KL-sized policy-gradient step
with a line search (:class:`TrustRegionStep`) or PPO epochs within the KL bound
(:class:`PPODeviationStep`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from ..transforms.kl import KLToReference
from ..validation import check_int, check_number, check_real
from .deviation import DeviationDistributions, world_mask


def world_norm(params: TensorDictBase) -> torch.Tensor:
    """Euclidean norm of each world's parameters, ``[W]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> params = TensorDict({"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[4.0], [0.0]])}, [2])
        >>> world_norm(params)
        tensor([5., 1.])
    """
    squares = [x.flatten(1).square().sum(-1) for x in params.values(True, True)]
    return torch.stack(squares).sum(0).sqrt()


def scale_worlds(params: TensorDictBase, factor: torch.Tensor) -> TensorDictBase:
    """Multiplies each world's parameters by ``factor[w]``."""
    return params.apply(lambda x: x * factor.view(-1, *(1,) * (x.dim() - 1)))


def select_worlds(mask: torch.Tensor, a: TensorDictBase, b: TensorDictBase) -> TensorDictBase:
    """Per world ``w``: ``a[w]`` where ``mask[w]`` else ``b[w]``."""
    return a.apply(lambda x, y: torch.where(mask.view(-1, *(1,) * (x.dim() - 1)), x, y), b)


def own(x: torch.Tensor, world_dim: int = 0) -> torch.Tensor:
    """Selects the deviating agent ``w % N`` in each world ``w`` (the agent dim ``N`` is last
    and is removed).

    Examples:
        >>> import torch
        >>> x = torch.tensor([[10.0, 11.0], [20.0, 21.0]])  # [world, agent]
        >>> own(x)  # agent 0 in world 0, agent 1 in world 1
        tensor([10., 21.])
    """
    n_worlds, n_agents = x.shape[world_dim], x.shape[-1]
    shape = [1] * x.dim()
    shape[world_dim], shape[-1] = n_worlds, n_agents
    return (x * world_mask(n_worlds, x.device, n_agents=n_agents).view(shape)).sum(-1)


def own_log_prob(dist: torch.distributions.Distribution, action: torch.Tensor, world_dim: int = 0) -> torch.Tensor:
    """``log pi'(a | s)`` of each world's deviating agent: ``[W, S]`` for a distribution
    ``[W, S, N]`` (``[C, W, S]`` with ``world_dim=1`` for candidates ``[C, W, S, N]``)."""
    return own(dist.log_prob(action.expand(*dist.batch_shape, *dist.event_shape)), world_dim)


def own_kl(
    kl: KLToReference,
    reference: torch.distributions.Distribution,
    dist: torch.distributions.Distribution,
    world_dim: int = 0,
) -> torch.Tensor:
    """Each world's mean ``KL(pi || pi')`` of its deviating agent over the samples: ``[W]``
    (``[C, W]`` with ``world_dim=1``)."""
    return own(kl.divergence(reference, dist), world_dim).mean(-1)


def _score(dist: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
    """The per-action score whose gradient gives the deviation direction.

    For a categorical policy: ``log pi(a | s)`` minus its mean over the allowed actions
    (the centred logit). ``sum_t (A_t / behaviour_t) grad l'(a_t)`` then has expectation
    ``sum_a A(s, a) grad l'(a | s)``: every action weighted by its advantage alone, not by
    its probability, so a saturated policy still gets a direction towards the actions it
    no longer takes, and the direction is blind to any baseline error ``c(s)`` (the
    centred logits sum to zero). Other distributions (densities) use ``log pi(a | s)``, which
    :meth:`TrustRegionStep.direction` weights by ``pi'(a | s) / behaviour`` (the
    importance-weighted policy gradient at the deviation), since ``1 / behaviour`` alone
    would weigh the tails of a density without bound.
    """
    action = action.expand(*dist.batch_shape, *dist.event_shape)
    log_prob = dist.log_prob(action)
    if not _has_centred_score(dist):
        return log_prob
    logits = dist.logits
    support = getattr(dist, "mask", None)
    if support is None:
        mean = logits.mean(-1)
    else:
        support = support.expand_as(logits)
        mean = torch.where(support, logits, 0.0).sum(-1) / support.sum(-1)
    return logits.gather(-1, action.unsqueeze(-1).long()).squeeze(-1) - mean


def _has_centred_score(dist: torch.distributions.Distribution) -> bool:
    """Whether :func:`_score` is the centred logit (a categorical policy with logits)."""
    return isinstance(dist, torch.distributions.Categorical) and getattr(dist, "logits", None) is not None


@dataclass
class DeviationBatch:
    """The data of one deviation step, per world ``[W, S, ...]``.

    Attributes:
        observation: the root entries the policy reads.
        action: the actions taken.
        behaviour_log_prob: the deviating agent's log-probability under the behaviour policy.
        advantage: the deviating agent's advantage, normalised per world.
    """

    observation: TensorDictBase
    action: torch.Tensor
    behaviour_log_prob: torch.Tensor
    advantage: torch.Tensor

    def subset(self, size: int) -> DeviationBatch:
        """A random subset of ``size`` transitions per world (the same ones in every world)."""
        return self.take(torch.randperm(self.advantage.shape[1], device=self.advantage.device)[:size])

    def take(self, index: torch.Tensor) -> DeviationBatch:
        """The transitions ``index`` of every world."""
        return DeviationBatch(
            self.observation[:, index],
            self.action[:, index],
            self.behaviour_log_prob[:, index],
            self.advantage[:, index],
        )


class TrustRegionStep:
    """One KL-sized step of the per-world deviations ``theta_i'`` (ERMAS Eqs. 11-12).

    Eq. 11 improves agent ``i``'s deviation on its own reward; Eq. 12 keeps it within
    ``KL(pi_i || pi_i') <= budget`` of the current policy ``pi`` (the mean over the visited
    states), measured by :class:`~torchrl_ermas.transforms.KLToReference` with the current
    parameters as its reference. The step is sized in KL, not in parameter space:

    1. the direction is the importance-weighted policy gradient of the deviating agent's
       score (the centred logit for categorical policies, see :func:`_score`);
    2. a line search tries lengths halving from ``max_step_scale`` (relative to the norm
       of the parameters, at least 1: saturated policies with large weights get
       proportionally longer steps) and keeps, among the candidates within the budget, the
       best lower confidence bound of the importance-weighted surrogate's improvement (the
       zero step, with bound ``0``, is always allowed);
    3. ``bisection_steps`` refine the longest feasible length between the grid points
       around the budget's boundary (the KL of a saturated policy can jump by orders of
       magnitude between two grid points).

    The line search evaluates the surrogate and the KL on ``line_search_samples``
    transitions per world.

    Args:
        dists (DeviationDistributions): the agents' distributions in the deviation worlds.
        kl (KLToReference): the trust region's KL; its reference is the current policy.

    Keyword Args:
        max_step_scale (float): longest step tried, relative to the parameters' norm.
            Defaults to ``2.0``.
        line_search_points (int): step lengths tried. Defaults to ``12``.
        bisection_steps (int): bisection refinements. Defaults to ``6``.
        line_search_samples (int): transitions per world of the line search, ``>= 2``.
            Defaults to ``1024``.
        confidence (float): ``z`` of the lower confidence bound by which the line search
            ranks candidates (``0``: the plain surrogate). Defaults to ``1.0``.
    """

    def __init__(
        self,
        dists: DeviationDistributions,
        kl: KLToReference,
        *,
        max_step_scale: float = 2.0,
        line_search_points: int = 12,
        bisection_steps: int = 6,
        line_search_samples: int = 1024,
        confidence: float = 1.0,
    ) -> None:
        check_number("max_step_scale", max_step_scale)
        check_number("confidence", confidence, strict=False)
        check_int("line_search_points", line_search_points, 1)
        check_int("bisection_steps", bisection_steps, 0)
        check_int("line_search_samples", line_search_samples, 2)  # a standard error needs 2
        self.dists = dists
        self.kl = kl
        self.step_scales = max_step_scale * 0.5 ** torch.arange(line_search_points)
        self.bisection_steps = bisection_steps
        self.line_search_samples = line_search_samples
        self.confidence = float(confidence)

    @property
    def actor(self):
        return self.dists.actor

    def direction(self, deviation: TensorDictBase, batch: DeviationBatch) -> TensorDictBase:
        """The unit-norm (per world) ascent direction of Eq. 11 at ``deviation``."""
        leaves = deviation.clone().requires_grad_()
        dist = self.dists.deviating_dist(leaves, batch.observation)
        score = own(_score(dist, batch.action))
        if _has_centred_score(dist):  # every action by its advantage alone (see _score)
            weight = batch.advantage / batch.behaviour_log_prob.exp()
        else:  # a density: the importance-weighted policy gradient, score = log pi'
            weight = batch.advantage * (score.detach() - batch.behaviour_log_prob).exp()
        objective = (weight * score).mean(-1).sum()
        grads = torch.autograd.grad(objective, list(leaves.values(True, True)))
        grad = deviation.empty().update(dict(zip(deviation.keys(True, True), grads)))
        return scale_worlds(grad, 1.0 / world_norm(grad).clamp_min(1e-12))

    def __call__(
        self, deviation: TensorDictBase, batch: DeviationBatch, budget: float
    ) -> tuple[TensorDictBase, torch.Tensor]:
        """The step from ``deviation`` within ``budget``: new parameters and their KL ``[W]``.

        The direction uses all of ``batch``, the line search a random subset of
        ``line_search_samples`` transitions of it.
        """
        direction = self.direction(deviation, batch)
        unit = world_norm(deviation).clamp_min(1.0)
        grid = torch.cat([torch.zeros(1), self.step_scales.flip(0)]).to(unit.device)
        subset = batch.subset(self.line_search_samples)
        return self.line_search(deviation, scale_worlds(direction, unit), grid, subset, budget)

    @torch.no_grad()
    def line_search(
        self,
        origin: TensorDictBase,
        direction: TensorDictBase,
        grid: torch.Tensor,
        batch: DeviationBatch,
        budget: float,
    ) -> tuple[TensorDictBase, torch.Tensor]:
        """Best score on ``batch`` among ``origin + l * direction`` for ``l`` in ``grid``
        (increasing, ``grid[0] = 0``) within ``budget``, refined by bisection at the
        budget's boundary; returns the parameters and their KL ``[W]``."""
        reference = self.kl.reference_dist(batch.observation)
        n_worlds = batch.advantage.shape[0]
        worlds = torch.arange(n_worlds, device=batch.advantage.device)

        def terms(candidates: TensorDictBase) -> tuple:
            """Per-sample surrogate terms ``[C, W, S]`` and the KL ``[C, W]`` of candidates."""
            dist = self.dists.deviating_dist(candidates, batch.observation)
            weighted = (own_log_prob(dist, batch.action, 1) - batch.behaviour_log_prob).exp() * batch.advantage
            return weighted, own_kl(self.kl, reference, dist, 1)

        base, _ = terms(origin.unsqueeze(0))

        def evaluate(lengths: torch.Tensor) -> tuple:
            """Candidates ``origin + lengths[c, w] * direction``, their score and KL ``[C, W]``.

            The score is a lower confidence bound of the surrogate's improvement over the
            origin, ``mean - z * s.e.`` of the per-sample differences (``0`` at the origin):
            a step is taken only where the data supports it, not to chase the noise of a
            few importance-weighted samples of rarely taken actions.
            """
            candidates = torch.stack([origin + scale_worlds(direction, length) for length in lengths])
            weighted, kl = terms(candidates)
            gain = weighted - base
            bound = gain.mean(-1) - self.confidence * gain.std(-1) / gain.shape[-1] ** 0.5
            return candidates, torch.where(lengths > 0, bound, 0.0), kl

        grid = grid[:, None].expand(-1, n_worlds)  # [C, W]
        candidates, surrogate, kl = evaluate(grid)
        feasible = kl <= budget  # false for NaN
        feasible[0] = True
        best = torch.where(feasible, surrogate, -torch.inf).argmax(0)
        chosen, chosen_kl = candidates[best, worlds], kl[best, worlds]
        chosen_score = surrogate[best, worlds]
        # end of the feasible prefix of the grid: bisect between it and the next length
        last_feasible = feasible.long().cumprod(0).sum(0) - 1
        low = grid[last_feasible, worlds]
        high = grid[(last_feasible + 1).clamp_max(grid.shape[0] - 1), worlds]
        for _ in range(self.bisection_steps):
            mid = (low + high) / 2
            candidate, score, mid_kl = evaluate(mid[None])
            ok = mid_kl[0] <= budget
            better = ok & (score[0] > chosen_score)
            chosen = select_worlds(better, candidate[0], chosen)
            chosen_kl = torch.where(better, mid_kl[0], chosen_kl)
            chosen_score = torch.where(better, score[0], chosen_score)
            low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
        return chosen, chosen_kl


class PPODeviationStep:
    """One step of the per-world deviations ``theta_i'`` trained like the agents: PPO epochs
    on agent ``i``'s own reward (Eq. 11 as the ERMAS authors' deviation trainers run it),
    each world kept within ``KL(pi_i || pi_i') <= budget`` (Eq. 12).

    Where the return of one agent is noisy against its regret (the AI Economist on a map),
    one policy-gradient direction per rollout is dominated by noise, and a longer step
    along it only loses (:class:`TrustRegionStep` then keeps the zero step). PPO extracts
    more from the same data: ``epochs`` passes of ``minibatches`` Adam steps of the clipped
    surrogate, each a small move along a fresh estimate, as the agents themselves learn.
    The ratio is taken against the deviation at the start of the step (``pi_old``) and
    the surrogate weighted by ``pi_old / behaviour`` (at most ``1 / (1 - exploration)``),
    so the exploration of the rollouts stays importance-corrected. After each epoch a world
    whose KL to the current policy exceeds ``budget`` returns to its parameters of the
    epoch's start and stops for this step.

    Args:
        dists (DeviationDistributions): the agents' distributions in the deviation worlds.
        kl (KLToReference): the trust region's KL; its reference is the current policy.

    Keyword Args:
        lr (float or torch.Tensor): Adam learning rate, ``> 0``: one for every world, or
            one per world (a 1-D tensor of ``W`` rates, e.g. the runs of a population with
            their own learning rates). Adam's step is proportional to its rate, so a world
            with a lower rate takes the step of the highest rate scaled down: the step its
            own Adam would take. Defaults to ``3e-3``.
        epochs (int): passes over the step's transitions. Defaults to ``4``.
        minibatches (int): minibatches per pass. Defaults to ``4``.
        clip_epsilon (float): the ratio clip. Defaults to ``0.2``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MultiAgentMLP, ProbabilisticActor
        >>> from torchrl_ermas.regret.deviation import DeviationDistributions
        >>> from torchrl_ermas.transforms import KLToReference
        >>> _ = torch.manual_seed(0)
        >>> net = MultiAgentMLP(4, 3, n_agents=2, centralized=False, share_params=True, depth=1, num_cells=8)
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(net, [("agents", "observation")], [("agents", "logits")]),
        ...     in_keys=[("agents", "logits")], out_keys=[("agents", "action")],
        ...     distribution_class=torch.distributions.Categorical)
        >>> kl = KLToReference(actor, in_keys=list(actor.in_keys))
        >>> step = PPODeviationStep(DeviationDistributions(actor, [("agents", "logits")]), kl)
        >>> obs = TensorDict({("agents", "observation"): torch.randn(2, 64, 2, 4)}, [2, 64])
        >>> action = torch.randint(3, (2, 64, 2))
        >>> batch = DeviationBatch(obs, action, torch.full((2, 64), -1.1), torch.randn(2, 64))
        >>> deviation, divergence = step(TensorDict.from_module(actor).data.expand(2).clone(), batch, 0.05)
        >>> bool((divergence <= 0.05).all())
        True
    """

    def __init__(
        self,
        dists: DeviationDistributions,
        kl: KLToReference,
        *,
        lr: float | torch.Tensor = 3e-3,
        epochs: int = 4,
        minibatches: int = 4,
        clip_epsilon: float = 0.2,
    ) -> None:
        if isinstance(lr, torch.Tensor):
            if lr.dim() != 1 or not lr.numel() or not (torch.isfinite(lr) & (lr > 0)).all():
                raise ValueError(f"lr must be a finite number > 0 or a 1-D tensor of them (one per world), got {lr}.")
        else:
            check_number("lr", lr)
        check_int("epochs", epochs, 1)
        check_int("minibatches", minibatches, 1)
        check_real("clip_epsilon", clip_epsilon, low=0, high=1, low_inclusive=False, high_inclusive=False)
        self.dists = dists
        self.kl = kl
        self.lr = lr
        self.epochs = epochs
        self.minibatches = minibatches
        self.clip_epsilon = clip_epsilon

    @property
    def actor(self):
        return self.dists.actor

    def _own_log_prob(self, params: TensorDictBase, batch: DeviationBatch) -> torch.Tensor:
        """``log pi'(a | s)`` of the deviating agent of each world, ``[W, S]``."""
        return own_log_prob(self.dists.deviating_dist(params, batch.observation), batch.action)

    @torch.no_grad()
    def _kl(self, params: TensorDictBase, batch: DeviationBatch) -> torch.Tensor:
        """Each world's mean KL from the current policy, ``[W]``."""
        reference = self.kl.reference_dist(batch.observation)
        return own_kl(self.kl, reference, self.dists.deviating_dist(params, batch.observation))

    def __call__(
        self, deviation: TensorDictBase, batch: DeviationBatch, budget: float
    ) -> tuple[TensorDictBase, torch.Tensor]:
        """The step from ``deviation`` within ``budget``: new parameters and their KL ``[W]``."""
        params = deviation.detach().clone().requires_grad_()
        leaves = list(params.values(True, True))
        n_worlds, n_samples = batch.advantage.shape
        lr, scale = self._world_rates(n_worlds)
        optimizer = torch.optim.Adam(leaves, lr=lr)
        with torch.no_grad():
            old_log_prob = self._own_log_prob(params, batch)
            weight = (old_log_prob - batch.behaviour_log_prob).exp()
        active = torch.ones(n_worlds, dtype=torch.bool, device=batch.advantage.device)
        size = max(n_samples // self.minibatches, 1)
        for _ in range(self.epochs):
            start = params.detach().clone()
            for index in torch.randperm(n_samples, device=batch.advantage.device).split(size):
                part = batch.take(index)
                ratio = (self._own_log_prob(params, part) - old_log_prob[:, index]).exp()
                clipped = ratio.clamp(1 - self.clip_epsilon, 1 + self.clip_epsilon)
                surrogate = weight[:, index] * torch.min(ratio * part.advantage, clipped * part.advantage)
                optimizer.zero_grad()
                (-surrogate.mean(-1).sum()).backward()
                before = None if scale is None else [leaf.detach().clone() for leaf in leaves]
                optimizer.step()
                if scale is not None:
                    _scale_steps(leaves, before, scale)
                if not active.all():  # stopped worlds keep their parameters
                    with torch.no_grad():
                        params.update_(select_worlds(active, params, start))
            # a world beyond the budget returns to the epoch's start and stops
            over = self._kl(params, batch) > budget  # true for NaN too
            active &= ~over
            with torch.no_grad():
                params.update_(select_worlds(active, params, start))
            if not active.any():
                break
        return params.detach(), self._kl(params, batch)

    def _world_rates(self, n_worlds: int) -> tuple[float, torch.Tensor | None]:
        """Adam's rate (the highest) and each world's share of it (``None``: one rate)."""
        if not isinstance(self.lr, torch.Tensor):
            return self.lr, None
        if self.lr.shape != (n_worlds,):
            raise ValueError(f"lr has one rate per world, {self.lr.numel()}, but the step has {n_worlds} worlds.")
        top = self.lr.max()
        return float(top), self.lr / top


@torch.no_grad()
def _scale_steps(leaves: list[torch.Tensor], before: list[torch.Tensor], scale: torch.Tensor) -> None:
    """Scales each world's step ``leaf - before`` by ``scale`` ``[W]`` in place (worlds at
    ``scale == 1`` keep their parameters exactly)."""
    for leaf, start in zip(leaves, before):
        share = scale.to(leaf).view(-1, *([1] * (leaf.dim() - 1)))
        leaf.copy_(torch.where(share == 1, leaf, start + share * (leaf - start)))
