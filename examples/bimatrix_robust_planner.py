"""Robust planner in the augmented bimatrix game (the ERMAS paper's Figure 4).

Planners are trained in the officers game at ``Q_train`` by ERMAS and by the baselines
(MARL at two ``Q_train``, domain randomization, risk robustness). Each trained planner is
then frozen and transferred to every ``Q_test``, where fresh agents are trained with plain
MARL; the planner's episode reward after the agents converge is reported per method and
``Q_test`` (mean and standard error over seeds), as a table, ``summary.json`` and a figure.

    python examples/bimatrix_robust_planner.py                      # small default
    python examples/bimatrix_robust_planner.py --config-name bimatrix_robust_planner_paper
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from torchrl_ermas.training import (  # noqa: E402
    LaunchConfig,
    TrainConfig,
    launch_settings,
    method_seed_configs,
    relative_summary,
    run_many,
    transfer_grid,
    validate_experiment,
    with_overrides,
)
from torchrl_ermas.validation import check_real  # noqa: E402


@dataclass
class RobustPlannerConfig(LaunchConfig):
    """Schema of the experiment (and, inherited, how its runs launch: :class:`~torchrl_ermas.training.LaunchConfig`).

    Attributes:
        train: the base training run shared by every method.
        methods: name -> overrides of ``train`` defining the method.
        transfer: overrides of ``train`` for the transfer runs (fresh MARL agents).
        reference: the method the right panel is relative to.
        q_test: the test reality gaps.
        seeds: training seeds; each seed's planner is transferred with the same seed.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    methods: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    reference: str = "marl_q0"
    q_test: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


ConfigStore.instance().store(name="robust_planner_schema", node=RobustPlannerConfig)


def validate(cfg: RobustPlannerConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raises a ``ValueError`` naming the first invalid experiment setting.

    ``overrides`` are the command-line overrides: a ``train`` key that the experiment sets
    per run (seed, output folder, what every method sets) is refused.
    """
    validate_experiment(
        cfg.train,
        sweeps={"methods": cfg.methods, "q_test": cfg.q_test, "seeds": cfg.seeds},
        **launch_settings(cfg),
        methods=cfg.methods,
        overrides=overrides,
        owned={"reward.q": "the transfer runs set it from q_test; methods set their own"},
        transfer=cfg.transfer,
        transfer_owned={"reward.q": "set q_test instead"},
    )
    for q in cfg.q_test:
        check_real("q_test", q)
    if cfg.reference not in cfg.methods:
        raise ValueError(f"reference must be one of {list(cfg.methods)}, got {cfg.reference!r}.")


def train_configs(cfg: RobustPlannerConfig, out: Path) -> dict[tuple[str, int], TrainConfig]:
    """The planner-training runs, keyed by (method, seed)."""
    return method_seed_configs(cfg.train, cfg.methods, cfg.seeds, out / "train")


def transfer_configs(cfg: RobustPlannerConfig, trained: dict, out: Path) -> dict:
    """The transfer runs (frozen planner, fresh MARL agents at each Q_test), keyed (method, seed, q)."""
    base = with_overrides(cfg.train, cfg.transfer)
    return transfer_grid(base, trained, "reward.q", cfg.q_test, out / "transfer", "q")


def plot(cfg: RobustPlannerConfig, summary: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, stats in summary.items():
        for axis, key in ((left, "planner_reward"), (right, "relative")):
            axis.errorbar(cfg.q_test, stats[key], yerr=stats[f"{key}_sem"], label=name, capsize=3, marker="o", ms=3)
    left.set(xlabel="Q_test", ylabel="planner episode reward", title="Planner reward after transfer")
    right.set(xlabel="Q_test", ylabel=f"planner reward - {cfg.reference}", title=f"Relative to {cfg.reference}")
    right.axhline(0.0, color="gray", lw=0.8)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(cfg: RobustPlannerConfig, summary: dict) -> None:
    width = max(len(n) for n in summary) + 2
    print("planner episode reward after transfer (mean ± s.e. over seeds)")
    print("Q_test".ljust(width) + "".join(f"{q:>15g}" for q in cfg.q_test))
    for name, stats in summary.items():
        cells = "".join(f"{m:>8.1f} ± {s:<4.1f}" for m, s in zip(stats["planner_reward"], stats["planner_reward_sem"]))
        print(name.ljust(width) + cells)


@hydra.main(version_base="1.3", config_path="configs", config_name="bimatrix_robust_planner")
def main(cfg: RobustPlannerConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg, HydraConfig.get().overrides.task)
    out = Path(HydraConfig.get().runtime.output_dir)
    trained = train_configs(cfg, out)
    run_many(
        list(trained.values()),
        **launch_settings(cfg),
        desc="train planners",
    )
    tests = transfer_configs(cfg, trained, out)
    results = dict(
        zip(
            tests,
            run_many(
                list(tests.values()),
                **launch_settings(cfg),
                desc="transfer",
            ),
        )
    )
    summary = relative_summary(results, ["planner_reward"], cfg.reference)
    (out / "summary.json").write_text(json.dumps({"q_test": cfg.q_test, "methods": summary}, indent=1))
    plot(cfg, summary, out / "robust_planner.png")
    print_table(cfg, summary)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
