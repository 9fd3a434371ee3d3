"""The N-player matrix game of the ERMAS authors' code (agents and planner share a grid)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite

from torchrl_ermas.validation import as_batch_size, check_bool, check_int, check_seed

from ._grid_game import MOVES, GridGameEnv, one_hot


def nmatrix_payoffs(n_agents: int = 3, grid_size: int = 7, seed: int = 0) -> torch.Tensor:
    """Standard-normal payoff tensors ``[n_agents + 1, w, ..., w]`` (planner first).

    Drawn from numpy's legacy ``RandomState(seed)`` in the order ``r_p, a_0, ..., a_{N-1}``,
    each of shape ``w^(N+1)``.

    Examples:
        >>> nmatrix_payoffs(2, 3).shape
        torch.Size([3, 3, 3, 3])
    """
    check_int("n_agents", n_agents, 1)
    check_int("grid_size", grid_size, 2)
    check_seed("seed", seed)
    rs = np.random.RandomState(seed)
    shape = (grid_size,) * (n_agents + 1)
    tables = [rs.standard_normal(size=shape) for _ in range(n_agents + 1)]
    return torch.as_tensor(np.stack(tables), dtype=torch.float32)


class NMatrixGameEnv(GridGameEnv):
    """N agents and a planner each move one coordinate of a shared ``(N+1)``-dim grid.

    Agent ``k`` moves coordinate ``k`` and the planner the last one, each by
    ``{0: stay, 1: +1, 2: -1}`` (clipped at the edges). Every player's reward is its
    payoff tensor read at the new joint position. Episodes end in ``truncated``.

    Observations are the concatenated one-hot encodings of every coordinate
    (``(N+1) * w`` values), plus a one-hot agent index for the agents and, optionally,
    the elapsed fraction of the episode.

    Args:
        batch_size (int or sequence of int): number of parallel games.

    Keyword Args:
        n_agents (int): number of agents ``N >= 1``. Defaults to ``3``.
        grid_size (int): grid width ``w >= 2``. Defaults to ``7``.
        payoff_seed (int): seed of :func:`nmatrix_payoffs`. Defaults to ``0``.
        payoffs (tensor, optional): explicit finite payoffs ``[N + 1, w, ..., w]``
            (planner first); overrides ``payoff_seed``.
        agent_id (bool): append a one-hot agent index to agent observations.
            Defaults to ``True``.
        time_obs (bool): append the elapsed episode fraction. Defaults to ``False``.
        max_steps (int): episode length. Defaults to ``500``.
        start_position (sequence of int, optional): fixed start; ``None`` draws it
            uniformly. Defaults to ``None``.
        device (torch.device, optional): where state and data live. Defaults to CPU.

    Examples:
        >>> env = NMatrixGameEnv(4, n_agents=3, grid_size=5, max_steps=10)
        >>> rollout = env.rollout(10)
        >>> rollout["next", "agents", "reward"].shape
        torch.Size([4, 10, 3, 1])
        >>> rollout["planner", "action"].shape
        torch.Size([4, 10, 1])
    """

    def __init__(
        self,
        batch_size: int | Sequence[int] = 1,
        *,
        n_agents: int = 3,
        grid_size: int = 7,
        payoff_seed: int = 0,
        payoffs: torch.Tensor | None = None,
        agent_id: bool = True,
        time_obs: bool = False,
        max_steps: int = 500,
        start_position: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        batch_size = as_batch_size(batch_size)
        check_int("n_agents", n_agents, 1)
        check_int("grid_size", grid_size, 2)
        check_bool("agent_id", agent_id)
        check_bool("time_obs", time_obs)
        if payoffs is None:
            check_seed("payoff_seed", payoff_seed)
            tables = nmatrix_payoffs(n_agents, grid_size, payoff_seed)
        else:
            tables = torch.as_tensor(payoffs, dtype=torch.float32)
            expected = (n_agents + 1,) + (grid_size,) * (n_agents + 1)
            if tables.shape != expected:
                raise ValueError(f"payoffs must have shape {expected} (planner first), got {tuple(tables.shape)}.")
            if not torch.isfinite(tables).all():
                raise ValueError("payoffs must be finite, got NaN or inf entries.")
        super().__init__(device=device if device is not None else "cpu", batch_size=batch_size)
        self.n_agents = n_agents
        self._init_grid(
            n_coords=n_agents + 1,
            grid_size=grid_size,
            max_steps=max_steps,
            start_position=start_position,
        )
        # [w^(N+1), N+1]: column 0 planner, then the agents, indexed by the flat position
        self.register_buffer("payoff_table", tables.to(self.device).flatten(1).T.contiguous())
        self.agent_id = agent_id
        self.time_obs = time_obs
        self._make_specs()

    @property
    def obs_dim(self) -> int:
        return (self.n_agents + 1) * self.grid_size + self.time_obs

    def _make_specs(self) -> None:
        bs, dev = self.batch_size, self.device
        agents, planner = (*bs, self.n_agents), (*bs, 1)
        unit = dict(low=0.0, high=1.0, device=dev)
        agent_obs_dim = self.obs_dim + self.n_agents * self.agent_id
        self.full_observation_spec = Composite(
            agents=Composite(observation=Bounded(shape=(*agents, agent_obs_dim), **unit), shape=agents),
            planner=Composite(observation=Bounded(shape=(*planner, self.obs_dim), **unit), shape=planner),
            shape=bs,
            device=dev,
        )
        self.full_action_spec = Composite(
            agents=Composite(action=Categorical(len(MOVES), shape=agents, device=dev), shape=agents),
            planner=Composite(action=Categorical(len(MOVES), shape=planner, device=dev), shape=planner),
            shape=bs,
            device=dev,
        )
        self._set_reward_and_done_specs()

    def _move(self, position: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        actions = torch.cat([tensordict.get(("agents", "action")), tensordict.get(("planner", "action"))], -1)
        return self._step_coords(position, actions)

    def _payoffs(self, tensordict: TensorDictBase) -> dict[str, torch.Tensor]:
        rewards = self.payoff_table[self._flat_position()].unsqueeze(-1)  # [*B, N+1, 1]
        return {"agents": rewards[..., 1:, :], "planner": rewards[..., :1, :]}

    def _observe(self) -> TensorDictBase:
        shared = one_hot(self.position, self.grid_size).flatten(-2)  # [*B, (N+1)*w]
        if self.time_obs:
            shared = torch.cat([shared, self._time_fraction()], -1)
        agents = shared.unsqueeze(-2).expand(*self.batch_size, self.n_agents, shared.shape[-1])
        if self.agent_id:
            eye = torch.eye(self.n_agents, device=self.device)
            agents = torch.cat([agents, eye.expand(*self.batch_size, self.n_agents, self.n_agents)], -1)
        return self._observations(agents, shared.unsqueeze(-2))
