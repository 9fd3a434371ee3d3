"""Exact policy values and best responses of the bimatrix game by dynamic programming.

The game is small (``n * n`` positions, ``T`` steps), so the value of any policy pair and
each agent's best response to the other's policy can be computed exactly over
positions x time steps. Used to check regret estimators against the truth, and
differentiable in the action probabilities (see :mod:`.bimatrix_frontier`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictSequential

from .bimatrix import SequentialBimatrixEnv


class ExactReturns(NamedTuple):
    """Expected episode returns under a policy pair, each ``[...]`` over the policy batch.

    Attributes:
        planner: the planner's return ``[...]`` (the payoff ``r_p``; passive planner).
        agents: each agent's return ``[..., 2]`` when both follow the policies.
        best_responses: each agent's return ``[..., 2]`` when it best-responds to the other.
    """

    planner: torch.Tensor
    agents: torch.Tensor
    best_responses: torch.Tensor

    @property
    def regrets(self) -> torch.Tensor:
        """Each agent's regret ``max_pi' J_i(pi', pi_-i) - J_i(pi)``, ``[..., 2]``."""
        return self.best_responses - self.agents


def policy_table(actor: ProbabilisticTensorDictSequential, env: SequentialBimatrixEnv) -> torch.Tensor:
    """Action probabilities of ``actor`` at every time step and position.

    Returns:
        A ``[T, n * n, 2, 3]`` tensor: time step, flat joint position, agent, action.
        Observations are built exactly as ``env`` builds them (officers do not enter
        the agents' observations).
    """
    n, steps = env.grid_size, env.max_steps
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    position = torch.stack([rows.flatten(), cols.flatten()], -1).to(env.device)  # [n * n, 2]
    tables = []
    with torch.no_grad():
        for t in range(steps):
            step_count = torch.full((n * n, 1), t, dtype=torch.long, device=env.device)
            observation = env.agent_observations(position, step_count)
            obs = TensorDict({("agents", "observation"): observation}, batch_size=[n * n], device=env.device)
            tables.append(actor.get_dist(obs).probs)
    return torch.stack(tables)


def _transitions(grid_size: int) -> torch.Tensor:
    """``[n * n, 3, 3]`` next flat position for each position and joint action."""
    n = grid_size
    moves = torch.tensor([0, 1, -1])
    pos = torch.arange(n * n)
    row = (pos // n)[:, None, None] + moves[None, :, None]
    col = (pos % n)[:, None, None] + moves[None, None, :]
    return row.clamp(0, n - 1) * n + col.clamp(0, n - 1)


def start_distribution(env: SequentialBimatrixEnv) -> torch.Tensor:
    """``[n * n]`` probabilities of the flat start position: uniform, or ``env``'s fixed start."""
    n = env.grid_size
    if env.start_position is None:
        return torch.full((n * n,), 1.0 / (n * n), device=env.device)
    start = torch.zeros(n * n, device=env.device)
    row, col = env.start_position
    start[row * n + col] = 1.0
    return start


def exact_returns(env: SequentialBimatrixEnv, probs: torch.Tensor) -> ExactReturns:
    """Exact expected returns of the policies ``probs`` by backward dynamic programming.

    Differentiable in ``probs`` (best responses by ``max``, so with respect to the
    other agent's probabilities only, as the envelope theorem says).

    Args:
        env: the game (payoffs, grid size, episode length and start are read from it).
        probs: ``[..., T, n * n, 2, 3]`` action probabilities, see :func:`policy_table`;
            leading dimensions are a batch of policy pairs.

    Examples:
        >>> import torch
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> env = SequentialBimatrixEnv(1, payoffs="dilemma", max_steps=10)
        >>> uniform = torch.full((10, env.grid_size**2, 2, 3), 1 / 3)  # [T, n * n, agent, action]
        >>> exact_returns(env, uniform).regrets  # each agent gains 1.4 by best-responding
        tensor([1.4000, 1.4000])

    Returns:
        The planner's, the agents' and the best responses' returns from the start
        distribution, see :class:`ExactReturns`.
    """
    n, steps = env.grid_size, env.max_steps
    if probs.shape[-4:] != (steps, n * n, 2, 3):
        raise ValueError(
            f"probs must have shape [..., {steps}, {n * n}, 2, 3] (max_steps, positions, "
            f"agents, actions), got {tuple(probs.shape)}."
        )
    nxt = _transitions(n).to(probs.device)
    payoffs = env.payoffs.to(probs).flatten(1)  # [3, S]: planner, agent 0, agent 1
    # rewards of the values tracked: planner, agent 0, agent 1 (following), then
    # agent 0 and agent 1 best-responding
    reward = payoffs[[0, 1, 2, 1, 2]][:, nxt]  # [5, S, 3(a0), 3(a1)]
    values = probs.new_zeros((*probs.shape[:-4], 5, n * n))
    for step in reversed(probs.unbind(-4)):
        p0, p1 = step.unbind(-2)  # [..., S, 3]
        q = reward + values[..., nxt]  # [..., 5, S, 3, 3]
        joint = (p0[..., :, None] * p1[..., None, :]).unsqueeze(-4)
        follow = (q[..., :3, :, :, :] * joint).sum((-1, -2))
        best0 = (q[..., 3, :, :, :] * p1[..., None, :]).sum(-1).amax(-1)
        best1 = (q[..., 4, :, :, :] * p0[..., :, None]).sum(-2).amax(-1)
        values = torch.cat([follow, best0.unsqueeze(-2), best1.unsqueeze(-2)], -2)
    returns = values @ start_distribution(env).to(values)  # [..., 5]
    return ExactReturns(returns[..., 0], returns[..., 1:3], returns[..., 3:5])


def exact_values(env: SequentialBimatrixEnv, probs: torch.Tensor) -> torch.Tensor:
    """Expected episode return of each agent under the policies ``probs``.

    Args:
        env: the game (payoffs, grid size, episode length and start are read from it).
        probs: ``[..., T, n * n, 2, 3]`` action probabilities, see :func:`policy_table`.

    Returns:
        ``[..., 2, 2]``: row ``i`` holds agent ``i``'s value when both agents follow
        ``probs`` (column 0) and when agent ``i`` best-responds to the other (column 1),
        each from the start distribution.
    """
    returns = exact_returns(env, probs)
    return torch.stack([returns.agents, returns.best_responses], -1)


def exact_regret(env: SequentialBimatrixEnv, probs: torch.Tensor) -> torch.Tensor:
    """Each agent's exact regret ``max_pi' J_i(pi', pi_-i) - J_i(pi)``, ``[..., 2]``."""
    return exact_returns(env, probs).regrets
