"""Throughput of a population of training runs against the same runs trained one by one.

A population of ``R`` runs of the Fig. 2 example's training setting (seeds ``0 .. R-1``;
MAPPO, ``marl``, by default, or ``--variant ermas`` with its regret estimate in every
iteration) trains as one batched computation
(:class:`~torchrl_ermas.training.PopulationTrainer`); beside it, in the same process, on
the same threads and device, single-run trainers (:class:`~torchrl_ermas.training.ErmasTrainer`)
train the same runs one after the other. Both are timed per full training iteration
(collection, PPO update and, for ``ermas``, the regret estimate) after one warm-up
iteration; the separate runs' time is the mean of ``--alone`` of them times ``R``.
Env-steps/s counts every run's training environment steps.

    python benchmarks/population_throughput.py --threads 1
    python benchmarks/population_throughput.py --variant ermas --sizes 1 8 32
    python benchmarks/population_throughput.py --sizes 1 8 32 128 --device cuda
    python benchmarks/population_throughput.py num_envs=64 env.max_steps=50
    python benchmarks/population_throughput.py --variant ermas --sizes 16 --profile 15

``--profile N`` then profiles one more population iteration per size and prints its
``N`` most costly operators (self time): where the time goes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from torchrl_ermas.training import ErmasTrainer, PopulationTrainer, TrainConfig, with_overrides

CONFIG = Path(__file__).parents[1] / "examples" / "configs" / "bimatrix_adversarial_search.yaml"


def base_config(overrides: list[str], device: str, variant: str = "marl") -> TrainConfig:
    """The Fig. 2 example's training run as ``variant`` (``ermas``: an estimate in every
    iteration), with command-line ``key=value`` overrides."""
    train = with_overrides(TrainConfig(), OmegaConf.to_container(OmegaConf.load(CONFIG).train))
    estimates = {"ermas.warmup_iters": 0, "ermas.regret_interval": 1}
    train = with_overrides(train, {"variant": variant, **(estimates if variant == "ermas" else {})})
    train = with_overrides(train, OmegaConf.to_container(OmegaConf.from_dotlist(overrides)))
    settings = {"device": device, "progress": False, "logger.backend": ""}
    return with_overrides(train, {**settings, "checkpoint_interval": 10**6})


def run_configs(cfg: TrainConfig, runs: int, iterations: int, folder: str) -> list[TrainConfig]:
    return [
        with_overrides(cfg, {"seed": seed, "iterations": iterations, "output_dir": f"{folder}/run{seed}"})
        for seed in range(runs)
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_iteration(trainer: ErmasTrainer | PopulationTrainer, iterations: int) -> float:
    """Wall time per iteration after the first (warm-up) iteration."""
    trainer._iteration(0)
    synchronize(trainer.device)
    start = time.perf_counter()
    for iteration in range(1, iterations):
        trainer._iteration(iteration)
    synchronize(trainer.device)
    return (time.perf_counter() - start) / (iterations - 1)


def print_profile(trainer: PopulationTrainer, iteration: int, rows: int) -> None:
    """Profiles one more iteration and prints its ``rows`` most costly operators."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        trainer._iteration(iteration)
        synchronize(trainer.device)
    sort = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    print(profile.key_averages().table(sort_by=sort, row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="marl", choices=["marl", "ermas"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128], help="population sizes R")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations + 1 warm-up")
    parser.add_argument("--alone", type=int, default=4, help="separate runs timed per size (at most R)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print N top operators per size")
    parser.add_argument("overrides", nargs="*", help="dotted TrainConfig overrides, e.g. num_envs=64")
    args = parser.parse_args()
    if args.profile < 0:
        parser.error(f"--profile must be >= 0 (0: no profile), got {args.profile}.")
    if args.iterations < 2:
        parser.error(f"--iterations must be >= 2 (one warm-up, then the timed ones), got {args.iterations}.")
    torch.set_num_threads(args.threads)
    cfg = base_config(args.overrides, args.device, args.variant)
    steps = cfg.num_envs * cfg.env["max_steps"]
    print(
        f"settings: {cfg.variant} num_envs={cfg.num_envs} episode={cfg.env['max_steps']} epochs={cfg.agents.epochs} "
        f"minibatches={cfg.agents.minibatches} | device={args.device} threads={args.threads}"
    )
    print(f"{'R':>5} {'population s/it':>16} {'separate s/it':>14} {'population steps/s':>19} {'ratio':>7}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            cfgs = run_configs(cfg, size, args.iterations + (args.profile > 0), folder)
            trainer = PopulationTrainer(cfgs)
            population = seconds_per_iteration(trainer, args.iterations)
            timed = cfgs[: min(args.alone, size)]
            alone = sum(
                seconds_per_iteration(
                    ErmasTrainer(with_overrides(c, {"output_dir": c.output_dir + "-alone"})), args.iterations
                )
                for c in timed
            )
            separate = alone / len(timed) * size
            rate, ratio = size * steps / population, separate / population
            print(f"{size:>5} {population:>16.3f} {separate:>14.3f} {rate:>19.0f} {ratio:>6.2f}x")
            if args.profile:
                print_profile(trainer, args.iterations, args.profile)


if __name__ == "__main__":
    main()
