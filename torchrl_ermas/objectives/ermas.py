"""The ERMAS agent loss: clipped PPO on a lambda-weighted mix of advantages.

Reference: *ERMAS: Learning Policies Robust to Reality Gaps in Multi-Agent
Simulations* (ICLR 2021 submission, https://openreview.net/forum?id=uIc4W6MtbDA),
Eq. 9, as realised by the authors' "WPPO" loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives.multiagent import MAPPOLoss

from torchrl_ermas.objectives.lagrange import LagrangeMultiplier
from torchrl_ermas.objectives.planner import CRITIC_LOSS_TYPES, PlannerAdvantage
from torchrl_ermas.validation import check_bool, check_choice, check_real


def _check_arguments(
    lagrange,
    planner_advantage,
    *,
    clip_epsilon,
    entropy_coeff,
    critic_coeff,
    clip_value,
    loss_critic_type,
    reduction,
    advantage_norm,
    flags: dict[str, Any],
) -> None:
    """:class:`ErmasLoss`'s argument checks: each error names the argument and its range."""
    if not isinstance(lagrange, LagrangeMultiplier):
        raise TypeError(f"lagrange must be a LagrangeMultiplier, got {type(lagrange).__name__}.")
    if planner_advantage is not None and not isinstance(planner_advantage, PlannerAdvantage):
        raise TypeError(
            f"planner_advantage must be a PlannerAdvantage or None, got {type(planner_advantage).__name__}."
        )
    if advantage_norm is not None:
        raise ValueError(
            "ErmasLoss does not support advantage_norm: it would rescale the "
            "agents' advantage but not the planner's. Use normalize_advantage."
        )
    clips = clip_epsilon if isinstance(clip_epsilon, (tuple, list)) else (clip_epsilon,)
    if len(clips) not in (1, 2):
        raise ValueError(f"clip_epsilon must be a number or (low, high), got {clip_epsilon!r}.")
    # the ratio is clipped to [1 - low, 1 + high] in log space: low must stay below 1
    check_real("clip_epsilon", clips[0], low=0, high=1, low_inclusive=False, high_inclusive=False)
    check_real("clip_epsilon", clips[-1], low=0, low_inclusive=False)
    coeffs = entropy_coeff.values() if isinstance(entropy_coeff, Mapping) else [entropy_coeff]
    for coeff in coeffs:
        if coeff is not None:
            check_real("entropy_coeff", coeff, low=0)
    if critic_coeff is not None:
        check_real("critic_coeff", critic_coeff, low=0)
    if clip_value is not None:
        check_real("clip_value", clip_value, low=0, low_inclusive=False)
    check_choice("loss_critic_type", loss_critic_type, CRITIC_LOSS_TYPES)
    check_choice("reduction", reduction, (None, "mean", "sum", "none"))
    for name, flag in flags.items():
        check_bool(name, flag)


class ErmasLoss(MAPPOLoss):
    r"""ERMAS loss for the agent group (Agent-Adv-Search, agent side).

    Each agent ``i`` plays against the planner with weight ``1 / (1 + lambda_i)``
    and for itself with weight ``lambda_i / (1 + lambda_i)``. Per sample, the
    loss is the clipped PPO surrogate ``S`` of the combined advantage,
    minimised:

    .. math::

        A_i^{comb} = \frac{\lambda_i \hat A_i - \hat A_p}{1 + \lambda_i}, \qquad
        \mathcal{L}_{objective} = -S(A_i^{comb}), \qquad
        S(A) = \min\big(\rho A, \operatorname{clip}(\rho, 1 - c, 1 + c) A\big),

    i.e. standard clipped PPO on the advantage the agent maximises. Up to the
    clip asymmetry (see the note below), this minimises the surrogate of
    ``(A_p - lambda_i * A_i) / (1 + lambda_i)``, the authors' form.
    ``A_i`` is agent ``i``'s own advantage and ``A_p`` the
    planner's advantage at the same time step, broadcast over the agents.
    With ``normalize_advantage=True`` each is standardised first
    (``A_i`` per agent over the batch, like :class:`MAPPOLoss`; ``A_p`` over
    the batch, where the authors standardise it per rollout fragment) and the
    two are then combined.

    ``lambda`` is read from ``lagrange``, a
    :class:`~torchrl_ermas.objectives.LagrangeMultiplier` registered as a
    submodule (so it travels with :meth:`state_dict`) but used detached: the
    loss never sends a gradient to it. It does appear in ``loss.parameters()``;
    optimizers skip it since its gradient stays ``None``, or build the agents'
    optimizer from ``loss.actor_network_params`` and
    ``loss.critic_network_params`` only. With ``lambda -> inf`` the loss is
    :class:`~torchrl.objectives.multiagent.MAPPOLoss` on ``A_i`` (selfish
    agents); with ``lambda = 0`` it is clipped PPO on ``-A_p`` (fully
    adversarial agents).

    .. note::
        The authors' loss applies the surrogate to each advantage separately,
        ``(S(A_p) - lambda_i S(A_i)) / (1 + lambda_i)``. Because ``S`` is not
        linear in ``A`` (the clip side depends on the sign of ``A``), that
        differs from :math:`-S(A_i^{comb})` on clipped samples only; both
        have the same gradient inside the trust region.

    The planner advantage is read from the input, not computed on the
    minibatch: compute it on the collected trajectories with a
    :class:`~torchrl_ermas.objectives.PlannerAdvantage` (the planner critic and
    its GAE) before minibatching. Handed to this loss as ``planner_advantage``,
    that component is owned by the loss: call ``loss.planner_advantage(data)``
    on the trajectories, and the loss adds ``loss_planner_critic`` (the planner
    critic's fit) to its output and the planner critic to its parameters. The
    agents' own advantage is computed with
    :class:`~torchrl.objectives.value.MultiAgentGAE` when it is missing from the
    input, exactly as in :class:`MAPPOLoss`.

    Expected layout (``*B`` are the batch dims, e.g. ``[envs, time]``; keys
    are the defaults, see :meth:`set_keys`):

    - ``("agents", "observation")`` and the other actor / critic inputs;
    - ``("agents", "action")``, ``("agents", "action_log_prob")``: ``[*B, n_agents]``
      (plus a trailing action dim for continuous actions);
    - ``("planner", "advantage")``: ``[*B, 1, 1]`` (the planner group has a
      group dim of 1), broadcast to ``[*B, n_agents, 1]``;
    - either ``("agents", "advantage")`` and ``("agents", "value_target")``:
      ``[*B, n_agents, 1]``, or what the value estimator needs to compute
      them: ``("next", "agents", "reward")`` ``[*B, n_agents, 1]`` and the
      root ``("next", "done")`` / ``("next", "terminated")`` ``[*B, 1]``
      (broadcast over the agents by :class:`MultiAgentGAE`).

    Outputs: ``loss_objective``, ``loss_critic``, ``loss_entropy`` (reduced
    with ``reduction``), ``loss_planner_critic`` when the loss owns a
    ``planner_advantage``, and the detached diagnostics ``entropy``,
    ``clip_fraction``, ``kl_approx``, ``ESS``, ``explained_variance``,
    ``max_ratio``, ``mean_ratio`` (scalars) and ``lagrange_multiplier``
    (``[n_agents]``).

    Args:
        actor_network (ProbabilisticTensorDictSequential): the agents' policy,
            with per-agent parameters or shared ones (e.g.
            :class:`~torchrl.modules.MultiAgentMLP`).
        critic_network (TensorDictModule): the agents' critic, fit to their own
            returns; writes ``("agents", "state_value")``.
        lagrange (LagrangeMultiplier): the per-agent multipliers; its
            ``n_agents`` must match the agent dim of the data.

    Keyword Args:
        planner_advantage (PlannerAdvantage, optional): the planner side (critic,
            GAE, critic loss), owned by the loss. Defaults to ``None`` (the planner
            advantage is computed outside the loss).
        clip_epsilon (float or (float, float), optional): PPO ratio clip, or its
            ``(low, high)`` bounds as in TorchRL. Defaults to ``0.3`` (the authors' value).
        entropy_bonus (bool, optional): whether to add the entropy bonus.
            Defaults to ``True``.
        entropy_coeff (float or Mapping, optional): entropy weight, or one per action
            key as in TorchRL. Defaults to ``0.025`` (the authors' value).
        critic_coeff (float, optional): critic loss weight. Defaults to
            ``0.05``, the authors' ``vf_loss_coeff`` on a squared error
            (TorchRL's PPO default is ``1.0``).
        loss_critic_type (str, optional): ``"l1"``, ``"l2"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``, the authors' squared error.
        normalize_advantage (bool, optional): whether to standardise both the
            agents' and the planner's advantage before combining them.
            Defaults to ``True``.
        normalize_advantage_exclude_dims (tuple of int, optional): dims kept
            out of the standardisation statistics. Defaults to ``(-2,)`` (the
            agent dim).
        functional (bool, optional): whether to functionalise the networks.
            Defaults to ``True``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``.
            Defaults to ``"mean"``.
        clip_value (float, optional): PPO value clipping around the stored
            state value; the authors used ``50.0``. Defaults to ``None`` (off).
        separate_losses (bool, optional): if ``True``, parameters shared by the
            actor and the critic are trained on the actor loss only.
            Defaults to ``False``.
        **kwargs: forwarded to :class:`~torchrl.objectives.multiagent.MAPPOLoss`
            (e.g. ``value_norm``, ``samples_mc_entropy``). ``advantage_norm``
            is rejected, since it would rescale the agents' advantage but not
            the planner's.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MultiAgentMLP, ProbabilisticActor
        >>> from torchrl_ermas.objectives import ErmasLoss, LagrangeMultiplier
        >>> n_agents, obs_dim, n_actions, batch = 2, 4, 3, (8, 5)
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         MultiAgentMLP(obs_dim, n_actions, n_agents,
        ...                       centralized=False, share_params=True),
        ...         in_keys=[("agents", "observation")],
        ...         out_keys=[("agents", "logits")],
        ...     ),
        ...     in_keys=[("agents", "logits")],
        ...     out_keys=[("agents", "action")],
        ...     distribution_class=torch.distributions.Categorical,
        ...     return_log_prob=True,
        ... )
        >>> critic = TensorDictModule(
        ...     MultiAgentMLP(obs_dim, 1, n_agents,
        ...                   centralized=True, share_params=True),
        ...     in_keys=[("agents", "observation")],
        ...     out_keys=[("agents", "state_value")],
        ... )
        >>> loss = ErmasLoss(actor, critic, LagrangeMultiplier(n_agents, init=8.0))
        >>> data = TensorDict(
        ...     {
        ...         "agents": {"observation": torch.randn(*batch, n_agents, obs_dim)},
        ...         "planner": {"advantage": torch.randn(*batch, 1, 1)},
        ...         "next": {
        ...             "agents": {
        ...                 "observation": torch.randn(*batch, n_agents, obs_dim),
        ...                 "reward": torch.randn(*batch, n_agents, 1),
        ...             },
        ...             "done": torch.zeros(*batch, 1, dtype=torch.bool),
        ...             "terminated": torch.zeros(*batch, 1, dtype=torch.bool),
        ...         },
        ...     },
        ...     batch_size=batch,
        ... )
        >>> with torch.no_grad():
        ...     data = actor(data)
        >>> out = loss(data)
        >>> total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
        >>> total.backward()
        >>> out["lagrange_multiplier"]
        tensor([8., 8.])
    """

    @dataclass
    class _AcceptedKeys(MAPPOLoss._AcceptedKeys):
        """Configurable tensordict keys (see :meth:`set_keys`).

        Attributes:
            advantage (NestedKey): the agents' own advantage, ``[*B, n_agents, 1]``.
                Defaults to ``("agents", "advantage")``.
            value_target (NestedKey): the agents' value target. Defaults to
                ``("agents", "value_target")``.
            value (NestedKey): the agents' state value. Defaults to
                ``("agents", "state_value")``.
            sample_log_prob (NestedKey): the behaviour log-probability. Defaults
                to ``("agents", "action_log_prob")``; taken from the actor when
                it declares its log-prob keys.
            action (NestedKey): the agents' action. Defaults to
                ``("agents", "action")``; taken from the actor when it declares
                its sample keys.
            reward (NestedKey): the agents' own reward (under ``"next"``).
                Defaults to ``("agents", "reward")``.
            done (NestedKey): the done flag (under ``"next"``). Defaults to the
                root ``"done"``, broadcast over the agents by the value
                estimator.
            terminated (NestedKey): the terminated flag (under ``"next"``).
                Defaults to the root ``"terminated"``.
            planner_advantage (NestedKey): the planner's advantage,
                ``[*B, 1, 1]``. Defaults to ``("planner", "advantage")``.
        """

        advantage: NestedKey = ("agents", "advantage")
        value_target: NestedKey = ("agents", "value_target")
        value: NestedKey = ("agents", "state_value")
        sample_log_prob: NestedKey = ("agents", "action_log_prob")
        action: NestedKey = ("agents", "action")
        reward: NestedKey = ("agents", "reward")
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        planner_advantage: NestedKey = ("planner", "advantage")

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    lagrange: LagrangeMultiplier

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        critic_network: TensorDictModule,
        lagrange: LagrangeMultiplier,
        *,
        planner_advantage: PlannerAdvantage | None = None,
        clip_epsilon: float | tuple[float, float] = 0.3,
        entropy_bonus: bool = True,
        entropy_coeff: float | Mapping[NestedKey, float] | None = 0.025,
        critic_coeff: float = 0.05,
        loss_critic_type: str = "l2",
        normalize_advantage: bool = True,
        normalize_advantage_exclude_dims: tuple[int, ...] = (-2,),
        functional: bool = True,
        reduction: str | None = None,
        clip_value: float | None = None,
        separate_losses: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_arguments(
            lagrange,
            planner_advantage,
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            clip_value=clip_value,
            loss_critic_type=loss_critic_type,
            reduction=reduction,
            advantage_norm=kwargs.get("advantage_norm"),
            flags={
                "entropy_bonus": entropy_bonus,
                "normalize_advantage": normalize_advantage,
                "functional": functional,
                "separate_losses": separate_losses,
            },
        )
        super().__init__(
            actor_network,
            critic_network,
            clip_epsilon=clip_epsilon,
            entropy_bonus=entropy_bonus,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
            normalize_advantage_exclude_dims=normalize_advantage_exclude_dims,
            functional=functional,
            reduction=reduction,
            clip_value=clip_value,
            separate_losses=separate_losses,
            **kwargs,
        )
        self.lagrange = lagrange
        self.planner_advantage = planner_advantage
        if planner_advantage is not None:  # read the advantage where the component writes it
            self.set_keys(planner_advantage=planner_advantage.advantage_key)
        self._in_keys = None  # computed again with the planner's keys

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        self._in_keys.append(self.tensor_keys.planner_advantage)
        planner = getattr(self, "planner_advantage", None)
        if planner is not None:
            keys = [*self._in_keys, *planner.critic.in_keys, planner.value_target_key]
            self._in_keys = list(dict.fromkeys(keys))

    @property
    def out_keys(self) -> list[NestedKey]:
        if self._out_keys is None:
            planner = [] if self.planner_advantage is None else ["loss_planner_critic"]
            self._out_keys = [*super().out_keys, *planner, "lagrange_multiplier"]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values: list[NestedKey]) -> None:
        self._out_keys = values

    def _maybe_normalize_advantage(
        self,
        advantage: torch.Tensor,
        tensordict: TensorDictBase,
        *,
        update_norm: bool,
    ) -> torch.Tensor:
        """Returns the combined advantage ``(lambda * A_i - A_p) / (1 + lambda)``.

        ``ClipPPOLoss.forward`` calls this hook between the value estimator and
        the surrogate, so overriding it is all ERMAS needs from the PPO
        machinery: both advantages are standardised (when requested) and then
        combined.
        """
        own = super()._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)
        if own.ndim < 2 or own.shape[-2] != self.lagrange.n_agents:
            raise ValueError(
                f"The advantage {self.tensor_keys.advantage!r} has shape "
                f"{list(own.shape)}, but the lagrange multiplier expects "
                f"{self.lagrange.n_agents} agents on dim -2 ([*B, n_agents, 1])."
            )
        planner = self._planner_advantage(tensordict, own.shape)
        multiplier = self.lagrange.value.to(own.dtype).unsqueeze(-1)
        return (multiplier * own - planner) / (1 + multiplier)

    def _planner_advantage(self, tensordict: TensorDictBase, shape: torch.Size) -> torch.Tensor:
        key = self.tensor_keys.planner_advantage
        planner = tensordict.get(key, None)
        if planner is None:
            raise KeyError(
                f"ErmasLoss needs the planner advantage at key {key!r}, which is "
                "missing from the input tensordict. Compute it on the collected "
                "trajectories with a PlannerAdvantage (e.g. loss.planner_advantage(data) "
                "when the loss owns one) before minibatching, or point the loss to it "
                "with loss.set_keys(planner_advantage=...)."
            )
        if planner.ndim != len(shape) or any(size not in (1, target) for size, target in zip(planner.shape, shape)):
            raise ValueError(
                f"The planner advantage {key!r} has shape {list(planner.shape)}; "
                f"expected [*B, 1, 1] broadcastable to the agents' advantage "
                f"shape {list(shape)}."
            )
        planner = planner.detach()
        if self.normalize_advantage and planner.numel() > 1:
            planner = self._standardize_advantage(planner, tensordict)
        return planner

    def _check_critic_writes_value(self) -> None:
        """The critic must write the value key the loss reads (a ``ValueOperator`` writes
        a root ``"state_value"``, the default here is the group's)."""
        out_keys = [unravel_key(k) for k in getattr(self.critic_network, "out_keys", ())]
        value = unravel_key(self.tensor_keys.value)
        if out_keys and value not in out_keys:
            raise ValueError(
                f"the critic writes {out_keys} but ErmasLoss reads the agents' values at "
                f"{value}: give the critic out_keys=[{value}] (per-agent values, "
                "[*B, n_agents, 1], e.g. a MultiAgentMLP) or call loss.set_keys(value=...)."
            )

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._check_critic_writes_value()
        td_out = super().forward(tensordict)
        # ClipPPOLoss leaves these statistics shaped like the non-batch dims.
        for key in ("ESS", "explained_variance"):
            value = td_out.get(key, None)
            if value is not None:
                td_out.set(key, value.mean())
        if self.planner_advantage is not None:
            td_out.update(self.planner_advantage.loss(tensordict, self.reduction))
        td_out.set("lagrange_multiplier", self.lagrange.value)
        return td_out
