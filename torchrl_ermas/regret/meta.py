"""The Reptile meta step of ERMAS (Eq. 13)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from ..validation import check_number


class ReptileStep:
    """Reptile step ``theta <- theta - min(beta * lambda_i, cap) * (theta_i' - theta)`` (Eq. 13).

    ``theta`` are the agents' current parameters and ``theta_i'`` agent ``i``'s short inner
    adaptation on its own reward (the first trust-region deviation step restricted to
    ``KL <= trust_region``, like the ERMAS authors' two PPO iterations); the step is applied
    for each agent in turn, in place, as the authors' code does. ``scale = 0`` disables it.

    The default ``scale`` is ``0``: ``theta_i' - theta`` is to first order the inner step
    size times agent ``i``'s own policy gradient, so the step mostly cancels the selfish
    term ``lambda_i A_i`` of :class:`~torchrl_ermas.objectives.ErmasLoss`. That is what
    Eq. 13 intends at ``beta = 1`` (the selfish term ``lambda grad J_i(theta)`` and the
    Reptile term ``-lambda grad J_i(theta')`` together are ``lambda`` times minus the
    regret's gradient, which is second order in the step), but the two terms are in
    different units: the loss weighs the selfish term by ``lambda / (1 + lambda) <= 1``
    inside an Adam-normalised PPO step, this step by ``min(beta lambda, cap)`` times an
    inner adaptation whose length is set by ``trust_region``. Which one wins depends on
    the ratio of the two step lengths, not on ``beta``: at the authors' ``beta = 0.2`` the
    scale reaches its cap from ``lambda >= 10`` and pushed the agents out of the Nash
    equilibrium even at ``epsilon = -10`` (``examples/bimatrix_meta_ablation.py``
    compares scales).

    Args:
        scale (float): ``beta``, ``>= 0``. Defaults to ``0.0``.
        cap (float): cap of the per-agent scale ``min(beta * lambda_i, cap)``, ``>= 0``.
            Defaults to ``2.0``.
        trust_region (float): KL bound of the inner adaptation, ``> 0``. Defaults to ``0.002``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_ermas.regret import ReptileStep
        >>> params = TensorDict({"w": torch.zeros(3)})
        >>> adapted = TensorDict({"w": torch.stack([torch.ones(3), 2 * torch.ones(3)])}, [2])
        >>> ReptileStep(scale=0.5)(params, adapted, torch.tensor([1.0, 8.0]))
        >>> params["w"]  # - 0.5 * 1 * (1 - 0), then - min(0.5 * 8, 2) * (2 - (-0.5))
        tensor([-5.5000, -5.5000, -5.5000])
    """

    def __init__(self, scale: float = 0.0, cap: float = 2.0, trust_region: float = 0.002) -> None:
        check_number("scale", scale, strict=False)
        check_number("cap", cap, strict=False)
        check_number("trust_region", trust_region)
        self.scale = float(scale)
        self.cap = float(cap)
        self.trust_region = float(trust_region)

    @property
    def enabled(self) -> bool:
        """Whether the step moves the parameters (``scale > 0``)."""
        return self.scale > 0

    @torch.no_grad()
    def __call__(self, params: TensorDictBase, adapted: TensorDictBase, lagrange: torch.Tensor) -> None:
        """Applies the step to ``params`` in place.

        Args:
            params (TensorDictBase): the current parameters (e.g. ``TensorDict.from_module``).
            adapted (TensorDictBase): the stacked ``[n_agents]`` inner adaptations.
            lagrange (torch.Tensor): the multipliers, ``n_agents`` values.
        """
        lagrange = torch.as_tensor(lagrange).reshape(-1)
        n_agents = adapted.batch_size[0] if adapted.batch_dims else None
        if lagrange.numel() != n_agents:
            raise ValueError(
                f"lagrange must hold n_agents={n_agents} values (one per adaptation), got {lagrange.numel()}."
            )
        scales = (self.scale * lagrange).clamp(max=self.cap).tolist()
        for agent, scale in enumerate(scales):
            params.sub_((adapted[agent] - params) * scale)
