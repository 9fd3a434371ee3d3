"""Per-agent KL divergence of a frozen reference snapshot of a policy to the live policy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential
from tensordict.utils import NestedKey, unravel_key
from torch.distributions import Distribution, kl_divergence
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import Transform

from torchrl_ermas.validation import check_int, check_module_params

__all__ = ["KLToReference"]


def _kl(p: Distribution, q: Distribution, num_samples: int) -> torch.Tensor:
    """``KL(p || q)``: analytic where registered, Monte-Carlo over draws from ``p`` otherwise."""
    try:
        return kl_divergence(p, q)
    except NotImplementedError:
        # q may carry leading batch dims that p broadcasts over (candidates [C, *B])
        extra = (1,) * (len(q.batch_shape) - len(p.batch_shape))
        sample = p.sample((num_samples, *extra))
        return (p.log_prob(sample) - q.log_prob(sample)).mean(0)


class KLToReference(Transform):
    """Writes the per-agent ``KL(pi_ref || pi)`` of a policy from a frozen copy of its parameters.

    ``pi`` is the live ``policy`` (its current parameters, read at every call) and ``pi_ref``
    the same architecture with the reference parameters, a frozen copy taken at construction
    (or given as ``reference_params``) and refreshed by :meth:`update_reference`. This is the
    ERMAS trust region (Eq. 12: ``KL(pi || pi') <= eta`` for a unilateral deviation ``pi'`` of
    the agents' policy ``pi``), with ``pi_ref`` the policy the deviation started from and the
    live policy the deviation. :class:`~torchrl_ermas.regret.ReptileRegretEstimator` bounds its
    deviations with this transform (through :meth:`reference_dist` and :meth:`divergence`).

    - Online (inside a :class:`~torchrl.envs.TransformedEnv`), each step computes the KL at the
      observation the policy acted on (the root data at time ``t``, which must hold the
      policy's ``in_keys``) and writes it to ``("next", out_key)``. Resets write zeros.
    - Offline, :meth:`forward` computes the KL from the root entries of a batch of collected
      data (usable as a collector ``postproc`` or a replay-buffer transform) and writes it
      under ``"next"`` when the data has a ``"next"`` entry, at the root otherwise.

    The KL is analytic (:func:`torch.distributions.kl_divergence`) where a rule is registered
    for the pair of distributions, and a Monte-Carlo estimate ``mean(log pi_ref(x) - log
    pi(x))`` over ``num_samples`` draws ``x ~ pi_ref`` (from torch's global generator)
    otherwise. It is computed without gradients. Its shape is the distribution's batch shape
    (``[*B, N]`` for per-agent categorical policies) plus a trailing ``1``.

    The live policy is not registered as a submodule (it belongs to the learner); the
    reference parameters are (as buffers), so they follow ``.to(device)`` and ``state_dict``.

    Args:
        policy (ProbabilisticTensorDictSequential): the policy, e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` over a
            :class:`~torchrl.modules.MultiAgentMLP` (shared or per-agent parameters).

    Keyword Args:
        in_keys (sequence of NestedKey, optional): the entries the policy's distribution is
            computed from. Defaults to ``policy.in_keys``.
        out_key (NestedKey): where the KL is written; nested in the policy's group so that its
            spec is ``[*group shape, 1]``. Defaults to ``("agents", "kl_ref")``.
        reference_params (TensorDictBase, optional): reference parameters with the structure
            of ``TensorDict.from_module(policy)``, or such parameters stacked on one leading
            dim (one reference per world, see :meth:`update_reference`); copied. Defaults to a
            copy of the policy's current parameters.
        num_samples (int): Monte-Carlo samples where no analytic KL is registered.
            Defaults to ``64``.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torch.distributions import Categorical
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.modules import MultiAgentMLP, ProbabilisticActor
        >>> from torchrl_ermas.envs import SequentialBimatrixEnv
        >>> base = SequentialBimatrixEnv(4, max_steps=5)
        >>> net = MultiAgentMLP(
        ...     n_agent_inputs=base.agent_obs_dim, n_agent_outputs=3, n_agents=2,
        ...     centralised=False, share_params=True, depth=1, num_cells=16,
        ... )
        >>> policy = ProbabilisticActor(
        ...     TensorDictModule(net, [("agents", "observation")], [("agents", "logits")]),
        ...     in_keys=[("agents", "logits")], out_keys=[("agents", "action")],
        ...     distribution_class=Categorical, return_log_prob=True,
        ... )
        >>> kl = KLToReference(policy)
        >>> env = TransformedEnv(base, kl)
        >>> env.rollout(5, policy)["next", "agents", "kl_ref"].abs().max()
        tensor(0.)
        >>> with torch.no_grad():
        ...     _ = net.params.apply(lambda p: p.add_(0.5))
        >>> data = env.rollout(5, policy)
        >>> kl_ref = data["next", "agents", "kl_ref"]
        >>> kl_ref.shape, bool((kl_ref > 0).all())
        (torch.Size([4, 5, 2, 1]), True)
    """

    def __init__(
        self,
        policy: ProbabilisticTensorDictSequential,
        *,
        in_keys: Sequence[NestedKey] | None = None,
        out_key: NestedKey = ("agents", "kl_ref"),
        reference_params: TensorDictBase | None = None,
        num_samples: int = 64,
    ) -> None:
        if not callable(getattr(policy, "get_dist", None)):
            raise ValueError(
                f"policy must build its distribution with get_dist (a ProbabilisticActor), got {type(policy).__name__}."
            )
        out_key = unravel_key(out_key)
        if not isinstance(out_key, tuple):
            raise ValueError(
                f"out_key must be nested in the policy's group, e.g. ('agents', 'kl_ref'), got {out_key!r}."
            )
        check_int("num_samples", num_samples, 1)
        if in_keys is None:
            in_keys = policy.in_keys
        super().__init__(in_keys=[unravel_key(k) for k in in_keys], out_keys=[out_key])
        self.out_key = out_key
        self.num_samples = num_samples
        self.__dict__["_policy"] = policy
        if reference_params is None:
            reference_params = TensorDict.from_module(policy)
        self._reference = TensorDictParams(self._check_params(reference_params).data.clone(), no_convert=True)

    @property
    def policy(self) -> ProbabilisticTensorDictSequential:
        """The live policy (not a submodule of the transform)."""
        return self.__dict__["_policy"]

    @property
    def reference_params(self) -> TensorDictParams:
        """The frozen reference parameters, shaped as ``TensorDict.from_module(policy)``."""
        return self._reference

    def update_reference(self, params: TensorDictBase | None = None) -> None:
        """Copies ``params`` (default: the policy's current parameters) into the reference.

        ``params`` may be stacked on one leading dim ``W`` (``batch_size=[W]``): one reference
        per world, e.g. the runs of a population in
        :class:`~torchrl_ermas.regret.ReptileRegretEstimator`. :meth:`reference_dist` then
        evaluates entry ``w`` of data ``[W, ...]`` under reference ``w``.
        """
        if params is None:
            params = TensorDict.from_module(self.policy)
        params = self._check_params(params).data
        if params.batch_size == self._reference.batch_size:
            self._reference.data.update_(params)
        else:
            self._reference = TensorDictParams(params.clone(), no_convert=True)

    def _check_params(self, params: TensorDictBase) -> TensorDictBase:
        return check_module_params("reference_params", params, self.policy, stacked=(False, True))

    def reference_dist(self, tensordict: TensorDictBase) -> Distribution:
        """The reference policy's distribution at the root entries of ``tensordict``
        (``[W, ...]`` with references stacked per world)."""
        policy = self.policy
        inputs = tensordict.select(*self.in_keys)
        with torch.no_grad():
            if not self._reference.batch_dims:
                with self._reference.to_module(policy):
                    return policy.get_dist(inputs)
            return policy.build_dist_from_params(torch.vmap(self._dist_params)(self._reference.data, inputs))

    def _dist_params(self, params: TensorDictBase, inputs: TensorDictBase) -> TensorDictBase:
        with params.to_module(self.policy):
            return self.policy.get_dist_params(inputs)

    def divergence(self, reference: Distribution, policy: Distribution) -> torch.Tensor:
        """``KL(reference || policy)`` of two distributions (no trailing dim added).

        ``policy`` may carry leading batch dims that ``reference`` broadcasts over, e.g.
        candidate deviations ``[C, *B, N]`` against the reference ``[*B, N]``.
        """
        return _kl(reference, policy, self.num_samples)

    def kl(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``KL(pi_ref || pi)`` at the root entries of ``tensordict``, trailing dim 1 added."""
        with torch.no_grad():
            live = self.policy.get_dist(tensordict.select(*self.in_keys))
            return self.divergence(self.reference_dist(tensordict), live).unsqueeze(-1)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set(self.out_key, self.kl(tensordict))
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        spec = self.parent.full_observation_spec[self.out_key[:-1]]
        zeros = torch.zeros((*spec.shape, 1), device=tensordict_reset.device)
        tensordict_reset.set(self.out_key, zeros)
        return tensordict_reset

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        target = tensordict.get("next", None)
        (tensordict if target is None else target).set(self.out_key, self.kl(tensordict))
        return tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        group = observation_spec[self.out_key[:-1]]
        observation_spec[self.out_key] = Unbounded(shape=(*group.shape, 1), device=observation_spec.device)
        return observation_spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(policy={type(self.policy).__name__}, "
            f"in_keys={self.in_keys}, out_key={self.out_key})"
        )
