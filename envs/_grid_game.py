"""Shared machinery of the repeated matrix games: players walking a joint grid position.

Each player controls one coordinate of a joint position on a grid of width ``n`` and moves
it by ``{stay, +1, -1}`` (clipped at the edges); payoffs are read at the new position.
Subclasses declare the payoff tables, the observations and the specs; this module holds
the batched state, the masked partial resets, the step counter and the seeding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_ermas.validation import check_int

#: Coordinate change of the actions ``0: stay``, ``1: +1``, ``2: -1``.
MOVES = (0, 1, -1)


def one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    """Float one-hot encoding along a new last dim."""
    return torch.nn.functional.one_hot(index, n).float()


class GridGameEnv(EnvBase):
    """Base class of the batched grid games (not an environment by itself).

    Subclasses call :meth:`_init_grid` from their constructor, then set the specs,
    and implement :meth:`_observe` and :meth:`_payoffs`.
    """

    batch_locked = True

    def _init_grid(
        self,
        *,
        n_coords: int,
        grid_size: int,
        max_steps: int,
        start_position: Sequence[int] | None,
    ) -> None:
        check_int("grid_size", grid_size, 2)
        check_int("max_steps", max_steps, 1)
        self.grid_size = grid_size
        self.max_steps = max_steps
        if start_position is not None:
            start_position = tuple(start_position)
            if len(start_position) != n_coords or any(
                not isinstance(c, int) or not 0 <= c < grid_size for c in start_position
            ):
                raise ValueError(
                    f"start_position must be None (uniform) or {n_coords} ints in "
                    f"[0, {grid_size - 1}], got {start_position!r}."
                )
            self.register_buffer("_start", torch.tensor(start_position, device=self.device))
        else:
            self._start = None
        self.register_buffer("_moves", torch.tensor(MOVES, device=self.device, dtype=torch.long))
        self.register_buffer(
            "position",
            torch.zeros((*self.batch_size, n_coords), dtype=torch.long, device=self.device),
            persistent=False,
        )
        self.register_buffer(
            "step_count",
            torch.zeros((*self.batch_size, 1), dtype=torch.long, device=self.device),
            persistent=False,
        )
        self._rng = torch.Generator(device=self.device)
        self._rng.seed()

    def _set_reward_and_done_specs(self) -> None:
        """Per-agent and planner rewards ``[*B, N, 1]`` / ``[*B, 1, 1]``, root done flags."""
        bs, dev = self.batch_size, self.device
        agents, planner = (*bs, self.n_agents), (*bs, 1)
        self.full_reward_spec = Composite(
            agents=Composite(reward=Unbounded(shape=(*agents, 1), device=dev), shape=agents),
            planner=Composite(reward=Unbounded(shape=(*planner, 1), device=dev), shape=planner),
            shape=bs,
            device=dev,
        )
        flag = Categorical(2, shape=(*bs, 1), dtype=torch.bool, device=dev)
        self.full_done_spec = Composite(
            done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=bs, device=dev
        )

    # ------------------------------------------------------------------ EnvBase API
    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(seed)

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        mask = self._reset_mask(tensordict)
        start = self._draw_start()
        self.position = torch.where(mask, start, self.position)
        self.step_count = torch.where(mask, 0, self.step_count)
        self._reset_extra(mask)
        out = self._observe()
        flags = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        out.update({"done": flags, "terminated": flags.clone(), "truncated": flags.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.position = self._move(self.position, tensordict)
        self.step_count = self.step_count + 1
        out = self._observe()
        rewards = self._payoffs(tensordict)
        for group, reward in rewards.items():
            out.get(group).set("reward", reward)
        truncated = self.step_count >= self.max_steps
        out.update({"done": truncated, "terminated": torch.zeros_like(truncated), "truncated": truncated})
        return out

    @property
    def start_position(self) -> tuple[int, ...] | None:
        """The fixed start position, or ``None`` when starts are uniform over the grid."""
        return None if self._start is None else tuple(self._start.tolist())

    # ------------------------------------------------------------------ helpers
    def _reset_mask(self, tensordict: TensorDictBase | None) -> torch.Tensor:
        """The ``[*B, 1]`` boolean mask of the environments to reset."""
        if tensordict is not None and "_reset" in tensordict.keys():
            return tensordict.get("_reset").reshape(*self.batch_size, 1)
        return torch.ones((*self.batch_size, 1), dtype=torch.bool, device=self.device)

    def _draw_start(self) -> torch.Tensor:
        if self._start is not None:
            return self._start.expand_as(self.position)
        return torch.randint(self.grid_size, self.position.shape, generator=self._rng, device=self.device)

    def _step_coords(self, coords: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Moves ``coords`` by the actions ``{0: stay, 1: +1, 2: -1}``, clipped to the grid."""
        return (coords + self._moves[actions]).clamp_(0, self.grid_size - 1)

    def _flat_position(self, position: torch.Tensor | None = None) -> torch.Tensor:
        """Row-major index of the joint ``position`` (default: the current one), ``[...]``."""
        position = self.position if position is None else position
        flat = torch.zeros(position.shape[:-1], dtype=torch.long, device=position.device)
        for coord in position.unbind(-1):
            flat = flat * self.grid_size + coord
        return flat

    def _time_fraction(self, step_count: torch.Tensor | None = None) -> torch.Tensor:
        step_count = self.step_count if step_count is None else step_count
        return step_count.float() / self.max_steps

    def _observations(self, agents: torch.Tensor, planner: torch.Tensor) -> TensorDict:
        """The observation TensorDict: ``agents`` is ``[*B, N, obs]``, ``planner`` ``[*B, 1, obs_p]``."""
        groups = {
            "agents": TensorDict({"observation": agents}, batch_size=agents.shape[:-1], device=self.device),
            "planner": TensorDict({"observation": planner}, batch_size=planner.shape[:-1], device=self.device),
        }
        return TensorDict(groups, batch_size=self.batch_size, device=self.device)

    # ------------------------------------------------------------------ subclass hooks
    def _move(self, position: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        raise NotImplementedError

    def _reset_extra(self, mask: torch.Tensor) -> None:
        """Resets subclass state where ``mask`` (``[*B, 1]``) is true."""

    def _observe(self) -> TensorDict:
        raise NotImplementedError

    def _payoffs(self, tensordict: TensorDictBase) -> dict[str, torch.Tensor]:
        raise NotImplementedError
