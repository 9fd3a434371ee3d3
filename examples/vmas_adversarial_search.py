"""Agent-Adv-Search on a VMAS physics scenario, against a regulator planner.

The agents of a VMAS scenario (``navigation`` by default: each agent drives to its goal),
wrapped by TorchRL's :class:`~torchrl.envs.libs.vmas.VmasEnv` with continuous actions, are
trained by ERMAS against a passive planner whose reward a transform computes from the
agents' state (:class:`~torchrl_ermas.transforms.planner.PlannerFromAgents`; by default a
regulator who wants low speeds). ERMAS searches for the epsilon-equilibrium of the agents
that is worst for the regulator: as epsilon grows the regulator's reward should fall while
the agents keep most of their task reward. Plain MARL (selfish agents) is the reference.

Each run writes its ``results.json``; the experiment writes ``summary.json``, a figure and a
table (mean and standard error over seeds) to the hydra output directory.

    python examples/vmas_adversarial_search.py                                  # small default
    python examples/vmas_adversarial_search.py --config-name vmas_adversarial_search_paper
    python examples/vmas_adversarial_search.py 'epsilons=[-100,0,1]' seeds=[0,1,2,3]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hydra
import matplotlib
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchrl.envs import Compose, EnvBase, TransformedEnv

from torchrl_ermas.training import (
    LaunchConfig,
    TrainConfig,
    launch_settings,
    mean_sem,
    method_seed_configs,
    run_many,
    validate_experiment,
)
from torchrl_ermas.transforms import PlannerFromAgents, TimeLimitAsTruncated
from torchrl_ermas.validation import check_real

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARL = "marl"


@dataclass
class RegulatorConfig:
    """The planner's reward rule (see :class:`PlannerFromAgents`).

    Attributes:
        rule: ``"speed"`` (minus the agents' mean squared speed) or ``"separation"`` (mean
            distance between agents).
        features: ``[start, stop)`` of the agents' observation the rule reads (navigation:
            ``[2, 4]`` is the velocity, ``[0, 2]`` the position).
        scale: multiplies the planner reward.
    """

    rule: str = "speed"
    features: list[int] = field(default_factory=lambda: [2, 4])
    scale: float = 1.0


@dataclass
class VmasSearchConfig(LaunchConfig):
    """Schema of the experiment (and, inherited, how its runs launch: :class:`~torchrl_ermas.training.LaunchConfig`).

    Attributes:
        train: the training run shared by every point of the sweep; ``train.env`` holds the
            :class:`~torchrl.envs.libs.vmas.VmasEnv` arguments (``num_envs`` and ``device``
            are added per environment).
        regulator: the planner's reward.
        epsilons: the ERMAS epsilons of the sweep (episode-return units).
        marl: also run plain MARL (selfish agents), the reference.
        seeds: seeds of every point.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    regulator: RegulatorConfig = field(default_factory=RegulatorConfig)
    epsilons: list[float] = field(default_factory=lambda: [-100.0, 0.0, 1.0])
    marl: bool = True
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


ConfigStore.instance().store(name="vmas_search_schema", node=VmasSearchConfig)


def make_regulator(regulator: RegulatorConfig) -> PlannerFromAgents:
    """The transform adding the regulator (a passive planner) to the agents' environment."""
    return PlannerFromAgents(regulator.rule, features=tuple(regulator.features), scale=regulator.scale)


def make_env(regulator: RegulatorConfig, cfg: TrainConfig, batch_size: int, device: torch.device) -> EnvBase:
    """The VMAS scenario of ``cfg.env`` with ``batch_size`` worlds, plus the regulator planner.

    VMAS reports its time limit as ``terminated``; :class:`TimeLimitAsTruncated` makes it
    ``truncated``, as the torchrl-ermas contract has it, so that GAE bootstraps there.
    """
    base = instantiate(cfg.env, num_envs=batch_size, device=device)
    return TransformedEnv(base, Compose(TimeLimitAsTruncated(base.max_steps), make_regulator(regulator)))


def run_configs(cfg: VmasSearchConfig, out: Path) -> dict[tuple[str, int], TrainConfig]:
    """The runs of the sweep, keyed by (point name, seed); MARL first."""
    points = {MARL: {"variant": "marl"}} if cfg.marl else {}
    for epsilon in cfg.epsilons:
        points[f"{epsilon:g}"] = {"variant": "ermas", "ermas.epsilon": epsilon}
    return method_seed_configs(cfg.train, points, cfg.seeds, out)


def run_all(cfg: VmasSearchConfig, runs: dict[tuple[str, int], TrainConfig]) -> dict:
    """Runs every configuration, ``cfg.workers`` at a time; results keyed like ``runs``."""
    results = run_many(
        list(runs.values()),
        **launch_settings(cfg),
        env_factory=partial(make_env, cfg.regulator),
    )
    return dict(zip(runs, results))


def summarize(cfg: VmasSearchConfig, results: dict) -> dict[str, dict[str, float | None]]:
    """Per point of the sweep: mean and s.e. over seeds of the final metrics."""
    summary = {}
    for name in dict.fromkeys(name for name, _ in results):
        finals = [results[name, seed]["final"] for seed in cfg.seeds]
        row = {}
        for metric, values in (
            ("regulator", [f["planner_reward"] for f in finals]),
            ("task", [f["combined_agent_reward"] for f in finals]),
        ):
            row[metric], row[f"{metric}_sem"] = mean_sem(values)
        for metric in ("regret", "lambda"):
            values = [f[metric] for f in finals]
            row[metric] = None if None in values else mean_sem([sum(v) / len(v) for v in values])[0]
        summary[name] = row
    return summary


def plot(summary: dict, path: Path) -> None:
    """Regulator reward and agents' task reward per point of the sweep, with s.e. bars."""
    names = list(summary)
    labels = ["MARL" if name == MARL else f"ε={name}" for name in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric, title in (
        (axes[0], "regulator", "Regulator (planner) episode reward"),
        (axes[1], "task", "Agents' task episode reward (sum over agents)"),
    ):
        mean = [summary[n][metric] for n in names]
        sem = [summary[n][f"{metric}_sem"] for n in names]
        axis.errorbar(range(len(names)), mean, yerr=sem, marker="o", capsize=4, ls="none")
        axis.set_xticks(range(len(names)), labels)
        axis.set(title=title, xlabel="agents (ERMAS epsilon)")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(summary: dict) -> None:
    """One line per point: rewards (mean ± s.e. over seeds), regret and lambda."""
    reference = summary.get(MARL, {}).get("task")
    print(f"{'agents':>10} {'regulator':>18} {'task':>18} {'task/MARL':>10} {'regret':>8} {'lambda':>8}")
    for name, row in summary.items():
        share = f"{row['task'] / reference:10.2f}" if reference else f"{'-':>10}"
        regret = "-" if row["regret"] is None else f"{row['regret']:.3f}"
        lam = "-" if row["lambda"] is None else f"{row['lambda']:.2f}"
        print(
            f"{name:>10} {row['regulator']:>9.3f} ± {row['regulator_sem']:<6.3f}"
            f"{row['task']:>9.3f} ± {row['task_sem']:<6.3f}{share} {regret:>8} {lam:>8}"
        )


def validate(cfg: VmasSearchConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raises a ``ValueError`` naming the first invalid experiment setting.

    ``overrides`` are the command-line overrides: a ``train`` key that the experiment sets
    per run (variant, epsilon, seed, output folder) is refused.
    """
    validate_experiment(
        cfg.train,
        sweeps={"seeds": cfg.seeds},
        **launch_settings(cfg),
        overrides=overrides,
        owned={
            "variant": "the experiment runs ermas per epsilon and marl when marl=true",
            "ermas.epsilon": "set epsilons instead",
        },
    )
    for epsilon in cfg.epsilons:
        check_real("epsilons", epsilon)
    if not cfg.epsilons and not cfg.marl:
        raise ValueError("epsilons is empty and marl is false: nothing to run.")
    make_regulator(cfg.regulator)  # checks rule, features and scale before any run starts


def experiment(
    cfg: VmasSearchConfig, out: Path, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, dict[str, float | None]]:
    """Runs the sweep and writes ``summary.json`` and ``vmas_adversarial_search.png``.

    ``overrides`` are the command-line overrides, checked by :func:`validate`.
    """
    validate(cfg, overrides)
    runs = run_configs(cfg, out)
    results = run_all(cfg, runs)
    summary = summarize(cfg, results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "vmas_adversarial_search.png")
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="vmas_adversarial_search")
def main(cfg: VmasSearchConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    summary = experiment(cfg, out, HydraConfig.get().overrides.task)
    print_table(summary)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
