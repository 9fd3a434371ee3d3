"""ERMAS and its baselines as objects: what each builds for the agents.

The variants differ only in the agents' multipliers ``lambda``: ERMAS learns them from
regret estimates, the fixed-lambda ablation keeps them at their initial value, and MARL
has none (selfish agents, plain multi-agent PPO). Everything else the trainer builds the
same way for all three; the reward-side baselines (reality gap ``Q``, domain
randomization, risk robustness) are reward transforms with a parameter, not variants.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torchrl.objectives import LossModule
from torchrl.objectives.multiagent import MAPPOLoss

from torchrl_ermas.objectives import ErmasLoss, LagrangeMultiplier


@dataclass(frozen=True)
class Variant:
    """A training variant, defined by what happens to the agents' multipliers.

    Attributes:
        name: the variant's name in configs and results (``TrainConfig.variant``).
        multipliers: ``"learned"`` (updated from regret estimates: ERMAS), ``"frozen"``
            (kept at their initial value: the fixed-lambda ablation) or ``None`` (no
            multipliers: MARL).

    Examples:
        >>> VARIANTS["fixed_lambda"].estimates_regret, VARIANTS["marl"].uses_planner_advantage
        (False, False)
        >>> VARIANTS["ermas"].make_multipliers(2, {"init": 8.0}, frozen_at_start=True).value
        tensor([8., 8.])
    """

    name: str
    multipliers: str | None

    @property
    def estimates_regret(self) -> bool:
        """Whether the run estimates the agents' regret (to update the multipliers)."""
        return self.multipliers == "learned"

    @property
    def uses_planner_advantage(self) -> bool:
        """Whether the agents' loss mixes in the planner's advantage (any multipliers)."""
        return self.multipliers is not None

    def make_multipliers(self, n_agents: int, kwargs: dict, *, frozen_at_start: bool) -> LagrangeMultiplier | None:
        """The agents' multipliers from :class:`LagrangeMultiplier` ``kwargs``, or ``None``.

        ``frozen_at_start`` freezes learned multipliers until the first regret estimate
        (the warm-up); frozen ones stay frozen.
        """
        if self.multipliers is None:
            return None
        frozen = self.multipliers == "frozen" or frozen_at_start
        return LagrangeMultiplier(n_agents, **kwargs, frozen=frozen)

    def make_agent_loss(
        self,
        actor: ProbabilisticTensorDictSequential,
        critic: TensorDictModule,
        lagrange: LagrangeMultiplier | None,
        **kwargs,
    ) -> LossModule:
        """:class:`~torchrl_ermas.objectives.ErmasLoss` with the multipliers, or
        :class:`~torchrl.objectives.multiagent.MAPPOLoss` without; ``kwargs`` are the PPO
        settings."""
        if self.multipliers is None:
            return MAPPOLoss(actor, critic, **kwargs)
        return ErmasLoss(actor, critic, lagrange, **kwargs)


#: the variants by name
VARIANTS = {
    variant.name: variant
    for variant in (Variant("ermas", "learned"), Variant("fixed_lambda", "frozen"), Variant("marl", None))
}
