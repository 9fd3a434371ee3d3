"""Env-steps per second of EconomyEnv beside the original AI Economist, measured in one run.

One env-step is one transition of one environment (all agents and the planner). Each
measured step includes sampling uniform-random masked actions (``env.rand_action``) and
``step_mdp``, like the original's measurement. The original package (single environment,
Gather-Trade-Build, paper configuration) runs in the same invocation through the
interpreter given by ``--original-python`` (default: this one, when it can import
``ai_economist``; see ``benchmarks/original_economy.py`` for its install), first and
last, and the ratio divides by the mean of those two measurements. Without it no ratio
is printed. The ratio is per core: our rate / threads / the original's one-core rate.

    python benchmarks/economy_throughput.py --threads 1 --original-python /path/to/aie-venv/bin/python
    python benchmarks/economy_throughput.py --sizes 4096 16384 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchrl_ermas.envs.economy import TIERS, EconomyEnv

ORIGINAL = Path(__file__).with_name("original_economy.py")


@torch.no_grad()
def steps_per_second(tier: str, num_envs: int, device: str, views: bool, min_time: float) -> float:
    """Our env-steps/s at ``num_envs`` environments after three warm-up steps."""
    env = EconomyEnv(num_envs, tier=tier, device=device, spatial_observation=views, seed=0)
    td = env.reset()
    for _ in range(3):
        td = env.step_mdp(env.step(env.rand_action(td)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - start < min_time:
        td = env.step_mdp(env.step(env.rand_action(td)))
        steps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return num_envs * steps / (time.perf_counter() - start)


def original_steps_per_second(python: str, steps: int) -> float:
    """The original package's single-environment rate, measured now by ``python``."""
    out = subprocess.run(
        [python, str(ORIGINAL), "--steps", str(steps)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096, 16384])
    parser.add_argument("--tiers", nargs="+", default=["gather_trade_build"], choices=TIERS)
    parser.add_argument("--views", choices=["off", "on", "both"], default="both", help="egocentric map views")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds measured per cell")
    parser.add_argument("--original-python", help="interpreter with ai-economist installed")
    parser.add_argument("--original-steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    python = args.original_python
    if python is None and importlib.util.find_spec("ai_economist") is not None:
        python = sys.executable
    original = [original_steps_per_second(python, args.original_steps)] if python else []

    views = {"off": [False], "on": [True], "both": [False, True]}[args.views]
    columns = [(tier, v) for tier in args.tiers for v in views]
    header = f"{'envs':>7}" + "".join(f"{tier + (' views on' if v else ' views off'):>38}" for tier, v in columns)
    print(f"device={args.device} threads={args.threads}; env-steps/s (x per core against the original)")
    print(header)
    rows = []
    for n in args.sizes:
        rows.append([steps_per_second(tier, n, args.device, v, args.min_time) for tier, v in columns])
        print(f"{n:>7}" + "".join(f"{rate:>38,.0f}" for rate in rows[-1]), flush=True)
    if not original:
        print("original ai-economist not measured (give --original-python): no ratio")
        return
    original.append(original_steps_per_second(python, args.original_steps))
    reference = sum(original) / len(original)
    print(
        f"original ai-economist, 1 env, Gather-Trade-Build: {original[0]:,.0f} (first) and "
        f"{original[1]:,.0f} (last) steps/s on one core, mean {reference:,.0f}"
    )
    print(header)
    for n, row in zip(args.sizes, rows):
        print(f"{n:>7}" + "".join(f"{rate / args.threads / reference:>37.1f}x" for rate in row))


if __name__ == "__main__":
    main()
