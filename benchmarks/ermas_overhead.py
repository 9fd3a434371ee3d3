"""Cost of one ERMAS training iteration relative to plain MAPPO, side by side in one run.

Both trainers use the same environment, batch, networks and PPO settings (those of
``examples/configs/bimatrix_adversarial_search.yaml`` unless overridden). MAPPO is the
``marl`` variant; ERMAS adds the planner critic (for the planner advantage), the ERMAS
loss, and every ``regret_interval`` iterations the regret estimate, the multiplier update
and the meta-gradient term (when ``meta_scale > 0``). The ERMAS cost per iteration is averaged over whole regret
intervals, after one warm-up interval for both.

    python benchmarks/ermas_overhead.py --threads 1
    python benchmarks/ermas_overhead.py train.ermas.regret_interval=10
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("overrides", nargs="*", help="dotted TrainConfig overrides, e.g. num_envs=64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = base_config([o.removeprefix("train.") for o in args.overrides])
    interval = cfg.ermas.regret_interval
    iterations = args.intervals * interval
    ermas_cfg = with_overrides(cfg, {"variant": "ermas", "ermas.warmup_iters": 0})
    rows = {
        "MAPPO (marl)": seconds_per_iteration(with_overrides(cfg, {"variant": "marl"}), iterations, interval),
        "ERMAS": seconds_per_iteration(ermas_cfg, iterations, interval),
    }
    e = cfg.ermas
    print(
        f"settings: env={cfg.env['_target_'].rsplit('.', 1)[-1]} num_envs={cfg.num_envs} "
        f"episode={cfg.env.get('max_steps')} epochs={cfg.agents.epochs} "
        f"minibatches={cfg.agents.minibatches} | regret_interval={interval} "
        f"regret_envs/agent={e.regret_envs} deviation_steps={e.deviation_steps} "
        f"meta_scale={e.meta_scale} | threads={args.threads}"
    )
    print(f"{'':>14} {'collect':>9} {'train':>9} {'regret':>9} {'total s/it':>11}")
    for name, t in rows.items():
        print(f"{name:>14} {t['collect']:>9.3f} {t['train']:>9.3f} {t['regret']:>9.3f} {t['total']:>11.3f}")
    ratio = rows["ERMAS"]["total"] / rows["MAPPO (marl)"]["total"]
    print(f"ERMAS / MAPPO per iteration: {ratio:.2f}x")


if __name__ == "__main__":
    main()
