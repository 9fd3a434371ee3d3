"""Robust tax policy in the AI Economist economy (the ERMAS paper's Figure 5).

Two tax planners are trained with agents of risk aversion ``eta = 0.23``: a MARL planner
(selfish agents) and an ERMAS planner (agents searching the worst epsilon-equilibrium).
Each of them, and the fixed Saez (elasticity 3.0), US federal and free-market planners,
is then frozen and evaluated at every ``eta_test`` by training fresh agents with plain
MARL; the planner's episode reward (the social welfare ``equality x mean coin`` at the
episode's end, since it starts at 0) is reported per planner and ``eta_test`` with standard
errors over seeds, next to the equality and productivity, as a table, ``summary.json`` and
a figure (swf against ``eta_test``, and relative to the MARL planner).

With ``free_market`` set (the map tiers' configs), the agents learn the economy first, as
in the AI Economist's two-phase curriculum: for every seed and every eta the experiment
uses, agents train alone under the free-market planner (with the labour-cost warm-up of
their ``env.energy_warmup``), and every planner-training and evaluation run starts from the
agents of its seed and eta (``agents_checkpoint``); the planner then joins (optionally under
``env.tax_annealing``).

The small default uses the labour tier (each agent chooses its hours; income is skill x
hours) with 100-step episodes and 10-step tax periods, which keeps the tax machinery,
the utility with per-agent ``eta`` and the planner's bracket actions of the full game
while finishing in about 14 minutes on a 2-core CPU (its runs train in populations). The
``paper`` config runs the full Gather-Trade-Build game (1000-step episodes, 100-step
periods).

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
from torchrl_ermas.training.run_folder import flatten  # noqa: E402

METRICS = ("planner_reward", "equality", "productivity")
#: the agents' activity, reported when the runs record it (``train.episode_metrics``)
ACTIVITY = ("labour", "builds")
#: what the experiment sets in every run of the agents' free-market phase
FREE_MARKET_OWNED = ("variant", "train_planner", "fixed_planner", "env.planner_action", "env.eta", "seed", "output_dir")


@dataclass
class TaxPolicyConfig(LaunchConfig):
    """Schema of the experiment (and, inherited, how its runs launch: :class:`~torchrl_ermas.training.LaunchConfig`).

    Attributes:
        train: the base run shared by every training and evaluation run; its ``env`` is
            the training economy (``eta`` of the agents: the training value).
        methods: name -> overrides of ``train`` for each learned planner.
        baselines: name -> hydra node (``_target_``) of each fixed planner.
        transfer: overrides of ``train`` for the evaluation runs (fresh MARL agents).
        free_market: overrides of ``train`` for the agents' first phase under the
            free-market planner (``None``: no such phase, the agents start untrained).
        reference: the planner the right panel is relative to.
        eta_test: the agents' risk aversion in the evaluation runs.
        seeds: seeds; each learned planner is evaluated with the seed it was trained with.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    methods: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    free_market: dict[str, Any] | None = None
    reference: str = "marl"
    eta_test: list[float] = field(default_factory=lambda: [0.11, 0.19, 0.23, 0.27, 0.35])
    seeds: list[int] = field(default_factory=lambda: [0, 1])


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
    if cfg.free_market is not None:
        owned = sorted(set(FREE_MARKET_OWNED) & set(flatten(cfg.free_market)))
        if owned:
            raise ValueError(f"free_market must not set {owned}: the experiment sets them in each first-phase run.")
        if train_eta(cfg) is None:
            raise ValueError("free_market needs train.env.eta, the eta of the planners' training agents.")
    if not all(0 < eta <= 1 for eta in cfg.eta_test):
        raise ValueError(f"eta_test must list values in (0, 1], got {cfg.eta_test}.")
    planners = [*cfg.methods, *cfg.baselines]
    if cfg.reference not in planners:
        raise ValueError(f"reference must be one of {planners}, got {cfg.reference!r}.")
    if len(set(planners)) != len(planners):
        raise ValueError(f"methods and baselines must have distinct names, got {planners}.")
    missing = [name for name in METRICS if name != "planner_reward" and name not in cfg.train.episode_metrics]
    if missing:
        raise ValueError(
            f"train.episode_metrics must record {missing}: the experiment reports them, got "
            f"{list(cfg.train.episode_metrics)}."
        )


def train_eta(cfg: TaxPolicyConfig) -> float | None:
    """The eta of the planners' training agents (``train.env.eta``), if set."""
    return OmegaConf.select(OmegaConf.create(cfg.train.env), "eta", default=None)


def free_market_configs(cfg: TaxPolicyConfig, out: Path) -> dict[tuple[int, float], TrainConfig]:
    """The agents' first phase, keyed by (seed, eta): agents alone under the free-market
    planner at the training eta and every ``eta_test`` (none without ``free_market``)."""
    if cfg.free_market is None:
        return {}
    free_market = {
        "variant": "marl",
        "train_planner": False,
        "fixed_planner": {"_target_": "torchrl_ermas.envs.economy.FreeMarketPlanner"},
        "env.planner_action": "rates",
    }
    base = with_overrides(cfg.train, {**free_market, **cfg.free_market})
    etas = sorted({train_eta(cfg), *cfg.eta_test})
    return {
        (seed, eta): with_overrides(
            base, {"env.eta": eta, "seed": seed, "output_dir": str(out / "free_market" / f"eta{eta:g}" / f"seed{seed}")}
        )
        for seed in cfg.seeds
        for eta in etas
    }


def _agents_of(free_market: dict[tuple[int, float], TrainConfig], seed: int, eta: float) -> dict[str, str]:
    """The overrides that start a run from the first-phase agents of ``seed`` and ``eta``."""
    if not free_market:
        return {}
    return {"agents_checkpoint": str(Path(free_market[seed, eta].output_dir) / "checkpoint.pt")}


def train_configs(
    cfg: TaxPolicyConfig, out: Path, free_market: dict[tuple[int, float], TrainConfig]
) -> dict[tuple[str, int], TrainConfig]:
    """The planner-training runs, keyed by (method, seed), from the first-phase agents."""
    runs = method_seed_configs(cfg.train, cfg.methods, cfg.seeds, out / "train")
    return {key: with_overrides(run, _agents_of(free_market, key[1], train_eta(cfg))) for key, run in runs.items()}


def evaluation_configs(
    cfg: TaxPolicyConfig,
    trained: dict[tuple[str, int], TrainConfig],
    out: Path,
    free_market: dict[tuple[int, float], TrainConfig],
) -> dict[tuple[str, int, float], TrainConfig]:
    """The evaluation runs (frozen planner, fresh MARL agents, from the first-phase agents
    of their eta), keyed by (planner, seed, eta)."""
    base = with_overrides(cfg.train, cfg.transfer)
    fixed = {name: {"fixed_planner": planner, "env.planner_action": "rates"} for name, planner in cfg.baselines.items()}
    runs = transfer_grid(base, trained, "env.eta", cfg.eta_test, out / "evaluate", "eta", fixed_planners=fixed)
    return {key: with_overrides(run, _agents_of(free_market, key[1], key[2])) for key, run in runs.items()}


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
    for axis in (left, right):
        if train_eta(cfg) is not None:
            axis.axvline(train_eta(cfg), color="gray", ls="--", lw=0.8)
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


def metrics(cfg: TaxPolicyConfig) -> tuple[str, ...]:
    """The reported metrics: :data:`METRICS` and the recorded ones of :data:`ACTIVITY`."""
    return METRICS + tuple(key for key in ACTIVITY if key in cfg.train.episode_metrics)


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
    activity = [key for key in ACTIVITY if key in next(iter(summary.values()))]
    if activity:
        print(" / ".join(activity) + " (labour: mean per agent; builds: houses of all agents)")
        for name, stats in summary.items():
            cells = "".join(
                f"{' /'.join(f'{v:>6.1f}' for v in values):>16}" for values in zip(*(stats[k] for k in activity))
            )
            print(name.ljust(width) + cells)


@hydra.main(version_base="1.3", config_path="configs", config_name="economy_tax_policy")
def main(cfg: TaxPolicyConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg, HydraConfig.get().overrides.task)
    out = Path(HydraConfig.get().runtime.output_dir)
    free_market = free_market_configs(cfg, out)
    if free_market:
        run_many(list(free_market.values()), **launch_settings(cfg), desc="agents in a free market")
    trained = train_configs(cfg, out, free_market)
    run_many(
        list(trained.values()),
        **launch_settings(cfg),
        desc="train planners",
    )
    runs = evaluation_configs(cfg, trained, out, free_market)
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
    summary = relative_summary(results, metrics(cfg), cfg.reference)
    (out / "summary.json").write_text(json.dumps({"eta_test": cfg.eta_test, "planners": summary}, indent=1))
    plot(cfg, summary, out / "economy_tax_policy.png")
    print_table(cfg, summary)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
