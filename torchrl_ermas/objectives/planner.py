"""The planner side of ERMAS in one component: the planner's critic, advantage and critic loss."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import unravel_key
from torch import nn
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import MultiAgentGAE

from torchrl_ermas.validation import check_choice, check_real

#: the critic losses of TorchRL's ``distance_loss``
CRITIC_LOSS_TYPES = ("l1", "l2", "smooth_l1")
#: the reductions of TorchRL's losses
REDUCTIONS = ("mean", "sum", "none")


class PlannerAdvantage(nn.Module):
    """The planner's critic, its advantage (GAE) and the critic's loss.

    :class:`~torchrl_ermas.objectives.ErmasLoss` mixes each agent's own advantage with the
    planner's, ``(lambda_i * A_i - A_p) / (1 + lambda_i)``, so an ERMAS pipeline needs the
    planner's advantage ``A_p`` in the data before the agents' loss runs, and a planner
    critic that is fit to the planner's returns, whether or not the planner itself learns.
    This module is that side of the pipeline:

    - calling it on collected trajectories (``[*B, time]``, before minibatching) writes
      ``(group, "advantage")`` and ``(group, "value_target")`` with
      :class:`~torchrl.objectives.value.MultiAgentGAE` on the critic, without gradients;
    - :meth:`loss` on a minibatch returns ``loss_planner_critic``, ``critic_coeff`` times
      the distance between the critic's value and the value target.

    Hand it to :class:`~torchrl_ermas.objectives.ErmasLoss` (``planner_advantage=``) and the
    agents' loss adds ``loss_planner_critic`` to its output and the critic to its
    parameters; or use it on its own beside a planner's PPO loss.

    Args:
        critic (TensorDictModule): the planner's state-value network, writing
            ``(group, "state_value")`` of shape ``[*B, 1, 1]`` (the planner group has a
            group dim of 1).

    Keyword Args:
        gamma (float): discount, in ``(0, 1]``. Defaults to ``0.9``.
        lmbda (float): GAE lambda, in ``[0, 1]``. Defaults to ``0.9``.
        critic_coeff (float): weight of the critic loss, ``>= 0``. Defaults to ``1.0``.
        loss_critic_type (str): ``"l1"``, ``"l2"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        group (str): the planner's group in the data. Defaults to ``"planner"``.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MultiAgentMLP
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> from torchrl_ermas.objectives import PlannerAdvantage
        >>> env = SequentialBimatrixEnv(4, max_steps=10)
        >>> obs = env.full_observation_spec["planner", "observation"].shape[-1]
        >>> critic = TensorDictModule(
        ...     MultiAgentMLP(obs, 1, n_agents=1, centralized=False, share_params=True),
        ...     [("planner", "observation")], [("planner", "state_value")])
        >>> planner = PlannerAdvantage(critic)
        >>> data = planner(env.rollout(10))
        >>> data["planner", "advantage"].shape
        torch.Size([4, 10, 1, 1])
        >>> planner.loss(data.reshape(-1))["loss_planner_critic"].backward()
    """

    def __init__(
        self,
        critic: TensorDictModule,
        *,
        gamma: float = 0.9,
        lmbda: float = 0.9,
        critic_coeff: float = 1.0,
        loss_critic_type: str = "l2",
        group: str = "planner",
    ) -> None:
        super().__init__()
        check_real("gamma", gamma, low=0, low_inclusive=False, high=1)
        check_real("lmbda", lmbda, low=0, high=1)
        check_real("critic_coeff", critic_coeff, low=0)
        check_choice("loss_critic_type", loss_critic_type, CRITIC_LOSS_TYPES)
        self.value_key = (group, "state_value")
        self.advantage_key = (group, "advantage")
        self.value_target_key = (group, "value_target")
        out_keys = [unravel_key(k) for k in getattr(critic, "out_keys", ())]
        if out_keys and self.value_key not in out_keys:
            raise ValueError(
                f"the planner critic writes {out_keys} but PlannerAdvantage reads the "
                f"planner's value at {self.value_key}: give the critic "
                f"out_keys=[{self.value_key}] (shape [*B, 1, 1]) or set group."
            )
        self.critic = critic
        self.critic_coeff = critic_coeff
        self.loss_critic_type = loss_critic_type
        self.gae = MultiAgentGAE(gamma=gamma, lmbda=lmbda, value_network=critic)
        self.gae.set_keys(
            advantage=self.advantage_key,
            value_target=self.value_target_key,
            value=self.value_key,
            reward=(group, "reward"),
        )

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes the planner's advantage and value target into trajectories ``[*B, time]``."""
        return self.gae(tensordict)

    def loss(self, tensordict: TensorDictBase, reduction: str = "mean") -> TensorDictBase:
        """``loss_planner_critic`` on a batch that holds the value target (see :meth:`forward`),
        reduced over the batch by ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``, which
        keeps the ``[*B, 1, 1]`` shape of the value)."""
        check_choice("reduction", reduction, REDUCTIONS)
        target = tensordict.get(self.value_target_key, None)
        if target is None:
            raise KeyError(
                f"the planner's value target {self.value_target_key} is missing: call the "
                "PlannerAdvantage on the collected trajectories (before minibatching) first."
            )
        value = self.critic(tensordict.select(*self.critic.in_keys).copy()).get(self.value_key)
        distance = distance_loss(value, target.detach(), loss_function=self.loss_critic_type)
        distance = {"mean": distance.mean, "sum": distance.sum, "none": lambda: distance}[reduction]()
        return TensorDict({"loss_planner_critic": self.critic_coeff * distance}, [])
