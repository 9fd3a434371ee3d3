"""The exact frontier of Agent-Adv-Search in the bimatrix game: planner reward against epsilon.

For each ``epsilon`` the worst epsilon-equilibrium for the planner solves

    min_pi J_p(pi)   subject to   regret_i(pi) <= epsilon   for both agents,

over tabular softmax policies on the agents' information states (what the env's agent
observation reveals). Returns and best responses are exact and differentiable
(:func:`~.bimatrix_analysis.exact_returns`), so the problem is solved by exact-gradient
primal descent on the (augmented) Lagrangian ``J_p + sum_i lambda_i (regret_i - epsilon)``
and dual ascent on ``lambda_i >= 0``, from a selfish warm start (each agent ascends its
own return). The method is local: each point is an epsilon-equilibrium, so its planner
return bounds the true minimum from above, tight when the descent finds the optimum.
Regrets here are global (exact best responses over the joint position and time), whereas
ERMAS bounds a regret estimated within a KL trust region.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from torchrl_ermas.validation import check_int, check_real

from .bimatrix import SequentialBimatrixEnv
from .bimatrix_analysis import ExactReturns, exact_returns


class FrontierPoint(NamedTuple):
    """The worst epsilon-equilibrium for the planner found at one ``epsilon``.

    Attributes:
        epsilon: the regret bound.
        planner_return: the planner's exact return.
        agent_returns: each agent's exact return.
        regrets: each agent's exact regret.
        feasible: whether both regrets are within ``epsilon`` (up to the tolerance);
            otherwise the point is the one of least violation (epsilon below every
            reachable regret, e.g. negative).
    """

    epsilon: float
    planner_return: float
    agent_returns: tuple[float, float]
    regrets: tuple[float, float]
    feasible: bool


def information_states(env: SequentialBimatrixEnv) -> tuple[torch.Tensor, int]:
    """Index of each agent's observation at every joint position, and the count per agent.

    Positions an agent cannot tell apart share an index (with ``observe="own"``, those
    that differ only in the other agent's coordinate). Time is not part of it (see
    :func:`tabular_policy`).

    Returns:
        ``([n * n, 2] long tensor, number of distinct observations of an agent)``.
    """
    table = env.agent_observation_table  # [n * n, 2, obs]
    indices = [torch.unique(table[:, agent], dim=0, return_inverse=True)[1] for agent in (0, 1)]
    index = torch.stack(indices, -1)
    return index, int(index.max()) + 1


def tabular_policy(env: SequentialBimatrixEnv, logits: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """Action probabilities ``[..., T, n * n, 2, 3]`` of tabular softmax policies.

    Args:
        env: the game.
        logits: ``[..., T or 1, 2, K, 3]``: per time step when the agents observe time
            (``env.time_obs``), else one stationary table; agent; information state; action.
        info: ``[n * n, 2]`` information state of each agent at each position, see
            :func:`information_states`.
    """
    probs = torch.softmax(logits, -1)
    agent = torch.arange(2, device=info.device)
    table = probs[..., agent, info, :]  # [..., T or 1, n * n, 2, 3]
    return table.expand(*table.shape[:-4], env.max_steps, *table.shape[-3:])


def _policy_steps(env: SequentialBimatrixEnv) -> int:
    return env.max_steps if env.time_obs else 1


def selfish_logits(env: SequentialBimatrixEnv, *, steps: int = 200, lr: float = 0.2) -> torch.Tensor:
    """Logits ``[T or 1, 2, K, 3]`` (float64) of both agents ascending their own exact returns.

    From uniform policies, each agent follows the exact gradient of its own return with
    respect to its own logits (Adam), which converges to a Nash equilibrium in the
    ``"dilemma"`` game (defect everywhere, regret below ``1e-3``).
    """
    check_int("steps", steps, 0)
    info, n_states = information_states(env)
    logits = torch.zeros(
        _policy_steps(env),
        2,
        n_states,
        3,
        dtype=torch.float64,
        device=env.device,
        requires_grad=True,
    )
    # a short second-moment memory keeps the steps near lr while the gradient of a
    # saturating softmax decays, so the policies keep approaching the pure equilibrium
    optimizer = torch.optim.Adam([logits], lr=lr, betas=(0.9, 0.9))
    live_agent = torch.eye(2, device=env.device)[:, None, :, None, None]  # [2, 1, 2, 1, 1]
    for _ in range(steps):
        # copy i lets only agent i's logits carry gradient, and scores agent i's return
        own = live_agent * logits + (1 - live_agent) * logits.detach()
        returns = exact_returns(env, tabular_policy(env, own, info)).agents  # [2(copy), 2]
        optimizer.zero_grad()
        (-returns.diagonal().sum()).backward()
        optimizer.step()
    return logits.detach()


def _check_passive(env: SequentialBimatrixEnv) -> None:
    if env.planner_mode != "passive":
        raise ValueError(
            f"env.planner_mode must be 'passive' for the exact frontier (the planner's "
            f"return must not depend on a planner policy), got {env.planner_mode!r}."
        )


def epsilon_frontier(
    env: SequentialBimatrixEnv,
    epsilons: Sequence[float],
    *,
    iterations: int = 600,
    lr: float = 0.05,
    penalty: float = 50.0,
    dual_interval: int = 25,
    tolerance: float = 0.01,
    warm_start_steps: int = 200,
) -> list[FrontierPoint]:
    """The planner's worst exact return subject to each agent's exact regret ``<= epsilon``.

    All epsilons are solved at once (a batch of policy pairs) in float64 on ``env.device``;
    the run is deterministic. With per-step units ``f = J_p / T`` and
    ``g_i = (regret_i - epsilon) / T``, each iteration takes an Adam step on the logits of
    the augmented Lagrangian ``f + sum_i (max(0, lambda_i + c g_i)^2 - lambda_i^2) / (2 c)``
    (``c = penalty``), and every ``dual_interval`` iterations the multipliers ascend,
    ``lambda_i <- max(0, lambda_i + c g_i)``. The quadratic term damps the cycling of plain
    gradient descent-ascent: the Lagrangian is nearly linear in the agents' cooperation,
    so for a fixed ``lambda`` the primal minimum jumps between Nash and full cooperation.
    The answer at each epsilon is the iterate of least planner return among those with
    both regrets within ``epsilon + tolerance``, or the one of least violation when none is.

    Args:
        env: a passive-planner :class:`~.bimatrix.SequentialBimatrixEnv` (payoffs, grid,
            episode length, start and agent observations are read from it).
        epsilons: the regret bounds, in episode-return units.

    Keyword Args:
        iterations (int): primal iterations. Defaults to ``600``.
        lr (float): Adam learning rate of the logits. Defaults to ``0.05``.
        penalty (float): the augmented-Lagrangian weight ``c`` (per-step units), also the
            dual step size. Defaults to ``50.0``.
        dual_interval (int): primal iterations per dual step. Defaults to ``25``.
        tolerance (float): regret slack (episode-return units) of a feasible point.
            Defaults to ``0.01``.
        warm_start_steps (int): steps of the selfish warm start, see
            :func:`selfish_logits`. Defaults to ``200``.

    Returns:
        One :class:`FrontierPoint` per epsilon, in the given order.

    Examples:
        One step from the cooperative corner of the 2x2 "dilemma" game: cooperating with
        probability ``q_i`` costs agent ``i`` a regret ``0.3 q_i`` and the planner
        ``0.4 q_i``, so the frontier is ``0.9 - 0.8 min(1, epsilon / 0.3)``.

        >>> env = SequentialBimatrixEnv(1, grid_size=2, max_steps=1, start_position=(1, 1))
        >>> points = epsilon_frontier(env, [0.0, 0.15], iterations=300, tolerance=1e-3)
        >>> [round(p.planner_return, 2) for p in points]
        [0.9, 0.5]
        >>> all(r <= 0.15 + 1e-3 for r in points[1].regrets)
        True
    """
    _check_passive(env)
    check_int("iterations", iterations, 1)
    check_int("dual_interval", dual_interval, 1)
    check_real("lr", lr, low=0)
    check_real("penalty", penalty, low=0, low_inclusive=False)
    check_real("tolerance", tolerance, low=0)
    check_int("warm_start_steps", warm_start_steps, 0)
    for epsilon in epsilons:
        check_real("epsilons", epsilon)
    if len(epsilons) == 0:
        raise ValueError("epsilons must be a non-empty sequence of floats, got an empty one.")
    eps = torch.tensor([float(e) for e in epsilons], dtype=torch.float64, device=env.device)
    eps = eps[:, None]  # [E, 1]
    info, _ = information_states(env)
    start = selfish_logits(env, steps=warm_start_steps)
    logits = start.expand(len(eps), *start.shape).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    multipliers = torch.zeros_like(eps).expand(-1, 2)
    best = _Best(len(eps), env.device)
    for iteration in range(iterations + 1):
        returns = exact_returns(env, tabular_policy(env, logits, info))
        violation = (returns.regrets - eps) / env.max_steps  # [E, 2], per step
        best.update(returns, eps, tolerance)
        if iteration == iterations:
            break
        shifted = (multipliers + penalty * violation).clamp(min=0)
        lagrangian = returns.planner / env.max_steps
        lagrangian = lagrangian + (shifted.square() - multipliers.square()).sum(-1) / (2 * penalty)
        optimizer.zero_grad()
        lagrangian.sum().backward()
        optimizer.step()
        if (iteration + 1) % dual_interval == 0:
            multipliers = shifted.detach()
    return best.points(eps.squeeze(-1))


class _Best:
    """The best iterate per epsilon: least planner return if feasible, else least violation."""

    def __init__(self, n: int, device: torch.device) -> None:
        like = dict(dtype=torch.float64, device=device)
        self.score = torch.full((n,), float("inf"), **like)
        self.feasible = torch.zeros(n, dtype=torch.bool, device=device)
        self.planner = torch.zeros(n, **like)
        self.agents = torch.zeros(n, 2, **like)
        self.regrets = torch.zeros(n, 2, **like)

    def update(self, returns: ExactReturns, eps: torch.Tensor, tolerance: float) -> None:
        worst = (returns.regrets.detach() - eps).amax(-1)
        feasible = worst <= tolerance
        score = torch.where(feasible, returns.planner.detach(), worst)
        better = (feasible & ~self.feasible) | ((feasible == self.feasible) & (score < self.score))
        self.score = torch.where(better, score, self.score)
        self.feasible = self.feasible | feasible
        self.planner = torch.where(better, returns.planner.detach(), self.planner)
        self.agents = torch.where(better[:, None], returns.agents.detach(), self.agents)
        self.regrets = torch.where(better[:, None], returns.regrets.detach(), self.regrets)

    def points(self, eps: torch.Tensor) -> list[FrontierPoint]:
        return [
            FrontierPoint(float(e), float(p), tuple(a.tolist()), tuple(r.tolist()), bool(f))
            for e, p, a, r, f in zip(eps, self.planner, self.agents, self.regrets, self.feasible)
        ]
