"""The sequential (repeated, constrained) bimatrix game of the ERMAS paper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded

from torchrl_ermas.validation import as_batch_size, check_bool, check_choice, check_int, check_real

from ._grid_game import GridGameEnv, one_hot

PAYOFF_PRESETS = ("dilemma", "seed0")
PLANNER_MODES = ("passive", "officers")
OBSERVE_MODES = ("joint", "own")
#: Officer-count change of the planner actions in ``"officers"`` mode.
OFFICER_MOVES = (-2, -1, 0, 1, 2)


def dilemma_payoffs(grid_size: int = 4) -> torch.Tensor:
    """The ``"dilemma"`` preset: a tragedy of the commons, stacked ``[r_p, r_0, r_1]``.

    With ``c_k = index_k / (n - 1)`` the cooperation level of agent ``k``, agent ``k``
    earns ``0.35 + 0.4 c_other - 0.3 c_own`` and the planner ``0.9 - 0.4 (c_0 + c_1)``.
    Defecting (moving towards index 0) always pays, so the unique Nash equilibrium of the
    stage game is ``(0, 0)``: agents 0.35 each, planner 0.9; mutual cooperation pays the
    agents 0.45 each and the planner 0.1.

    Examples:
        >>> dilemma_payoffs(4)[:, 0, 0]
        tensor([0.9000, 0.3500, 0.3500])
    """
    check_int("grid_size", grid_size, 2)
    c = torch.arange(grid_size, dtype=torch.float32) / (grid_size - 1)
    c_row, c_col = c[:, None], c[None, :]
    r_planner = 0.9 - 0.4 * (c_row + c_col)
    r_row = 0.35 + 0.4 * c_col - 0.3 * c_row
    r_col = 0.35 + 0.4 * c_row - 0.3 * c_col
    return torch.stack([r_planner, r_row, r_col])


def seed0_payoffs(grid_size: int = 4) -> torch.Tensor:
    """The ERMAS authors' matrices: uniform draws of numpy's legacy ``RandomState(0)``.

    Drawn in the order ``r_p, r_0, r_1`` and stacked in that order.

    Examples:
        >>> seed0_payoffs(4)[0, 0, 0]
        tensor(0.5488)
    """
    check_int("grid_size", grid_size, 2)
    rs = np.random.RandomState(0)
    tables = [rs.uniform(size=(grid_size, grid_size)) for _ in range(3)]
    return torch.as_tensor(np.stack(tables), dtype=torch.float32)


def _resolve_payoffs(payoffs, grid_size: int) -> torch.Tensor:
    if isinstance(payoffs, str):
        if payoffs == "dilemma":
            return dilemma_payoffs(grid_size)
        if payoffs == "seed0":
            return seed0_payoffs(grid_size)
        raise ValueError(
            f"payoffs must be one of {PAYOFF_PRESETS} or three {grid_size}x{grid_size} "
            f"tensors (r_planner, r_agent0, r_agent1), got {payoffs!r}."
        )
    tables = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in payoffs])
    if tables.shape != (3, grid_size, grid_size):
        raise ValueError(
            f"payoffs must be three {grid_size}x{grid_size} tensors (r_planner, r_agent0, "
            f"r_agent1), got shape {tuple(tables.shape)}."
        )
    if not torch.isfinite(tables).all():
        raise ValueError("payoffs must be finite, got NaN or inf entries.")
    return tables


class SequentialBimatrixEnv(GridGameEnv):
    """The constrained repeated bimatrix game of ERMAS, batched.

    Two agents walk a joint position on an ``n x n`` grid: agent 0 moves the row, agent 1
    the column, each by ``{0: stay, 1: +1, 2: -1}`` per step (clipped at the edges).
    Rewards are read from the payoff tables at the new position. A passive planner earns
    ``r_p``; in ``"officers"`` mode it also controls an officer count ``o in [0, 12]``
    (actions change it by ``{-2, -1, 0, +1, +2}``) and earns
    ``r_p * (1 + w * o / 12) - (o / 12) ** 2`` with ``w = officer_weight``.
    The raw table value ``r_p`` of the current position is observed as
    ``("planner", "payoff")`` (the reality gap of the ERMAS paper subtracts it from the
    agents' rewards: ``PlannerRewardGap(q, planner_reward_key=("planner", "payoff"))``).
    Episodes end in ``truncated`` after ``max_steps`` steps.

    Reference: "ERMAS: Learning Policies Robust to Reality Gaps in Multi-Agent
    Simulations", ICLR 2021 submission, Sec. 4.1-4.3.

    Args:
        batch_size (int or sequence of int): number of parallel games (the env batch).

    Keyword Args:
        grid_size (int): grid width ``n >= 2``. Defaults to ``4``.
        payoffs (str or sequence of tensors): ``"dilemma"`` (see :func:`dilemma_payoffs`),
            ``"seed0"`` (see :func:`seed0_payoffs`), or three finite ``n x n`` tables
            ``(r_planner, r_agent0, r_agent1)``. Defaults to ``"dilemma"``.
        planner (str): ``"passive"`` (no planner action) or ``"officers"``.
            Defaults to ``"passive"``.
        observe (str): ``"joint"``: each agent sees the one-hot joint position;
            ``"own"``: each agent sees only the one-hot of its own coordinate.
            Defaults to ``"joint"``.
        agent_id (bool): append a one-hot agent index to the agent observations, so that
            a parameter-shared policy can tell the agents apart. Defaults to ``True``.
        time_obs (bool): append the elapsed fraction of the episode to every observation.
            Defaults to ``False``.
        max_steps (int): episode length. Defaults to ``100`` (the authors used 5001).
        start_position (pair of int, optional): fixed start ``(row, col)``; ``None`` draws
            it uniformly at random. Defaults to ``None``.
        officer_weight (float): ``w`` of the officers mode. Defaults to ``3.0``.
        max_officers (int): the officer cap. Defaults to ``12``.
        device (torch.device, optional): where state and data live. Defaults to CPU.

    Examples:
        >>> env = SequentialBimatrixEnv(8, planner="officers")
        >>> _ = env.set_seed(0)
        >>> rollout = env.rollout(5)
        >>> rollout["next", "agents", "reward"].shape
        torch.Size([8, 5, 2, 1])
        >>> rollout["next", "planner", "reward"].shape
        torch.Size([8, 5, 1, 1])
    """

    n_agents = 2

    def __init__(
        self,
        batch_size: int | Sequence[int] = 1,
        *,
        grid_size: int = 4,
        payoffs: Literal["dilemma", "seed0"] | Sequence[torch.Tensor] = "dilemma",
        planner: Literal["passive", "officers"] = "passive",
        observe: Literal["joint", "own"] = "joint",
        agent_id: bool = True,
        time_obs: bool = False,
        max_steps: int = 100,
        start_position: Sequence[int] | None = None,
        officer_weight: float = 3.0,
        max_officers: int = 12,
        device: torch.device | str | None = None,
    ) -> None:
        batch_size = as_batch_size(batch_size)
        check_choice("planner", planner, PLANNER_MODES)
        check_choice("observe", observe, OBSERVE_MODES)
        check_int("max_officers", max_officers, 1)
        check_real("officer_weight", officer_weight)
        check_bool("agent_id", agent_id)
        check_bool("time_obs", time_obs)
        super().__init__(device=device if device is not None else "cpu", batch_size=batch_size)
        self._init_grid(
            n_coords=2,
            grid_size=grid_size,
            max_steps=max_steps,
            start_position=start_position,
        )
        tables = _resolve_payoffs(payoffs, grid_size).to(self.device)
        # [n*n, 3]: column 0 planner, columns 1-2 agents, indexed by the flat position
        self.register_buffer("payoff_table", tables.flatten(1).T.contiguous())
        self.planner_mode = planner
        self.observe = observe
        self.agent_id = agent_id
        self.time_obs = time_obs
        self.officer_weight = float(officer_weight)
        self.max_officers = max_officers
        self.register_buffer(
            "officers",
            torch.zeros((*self.batch_size, 1), dtype=torch.long, device=self.device),
            persistent=False,
        )
        self.register_buffer("_officer_moves", torch.tensor(OFFICER_MOVES, device=self.device))
        agent_table, planner_table = self._observation_tables()
        self.register_buffer("_agent_obs_table", agent_table, persistent=False)
        self.register_buffer("_planner_obs_table", planner_table, persistent=False)
        self._make_specs()

    @property
    def payoffs(self) -> torch.Tensor:
        """The payoff tables ``[3, n, n]``: planner, agent 0, agent 1."""
        n = self.grid_size
        return self.payoff_table.T.reshape(3, n, n)

    @property
    def agent_observation_table(self) -> torch.Tensor:
        """``[n * n, 2, obs]``: each agent's observation at each flat joint position,
        without the time feature (see :meth:`agent_observations`)."""
        return self._agent_obs_table

    def agent_observations(self, position: torch.Tensor, step_count: torch.Tensor) -> torch.Tensor:
        """The agents' observations ``[..., 2, obs]`` at joint positions ``[..., 2]`` (long)
        and step counts ``[..., 1]``, as the env would emit them; its state is untouched.

        Examples:
            >>> env = SequentialBimatrixEnv(1, grid_size=2, observe="own", agent_id=False)
            >>> env.agent_observations(torch.tensor([[1, 0]]), torch.zeros(1, 1, dtype=torch.long))
            tensor([[[0., 1.],
                     [1., 0.]]])
        """
        agents = self._agent_obs_table[self._flat_position(position)]  # [..., 2, d]
        if self.time_obs:
            t = self._time_fraction(step_count)
            agents = torch.cat([agents, t.unsqueeze(-2).expand(*agents.shape[:-1], 1)], -1)
        return agents

    # ------------------------------------------------------------------ specs
    @property
    def agent_obs_dim(self) -> int:
        base = self.grid_size**2 if self.observe == "joint" else self.grid_size
        return base + self.n_agents * self.agent_id + self.time_obs

    @property
    def planner_obs_dim(self) -> int:
        officers = self.max_officers + 1 if self.planner_mode == "officers" else 0
        return self.grid_size**2 + officers + self.time_obs

    def _make_specs(self) -> None:
        bs, dev = self.batch_size, self.device
        agents, planner = (*bs, self.n_agents), (*bs, 1)
        unit = dict(low=0.0, high=1.0, device=dev)
        self.full_observation_spec = Composite(
            agents=Composite(
                observation=Bounded(shape=(*agents, self.agent_obs_dim), **unit),
                shape=agents,
            ),
            planner=Composite(
                observation=Bounded(shape=(*planner, self.planner_obs_dim), **unit),
                payoff=Unbounded(shape=(*planner, 1), device=dev),
                shape=planner,
            ),
            shape=bs,
            device=dev,
        )
        actions = Composite(
            agents=Composite(action=Categorical(len(self._moves), shape=agents, device=dev), shape=agents),
            shape=bs,
            device=dev,
        )
        if self.planner_mode == "officers":
            actions["planner"] = Composite(
                action=Categorical(len(OFFICER_MOVES), shape=planner, device=dev),
                shape=planner,
            )
        self.full_action_spec = actions
        self._set_reward_and_done_specs()

    # ------------------------------------------------------------------ dynamics
    def _move(self, position: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        position = self._step_coords(position, tensordict.get(("agents", "action")))
        if self.planner_mode == "officers":
            change = self._officer_moves[tensordict.get(("planner", "action"))]
            self.officers = (self.officers + change).clamp_(0, self.max_officers)
        return position

    def _reset_extra(self, mask: torch.Tensor) -> None:
        self.officers = torch.where(mask, 0, self.officers)

    def _payoffs(self, tensordict: TensorDictBase) -> dict[str, torch.Tensor]:
        rewards = self.payoff_table[self._flat_position()]  # [*B, 3]
        planner = rewards[..., :1]
        if self.planner_mode == "officers":
            a = self.officers.float() / self.max_officers
            planner = planner * (1.0 + self.officer_weight * a) - a.square()
        return {
            "agents": rewards[..., 1:].unsqueeze(-1),
            "planner": planner.unsqueeze(-1),
        }

    def _observation_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Agent and planner observations of every joint position, looked up each step."""
        n, dev = self.grid_size, self.device
        joint = torch.eye(n * n, device=dev)  # [n*n, n*n]
        if self.observe == "joint":
            agents = joint.unsqueeze(1).expand(n * n, self.n_agents, n * n)
        else:
            coords = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(
                n * n, self.n_agents
            )
            agents = one_hot(coords.to(dev), n)  # [n*n, 2, n]
        if self.agent_id:
            eye = torch.eye(self.n_agents, device=dev).expand(n * n, -1, -1)
            agents = torch.cat([agents, eye], -1)
        return agents.contiguous(), joint

    def _observe(self) -> TensorDictBase:
        flat = self._flat_position()
        agents = self.agent_observations(self.position, self.step_count)  # [*B, 2, d]
        planner = [self._planner_obs_table[flat]]  # [*B, n*n]
        if self.planner_mode == "officers":
            planner.append(one_hot(self.officers.squeeze(-1), self.max_officers + 1))
        if self.time_obs:
            planner.append(self._time_fraction())
        out = self._observations(agents, torch.cat(planner, -1).unsqueeze(-2))
        payoff = self.payoff_table[flat, :1].unsqueeze(-1)  # [*B, 1, 1]
        out.get("planner").set("payoff", payoff)
        return out
