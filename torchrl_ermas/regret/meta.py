"""The first-order meta-gradient of ERMAS (Eq. 13), a term of the agents' loss."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase, TensorDictParams
from torch import nn

from ..validation import check_real
from .deviation import DeviationDistributions
from .trust_region import DeviationBatch, own_log_prob


def own_policy_gradient(dists: DeviationDistributions, params: TensorDictBase, batch: DeviationBatch) -> TensorDictBase:
    """Agent ``i``'s policy gradient at its deviation ``params[i]`` in world ``i``, ``[W]``.

    The importance-weighted mean ``E[(pi' / behaviour) A_i grad log pi'(a_i | s)]`` over
    the world's transitions (the weight is ``1`` on data of the deviation itself): the
    gradient of the PPO surrogate at ratio ``1``, in the units of
    :class:`~torchrl_ermas.objectives.ErmasLoss`'s objective for standardised advantages.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> from torchrl_ermas.regret.deviation import DeviationDistributions
        >>> from torchrl_ermas.regret.trust_region import DeviationBatch
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Linear(1, 2, bias=False), [("agents", "observation")],
        ...                      [("agents", "logits")]),
        ...     in_keys=[("agents", "logits")], out_keys=[("agents", "action")],
        ...     distribution_class=torch.distributions.Categorical)
        >>> params = TensorDict.from_module(actor).data.expand(2).clone().zero_()
        >>> observation = TensorDict({("agents", "observation"): torch.ones(2, 4, 2, 1)}, [2, 4])
        >>> batch = DeviationBatch(observation, action=torch.ones(2, 4, 2, dtype=torch.long),
        ...     behaviour_log_prob=torch.full((2, 4), -0.6931), advantage=torch.ones(2, 4))
        >>> grad = own_policy_gradient(DeviationDistributions(actor, [("agents", "logits")]), params, batch)
        >>> grad["module", "0", "module", "weight"][0].flatten()  # d/dlogits log pi(1) = [-1/2, 1/2]
        tensor([-0.5000,  0.5000])
    """
    leaves = params.detach().clone().requires_grad_()
    log_prob = own_log_prob(dists.deviating_dist(leaves, batch.observation), batch.action)
    weight = (log_prob.detach() - batch.behaviour_log_prob).exp() * batch.advantage
    objective = (weight * log_prob).mean(-1).sum()
    grads = torch.autograd.grad(objective, list(leaves.values(True, True)), allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves.values(True, True), grads)]
    return params.empty().update(dict(zip(params.keys(True, True), grads)))


class MetaGradient(nn.Module):
    r"""The meta term of Agent-Adv-Search (Eq. 13), first order, as a term of the agents' loss.

    The agents descend ``-J_p + sum_i lambda_i (regret_i - epsilon)`` with agent ``i``'s
    regret ``J_i(theta_i'(theta)) - J_i(theta)``, each agent's part normalised by
    ``1 / (1 + lambda_i)`` as in :class:`~torchrl_ermas.objectives.ErmasLoss`. That loss
    holds the planner term and the selfish term ``-lambda_i J_i(theta)``; this module holds
    the rest, ``beta * lambda_i / (1 + lambda_i) * J_i(theta_i')``, at first order (the
    Jacobian of the deviation ``d theta_i' / d theta`` taken as the identity, as in
    first-order MAML and Reptile): agent ``i``'s policy gradient at its deviation
    ``g_i = grad J_i(theta_i')`` (:func:`own_policy_gradient`, measured by the regret
    estimate) is applied to the current parameters. As a loss it is the linear term

    .. math::

        \mathcal{L}_{meta}(\theta) = \frac{1}{N} \sum_i
            \frac{\beta \lambda_i}{1 + \lambda_i} \langle g_i, \theta \rangle,

    added to every minibatch of the agents' PPO updates until the next estimate
    (``1 / N`` is the loss's mean over the agents). With the selfish term, agent ``i``'s
    own-reward direction is ``lambda_i / (1 + lambda_i) (grad J_i(theta) - beta grad
    J_i(theta_i'))``: at ``beta = 1`` the gradient of its local regret, which vanishes where
    the deviation gains nothing (at a Nash equilibrium), and for any ``beta <= 1`` never
    a push against the agent's own gradient, whatever ``lambda``.

    The authors' Reptile parameter step ``theta <- theta - min(beta lambda_i, 2) (theta_i'
    - theta)`` is not used: ``theta_i' - theta`` is to first order the inner step size times
    ``grad J_i(theta)``, in parameter units set by the inner adaptation, with a weight
    ``beta lambda_i`` that grows with ``lambda`` while the selfish term's weight
    ``lambda / (1 + lambda)`` stays below ``1``. So the larger ``lambda`` (the more selfish the
    agents are meant to be), the harder the step pushed them against their own gradient:
    at ``epsilon = -10`` (``lambda`` at its cap) it knocked them out of the Nash equilibrium.

    Args:
        params (TensorDictBase): the agents' policy parameters (e.g.
            ``TensorDict.from_module(actor)``), whose shapes the gradient takes.
        scale (float): ``beta`` in ``[0, 1]``; ``0`` disables the term. Defaults to ``0.0``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> params = TensorDict({"w": torch.zeros(3)})
        >>> meta = MetaGradient(params, scale=0.5)
        >>> gradients = TensorDict({"w": torch.stack([torch.ones(3), 3 * torch.ones(3)])}, [2])
        >>> meta.update(gradients, torch.tensor([1.0, 3.0]))  # (0.5 * 1/2 * 1 + 0.5 * 3/4 * 3) / 2
        >>> meta.gradient["w"]
        tensor([0.6875, 0.6875, 0.6875])
        >>> meta(TensorDict({"w": torch.ones(3)}))  # <gradient, theta>
        tensor(2.0625)
    """

    def __init__(self, params: TensorDictBase, scale: float = 0.0) -> None:
        super().__init__()
        check_real("scale", scale, low=0, high=1)
        self.scale = float(scale)
        #: the combined gradient ``(1 / N) sum_i beta lambda_i / (1 + lambda_i) g_i``
        #: (zero until the first :meth:`update`); a buffer, so it travels with ``state_dict``
        self.gradient = TensorDictParams(params.detach().clone().zero_(), no_convert=True)

    @torch.no_grad()
    def update(self, gradients: TensorDictBase, lagrange: torch.Tensor) -> None:
        """Combines the per-agent gradients ``[N]`` with the multipliers ``lambda`` ``[N]``."""
        lagrange = torch.as_tensor(lagrange).reshape(-1)
        n_agents = gradients.batch_size[0] if gradients.batch_dims else None
        if lagrange.numel() != n_agents:
            raise ValueError(
                f"lagrange must hold n_agents={n_agents} values (one per gradient), got {lagrange.numel()}."
            )
        weight = (self.scale * lagrange / (1 + lagrange)).to(self.gradient.device)
        combined = gradients.apply(lambda g: (g * weight.view(-1, *(1,) * (g.dim() - 1))).mean(0), batch_size=[])
        self.gradient.update_(combined)

    def forward(self, params: TensorDictBase) -> torch.Tensor:
        """The loss ``<gradient, params>``; its gradient with respect to ``params`` is :attr:`gradient`."""
        terms = [(params.get(key) * value).sum() for key, value in self.gradient.items(True, True)]
        return torch.stack(terms).sum()


__all__ = ["MetaGradient", "own_policy_gradient"]
