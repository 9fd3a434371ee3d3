"""Statistics of EconomyEnv under random masked agents versus the original AI Economist.

Runs our environment for each reference configuration (``REFERENCE_RANDOM_POLICY``: tier,
planner and agent policy) and prints mean +- s.e.
beside the recorded reference numbers, with a z-score. When ``ai_economist`` is importable
(``pip install --no-deps ai-economist==1.7.1`` plus ``numpy<1.24 scipy lz4 pycryptodome
GPUtil``), the original package is also run side by side with the same random policy.

    python benchmarks/economy_parity.py --envs 200 --reference-episodes 20
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch
from original_economy import paper_env
from torchrl_ermas.envs.economy.reference import (
    ACTION_KINDS,
    PROGRESSIVE_RATES,
    REFERENCE_POLICIES,
    REFERENCE_RANDOM_POLICY,
    compare_to_reference,
    reference_statistics,
)

#: Episodes the original's Saez planner runs before the measured ones (its 500-sample warm-up
#: takes 12.5 episodes).
SAEZ_WARMUP_EPISODES = 15


def original_statistics(tier: str, planner: str, policy: str, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """The same statistics from the original package (paper configuration, notes 2.1), with
    the agents drawing allowed actions with the weights of ``REFERENCE_POLICIES[policy]``."""
    if planner == "free_market":
        tax = {"tax_model": "model_wrapper", "disable_taxes": True}
    elif planner == "us_federal":
        tax = {"tax_model": "us-federal-single-filer-2018-scaled"}
    elif planner == "saez":
        tax = {"tax_model": "saez", "saez_fixed_elas": 3.0}
    else:
        rates = [0.3] * 7 if planner == "flat_0.3" else list(PROGRESSIVE_RATES)
        tax = {"tax_model": "fixed-bracket-rates", "fixed_bracket_rates": rates}
    env = paper_env(tier, tax)
    env.seed(seed)
    rng = np.random.default_rng(seed)
    bias = dict.fromkeys(ACTION_KINDS, 1.0) | (REFERENCE_POLICIES[policy] or {})
    n_orders = 44 if tier == "gather_trade_build" else 0
    weights = np.array([bias["noop"], bias["build"]] + [bias["order"]] * n_orders + [bias["move"]] * 4)
    rows: dict[str, list[float]] = {}
    warmup = SAEZ_WARMUP_EPISODES if planner == "saez" else 0
    for episode in range(warmup + episodes):
        obs = env.reset()
        for _ in range(env.episode_length):
            actions = {}
            for key, o in obs.items():
                if key == "p":
                    continue  # the planners of the reference rows take no actions
                w = weights * np.asarray(o["action_mask"])
                actions[key] = int(rng.choice(len(w), p=w / w.sum()))
            obs, _, _, _ = env.step(actions)
        if episode < warmup:
            continue
        agents = env.world.agents
        coin = np.array([a.total_endowment("Coin") for a in agents])
        pay = np.array([a.state["build_payment"] for a in agents])
        rank = np.argsort(np.argsort(pay))
        eq = 1 - np.abs(coin[:, None] - coin[None]).sum() / (2 * 4 * coin.sum() + 1e-10) / 0.75
        stats = {
            "coin_sum": coin.sum(),
            "equality": eq,
            "swf": eq * coin.mean(),
            "builds": float((env.world.maps.get("House") > 0).sum()),
            "labour": np.mean([a.state["endogenous"]["Labor"] for a in agents]),
            "tax": float(getattr(env.get_component("PeriodicBracketTax"), "total_collected_taxes", 0.0)),
        }
        if tier == "gather_trade_build":
            stats["trades"] = float(sum(len(t) for t in env.get_component("ContinuousDoubleAuction").executed_trades))
        for k in range(4):
            stats[f"coin_rank{k}"] = coin[rank == k].sum()
        for name, value in stats.items():
            rows.setdefault(name, []).append(float(value))
    return {k: np.array(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=200, help="parallel episodes of our env")
    parser.add_argument("--reference-episodes", type=int, default=20, help="episodes of the original")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    has_original = importlib.util.find_spec("ai_economist") is not None
    print(f"original ai-economist installed: {has_original}; ours: {args.envs} episodes per row")
    for (tier, planner, policy), (n_ref, reference) in REFERENCE_RANDOM_POLICY.items():
        start = time.perf_counter()
        stats = reference_statistics(tier, planner, policy, args.envs, args.seed)
        elapsed = time.perf_counter() - start
        print(f"\n== {tier} / {planner} / {policy} ({elapsed:.1f} s) ==")
        print(f"{'statistic':<12}{'ours':>18}{'recorded reference':>24}{'z':>7}", end="")
        original = None
        if has_original:
            original = original_statistics(tier, planner, policy, args.reference_episodes, args.seed)
        print(f"{'original (live)':>22}" if original else "")
        for name, (ours, se, ref, ref_se, z) in compare_to_reference(stats, reference, n_ref).items():
            line = f"{name:<12}{ours:>10.3f} +- {se:<6.3f}{ref:>14.3f} +- {ref_se:<7.3f}{z:>7.2f}"
            if original and name in original:
                values = original[name]
                line += f"{values.mean():>13.3f} +- {values.std(ddof=1) / len(values) ** 0.5:.3f}"
            print(line)


if __name__ == "__main__":
    main()
