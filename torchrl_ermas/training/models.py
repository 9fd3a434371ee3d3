"""Policies and critics of a group (the agents or the planner), built from the env specs."""

from __future__ import annotations

import math

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import distributions as D
from torch.distributions.utils import _sum_rightmost
from torchrl.envs import EnvBase
from torchrl.modules import MaskedCategorical, MultiAgentMLP, ProbabilisticActor, TanhNormal

from .config import PPOConfig


class IndependentMaskedCategorical(D.Independent):
    """Independent masked categoricals over the trailing ``event_dims`` action dims.

    A multi-discrete action (for example one tax rate per bracket, ``[..., K]``) is one
    event: its log-probability and entropy are sums over the ``K`` components.

    Args:
        logits: ``[..., K, n]`` unnormalized log-probabilities.
        mask: ``[..., K, n]`` boolean mask, ``False`` for forbidden choices.
        event_dims: number of trailing action dims forming one event. Defaults to ``1``.

    Examples:
        >>> logits = torch.zeros(2, 3, 4)
        >>> mask = torch.tensor([True, True, False, False]).expand(2, 3, 4)
        >>> dist = IndependentMaskedCategorical(logits, mask)
        >>> dist.sample().shape, dist.log_prob(torch.zeros(2, 3, dtype=torch.long))
        (torch.Size([2, 3]), tensor([-2.0794, -2.0794]))
    """

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor, event_dims: int = 1) -> None:
        super().__init__(MaskedCategorical(logits=logits, mask=mask), event_dims)

    @property
    def mask(self) -> torch.Tensor:
        """The mask of the component distributions."""
        return self.base_dist.mask

    @property
    def deterministic_sample(self) -> torch.Tensor:
        """The most likely choice of each component."""
        return self.base_dist.mode


class VmappableTanhNormal(TanhNormal):
    """A :class:`~torchrl.modules.TanhNormal` whose reparameterised samples can be drawn
    under :func:`torch.vmap` with independent draws per batch entry.

    TorchRL's TanhNormal draws its standard normal noise in place into a fresh tensor
    (``Tensor.normal_``), which ``vmap(..., randomness="different")`` refuses; this one
    draws the same noise out of place (``torch.randn``), so that a population of runs samples
    its runs' actions and sampled entropies in one vmapped call. Outside vmap the draws are
    those of TorchRL's TanhNormal, number for number.

    Examples:
        >>> loc, scale = torch.zeros(2, 4, 1), torch.ones(2, 4, 1)
        >>> sample = torch.vmap(lambda m, s: VmappableTanhNormal(m, s).rsample(), randomness="different")
        >>> sample(loc, scale).shape
        torch.Size([2, 4, 1])
        >>> _ = torch.manual_seed(0); ours = VmappableTanhNormal(loc, scale).rsample_and_log_prob((3,))
        >>> _ = torch.manual_seed(0); theirs = TanhNormal(loc, scale).rsample_and_log_prob((3,))
        >>> all(torch.equal(a, b) for a, b in zip(ours, theirs))
        True
    """

    def _preimage(self, sample_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A reparameterised draw of the Normal before the tanh, noise drawn out of place."""
        normal = self.root_dist
        shape = torch.Size(sample_shape) + normal.loc.shape
        return normal.loc + torch.randn(shape, dtype=normal.loc.dtype, device=normal.loc.device) * normal.scale

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        sample = self._preimage(sample_shape)
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability, scored at the Normal draw it
        came from (as TorchRL's TanhNormal scores it)."""
        preimage = self._preimage(sample_shape)
        (transform,) = self.transforms
        sample = transform(preimage)
        # the Normal's term first, as TorchRL's TanhNormal: the order of the graph's nodes
        # sets the order in which the gradients sum, and so their rounding
        log_prob = self.base_dist.log_prob(preimage)
        jacobian = transform.log_abs_det_jacobian(preimage, sample)
        return sample, log_prob - _sum_rightmost(jacobian, len(self.event_shape))


def group_sizes(env: EnvBase, group: str) -> tuple[int, int]:
    """``(n_members, observation_dim)`` of ``group`` in ``env``."""
    obs = env.full_observation_spec[group, "observation"]
    return obs.shape[-2], obs.shape[-1]


def has_action(env: EnvBase, group: str) -> bool:
    """Whether ``group`` acts in ``env`` (a passive planner does not)."""
    return (group, "action") in env.full_action_spec.keys(True, True)


def make_policy(env: EnvBase, group: str, cfg: PPOConfig, device: torch.device) -> ProbabilisticActor:
    """A policy over ``(group, "action")`` reading ``(group, "observation")``.

    Categorical actions get a categorical policy; if the environment exposes
    ``(group, "action_mask")`` it is masked (:class:`~torchrl.modules.MaskedCategorical`).
    Actions with dims beyond the group's (``[*B, n_members, *event]``, e.g. one choice per
    tax bracket) get one independent categorical per component
    (:class:`IndependentMaskedCategorical`, which needs the mask). Continuous actions
    (``[*B, n_members, D]``) get a TanhNormal (:class:`VmappableTanhNormal`) within the
    spec's bounds, as in TorchRL's multi-agent PPO script.
    """
    action_spec = env.full_action_spec[group, "action"]
    if action_spec.dtype.is_floating_point:
        return _continuous_policy(env, group, cfg, device)
    n, obs_dim = group_sizes(env, group)
    if not isinstance(getattr(action_spec.space, "n", None), int):
        raise ValueError(
            f"({group!r}, 'action') must be categorical or continuous to build a policy, got {action_spec}."
        )
    event = action_spec.shape[len(env.full_action_spec[group].shape) :]
    choices = action_spec.space.n
    net = _mlp(obs_dim, math.prod(event) * choices, n, cfg, device)
    if event:
        net = torch.nn.Sequential(net, torch.nn.Unflatten(-1, (*event, choices)))
    module = TensorDictModule(net, [(group, "observation")], [(group, "logits")])
    dist_keys = {"logits": (group, "logits")}
    kwargs = {}
    masked = (group, "action_mask") in env.full_observation_spec.keys(True, True)
    if masked:
        dist_keys["mask"] = (group, "action_mask")
    if event:
        if not masked:
            raise ValueError(
                f"({group!r}, 'action') has component dims {list(event)}: the environment "
                f"must expose ({group!r}, 'action_mask') for them."
            )
        distribution, kwargs = IndependentMaskedCategorical, {"event_dims": len(event)}
    else:
        distribution = MaskedCategorical if masked else D.Categorical
    return ProbabilisticActor(
        module,
        in_keys=dist_keys,
        out_keys=[(group, "action")],
        distribution_class=distribution,
        distribution_kwargs=kwargs,
        return_log_prob=True,
    )


def _mlp(
    obs_dim: int,
    out_dim: int,
    n: int,
    cfg: PPOConfig,
    device: torch.device,
    *,
    depth: int | None = None,
    bias_last_layer: bool | None = None,
) -> MultiAgentMLP:
    """The per-member network of ``cfg`` (a policy's by default: ``cfg.depth`` and
    ``cfg.policy_bias``)."""
    return MultiAgentMLP(
        obs_dim,
        out_dim,
        n_agents=n,
        centralized=False,
        share_params=cfg.share_params,
        depth=cfg.depth if depth is None else depth,
        num_cells=cfg.hidden,
        activation_class=torch.nn.Tanh,
        bias_last_layer=cfg.policy_bias if bias_last_layer is None else bias_last_layer,
        device=device,
    )


def _continuous_policy(env: EnvBase, group: str, cfg: PPOConfig, device: torch.device) -> ProbabilisticActor:
    """A TanhNormal policy (``loc``, ``scale``) over continuous per-member actions."""
    n, obs_dim = group_sizes(env, group)
    action_spec = env.full_action_spec[group, "action"]
    event = action_spec.shape[len(env.full_action_spec[group].shape) :]
    if len(event) != 1:
        raise ValueError(
            f"continuous ({group!r}, 'action') must have one action dim per member, shape "
            f"[*B, n, D]; got {list(action_spec.shape)}."
        )
    net = torch.nn.Sequential(_mlp(obs_dim, 2 * event[0], n, cfg, device), NormalParamExtractor())
    module = TensorDictModule(net, [(group, "observation")], [(group, "loc"), (group, "scale")])
    return ProbabilisticActor(
        module,
        in_keys={"loc": (group, "loc"), "scale": (group, "scale")},
        out_keys=[(group, "action")],
        distribution_class=VmappableTanhNormal,
        distribution_kwargs=dict(zip(("low", "high"), _member_bounds(env, group))),
        return_log_prob=True,
    )


def _member_bounds(env: EnvBase, group: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The action bounds of ``group``'s members in one environment, ``[n, D]`` each: the
    policy then acts on batches of any size (the regret estimator's worlds, a population)."""
    space = env.full_action_spec[group, "action"].space
    batch_dims = len(env.batch_size)
    bounds = []
    for name, bound in (("low", space.low), ("high", space.high)):
        flat = bound.reshape(-1, *bound.shape[batch_dims:])
        if not (flat == flat[0]).all():
            raise ValueError(
                f"({group!r}, 'action') must have the same bounds in every environment of the batch; "
                f"its {name} bound differs between environments."
            )
        bounds.append(flat[0])
    return bounds[0], bounds[1]


def make_critic(env: EnvBase, group: str, cfg: PPOConfig, device: torch.device) -> TensorDictModule:
    """A per-member state-value network writing ``(group, "state_value")``."""
    n, obs_dim = group_sizes(env, group)
    net = _mlp(obs_dim, 1, n, cfg, device, depth=cfg.critic_depth, bias_last_layer=True)
    return TensorDictModule(net, [(group, "observation")], [(group, "state_value")])
