"""Per-agent Lagrange multipliers for ERMAS' Agent-Adv-Search.

ERMAS dualises the epsilon-equilibrium constraint of each agent ``i``
(``regret_i <= epsilon``) with a multiplier ``lambda_i >= 0`` that ascends on
the constraint violation ``regret_i - epsilon`` (Eq. 10 of the ERMAS paper,
https://openreview.net/forum?id=uIc4W6MtbDA).
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedule import anneal_share
from ..validation import check_bool, check_choice, check_int, check_real

RULES = ("nupi", "gradient_ascent")


class LagrangeMultiplier(nn.Module):
    """Per-agent Lagrange multipliers ``lambda_i`` in ``[0, max_value]``.

    ``lambda_i`` weighs agent ``i``'s own objective against the planner's in
    :class:`~torchrl_ermas.objectives.ErmasLoss`: large values make the agent
    selfish, ``0`` makes it fully adversarial to the planner. :meth:`update`
    ascends them on the constraint violation ``e_i = regret_i - epsilon`` with
    one of two rules:

    - ``"nupi"`` (default): the nuPI controller (Sohrabi et al., ICML 2024) on the
      violation in units of its own spread, so that one setting works in any reward unit,
      acting on the planner's weight ``w = 1 / (1 + lambda)`` in the loss (``w = 1``:
      fully adversarial, ``w -> 0``: selfish)::

          s_t  = max(std_beta(e), noise_floor * |reference|)   (EMA, bias-corrected)
          u_t  = clip(e_t / s_t, -max_violation, max_violation)
          xi_t = nu * xi_{t-1} + (1 - nu) * u_t                 (xi_0 = u_1)
          g_t  = 1 / sqrt(1 + sign_change_decay * k_t)          (k_t: sign flips of e after
                                                                 update sign_change_after)
          w    <- clip(w - lr * g_t * (u_t + kp * (xi_t - xi_{t-1})), 1 / (1 + max_value), 1)

      Summed over the updates (at ``g = 1``), ``w = w_0 - lr * (sum_t u_t + kp * (xi_t - xi_0))``: an integral
      term that settles where ``regret ~ epsilon`` and a proportional one that damps the
      oscillation the agents' lag would otherwise cause (they follow ``lambda`` with a
      delay of several updates, so an integral-only rule swings between ``0`` and its
      start). ``nu`` smooths the proportional term against the noise of single estimates;
      ``xi`` starts at the first normalised violation, so that the first update is not
      counted as a change of the violation (a proportional kick that throws ``lambda``
      past the agents' switching point before they have moved).
      The gain ``g_t`` (``1`` by default) is Kesten's rule (1958) when
      ``sign_change_decay > 0``: the step shrinks each time the violation changes sign,
      that is once ``lambda`` moves around its target, so that it settles within a budget,
      while a violation of one sign (the approach, a constraint that cannot hold) keeps
      the full step. At steady state the violations are noise of unit spread, and with a
      constant step every update moves ``w`` by about ``lr`` whatever the run's length.
      The flips of the first ``sign_change_after`` updates do not count: there the agents,
      lagging behind ``lambda``, overshoot the target once or twice, and a step already
      shrunk by those flips brought ``lambda`` back too slowly.
      The spread ``s`` is the standard deviation of the violations (the scale remembers
      about ``1 / (1 - beta)`` updates): violations at the level of the estimate's noise
      and of the oscillation move ``w`` by about ``lr`` per update, while a constraint
      that cannot hold (a violation far outside its spread, every update) moves ``w`` by
      ``lr * max_violation`` per update, towards ``max_value`` (from ``lambda = 1`` to 100
      in about 16 updates with the defaults). Bounded steps of ``w`` keep the
      multiplier from running away while the agents lag behind it, and ``lambda = 0`` is
      reached exactly. ``reference`` (passed to :meth:`update`, e.g. the agents' episode
      returns) floors the spread, so that around ``epsilon ~ 0`` violations at the noise
      level of the regret estimate do not count as whole units; without it the floor is
      ``noise_floor`` times the violations' root mean square. One violation counts at most
      ``max_violation`` spreads: over the first few updates the spread is known from a few
      values only, and an unbounded ratio would throw ``lambda`` between ``0`` and
      ``max_value`` (the proportional term acts on its changes).
    - ``"gradient_ascent"``: the ERMAS authors' plain projected dual ascent
      ``lambda <- clip(lambda + lr * e, 0, max_value)``, in reward units.

    With a budget of ``total_updates``, either rule's step decays linearly to zero over the
    updates after the first ``anneal_start`` share of them (``lr`` times
    ``min(1, (1 - t / total_updates) / (1 - anneal_start))`` at update ``t = 0, 1, ...``), as
    PPO's learning rate is often annealed over a run. The rule's own step does not shrink at
    steady state, since the violation is counted in units of its own spread: when the agents
    follow ``lambda`` within an update or two, the loop settles into a cycle whose amplitude
    in ``w`` is a few ``lr`` (``lambda`` moving by 10-35 % between consecutive estimates in
    the bimatrix game) that no constant step damps. The schedule lets the
    multipliers land within the budget while the first ``anneal_start`` of it track the
    agents at the full step. ``total_updates=None`` (default) keeps a constant step; the
    trainers pass the number of estimates of the run.

    Either rule settles only where the agents' regret is a continuous function of
    ``lambda``. Agents whose policies saturate respond with a step at the ``lambda`` where
    they switch between their own objective and the planner's: no ``lambda`` holds them at
    an intermediate regret, and ``lambda`` keeps correcting their drift to the end of the
    run. An entropy bonus on the agents keeps their policies soft and their response
    continuous (the bimatrix game's Fig. 2 example uses ``0.1``, ten times
    ``PPOConfig``'s default).

    :meth:`forward` returns ``loss_lagrange = -(lambda * e).sum()`` for users who
    drive ``lambda`` with an optimizer instead (its gradient is the raw violation,
    so plain SGD with learning rate ``lr`` and :meth:`project_` after every
    ``optimizer.step()`` reproduces ``"gradient_ascent"``).

    Freezing (:meth:`freeze`, used to warm the agents up before the
    multipliers move) makes :meth:`update` a no-op and gives ``loss_lagrange``
    a zero gradient. Only the gradient is zeroed: an optimizer with momentum
    or weight decay can still move a frozen ``lambda``, so pair the
    optimizer path with plain SGD or skip ``optimizer.step()`` while frozen.
    The frozen flag and the controller's state are buffers, so they travel with
    :meth:`state_dict`.

    Args:
        n_agents (int): number of agents, ``>= 1``.
        init (float, optional): initial value of every ``lambda_i``, in
            ``[0, max_value]``. Defaults to ``1.0``: equal weights on the agent's own
            objective and the planner's (the authors used ``8.0`` in the bimatrix game).
        lr (float, optional): dual step size, ``>= 0``: of the planner's weight
            ``1 / (1 + lambda)`` for ``"nupi"``, in ``lambda`` per unit of reward for
            ``"gradient_ascent"``. Defaults to ``0.01``.
        max_value (float, optional): upper projection bound, finite and ``> 0``.
            Defaults to ``100.0``.
        frozen (bool, optional): whether the multipliers start frozen.
            Defaults to ``False``.
        rule (str, optional): ``"nupi"`` or ``"gradient_ascent"``.
            Defaults to ``"nupi"``.
        kp (float, optional): proportional gain of ``"nupi"``, ``>= 0``.
            Defaults to ``6.0``.
        nu (float, optional): EMA coefficient of the proportional term, in
            ``[0, 1)``. Defaults to ``0.5``.
        scale_decay (float, optional): EMA coefficient ``beta`` of the violation's
            spread, in ``[0, 1)``. Defaults to ``0.9``: the spread remembers about ten
            updates, so it forgets the approach (the violations start at ``-epsilon``
            with the agents at the Nash equilibrium) within the first third of a run of
            30 estimates; a longer memory keeps the approach in the spread for the whole
            run, and a lasting violation then moves ``lambda`` a fraction of ``lr`` per
            update.
        max_violation (float, optional): the largest normalised violation ``|u_t|`` of
            ``"nupi"``, ``> 0``. Defaults to ``3.0``.
        noise_floor (float, optional): the spread's floor relative to ``reference`` (or,
            without one, to the violations' root mean square), ``> 0``. Defaults to ``0.05``.
        sign_change_decay (float, optional): how fast the step of ``"nupi"`` shrinks with
            the sign flips of the violation, ``>= 0``: after ``k`` flips the step is
            ``1 / sqrt(1 + sign_change_decay * k)`` of ``lr``. Defaults to ``0.0``: a
            constant step. With ``2`` (and ``sign_change_after=10``) ``lambda`` settles
            (under 10 %) in 48 of 54 runs of the bimatrix game's Fig. 2 grid (6 seeds;
            17 of 27 with the constant step, 3 seeds), but a run that drifts late is no
            longer brought back: at eps 9 the runs' planner rewards spread from 48 to 89
            around the frontier's 66 (the README's Fig. 2 section has the measurements).
        sign_change_after (int, optional): the updates whose sign flips do not count
            (the approach), ``>= 0``. Defaults to ``10``, the spread's memory
            (``1 / (1 - scale_decay)`` updates with the default ``scale_decay``).
        total_updates (int, optional): the number of :meth:`update` calls of the run, ``>= 1``;
            with it the step decays to zero over the last ``1 - anneal_start`` of them, and
            a further update raises. Defaults to ``None``: a constant step.
        anneal_start (float, optional): the share of ``total_updates`` at the full step, in
            ``[0, 1]`` (``1``: a constant step). Defaults to ``0.6``. It trades tracking for
            settling: in the bimatrix game's Fig. 2 grid the worst run's change of
            ``lambda`` over the last 20 % fell from 18-37 % to 7-17 % at eps 15-25, while
            the worst gap to the exact frontier grew from 3.4 to 6.5 (lambda stops where
            the agents' swing has it), both with the agents at a constant learning rate;
            annealing the agents too (``PPOConfig.anneal_start``) brought the worst gap
            back to 3.2 (the README's Fig. 2 section).

    Examples:
        >>> import torch
        >>> from torchrl_ermas.objectives import LagrangeMultiplier
        >>> lagrange = LagrangeMultiplier(n_agents=2, init=1.0, lr=0.5, rule="gradient_ascent")
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

        The default rule is scale-free: the same violations in other units move
        ``lambda`` the same way.

        >>> small, large = LagrangeMultiplier(1, init=4.0), LagrangeMultiplier(1, init=4.0)
        >>> for regret in (0.0, 0.5, 1.5):
        ...     _ = small.update(torch.tensor([regret]), epsilon=1.0)
        ...     _ = large.update(torch.tensor([1000 * regret]), epsilon=1000.0)
        >>> torch.allclose(small.value, large.value)
        True

        With a budget, the step decays over its last ``1 - anneal_start``:

        >>> annealed = LagrangeMultiplier(1, lr=0.5, rule="gradient_ascent", total_updates=4, anneal_start=0.5)
        >>> [annealed.update(torch.tensor([1.0]), epsilon=0.0).item() for _ in range(4)]
        [1.5, 2.0, 2.5, 2.75]
    """

    def __init__(
        self,
        n_agents: int,
        init: float = 1.0,
        lr: float = 0.01,
        max_value: float = 100.0,
        frozen: bool = False,
        *,
        rule: str = "nupi",
        kp: float = 6.0,
        nu: float = 0.5,
        scale_decay: float = 0.9,
        noise_floor: float = 0.05,
        max_violation: float = 3.0,
        sign_change_decay: float = 0.0,
        sign_change_after: int = 10,
        total_updates: int | None = None,
        anneal_start: float = 0.6,
    ) -> None:
        check_int("n_agents", n_agents, 1)
        check_real("lr", lr, low=0)
        check_real("max_value", max_value, low=0, low_inclusive=False)
        check_real("init", init, low=0, high=max_value)
        check_bool("frozen", frozen)
        check_choice("rule", rule, RULES)
        check_real("kp", kp, low=0)
        check_real("nu", nu, low=0, high=1, high_inclusive=False)
        check_real("scale_decay", scale_decay, low=0, high=1, high_inclusive=False)
        check_real("noise_floor", noise_floor, low=0, low_inclusive=False)
        check_real("max_violation", max_violation, low=0, low_inclusive=False)
        check_real("sign_change_decay", sign_change_decay, low=0)
        check_int("sign_change_after", sign_change_after, 0)
        check_int("total_updates", total_updates, 1, optional=True)
        check_real("anneal_start", anneal_start, low=0, high=1)
        super().__init__()
        self.n_agents = n_agents
        self.lr = float(lr)
        self.max_value = float(max_value)
        self.rule = rule
        self.kp = float(kp)
        self.nu = float(nu)
        self.scale_decay = float(scale_decay)
        self.noise_floor = float(noise_floor)
        self.max_violation = float(max_violation)
        self.sign_change_decay = float(sign_change_decay)
        self.sign_change_after = sign_change_after
        self.total_updates = total_updates
        self.anneal_start = float(anneal_start)
        self.multiplier = nn.Parameter(torch.full((self.n_agents,), float(init)))
        self.register_buffer("_frozen", torch.tensor(bool(frozen)))
        # updates so far (either rule); nuPI state: EMAs of e and e^2 (the spread), EMA of e / s (xi)
        self.register_buffer("_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("_mean_ema", torch.zeros(self.n_agents))
        self.register_buffer("_square_ema", torch.zeros(self.n_agents))
        self.register_buffer("_xi", torch.zeros(self.n_agents))
        # the sign of the last non-zero violation and how often it flipped (step decay)
        self.register_buffer("_last_sign", torch.zeros(self.n_agents))
        self.register_buffer("_sign_changes", torch.zeros(self.n_agents))

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

    @torch.no_grad()
    def update(
        self,
        regret: torch.Tensor,
        epsilon: float | torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step of the update rule, in place; a no-op while frozen.

        Args:
            regret (torch.Tensor): per-agent regret estimate, shape
                ``[n_agents]`` (or ``[n_agents, 1]``).
            epsilon (float or torch.Tensor): the equilibrium slack, a float or
                a tensor broadcastable to ``[n_agents]``.
            reference (torch.Tensor, optional): a per-agent reward scale in the units of
                the regret (e.g. the agents' episode returns), broadcastable to
                ``[n_agents]``; ``"nupi"`` floors its spread at ``noise_floor * |reference|``.

        Returns:
            The new multipliers (detached copy), shape ``[n_agents]``.
        """
        violation = self._violation(regret, epsilon)
        if reference is not None:
            reference = self._per_agent("reference", reference)
        if self.frozen:
            return self.value
        lr = self.lr * self._schedule()
        if self.rule == "gradient_ascent":
            self.multiplier.add_(lr * violation)
        else:
            # the planner's weight w = 1 / (1 + lambda) moves by -lr * step, within
            # [1 / (1 + max_value), 1]
            step = self._nupi_step(violation, reference)
            weight = (1 + self.multiplier).reciprocal() - lr * step
            weight = weight.clamp(1 / (1 + self.max_value), 1.0)
            self.multiplier.copy_(weight.reciprocal() - 1)
        self.project_()
        return self.value

    def _schedule(self) -> float:
        """The share of ``lr`` of this update (``1`` without ``total_updates``); counts it."""
        done = int(self._updates)
        if self.total_updates is not None and done >= self.total_updates:
            raise RuntimeError(
                f"update {done + 1} exceeds total_updates={self.total_updates}; build the multipliers "
                "with the run's number of updates (or total_updates=None for a constant step)."
            )
        self._updates += 1
        if self.total_updates is None:
            return 1.0
        return anneal_share(done, self.total_updates, self.anneal_start)

    def _nupi_step(self, violation: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """``g_t * (u_t + kp * (xi_t - xi_{t-1}))`` on the normalised violation; advances the state
        (:meth:`_schedule` has counted the update)."""
        updates = int(self._updates)
        decay = self.scale_decay
        self._mean_ema.mul_(decay).add_((1 - decay) * violation)
        self._square_ema.mul_(decay).add_((1 - decay) * violation.square())
        correction = 1 - decay**updates
        mean, square = self._mean_ema / correction, self._square_ema / correction
        level = square.sqrt() if reference is None else reference.abs()
        spread = (square - mean.square()).clamp_min(0).sqrt()
        scale = spread.maximum(self.noise_floor * level)
        normalised = torch.where(scale > 0, violation / scale, torch.zeros_like(scale))
        normalised = normalised.clamp(-self.max_violation, self.max_violation)
        if updates == 1:  # no proportional kick from an empty history
            self._xi.copy_(normalised)
        previous = self._xi.clone()
        self._xi.mul_(self.nu).add_((1 - self.nu) * normalised)
        sign = violation.sign()
        if updates > self.sign_change_after:
            self._sign_changes.add_((sign * self._last_sign < 0).to(self._sign_changes.dtype))
        self._last_sign.copy_(torch.where(sign != 0, sign, self._last_sign))
        gain = (1 + self.sign_change_decay * self._sign_changes).rsqrt()
        return gain * (normalised + self.kp * (self._xi - previous))

    def project_(self) -> None:
        """Clamps the multipliers into ``[0, max_value]``, in place."""
        with torch.no_grad():
            self.multiplier.clamp_(0.0, self.max_value)

    def forward(self, regret: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
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
        multiplier = torch.where(self._frozen, self.multiplier.detach(), self.multiplier)
        return -(multiplier * violation).sum()

    def _violation(self, regret: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
        """Validates the inputs and returns the detached ``regret - epsilon``."""
        n_agents = self.n_agents
        like = self.multiplier
        regret = torch.as_tensor(regret, dtype=like.dtype, device=like.device)
        if regret.shape not in ((n_agents,), (n_agents, 1)):
            raise ValueError(
                f"regret must have shape [{n_agents}] or [{n_agents}, 1] "
                f"(one entry per agent), got {list(regret.shape)}."
            )
        if not torch.isfinite(regret).all():
            raise ValueError(f"regret must be finite, got {regret.tolist()}.")
        return (regret.reshape(n_agents) - self._per_agent("epsilon", epsilon)).detach()

    def _per_agent(self, name: str, value: float | torch.Tensor) -> torch.Tensor:
        """``value`` as a finite ``[n_agents]`` tensor (a float or broadcastable tensor)."""
        like = self.multiplier
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        try:
            value = value.expand(self.n_agents)
        except RuntimeError as err:
            raise ValueError(
                f"{name} must be a float or broadcastable to [{self.n_agents}], got shape {list(value.shape)}."
            ) from err
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite, got {value.tolist()}.")
        return value.detach()

    def extra_repr(self) -> str:
        schedule = "" if self.total_updates is None else f", total_updates={self.total_updates}"
        return f"n_agents={self.n_agents}, rule={self.rule!r}, lr={self.lr}, max_value={self.max_value}{schedule}"
