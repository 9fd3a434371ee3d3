"""Exact policy values and best responses of the bimatrix game by dynamic programming.

The game is small (``n * n`` positions, ``T`` steps), so the value of any policy pair and
each agent's best response to the other's policy can be computed exactly over
positions x time steps. Used to check regret estimators against the truth.
"""
from __future__ import annotations

import torch
from tensordict.nn import ProbabilisticTensorDictSequential

from .bimatrix import SequentialBimatrixEnv


def policy_table(
    actor: ProbabilisticTensorDictSequential, env: SequentialBimatrixEnv
) -> torch.Tensor:
    """Action probabilities of ``actor`` at every time step and position.

    Returns:
        A ``[T, n * n, 2, 3]`` tensor: time step, flat joint position, agent, action.
        Observations are built exactly as ``env`` builds them (officers do not enter
        the agents' observations).
    """
    n, steps = env.grid_size, env.max_steps
    probe = SequentialBimatrixEnv(
        n * n, grid_size=n, payoffs=list(env.payoffs), observe=env.observe,
        agent_id=env.agent_id, time_obs=env.time_obs, max_steps=steps, device=env.device,
    )
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    probe.position = torch.stack([rows.flatten(), cols.flatten()], -1).to(env.device)
    tables = []
    with torch.no_grad():
        for t in range(steps):
            probe.step_count = torch.full_like(probe.step_count, t)
            obs = probe._observe()
            dist = actor.get_dist(obs)
            tables.append(dist.probs)
    return torch.stack(tables)


def _transitions(grid_size: int) -> torch.Tensor:
    """``[n * n, 3, 3]`` next flat position for each position and joint action."""
    n = grid_size
    moves = torch.tensor([0, 1, -1])
    pos = torch.arange(n * n)
    row = (pos // n)[:, None, None] + moves[None, :, None]
    col = (pos % n)[:, None, None] + moves[None, None, :]
    return row.clamp(0, n - 1) * n + col.clamp(0, n - 1)


def exact_values(env: SequentialBimatrixEnv, probs: torch.Tensor) -> torch.Tensor:
    """Expected episode return of each agent under the policies ``probs``.

    Args:
        env: the game (payoffs, grid size and episode length are read from it).
        probs: ``[T, n * n, 2, 3]`` action probabilities, see :func:`policy_table`.

    Returns:
        ``[2, 2]``: row ``i`` holds agent ``i``'s value when both agents follow ``probs``
        (column 0) and when agent ``i`` best-responds to the other (column 1), each
        averaged over the uniform start position.
    """
    payoffs = env.payoffs.to(probs)  # [3, n, n]
    nxt = _transitions(env.grid_size).to(probs.device)
    out = torch.zeros(2, 2, dtype=probs.dtype, device=probs.device)
    for agent in (0, 1):
        reward = payoffs[1 + agent].flatten()[nxt]  # [S, 3(a0), 3(a1)]
        follow = torch.zeros(nxt.shape[0], dtype=probs.dtype, device=probs.device)
        best = follow.clone()
        for t in reversed(range(probs.shape[0])):
            p0, p1 = probs[t, :, 0], probs[t, :, 1]  # [S, 3]
            q_follow = reward + follow[nxt]
            q_best = reward + best[nxt]
            # expectation over the other agent's action, leaving agent's own action
            if agent == 0:
                q_best = (q_best * p1[:, None, :]).sum(-1)
                follow = (q_follow * p0[:, :, None] * p1[:, None, :]).sum((-1, -2))
            else:
                q_best = (q_best * p0[:, :, None]).sum(-2)
                follow = (q_follow * p0[:, :, None] * p1[:, None, :]).sum((-1, -2))
            best = q_best.max(-1).values
        out[agent] = torch.stack([follow.mean(), best.mean()])
    return out


def exact_regret(env: SequentialBimatrixEnv, probs: torch.Tensor) -> torch.Tensor:
    """Each agent's exact regret ``max_pi' J_i(pi', pi_-i) - J_i(pi)``, ``[2]``."""
    values = exact_values(env, probs)
    return values[:, 1] - values[:, 0]
