"""Cost of one ERMAS training iteration relative to plain MAPPO, side by side in one run.

Both trainers use the same environment, batch, networks and PPO settings (those of
``examples/configs/bimatrix_adversarial_search.yaml`` unless overridden). MAPPO is the
``marl`` variant; ERMAS adds the planner critic (for the planner advantage), the ERMAS
loss, and every ``regret_interval`` iterations the regret estimate, the multiplier update
and the meta-gradient term (when ``meta_scale > 0``). The ERMAS cost per iteration is averaged over whole regret
intervals, after one warm-up interval for both. The two alternate ``--repeats`` times (each
time with fresh trainers), so that a slow spell of a shared machine hits both; the table
gives the median per phase, and the ratio is given per repeat (median, min-max).

    python benchmarks/ermas_overhead.py --threads 1
    python benchmarks/ermas_overhead.py train.ermas.regret_interval=10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from torchrl_ermas.training import ErmasTrainer, TrainConfig, with_overrides

CONFIG = Path(__file__).parents[1] / "examples" / "configs" / "bimatrix_adversarial_search.yaml"


def base_config(overrides: list[str]) -> TrainConfig:
    """The Fig. 2 example's training run with command-line ``key=value`` overrides."""
    train = with_overrides(TrainConfig(), OmegaConf.to_container(OmegaConf.load(CONFIG).train))
    return with_overrides(train, OmegaConf.to_container(OmegaConf.from_dotlist(overrides)))


def seconds_per_iteration(cfg: TrainConfig, iterations: int, warmup: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        cfg = with_overrides(
            cfg,
            {
                "iterations": warmup + iterations,
                "output_dir": folder,
                "progress": False,
                "logger.backend": "",
                "checkpoint_interval": 10**6,
            },
        )
        history = ErmasTrainer(cfg).train()["history"]
    phases = {name: sum(history[f"time_{name}"][warmup:]) / iterations for name in ("collect", "train", "regret")}
    phases["total"] = sum(phases.values())
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--intervals", type=int, default=3, help="regret intervals timed")
    parser.add_argument("--repeats", type=int, default=3, help="alternating MAPPO / ERMAS measurements")
    parser.add_argument("overrides", nargs="*", help="dotted TrainConfig overrides, e.g. num_envs=64")
    args = parser.parse_args()
    for name in ("threads", "intervals", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be an integer >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    cfg = base_config([o.removeprefix("train.") for o in args.overrides])
    interval = cfg.ermas.regret_interval
    iterations = args.intervals * interval
    configs = {
        "MAPPO (marl)": with_overrides(cfg, {"variant": "marl"}),
        "ERMAS": with_overrides(cfg, {"variant": "ermas", "ermas.warmup_iters": 0}),
    }
    times = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run_cfg in configs.items():
            times[name].append(seconds_per_iteration(run_cfg, iterations, interval))
    e = cfg.ermas
    print(
        f"settings: env={cfg.env['_target_'].rsplit('.', 1)[-1]} num_envs={cfg.num_envs} "
        f"episode={cfg.env.get('max_steps')} epochs={cfg.agents.epochs} "
        f"minibatches={cfg.agents.minibatches} | regret_interval={interval} "
        f"regret_envs/agent={e.regret_envs} deviation_steps={e.deviation_steps} "
        f"meta_scale={e.meta_scale} | threads={args.threads} repeats={args.repeats}"
    )
    print(f"{'median':>14} {'collect':>9} {'train':>9} {'regret':>9} {'total s/it':>11}")
    for name, runs in times.items():
        t = {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}
        print(f"{name:>14} {t['collect']:>9.3f} {t['train']:>9.3f} {t['regret']:>9.3f} {t['total']:>11.3f}")
    ratios = [ermas["total"] / marl["total"] for ermas, marl in zip(times["ERMAS"], times["MAPPO (marl)"])]
    print(
        f"ERMAS / MAPPO per iteration: {statistics.median(ratios):.2f}x "
        f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}x)"
    )


if __name__ == "__main__":
    main()
