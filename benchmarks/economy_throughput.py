"""Env-steps per second of EconomyEnv for each tier at 1 ... 16384 environments.

One env-step is one transition of one environment (all agents and the planner). Each
measured step includes sampling uniform-random masked actions (``env.rand_action``), like
the reference measurement of the original package. When ``ai_economist`` is installed its
single-env Gather-Trade-Build rate is measured too; otherwise the recorded rate (about
1.1k steps/s on one core of the 2-vCPU machine, notes 5) is shown.

    python benchmarks/economy_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
from torchrl_ermas.envs.economy import TIERS, EconomyEnv

RECORDED_ORIGINAL_STEPS_PER_S = 1100.0


@torch.no_grad()
def steps_per_second(tier: str, num_envs: int, device: str, spatial: bool, min_time: float) -> float:
    env = EconomyEnv(num_envs, tier=tier, device=device, spatial_observation=spatial, seed=0)
    td = env.reset()
    for _ in range(3):
        td = env.step_mdp(env.step(env.rand_action(td)))
    steps, start = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - start < min_time:
        td = env.step_mdp(env.step(env.rand_action(td)))
        steps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return num_envs * steps / (time.perf_counter() - start)


def original_steps_per_second(n_steps: int = 500) -> float:
    """Single-env rate of the original package in the paper configuration."""
    import numpy as np
    from ai_economist import foundation

    env = foundation.make_env_instance(
        scenario_name="layout_from_file/simple_wood_and_stone",
        components=[
            ("Build", {"skill_dist": "pareto", "payment_max_skill_multiplier": 3}),
            (
                "ContinuousDoubleAuction",
                {"max_bid_ask": 10, "order_labor": 0.25, "max_num_orders": 5, "order_duration": 50},
            ),
            ("Gather", {"skill_dist": "pareto"}),
            ("PeriodicBracketTax", {"tax_model": "us-federal-single-filer-2018-scaled", "usd_scaling": 1000}),
        ],
        env_layout_file="quadrant_25x25_20each_30clump.txt",
        fixed_four_skill_and_loc=True,
        n_agents=4,
        world_size=[25, 25],
        episode_length=1000,
        flatten_observations=True,
        flatten_masks=True,
    )
    rng = np.random.default_rng(0)
    obs = env.reset()
    start = time.perf_counter()
    for _ in range(n_steps):
        actions = {k: int(rng.choice(np.flatnonzero(o["action_mask"]))) for k, o in obs.items() if k != "p"}
        obs, _, done, _ = env.step(actions)
        if done["__all__"]:
            obs = env.reset()
    return n_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096, 16384])
    parser.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-spatial", action="store_true", help="omit the egocentric map views")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds measured per cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if importlib.util.find_spec("ai_economist") is not None:
        original, source = original_steps_per_second(), "measured"
    else:
        original, source = RECORDED_ORIGINAL_STEPS_PER_S, "recorded (package not installed)"
    print(f"device={args.device} threads={args.threads} spatial_observation={not args.no_spatial}")
    print(f"original ai-economist, 1 env, Gather-Trade-Build: {original:,.0f} steps/s ({source})")
    print(f"env-steps/s (x per core: rate / {args.threads} thread(s) / original)")
    print(f"{'envs':>7}" + "".join(f"{tier:>28}" for tier in args.tiers))
    for n in args.sizes:
        row = [steps_per_second(t, n, args.device, not args.no_spatial, args.min_time) for t in args.tiers]
        cells = (f"{r:>18,.0f} ({r / args.threads / original:5.1f}x)" for r in row)
        print(f"{n:>7}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
