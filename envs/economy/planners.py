"""Fixed tax planners (free market, US federal, fixed rates, Saez) as TensorDict modules.

Each planner reads the planner group of an :class:`~torchrl_ermas.envs.economy.EconomyEnv`
built with ``planner_action="rates"`` and writes bracket rates ``[*B, 1, K]`` to
``("planner", "action")``. The environment applies them on the first step of each tax
period and ignores them otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from torchrl_ermas.validation import check_choice, check_int, check_real

from .saez import ParetoWeight, estimate_elasticity, saez_bracket_rates
from .tax import US_FEDERAL_2018_RATES, BracketTax, validate_rates

_ACTION = ("planner", "action")
_OBSERVATION = ("planner", "observation")


class FixedRatePlanner(TensorDictModuleBase):
    """Emits the same bracket rates at every step.

    Args:
        rates: one rate in ``[0, 1]`` per bracket.
        n_brackets: number of tax brackets. Defaults to ``7``.

    Examples:
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> env = EconomyEnv(batch_size=2, tier="labour", planner_action="rates", episode_length=20, period=10)
        >>> planner = FixedRatePlanner([0.1] * 7)
        >>> planner(env.reset())["planner", "action"].shape
        torch.Size([2, 1, 7])
    """

    def __init__(self, rates: Sequence[float] | torch.Tensor, n_brackets: int = 7) -> None:
        super().__init__()
        self.register_buffer("rates", validate_rates(rates, n_brackets, "rates"))
        self.in_keys = [_OBSERVATION]
        self.out_keys = [_ACTION]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(_OBSERVATION)
        rates = self.rates.to(obs.device).expand(*obs.shape[:-1], -1)
        return tensordict.set(_ACTION, rates.clone())


class FreeMarketPlanner(FixedRatePlanner):
    """No taxes: all bracket rates are 0 (the reference's ``disable_taxes``).

    Args:
        n_brackets: number of tax brackets. Defaults to ``7``.

    Examples:
        >>> FreeMarketPlanner().rates
        tensor([0., 0., 0., 0., 0., 0., 0.])
    """

    def __init__(self, n_brackets: int = 7) -> None:
        super().__init__(torch.zeros(n_brackets), n_brackets)


class USFederalPlanner(FixedRatePlanner):
    """The 2018 US federal single-filer rates (on brackets scaled by 1/1000).

    Examples:
        >>> USFederalPlanner().rates
        tensor([0.1000, 0.1200, 0.2200, 0.2400, 0.3200, 0.3500, 0.3700])
    """

    def __init__(self) -> None:
        super().__init__(US_FEDERAL_2018_RATES)


class SaezPlanner(TensorDictModuleBase):
    """The AI Economist's adaptive Saez planner, with one schedule shared by all envs.

    Incomes and marginal rates reported at the end of each tax period go into a FIFO
    buffer holding ``buffer_size`` samples per environment (the reference's global buffer
    across replicas). Until it holds ``buffer_size`` samples, each environment draws its
    rates i.i.d. uniformly on ``[0, 1]`` per bracket and period. Afterwards each period's
    rates come from :func:`~torchrl_ermas.envs.economy.saez.saez_bracket_rates` on the
    whole buffer, with a running OLS elasticity estimate (EMA 0.98, starting at 0.5) or a
    fixed elasticity.

    Args:
        cutoffs: bracket cutoffs; defaults to the scaled US-2018 ones.

    Keyword Args:
        fixed_elasticity: if set, used instead of the estimate (the ERMAS code used
            ``3.0``). Defaults to ``None``.
        pareto_weight: ``"inverse_income"`` (default) or ``"uniform"`` welfare weights.
        buffer_size: samples per environment kept, and the warm-up threshold. Defaults to
            ``500``.
        generator: random generator for the warm-up rates.

    Examples:
        >>> from torchrl_ermas.envs.economy import EconomyEnv
        >>> env = EconomyEnv(batch_size=4, tier="labour", planner_action="rates", episode_length=40, period=10)
        >>> planner = SaezPlanner(fixed_elasticity=3.0, buffer_size=8)
        >>> td = env.reset()
        >>> for _ in range(40):
        ...     _, td = env.step_and_maybe_reset(planner(env.rand_action(td)))
        >>> planner.n_samples, planner.warmed_up
        (32, True)
    """

    def __init__(
        self,
        cutoffs: Sequence[float] | None = None,
        *,
        fixed_elasticity: float | None = None,
        pareto_weight: ParetoWeight = "inverse_income",
        buffer_size: int = 500,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if fixed_elasticity is not None:
            check_real("fixed_elasticity", fixed_elasticity, low=0)
        check_choice("pareto_weight", pareto_weight, ("inverse_income", "uniform"))
        check_int("buffer_size", buffer_size, 1)
        self.tax = BracketTax(cutoffs)
        self.fixed_elasticity = fixed_elasticity
        self.pareto_weight = pareto_weight
        self.buffer_size = int(buffer_size)
        self.generator = generator
        self.elasticity = 0.5
        self.warmed_up = False
        self.n_samples = 0
        self._head = 0
        self.register_buffer("income_buffer", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("rate_buffer", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("rates", torch.zeros(0, self.tax.n_brackets))
        self.in_keys = [
            ("planner", "period_start"),
            ("planner", "taxes_enacted"),
            ("planner", "income"),
            ("planner", "marginal_rate"),
        ]
        self.out_keys = [_ACTION]

    def get_extra_state(self) -> dict[str, float | int | bool]:
        """The buffer's bookkeeping and the elasticity estimate (saved in checkpoints)."""
        return {
            "elasticity": self.elasticity,
            "warmed_up": self.warmed_up,
            "n_samples": self.n_samples,
            "head": self._head,
        }

    def set_extra_state(self, state: dict[str, float | int | bool]) -> None:
        self.elasticity, self.warmed_up = state["elasticity"], state["warmed_up"]
        self.n_samples, self._head = state["n_samples"], state["head"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the buffers are sized by the number of environments at the first call
        for name in ("income_buffer", "rate_buffer", "rates"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _resize(self, n_envs: int, device: torch.device) -> None:
        """Buffers for ``n_envs`` environments, keeping the newest samples and the schedule."""
        income, rate = self._ordered_samples()
        capacity = self.buffer_size * n_envs
        self.income_buffer = torch.zeros(capacity, dtype=torch.float64, device=device)
        self.rate_buffer = torch.zeros(capacity, dtype=torch.float64, device=device)
        self.n_samples, self._head = 0, 0
        if income.numel():
            self._push(income.to(device), rate.to(device))
        schedule = self.rates[:1] if self.rates.shape[0] else torch.zeros(1, self.tax.n_brackets)
        self.rates = schedule.to(device).expand(n_envs, -1).clone()

    def _ordered_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffered (income, rate) samples, oldest first."""
        capacity = self.income_buffer.numel()
        order = (self._head - self.n_samples + torch.arange(self.n_samples)) % max(capacity, 1)
        order = order.to(self.income_buffer.device)
        return self.income_buffer[order], self.rate_buffer[order]

    def _push(self, income: torch.Tensor, rate: torch.Tensor) -> None:
        capacity = self.income_buffer.numel()
        income, rate = income[-capacity:].double(), rate[-capacity:].double()
        idx = (self._head + torch.arange(income.numel(), device=income.device)) % capacity
        self.income_buffer[idx] = income
        self.rate_buffer[idx] = rate
        self._head = (self._head + income.numel()) % capacity
        self.n_samples = min(capacity, self.n_samples + income.numel())

    def _new_rates(self, n_envs: int, device: torch.device) -> torch.Tensor:
        if not self.warmed_up:
            self.warmed_up = self.n_samples >= self.buffer_size
        if not self.warmed_up:
            return torch.rand(n_envs, self.tax.n_brackets, device=device, generator=self.generator)
        income = self.income_buffer[: self.n_samples]
        self.elasticity = estimate_elasticity(income, self.rate_buffer[: self.n_samples], self.elasticity)
        elasticity = self.elasticity if self.fixed_elasticity is None else self.fixed_elasticity
        rates = saez_bracket_rates(income, self.tax.cutoffs, elasticity, self.pareto_weight)
        return rates.float().to(device).expand(n_envs, -1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        start = tensordict.get(self.in_keys[0])
        batch = start.shape[:-2]
        start = start.reshape(-1)
        enacted = tensordict.get(self.in_keys[1]).reshape(-1)
        n_envs, device = start.numel(), start.device
        if self.rates.shape[0] != n_envs:
            self._resize(n_envs, device)
        if enacted.any():
            n_agents = tensordict.get(self.in_keys[2]).shape[-1]
            income = tensordict.get(self.in_keys[2]).reshape(n_envs, n_agents)[enacted]
            rate = tensordict.get(self.in_keys[3]).reshape(n_envs, n_agents)[enacted]
            self._push(income.reshape(-1), rate.reshape(-1))
        if start.any():
            self.rates = torch.where(start.unsqueeze(-1), self._new_rates(n_envs, device), self.rates)
        return tensordict.set(_ACTION, self.rates.reshape(*batch, 1, -1).clone())
