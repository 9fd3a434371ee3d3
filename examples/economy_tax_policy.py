"""Robust tax policy in the AI Economist economy (the ERMAS paper's Figure 5).

Two tax planners are trained with agents of risk aversion ``eta = 0.23``: a MARL planner
(selfish agents) and an ERMAS planner (agents searching the worst epsilon-equilibrium).
Each of them, and the fixed Saez (elasticity 3.0), US federal and free-market planners,
is then frozen and evaluated at every ``eta_test`` by training fresh agents with plain
MARL; the planner's episode reward (the social welfare ``equality x mean coin`` at the
episode's end, since it starts at 0) is reported per planner and ``eta_test`` with standard
errors over seeds, next to the equality and productivity, as a table, ``summary.json`` and
a figure (swf against ``eta_test``, and relative to the MARL planner).

The small default uses the labour tier (each agent chooses its hours; income is skill x
hours) with 100-step episodes and 10-step tax periods, which keeps the tax machinery,
the utility with per-agent ``eta`` and the planner's bracket actions of the full game
while finishing in about 15 minutes on a 2-core CPU. The ``paper`` config runs the full
Gather-Trade-Build game (1000-step episodes, 100-step periods).

    python examples/economy_tax_policy.py                            # small default
    python examples/economy_tax_policy.py --config-name economy_tax_policy_paper
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
    TrainConfig,
    launch_settings,
    method_seed_configs,
    relative_summary,
    run_many,
    transfer_grid,
    validate_experiment,
    with_overrides,
)

METRICS = ("planner_reward", "equality", "productivity")


@dataclass
class TaxPolicyConfig:
    """Schema of the experiment.

    Attributes:
        train: the base run shared by every training and evaluation run; its ``env`` is
            the training economy (``eta`` of the agents: the training value).
        methods: name -> overrides of ``train`` for each learned planner.
        baselines: name -> hydra node (``_target_``) of each fixed planner.
        transfer: overrides of ``train`` for the evaluation runs (fresh MARL agents).
        reference: the planner the right panel is relative to.
        eta_test: the agents' risk aversion in the evaluation runs.
        seeds: seeds; each learned planner is evaluated with the seed it was trained with.
        workers: runs in parallel (processes, one torch thread each).
        population_size: the largest population of runs trained as one batched computation
            (``1``, the default: every run alone; see :func:`~torchrl_ermas.training.run_many`).
        ray_address: run the grid on Ray instead (``local``, or a cluster's address:
            see :func:`~torchrl_ermas.training.run_many`).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    methods: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    reference: str = "marl"
    eta_test: list[float] = field(default_factory=lambda: [0.11, 0.19, 0.23, 0.27, 0.35])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    workers: int = 2
    population_size: int = 1
    ray_address: str | None = None


ConfigStore.instance().store(name="tax_policy_schema", node=TaxPolicyConfig)


def validate(cfg: TaxPolicyConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raises a ``ValueError`` naming the first invalid experiment setting.

    ``overrides`` are the command-line overrides: a ``train`` key that the experiment sets
    per run (seed, output folder, what every method sets) is refused.
    """
    validate_experiment(
        cfg.train,
        sweeps={"seeds": cfg.seeds, "eta_test": cfg.eta_test},
        **launch_settings(cfg),
        methods=cfg.methods,
        overrides=overrides,
        transfer=cfg.transfer,
        transfer_owned={
            "env.eta": "set eta_test instead",
            "fixed_planner": "fixed planners are the baselines",
            "env.planner_action": "the baselines set rates; learned planners keep theirs",
        },
    )
    if not all(0 < eta <= 1 for eta in cfg.eta_test):
        raise ValueError(f"eta_test must list values in (0, 1], got {cfg.eta_test}.")
    planners = [*cfg.methods, *cfg.baselines]
    if cfg.reference not in planners:
        raise ValueError(f"reference must be one of {planners}, got {cfg.reference!r}.")
    if len(set(planners)) != len(planners):
        raise ValueError(f"methods and baselines must have distinct names, got {planners}.")


def train_configs(cfg: TaxPolicyConfig, out: Path) -> dict[tuple[str, int], TrainConfig]:
    """The planner-training runs, keyed by (method, seed)."""
    return method_seed_configs(cfg.train, cfg.methods, cfg.seeds, out / "train")


def evaluation_configs(
    cfg: TaxPolicyConfig, trained: dict[tuple[str, int], TrainConfig], out: Path
) -> dict[tuple[str, int, float], TrainConfig]:
    """The evaluation runs (frozen planner, fresh MARL agents), keyed by (planner, seed, eta)."""
    base = with_overrides(cfg.train, cfg.transfer)
    fixed = {name: {"fixed_planner": planner, "env.planner_action": "rates"} for name, planner in cfg.baselines.items()}
    return transfer_grid(base, trained, "env.eta", cfg.eta_test, out / "evaluate", "eta", fixed_planners=fixed)


def plot(cfg: TaxPolicyConfig, summary: dict, path: Path) -> None:
    """Social welfare against ``eta_test`` (left) and relative to the reference (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, stats in summary.items():
        for axis, key in ((left, "planner_reward"), (right, "relative")):
            axis.errorbar(
                cfg.eta_test,
                stats[key],
                yerr=stats[f"{key}_sem"],
                label=name,
                capsize=3,
                marker="o",
                ms=3,
            )
    train_eta = OmegaConf.select(OmegaConf.create(cfg.train.env), "eta", default=None)
    for axis in (left, right):
        if train_eta is not None:
            axis.axvline(train_eta, color="gray", ls="--", lw=0.8)
        axis.grid(alpha=0.3)
    left.set(
        xlabel="eta_test", ylabel="social welfare (equality x mean coin)", title="Planner reward with fresh agents"
    )
    right.set(xlabel="eta_test", ylabel=f"swf - swf({cfg.reference})", title=f"Relative to {cfg.reference}")
    right.axhline(0.0, color="gray", lw=0.8)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(cfg: TaxPolicyConfig, summary: dict) -> None:
    """Social welfare per planner and ``eta_test`` (mean ± s.e.), then equality/productivity."""
    width = max(len(n) for n in summary) + 2
    print("social welfare after training fresh agents (mean ± s.e. over seeds)")
    print("eta_test".ljust(width) + "".join(f"{eta:>16g}" for eta in cfg.eta_test))
    for name, stats in summary.items():
        cells = "".join(f"{m:>9.1f} ± {s:<5.1f}" for m, s in zip(stats["planner_reward"], stats["planner_reward_sem"]))
        print(name.ljust(width) + cells)
    print("equality / productivity (sum of coin)")
    for name, stats in summary.items():
        cells = "".join(f"{e:>7.3f} /{p:>7.0f}" for e, p in zip(stats["equality"], stats["productivity"]))
        print(name.ljust(width) + cells)


@hydra.main(version_base="1.3", config_path="configs", config_name="economy_tax_policy")
def main(cfg: TaxPolicyConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg, HydraConfig.get().overrides.task)
    out = Path(HydraConfig.get().runtime.output_dir)
    trained = train_configs(cfg, out)
    run_many(
        list(trained.values()),
        **launch_settings(cfg),
        desc="train planners",
    )
    runs = evaluation_configs(cfg, trained, out)
    results = dict(
        zip(
            runs,
            run_many(
                list(runs.values()),
                **launch_settings(cfg),
                desc="evaluate",
            ),
        )
    )
    summary = relative_summary(results, METRICS, cfg.reference)
    (out / "summary.json").write_text(json.dumps({"eta_test": cfg.eta_test, "planners": summary}, indent=1))
    plot(cfg, summary, out / "economy_tax_policy.png")
    print_table(cfg, summary)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
