"""Meta-step ablation in the sequential bimatrix game (the ERMAS paper's Figure 3).

ERMAS runs with the meta scale ``beta`` in ``{0, 0.2, 1}`` of the meta-gradient term
(:class:`~torchrl_ermas.regret.MetaGradient`, Eq. 13; ``beta = 0`` disables it) at a fixed
``epsilon``; the script draws the learning curves of the planner
reward and of the combined agent reward per iteration, mean and standard-error band over
seeds, with the exact epsilon-frontier of the game
(:func:`~torchrl_ermas.envs.bimatrix_frontier.epsilon_frontier`) as the target; it prints
the rewards at a few checkpoints of training and, per seed, the first iteration at which
the planner reward (a trailing mean over ``smoothing`` iterations) reaches the frontier.

    python examples/bimatrix_meta_ablation.py
    python examples/bimatrix_meta_ablation.py --config-name bimatrix_meta_ablation_paper
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchrl_ermas.envs.bimatrix_frontier import epsilon_frontier  # noqa: E402

from torchrl_ermas.training import (  # noqa: E402
    LaunchConfig,
    TrainConfig,
    launch_settings,
    mean_sem,
    method_seed_configs,
    run_many,
    validate_experiment,
)
from torchrl_ermas.validation import check_real  # noqa: E402


@dataclass
class MetaAblationConfig(LaunchConfig):
    """Schema of the experiment: the base ERMAS run, the meta scales and the seeds (and,
    inherited, how its runs launch: :class:`~torchrl_ermas.training.LaunchConfig`).

    Attributes:
        smoothing: the window (iterations) of the trailing mean of the planner reward
            whose first fall to the exact frontier (per seed) measures how soon the agents
            reach the worst epsilon-equilibrium.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    meta_scales: list[float] = field(default_factory=lambda: [0.0, 0.2, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    smoothing: int = 5


ConfigStore.instance().store(name="meta_ablation_schema", node=MetaAblationConfig)


def validate(cfg: MetaAblationConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raises a ``ValueError`` naming the first invalid experiment setting.

    ``overrides`` are the command-line overrides: a ``train`` key that the experiment sets
    per run (variant, meta scale, seed, output folder) is refused.
    """
    validate_experiment(
        cfg.train,
        sweeps={"meta_scales": cfg.meta_scales, "seeds": cfg.seeds},
        **launch_settings(cfg),
        overrides=overrides,
        owned={
            "variant": "every run of this experiment is variant=ermas",
            "ermas.meta_scale": "set meta_scales instead",
        },
    )
    for beta in cfg.meta_scales:
        check_real("meta_scales", beta, low=0, high=1)
    if not 1 <= cfg.smoothing <= cfg.train.iterations:
        raise ValueError(
            f"smoothing must be an integer in [1, train.iterations={cfg.train.iterations}], got {cfg.smoothing}."
        )


def run_configs(cfg: MetaAblationConfig, out: Path) -> dict[tuple[float, int], TrainConfig]:
    """The runs, keyed by (beta, seed), in ``out/beta{beta}/seed{s}``; each is validated."""
    methods = {f"beta{beta:g}": {"variant": "ermas", "ermas.meta_scale": beta} for beta in cfg.meta_scales}
    runs = method_seed_configs(cfg.train, methods, cfg.seeds, out)
    return {(beta, seed): runs[f"beta{beta:g}", seed] for beta in cfg.meta_scales for seed in cfg.seeds}


def curves(results: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over seeds (:func:`mean_sem`) of a per-iteration quantity."""
    values = torch.tensor([r["history"][key] for r in results], dtype=torch.float64)
    if values.dim() == 3:  # per-agent rewards: combined
        values = values.sum(-1)
    mean, sem = zip(*(mean_sem(column.tolist()) for column in values.T))
    return torch.tensor(mean), torch.tensor(sem)


def frontier(cfg: MetaAblationConfig) -> float:
    """The exact worst planner return of the training game at the runs' epsilon."""
    torch.set_num_threads(1)
    env = instantiate(cfg.train.env, batch_size=1, device=cfg.train.device)
    return epsilon_frontier(env, [cfg.train.ermas.epsilon])[0].planner_return


def iterations_to(result: dict, target: float, window: int) -> int | None:
    """The first iteration at which the mean planner reward of the last ``window``
    iterations is at most ``target`` (None: never).

    Examples:
        >>> iterations_to({"history": {"planner_reward": [9.0, 7.0, 5.0, 3.0]}}, 5.0, 2)  # means 8, 6, 4
        3
    """
    rewards = torch.tensor(result["history"]["planner_reward"], dtype=torch.float64)
    reached = (rewards.unfold(0, window, 1).mean(-1) <= target).nonzero()
    return int(reached[0]) + window - 1 if len(reached) else None


@hydra.main(version_base="1.3", config_path="configs", config_name="bimatrix_meta_ablation")
def main(cfg: MetaAblationConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg, HydraConfig.get().overrides.task)
    out = Path(HydraConfig.get().runtime.output_dir)
    target = frontier(cfg)
    configs = run_configs(cfg, out)
    results = dict(
        zip(
            configs,
            run_many(
                list(configs.values()),
                **launch_settings(cfg),
                desc="runs",
            ),
        )
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summary = {}
    checkpoints = sorted({0, cfg.train.iterations // 4, cfg.train.iterations // 2, cfg.train.iterations - 1})
    print(f"{'beta':>5} {'quantity':>9} " + "".join(f"{'it ' + str(i):>16}" for i in checkpoints))
    for beta in cfg.meta_scales:
        group = [results[beta, seed] for seed in cfg.seeds]
        summary[beta] = {}
        for axis, key, label in ((axes[0], "planner_reward", "planner"), (axes[1], "agent_reward", "agents")):
            mean, sem = curves(group, key)
            steps = range(len(mean))
            axis.plot(steps, mean, label=f"beta={beta:g}")
            axis.fill_between(steps, mean - sem, mean + sem, alpha=0.25)
            if label == "planner":
                axis.axhline(target, color="black", linestyle="--", linewidth=1)
            summary[beta][label] = {"mean": mean.tolist(), "sem": sem.tolist()}
            cells = "".join(f"{mean[i]:>9.1f} ± {sem[i]:<4.1f}" for i in checkpoints)
            print(f"{beta:>5g} {label:>9} {cells}")
        reached = [iterations_to(r, target, cfg.smoothing) for r in group]
        final, final_sem = mean_sem([r["final"]["planner_reward"] for r in group])
        summary[beta].update(iterations_to_frontier=reached, final_planner_reward=final)
        print(
            f"{beta:>5g} planner reaches the frontier {target:.1f} at iterations "
            + " / ".join("never" if c is None else str(c) for c in reached)
            + f"; final planner reward {final:.1f} ± {final_sem:.1f}"
        )
    axes[0].set(xlabel="iteration", ylabel="planner episode reward", title="Planner reward")
    axes[1].set(xlabel="iteration", ylabel="combined agent episode reward", title="Agent reward")
    for axis in axes:
        axis.legend()
    fig.tight_layout()
    fig.savefig(out / "meta_ablation.png", dpi=120)
    summary = {"frontier": target, **{str(k): v for k, v in summary.items()}}
    (out / "summary.json").write_text(json.dumps(summary))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
