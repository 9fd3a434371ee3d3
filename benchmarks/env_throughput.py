"""Env-steps per second of :class:`SequentialBimatrixEnv` against a per-environment Python loop.

For each batch size the script times, in the same run:

* ``rollout``: ``env.rollout`` with random actions (TorchRL's own loop, auto-reset included);
* ``step``: ``env.step`` on a pre-built action TensorDict (the raw batched step);
* ``python``: a plain Python implementation of the same game stepping one environment at a
  time (the baseline), timed on ``min(batch, 4096)`` environments and reported per env-step.

It prints env-steps/s and the ratio of each batched path to the Python baseline.

    python benchmarks/env_throughput.py --threads 1 --device cpu
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torchrl_ermas.envs import SequentialBimatrixEnv, dilemma_payoffs


class PythonBimatrix:
    """One bimatrix game in plain Python (lists and ints), the per-environment baseline."""

    moves = (0, 1, -1)

    def __init__(self, grid_size: int, payoffs: list, max_steps: int, rng: random.Random):
        self.n, self.payoffs, self.max_steps, self.rng = grid_size, payoffs, max_steps, rng
        self.reset()

    def reset(self):
        self.row, self.col, self.t = self.rng.randrange(self.n), self.rng.randrange(self.n), 0
        return self.row * self.n + self.col

    def step(self, a0: int, a1: int):
        self.row = min(max(self.row + self.moves[a0], 0), self.n - 1)
        self.col = min(max(self.col + self.moves[a1], 0), self.n - 1)
        self.t += 1
        r_p, r_0, r_1 = (table[self.row][self.col] for table in self.payoffs)
        done = self.t >= self.max_steps
        obs = self.reset() if done else self.row * self.n + self.col
        return obs, (r_0, r_1), r_p, done


def time_python(n_envs: int, steps: int, max_steps: int) -> float:
    rng = random.Random(0)
    payoffs = dilemma_payoffs(4).tolist()
    envs = [PythonBimatrix(4, payoffs, max_steps, rng) for _ in range(n_envs)]
    start = time.perf_counter()
    for _ in range(steps):
        for env in envs:
            env.step(rng.randrange(3), rng.randrange(3))
    return n_envs * steps / (time.perf_counter() - start)


def time_rollout(batch: int, steps: int, max_steps: int, device: str) -> float:
    env = SequentialBimatrixEnv(batch, max_steps=max_steps, device=device)
    env.rollout(2, break_when_any_done=False)  # warm-up
    _sync(device)
    start = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def time_step(batch: int, steps: int, max_steps: int, device: str) -> float:
    env = SequentialBimatrixEnv(batch, max_steps=max_steps, device=device)
    td = env.reset()
    actions = torch.randint(3, (steps, batch, 2), device=device)
    td.set(("agents", "action"), actions[0])
    env.step(td)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for t in range(steps):
        td.set(("agents", "action"), actions[t])
        env.step(td)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-batch", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=50, help="batched steps per measurement")
    parser.add_argument("--max-steps", type=int, default=100, help="episode length")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    python_rate = time_python(1024, 20, args.max_steps)
    print(f"device={args.device} threads={args.threads} episode={args.max_steps} steps")
    print(f"python baseline (per-env loop): {python_rate:,.0f} env-steps/s\n")
    header = f"{'envs':>7} {'rollout/s':>14} {'step/s':>14} {'rollout/python':>15} {'step/python':>12}"
    print(header)
    print("-" * len(header))
    batch = 1
    while batch <= args.max_batch:
        steps = max(args.steps, 2000 // batch) if batch < 256 else args.steps
        rollout = time_rollout(batch, steps, args.max_steps, args.device)
        step = time_step(batch, steps, args.max_steps, args.device)
        print(
            f"{batch:>7} {rollout:>14,.0f} {step:>14,.0f} {rollout / python_rate:>14.1f}x {step / python_rate:>11.1f}x"
        )
        batch *= 4


if __name__ == "__main__":
    main()
