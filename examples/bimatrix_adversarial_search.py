"""Agent-Adv-Search in the sequential bimatrix game (the ERMAS paper's Figure 2).

A passive planner and two agents play the ``"dilemma"`` game at ``Q = 0``. For each
``epsilon`` ERMAS searches for the worst epsilon-equilibrium for the planner (learned
multipliers); plain MARL and runs with fixed multipliers are the comparisons. Per run the
script reports the final planner reward, the combined agent reward, each agent's regret
(estimated by the trust-region deviation, and exact by dynamic programming over the
small game), the calibration of the estimate (an estimate of the final policies against
their exact regret, the worst agent with an exact regret above 1; mean and worst run),
``lambda`` and its relative change over the last 20 % of the
iterations. The ground truth is the exact frontier
(:func:`~torchrl_ermas.envs.bimatrix_frontier.epsilon_frontier`: tabular policies, exact
regrets, constrained descent): the least planner reward of any epsilon-equilibrium found
at each epsilon. The script prints both tables and the gap between them, writes
``summary.json`` and draws five panels (planner vs agent reward, regret vs epsilon,
planner reward vs epsilon with the frontier, fixed lambda, the learned lambda over the
iterations).

The setting resolves the trend. With ``observe="joint"`` agents see each other's position
and can punish a deviation, so cooperative epsilon-equilibria cost almost no regret (only
defecting in the episode's last steps pays): the exact frontier is a step from the Nash
planner reward (~90) at ``epsilon = 0`` to full cooperation (~11) already at
``epsilon = 0.5``, and no epsilon grid shows a trend. With ``observe="own"`` (the default
here) no agent can punish, each step of cooperation costs its cooperator a regret of 0.3
and the planner 0.4, so the frontier falls linearly, ``J_p ~ 89.7 - 2.67 epsilon``, until
full cooperation at ``epsilon ~ 29`` for 100-step episodes; the default grid spans that
range in steps of 3 to 4 (8 to 11 in planner reward). The exact regret is the global best
response; ERMAS's epsilon bounds the regret of the best deviation within the estimator's
KL trust region (3 nats here), which in this game contains nearly all of the best
response, so the estimate recovers the exact regret (the calibration column). The
agents' entropy bonus (0.1, ten times the trainer's default) keeps their policies soft,
so that their regret varies continuously with ``lambda`` and ``lambda`` settles where it
meets epsilon; with saturating policies their response is a step at the game's switching
point and ``lambda`` keeps correcting their drift to the end of the run.

    python examples/bimatrix_adversarial_search.py
    python examples/bimatrix_adversarial_search.py --config-name bimatrix_adversarial_search_paper
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
import torch  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchrl_ermas.envs.bimatrix_analysis import exact_values, policy_table  # noqa: E402
from torchrl_ermas.envs.bimatrix_frontier import epsilon_frontier  # noqa: E402

from torchrl_ermas.training import (  # noqa: E402
    LaunchConfig,
    TrainConfig,
    launch_settings,
    mean_sem,
    method_seed_configs,
    multiplier_settling,
    run_many,
    validate_experiment,
)
from torchrl_ermas.validation import check_real  # noqa: E402


@dataclass
class AdversarialSearchConfig(LaunchConfig):
    """Schema of the experiment (and, inherited, how its runs launch: :class:`~torchrl_ermas.training.LaunchConfig`).

    Attributes:
        train: the base run (the ERMAS variant); each run sets its variant, seed and
            output folder, ERMAS runs their epsilon and fixed-lambda runs their lambda
            (``train.ermas.lambda_init`` is the ERMAS runs' initial lambda).
        epsilons: the ERMAS sweep (learned multipliers).
        fixed_lambdas: the fixed-multiplier ablation (``variant=fixed_lambda``).
        marl: add plain MARL runs.
        seeds: seeds of every configuration.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    epsilons: list[float] = field(default_factory=lambda: [-10.0, 0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 25.0])
    fixed_lambdas: list[float] = field(default_factory=lambda: [0.0, 1.0, 10.0])
    marl: bool = True
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


ConfigStore.instance().store(name="adversarial_search_schema", node=AdversarialSearchConfig)


def validate(cfg: AdversarialSearchConfig, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Raises a ``ValueError`` naming the first invalid experiment setting.

    ``overrides`` are the command-line overrides: a ``train`` key that the experiment sets
    per run (variant, epsilon, seed, output folder) is refused.
    """
    validate_experiment(
        cfg.train,
        sweeps={"epsilons": cfg.epsilons, "seeds": cfg.seeds},
        **launch_settings(cfg),
        overrides=overrides,
        owned={
            "variant": "the experiment runs ermas per epsilon, fixed_lambda per fixed_lambdas and marl when marl=true",
            "ermas.epsilon": "set epsilons instead",
        },
    )
    for epsilon in cfg.epsilons:
        check_real("epsilons", epsilon)
    # the exact frontier and the exact regrets are computed after training: refuse here a
    # game they cannot be computed for, or one other than the game the agents train in
    env = instantiate(cfg.train.env, batch_size=1)
    if getattr(env, "planner_mode", None) != "passive":
        raise ValueError(
            "train.env must be a SequentialBimatrixEnv with planner: passive (the exact frontier needs a "
            f"planner return that no planner policy changes), got {cfg.train.env}."
        )
    for key in ("q", "dr_scale", "rr_eta"):
        if getattr(cfg.train.reward, key):
            raise ValueError(
                f"train.reward.{key} must be 0: the exact frontier and regrets are those of the game "
                f"itself, got {getattr(cfg.train.reward, key)}."
            )
    for lam in cfg.fixed_lambdas:
        check_real("fixed_lambdas", lam, low=0)
        if lam > cfg.train.ermas.lambda_max:
            raise ValueError(
                f"fixed_lambdas must be <= train.ermas.lambda_max="
                f"{cfg.train.ermas.lambda_max}, got {lam} (raise train.ermas.lambda_max)."
            )


def exact_regret_hook(trainer) -> dict[str, Any]:
    """Exact values of the final agent policies in the training game (by DP); for ERMAS
    runs also a regret estimate of those policies (the run's own estimator, seeded with the
    run's seed), its calibration (estimated / exact, the worst agent with an exact regret
    above 1) and how much lambda moved over the last 20 % of the iterations
    (:func:`~torchrl_ermas.training.multiplier_settling`, the agent that moved most).

    The calibration compares estimate and exact regret of the same policies: the run's
    last estimates (its ``regret``) are of earlier policies, which still move.
    """
    env = trainer.env.base_env
    values = exact_values(env, policy_table(trainer.agent_policy, env))
    exact = values[:, 1] - values[:, 0]
    out = {"exact_regret": exact.tolist(), "exact_agent_reward": values[:, 0].tolist()}
    if trainer.variant.estimates_regret:
        estimate = trainer.estimate_regret(trainer.cfg.seed)["regret"].tolist()
        ratios = [e / x for e, x in zip(estimate, exact.tolist()) if x > 1]
        out["final_estimate"] = estimate
        out["calibration"] = min(ratios) if ratios else None
        out["lambda_change"] = max(multiplier_settling(trainer.history["lambda"]))
    return out


def frontier_rows(cfg: AdversarialSearchConfig) -> list[dict[str, Any]]:
    """The exact frontier of the training game at each epsilon of the sweep."""
    torch.set_num_threads(1)
    env = instantiate(cfg.train.env, batch_size=1, device=cfg.train.device)
    return [
        {
            "method": "frontier",
            "value": point.epsilon,
            "planner_reward": point.planner_return,
            "combined_agent_reward": sum(point.agent_returns),
            "max_exact_regret": max(point.regrets),
            "feasible": point.feasible,
        }
        for point in epsilon_frontier(env, cfg.epsilons)
    ]


def run_configs(cfg: AdversarialSearchConfig, out: Path) -> dict[tuple, TrainConfig]:
    """The runs of the sweep, keyed by (method, value, seed), in ``out/method/value/seed{s}``."""
    points: dict[tuple, dict[str, Any]] = {
        ("ermas", eps): {"variant": "ermas", "ermas.epsilon": eps} for eps in cfg.epsilons
    }
    for lam in cfg.fixed_lambdas:
        points["fixed_lambda", lam] = {"variant": "fixed_lambda", "ermas.lambda_init": lam}
    if cfg.marl:
        points["marl", None] = {"variant": "marl"}
    runs = method_seed_configs(cfg.train, {f"{m}/{v}": o for (m, v), o in points.items()}, cfg.seeds, out)
    return {(m, v, seed): runs[f"{m}/{v}", seed] for m, v in points for seed in cfg.seeds}


def summarize(results: dict[tuple, dict]) -> list[dict[str, Any]]:
    """One row per (method, value): means and standard errors over seeds."""
    rows = []
    for method, value in dict.fromkeys((k[0], k[1]) for k in results):
        finals = [r["final"] for k, r in results.items() if k[:2] == (method, value)]
        row: dict[str, Any] = {"method": method, "value": value}
        for name in ("planner_reward", "combined_agent_reward"):
            row[name], row[f"{name}_sem"] = mean_sem(f[name] for f in finals)
        for name in ("exact_regret", "regret", "lambda"):
            if finals[0].get(name) is None:
                continue
            per_agent = [max(f[name]) for f in finals]  # the agent with the largest value
            row[f"max_{name}"], row[f"max_{name}_sem"] = mean_sem(per_agent)
        calibrations = [f["calibration"] for f in finals if f.get("calibration") is not None]
        if calibrations:  # per run the worst agent (least estimated / exact with exact > 1)
            row["mean_calibration"], row["min_calibration"] = mean_sem(calibrations)[0], min(calibrations)
        if finals[0].get("lambda_change") is not None:
            row["max_lambda_change"] = max(f["lambda_change"] for f in finals)
        rows.append(row)
    return rows


def lambda_trajectories(results: dict[tuple, dict]) -> dict[float, list[float]]:
    """Per epsilon, the learned lambda per iteration (the larger agent's, mean over seeds;
    at its start value during the warm-up)."""
    trajectories: dict[float, list[float]] = {}
    for eps in dict.fromkeys(k[1] for k in results if k[0] == "ermas"):
        runs = [[max(lam) for lam in r["history"]["lambda"]] for k, r in results.items() if k[:2] == ("ermas", eps)]
        trajectories[eps] = torch.tensor(runs).mean(0).tolist()
    return trajectories


def plot(rows: list[dict[str, Any]], trajectories: dict[float, list[float]], path: Path) -> None:
    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
    learned = [r for r in rows if r["method"] == "ermas"]
    fixed = [r for r in rows if r["method"] == "fixed_lambda"]
    marl = [r for r in rows if r["method"] == "marl"]
    frontier = [r for r in rows if r["method"] == "frontier"]

    def scatter(axis, group, label, marker):
        for r in group:
            axis.errorbar(
                r["combined_agent_reward"],
                r["planner_reward"],
                xerr=r["combined_agent_reward_sem"],
                yerr=r["planner_reward_sem"],
                marker=marker,
                capsize=3,
                linestyle="none",
                label=f"{label} {r['value']:g}" if r["value"] is not None else label,
            )

    scatter(axes[0], learned, "ERMAS eps=", "o")
    scatter(axes[0], marl, "MARL", "*")
    axes[0].plot(
        [r["combined_agent_reward"] for r in frontier],
        [r["planner_reward"] for r in frontier],
        "kx--",
        lw=0.8,
        label="exact frontier",
    )
    axes[0].set(xlabel="combined agent reward", ylabel="planner reward", title="Equilibria found (learned lambda)")
    eps = [r["value"] for r in learned]
    for key, label in (("max_exact_regret", "exact"), ("max_regret", "estimated")):
        if all(key in r for r in learned):
            axes[1].errorbar(
                eps,
                [r[key] for r in learned],
                yerr=[r[f"{key}_sem"] for r in learned],
                marker="o",
                capsize=3,
                label=f"{label} regret (max over agents)",
            )
    axes[1].plot(eps, [max(e, 0.0) for e in eps], "k--", lw=0.8, label="max(epsilon, 0)")
    axes[1].set(xlabel="epsilon", ylabel="regret (episode return)", title="Regret vs epsilon")
    axes[2].errorbar(
        eps,
        [r["planner_reward"] for r in learned],
        yerr=[r["planner_reward_sem"] for r in learned],
        marker="o",
        capsize=3,
        label="ERMAS (learned lambda)",
    )
    axes[2].plot(
        [r["value"] for r in frontier], [r["planner_reward"] for r in frontier], "kx--", lw=0.8, label="exact frontier"
    )
    for r in marl:
        axes[2].axhline(r["planner_reward"], color="gray", lw=0.8, label="MARL")
    axes[2].set(xlabel="epsilon", ylabel="planner reward", title="Planner reward vs epsilon")
    scatter(axes[3], fixed, "fixed lambda=", "s")
    scatter(axes[3], learned, "ERMAS eps=", "o")
    axes[3].set(xlabel="combined agent reward", ylabel="planner reward", title="Fixed lambda")
    for eps, trajectory in trajectories.items():
        axes[4].plot(trajectory, label=f"eps={eps:g}")
    axes[4].set(
        xlabel="iteration", ylabel="lambda (larger agent, mean over seeds)", yscale="log", title="Learned multipliers"
    )
    for axis in axes:
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'method':>13} {'value':>6} {'planner':>14} {'agents':>14} {'exact regret':>14} "
        f"{'est. regret':>12} {'calib.':>9} {'lambda':>8} {'d lambda':>9}"
    )
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:g}"
        exact = f"{r['max_exact_regret']:.1f} ± {r['max_exact_regret_sem']:.1f}"
        est = f"{r['max_regret']:.1f}" if "max_regret" in r else "-"
        calibration = f"{r['mean_calibration']:.2f}/{r['min_calibration']:.2f}" if "min_calibration" in r else "-"
        lam = f"{r['max_lambda']:.2f}" if "max_lambda" in r else "-"
        change = f"{r['max_lambda_change']:.0%}" if "max_lambda_change" in r else "-"
        print(
            f"{r['method']:>13} {value:>6} {r['planner_reward']:>7.1f} ± {r['planner_reward_sem']:<4.1f} "
            f"{r['combined_agent_reward']:>7.1f} ± {r['combined_agent_reward_sem']:<4.1f} "
            f"{exact:>14} {est:>12} {calibration:>9} {lam:>8} {change:>9}"
        )


def print_frontier(rows: list[dict[str, Any]]) -> None:
    """The exact frontier next to ERMAS at each epsilon; gap = ERMAS - frontier planner reward."""
    learned = {r["value"]: r for r in rows if r["method"] == "ermas"}
    print(
        f"{'epsilon':>8} {'frontier planner':>17} {'agents':>7} {'exact regret':>13} {'ERMAS planner':>14} {'gap':>7}"
    )
    for r in (r for r in rows if r["method"] == "frontier"):
        regret = f"{r['max_exact_regret']:.2f}" + ("" if r["feasible"] else "*")
        ermas = learned[r["value"]]["planner_reward"]
        print(
            f"{r['value']:>8g} {r['planner_reward']:>17.1f} {r['combined_agent_reward']:>7.1f} "
            f"{regret:>13} {ermas:>14.1f} {ermas - r['planner_reward']:>7.1f}"
        )
    print("* epsilon below every reachable regret: the least-regret point (Nash)")


@hydra.main(version_base="1.3", config_path="configs", config_name="bimatrix_adversarial_search")
def main(cfg: AdversarialSearchConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    validate(cfg, HydraConfig.get().overrides.task)
    out = Path(HydraConfig.get().runtime.output_dir)
    configs = run_configs(cfg, out)
    results = dict(
        zip(
            configs,
            run_many(
                list(configs.values()),
                **launch_settings(cfg),
                post=exact_regret_hook,
                desc="runs",
            ),
        )
    )
    rows = summarize(results) + frontier_rows(cfg)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    plot(rows, lambda_trajectories(results), out / "adversarial_search.png")
    print_table([r for r in rows if r["method"] != "frontier"])
    print_frontier(rows)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
