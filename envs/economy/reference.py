"""Reference statistics of the original AI Economist under uniform-random masked agents,
and the same statistics measured on :class:`~torchrl_ermas.envs.economy.EconomyEnv`.

The reference numbers were measured with ``ai-economist==1.7.1`` in the paper configuration
(4 agents, fixed skills and locations, starting coin 0): episode-end values, mean and
standard error over 20 episodes (Gather-Trade-Build) or 60 episodes (Gather-Build without
trade). ``None`` marks a standard error that was not recorded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict.nn import TensorDictModuleBase

from .env import EconomyEnv


class ReferenceStat(NamedTuple):
    """Mean and standard error (``None`` if not recorded) of an episode-end statistic."""

    mean: float
    stderr: float | None


#: ``(tier, planner) -> (number of reference episodes, {statistic: ReferenceStat})``.
REFERENCE_RANDOM_POLICY: dict[tuple[str, str], tuple[int, dict[str, ReferenceStat]]] = {
    ("gather_trade_build", "free_market"): (
        20,
        {
            "coin_sum": ReferenceStat(412, 30),
            "equality": ReferenceStat(0.49, 0.03),
            "swf": ReferenceStat(51, 5),
            "builds": ReferenceStat(28.2, None),
            "trades": ReferenceStat(308, None),
            "labour": ReferenceStat(697, None),
            "coin_rank0": ReferenceStat(70, None),
            "coin_rank1": ReferenceStat(104, None),
            "coin_rank2": ReferenceStat(201, None),
            "coin_rank3": ReferenceStat(38, None),
        },
    ),
    ("gather_trade_build", "us_federal"): (
        20,
        {
            "coin_sum": ReferenceStat(424, 36),
            "equality": ReferenceStat(0.53, 0.03),
            "swf": ReferenceStat(55, 5),
            "builds": ReferenceStat(28.4, None),
            "trades": ReferenceStat(326, None),
            "tax": ReferenceStat(63, None),
            "labour": ReferenceStat(693, None),
            "coin_rank0": ReferenceStat(62, None),
            "coin_rank1": ReferenceStat(102, None),
            "coin_rank2": ReferenceStat(212, None),
            "coin_rank3": ReferenceStat(48, None),
        },
    ),
    ("gather_build", "free_market"): (
        60,
        {
            "coin_sum": ReferenceStat(332, 22),
            "equality": ReferenceStat(0.11, 0.02),
            "builds": ReferenceStat(21.1, 1.5),
            "labour": ReferenceStat(852, 4),
        },
    ),
}


@torch.no_grad()
def random_policy_statistics(env: EconomyEnv, planner: TensorDictModuleBase) -> dict[str, torch.Tensor]:
    """Run one episode per environment with uniform-random masked agents and ``planner``.

    Returns episode-end statistics, one value per environment: ``coin_sum``,
    ``equality``, ``swf`` (equality x mean coin), ``builds``, ``trades``, ``tax``,
    ``labour`` (mean per agent) and ``coin_rank{k}`` (coin of the skill-rank-k agent).

    Examples:
        >>> from torchrl_ermas.envs.economy import FreeMarketPlanner
        >>> env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=20, period=10)
        >>> stats = random_policy_statistics(env, FreeMarketPlanner())
        >>> stats["coin_sum"].shape
        torch.Size([4])
    """
    td = env.reset()
    for _ in range(env.episode_length):
        out = env.step(planner(env.rand_action(td)))
        td = env.step_mdp(out)
    final = out["next"]
    coin = final["agents", "coin"].squeeze(-1)
    rank = final["agents", "skill_rank"].squeeze(-1)
    zeros = torch.zeros_like(coin[:, 0])
    stats = {
        "coin_sum": final["productivity"].squeeze(-1),
        "equality": final["equality"].squeeze(-1),
        "swf": final["equality"].squeeze(-1) * coin.mean(-1),
        "builds": final["agents", "builds"].squeeze(-1).sum(-1) if env.map_tier else zeros,
        "trades": final["trades"].squeeze(-1) if env.trade else zeros,
        "tax": final["tax_revenue"].squeeze(-1),
        "labour": final["agents", "labour"].squeeze(-1).mean(-1),
    }
    for k in range(env.n_agents):
        stats[f"coin_rank{k}"] = (coin * (rank == k)).sum(-1)
    return stats


def compare_to_reference(
    stats: dict[str, torch.Tensor], reference: dict[str, ReferenceStat], n_reference: int
) -> dict[str, tuple[float, float, float, float, float]]:
    """Per statistic: ``(ours, our s.e., reference, reference s.e., z-score)``.

    A reference standard error that was not recorded is estimated from our per-episode
    spread and the reference's episode count.
    """
    rows = {}
    for name, ref in reference.items():
        values = stats[name].double()
        sd = values.std().item()
        se = sd / values.numel() ** 0.5
        ref_se = ref.stderr if ref.stderr is not None else sd / n_reference**0.5
        z = (values.mean().item() - ref.mean) / max((se**2 + ref_se**2) ** 0.5, 1e-12)
        rows[name] = (values.mean().item(), se, ref.mean, ref_se, z)
    return rows
