"""Per-agent Lagrange multipliers for ERMAS' Agent-Adv-Search.

ERMAS dualises the epsilon-equilibrium constraint of each agent ``i``
(``regret_i <= epsilon``) with a multiplier ``lambda_i >= 0`` that ascends on
the constraint violation ``regret_i - epsilon`` (Eq. 10 of the ERMAS paper,
https://openreview.net/forum?id=uIc4W6MtbDA).
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_bool, check_int, check_real


class LagrangeMultiplier(nn.Module):
    """Per-agent Lagrange multipliers ``lambda_i`` in ``[0, max_value]``.

    ``lambda_i`` weighs agent ``i``'s own objective against the planner's in
    :class:`~torchrl_ermas.objectives.ErmasLoss`: large values make the agent
    selfish, ``0`` makes it fully adversarial to the planner. The multipliers
    follow projected dual ascent on the regret constraint, as the ERMAS
    authors' code does::

        lambda_i <- clip(lambda_i + lr * (regret_i - epsilon), 0, max_value)

    There are two equivalent ways to drive them:

    - :meth:`update` applies the rule above in place;
    - :meth:`forward` returns ``loss_lagrange``, whose gradient is
      ``-(regret_i - epsilon)``, so one plain SGD step with learning rate
      ``lr`` followed by :meth:`project_` reproduces :meth:`update`. Users
      driving ``lambda`` with an optimizer must call ``lagrange.project_()``
      after every ``optimizer.step()``.

    Freezing (:meth:`freeze`, used to warm the agents up before the
    multipliers move) makes :meth:`update` a no-op and gives ``loss_lagrange``
    a zero gradient. Only the gradient is zeroed: an optimizer with momentum
    or weight decay can still move a frozen ``lambda``, so pair the
    optimizer path with plain SGD or skip ``optimizer.step()`` while frozen.
    The frozen flag is a buffer, so it travels with :meth:`state_dict`.

    Args:
        n_agents (int): number of agents, ``>= 1``.
        init (float, optional): initial value of every ``lambda_i``, in
            ``[0, max_value]``. Defaults to ``8.0`` (the authors' ``lambda_0``
            for the bimatrix game).
        lr (float, optional): dual step size ``alpha_lambda``, ``>= 0``.
            Defaults to ``0.005``.
        max_value (float, optional): upper projection bound, ``> 0``.
            Defaults to ``100.0``.
        frozen (bool, optional): whether the multipliers start frozen.
            Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from torchrl_ermas.objectives import LagrangeMultiplier
        >>> lagrange = LagrangeMultiplier(n_agents=2, init=1.0, lr=0.5)
        >>> lagrange.update(torch.tensor([3.0, -4.0]), epsilon=1.0)
        tensor([2., 0.])
        >>> lagrange.freeze()
        >>> lagrange.update(torch.tensor([3.0, 3.0]), epsilon=1.0)
        tensor([2., 0.])
        >>> lagrange.unfreeze()
        >>> optimizer = torch.optim.SGD(lagrange.parameters(), lr=lagrange.lr)
        >>> lagrange(torch.tensor([3.0, 3.0]), epsilon=1.0).backward()
        >>> optimizer.step()
        >>> lagrange.project_()
        >>> lagrange.value
        tensor([3., 1.])
    """

    def __init__(
        self,
        n_agents: int,
        init: float = 8.0,
        lr: float = 0.005,
        max_value: float = 100.0,
        frozen: bool = False,
    ) -> None:
        check_int("n_agents", n_agents, 1)
        check_real("lr", lr, low=0)
        check_real("max_value", max_value, low=0, low_inclusive=False)
        check_real("init", init)
        check_bool("frozen", frozen)
        if not 0 <= init <= max_value:
            raise ValueError(
                f"init must be in [0, max_value] = [0, {max_value}], got {init}."
            )
        super().__init__()
        self.n_agents = n_agents
        self.lr = float(lr)
        self.max_value = float(max_value)
        self.multiplier = nn.Parameter(torch.full((self.n_agents,), float(init)))
        self.register_buffer("_frozen", torch.tensor(bool(frozen)))

    @property
    def value(self) -> torch.Tensor:
        """A detached copy of the multipliers, shape ``[n_agents]``."""
        return self.multiplier.detach().clone()

    @property
    def frozen(self) -> bool:
        """Whether the multipliers are frozen."""
        return bool(self._frozen)

    def freeze(self) -> None:
        """Stops :meth:`update` and zeroes the gradient of :meth:`forward`."""
        self._frozen.fill_(True)

    def unfreeze(self) -> None:
        """Lets the multipliers move again."""
        self._frozen.fill_(False)

    def update(
        self, regret: torch.Tensor, epsilon: float | torch.Tensor
    ) -> torch.Tensor:
        """Projected dual ascent step, in place; a no-op while frozen.

        Args:
            regret (torch.Tensor): per-agent regret estimate, shape
                ``[n_agents]`` (or ``[n_agents, 1]``).
            epsilon (float or torch.Tensor): the equilibrium slack, a float or
                a tensor broadcastable to ``[n_agents]``.

        Returns:
            The new multipliers (detached copy), shape ``[n_agents]``.
        """
        violation = self._violation(regret, epsilon)
        if not self.frozen:
            with torch.no_grad():
                self.multiplier.add_(self.lr * violation)
                self.project_()
        return self.value

    def project_(self) -> None:
        """Clamps the multipliers into ``[0, max_value]``, in place."""
        with torch.no_grad():
            self.multiplier.clamp_(0.0, self.max_value)

    def forward(
        self, regret: torch.Tensor, epsilon: float | torch.Tensor
    ) -> torch.Tensor:
        """Dual loss ``-(lambda * (regret - epsilon).detach()).sum()``.

        Minimising it ascends ``lambda`` on the constraint violation. While
        frozen, the loss keeps its value but has a zero gradient.

        Args:
            regret (torch.Tensor): per-agent regret estimate, shape
                ``[n_agents]`` (or ``[n_agents, 1]``).
            epsilon (float or torch.Tensor): the equilibrium slack, a float or
                a tensor broadcastable to ``[n_agents]``.

        Returns:
            The scalar ``loss_lagrange``.
        """
        violation = self._violation(regret, epsilon)
        multiplier = torch.where(
            self._frozen, self.multiplier.detach(), self.multiplier
        )
        return -(multiplier * violation).sum()

    def _violation(
        self, regret: torch.Tensor, epsilon: float | torch.Tensor
    ) -> torch.Tensor:
        """Validates the inputs and returns the detached ``regret - epsilon``."""
        n_agents = self.n_agents
        like = self.multiplier
        regret = torch.as_tensor(regret, dtype=like.dtype, device=like.device)
        if regret.shape not in ((n_agents,), (n_agents, 1)):
            raise ValueError(
                f"regret must have shape [{n_agents}] or [{n_agents}, 1] "
                f"(one entry per agent), got {list(regret.shape)}."
            )
        epsilon = torch.as_tensor(epsilon, dtype=like.dtype, device=like.device)
        try:
            epsilon = epsilon.expand(n_agents)
        except RuntimeError as err:
            raise ValueError(
                f"epsilon must be a float or broadcastable to [{n_agents}], "
                f"got shape {list(epsilon.shape)}."
            ) from err
        if not torch.isfinite(regret).all():
            raise ValueError(f"regret must be finite, got {regret.tolist()}.")
        if not torch.isfinite(epsilon).all():
            raise ValueError(f"epsilon must be finite, got {epsilon.tolist()}.")
        return (regret.reshape(n_agents) - epsilon).detach()

    def extra_repr(self) -> str:
        return f"n_agents={self.n_agents}, lr={self.lr}, max_value={self.max_value}"
