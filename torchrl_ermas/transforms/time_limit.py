"""Time limits reported as ``truncated``, for environments that report them as terminal.

VMAS ends an episode at ``max_steps`` with ``terminated=True`` and has no ``truncated``
entry, so value estimators (GAE) treat every time-out as a terminal state and do not
bootstrap there. The torchrl-ermas contract reports time limits as ``truncated``.
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.envs.transforms import StepCounter

from torchrl_ermas.validation import check_int

__all__ = ["TimeLimitAsTruncated"]


class TimeLimitAsTruncated(StepCounter):
    """Marks the episode's time limit as ``truncated`` and not ``terminated``.

    A :class:`~torchrl.envs.transforms.StepCounter` with ``max_steps`` (it adds
    ``step_count`` and ``truncated``), which also clears the root ``terminated`` flag at the
    steps it truncates. Set ``max_steps`` to the environment's own time limit (VMAS's
    ``max_steps``): a true termination on exactly that step is then reported as a
    truncation, the one case a wrapper cannot tell apart. ``done`` is unchanged.

    Args:
        max_steps (int): the time limit, ``>= 1``.

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> base = VmasEnv("navigation", num_envs=2, n_agents=2, max_steps=3)
        >>> env = TransformedEnv(base, TimeLimitAsTruncated(base.max_steps))
        >>> data = env.rollout(3)
        >>> data["next", "done"].squeeze(-1)[0].tolist(), data["next", "terminated"].any().item()
        ([False, False, True], False)
        >>> data["next", "truncated"].squeeze(-1)[0].tolist()
        [False, False, True]
    """

    def __init__(self, max_steps: int) -> None:
        check_int("max_steps", max_steps, 1)
        super().__init__(max_steps=max_steps)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict = super()._step(tensordict, next_tensordict)
        terminated = next_tensordict.get("terminated", None)
        if terminated is not None:
            truncated = next_tensordict.get("truncated")
            next_tensordict.set("terminated", terminated & ~truncated)
        return next_tensordict
