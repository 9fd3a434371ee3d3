"""The original AI Economist package (``ai-economist==1.7.1``) in the paper configuration.

This module imports neither torch nor the project, so that it runs in an interpreter of
its own: the package needs ``numpy<1.24`` (``np.int`` in its fixed skill and location
code), which the project's environment does not pin. Install it in a separate venv with
``pip install --no-deps ai-economist==1.7.1`` and then ``pip install "numpy==1.23.5"
"scipy==1.10.1" lz4 pycryptodome GPUtil``. As a script it prints one JSON object: the
single-environment Gather-Trade-Build rate under uniform-random masked agents.

    /path/to/aie-venv/bin/python benchmarks/original_economy.py --steps 2000
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def paper_env(tier: str = "gather_trade_build", tax: dict[str, Any] | None = None) -> Any:
    """The original Gather-(Trade-)Build economy in the paper configuration: 4 agents,
    the open-quadrant 25x25 map, fixed skills and start corners, starting coin 0, 1000
    steps, periods of 100 steps. ``tax`` adds to or replaces the ``PeriodicBracketTax``
    settings (default: the US federal schedule)."""
    from ai_economist import foundation

    components: list[tuple[str, dict[str, Any]]] = [
        ("Build", {"skill_dist": "pareto", "payment_max_skill_multiplier": 3, "build_labor": 10, "payment": 10})
    ]
    if tier == "gather_trade_build":
        auction = {"max_bid_ask": 10, "order_labor": 0.25, "max_num_orders": 5, "order_duration": 50}
        components.append(("ContinuousDoubleAuction", auction))
    components.append(("Gather", {"move_labor": 1, "collect_labor": 1, "skill_dist": "pareto"}))
    bracket_tax = {"period": 100, "bracket_spacing": "us-federal", "usd_scaling": 1000}
    bracket_tax.update(tax or {"tax_model": "us-federal-single-filer-2018-scaled"})
    components.append(("PeriodicBracketTax", bracket_tax))
    return foundation.make_env_instance(
        scenario_name="layout_from_file/simple_wood_and_stone",
        components=components,
        env_layout_file="quadrant_25x25_20each_30clump.txt",
        starting_agent_coin=0,
        fixed_four_skill_and_loc=True,
        n_agents=4,
        world_size=[25, 25],
        episode_length=1000,
        multi_action_mode_agents=False,
        multi_action_mode_planner=True,
        flatten_observations=True,
        flatten_masks=True,
    )


def steps_per_second(steps: int, seed: int = 1) -> float:
    """Env-steps per second of one original Gather-Trade-Build environment, each step
    including the uniform-random masked choice of the agents' actions (the US federal
    planner takes none), with resets at episode ends."""
    env = paper_env()
    env.seed(seed)
    rng = np.random.default_rng(seed)
    obs = env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        actions = {k: int(rng.choice(np.flatnonzero(o["action_mask"]))) for k, o in obs.items() if k != "p"}
        obs, _, done, _ = env.step(actions)
        if done["__all__"]:
            obs = env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1, help="a positive seed (the package asserts it)")
    args = parser.parse_args()
    rate = steps_per_second(args.steps, args.seed)
    print(json.dumps({"steps_per_s": rate, "steps": args.steps, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
