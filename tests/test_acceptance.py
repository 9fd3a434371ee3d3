"""Experiment-level acceptance across seeds: Agent-Adv-Search tracks the exact epsilon
frontier (Figure 2), and the Figure 4 robustness of the ERMAS planner.

Small budgets (the examples' settings, read from their yaml files, on settings and grids
the examples do not use), three seeds per configuration. Marked slow; CI runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl_ermas.envs import SequentialBimatrixEnv
from torchrl_ermas.envs.bimatrix_analysis import exact_values, policy_table
from torchrl_ermas.envs.bimatrix_frontier import epsilon_frontier

from torchrl_ermas.training import (
    ErmasTrainer,
    TrainConfig,
    mean_sem,
    method_seed_configs,
    multiplier_settling,
    run_many,
    transfer_config,
    with_overrides,
)

SEEDS = (0, 1, 2)
# Figure 2 on a setting the example never uses: 60-step episodes (the example has 100), so
# the exact frontier spans about 90 * 0.6 -> 11 * 0.6 and full cooperation costs a regret of
# about 18; epsilons between the example's grid points.
EPISODE = 60
EPSILONS = (-20.0, 4.0, 8.5, 13.0)


CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
EXAMPLE_CONFIG = CONFIGS / "bimatrix_adversarial_search.yaml"


def base_config(tmp_path) -> TrainConfig:
    """The Figure 2 example's training run (its yaml), on 60-step episodes."""
    train = OmegaConf.load(EXAMPLE_CONFIG).train
    overrides = {"env.max_steps": EPISODE, "checkpoint_interval": 100, "logger.backend": ""}
    return with_overrides(
        with_overrides(TrainConfig(), OmegaConf.to_container(train)),
        {**overrides, "output_dir": str(tmp_path)},
    )


def figure2_hook(trainer) -> dict:
    """Exact regrets of the final policies, a regret estimate of them (ERMAS) and lambda's
    change over the last 20 %."""
    env = trainer.env.base_env
    values = exact_values(env, policy_table(trainer.agent_policy, env))
    out = {"exact_regret": (values[:, 1] - values[:, 0]).tolist()}
    if trainer.variant.estimates_regret:
        out["final_estimate"] = trainer.estimate_regret(trainer.cfg.seed)["regret"].tolist()
        out["lambda_change"] = multiplier_settling(trainer.history["lambda"])
    return out


@pytest.fixture(scope="module")
def figure2(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("figure2")
    points = {("ermas", eps): {"variant": "ermas", "ermas.epsilon": eps} for eps in EPSILONS}
    points["marl", None] = {"variant": "marl"}
    names = {f"{method}{value}": (method, value) for method, value in points}
    base = base_config(tmp)
    configs = method_seed_configs(base, {f"{m}{v}": o for (m, v), o in points.items()}, SEEDS, tmp)
    results = run_many(list(configs.values()), workers=2, post=figure2_hook)
    grouped: dict = {}
    for (name, _), result in zip(configs, results):
        grouped.setdefault(names[name], []).append(result["final"])
    env = instantiate(base.env, batch_size=1)
    grouped["frontier"] = {p.epsilon: p.planner_return for p in epsilon_frontier(env, EPSILONS)}
    return grouped


def stat(finals: list[dict], name: str) -> tuple[float, float]:
    if name == "regret":
        return mean_sem(max(f["regret"]) for f in finals)
    return mean_sem(f[name] for f in finals)


@pytest.mark.slow
class TestAdversarialSearchTracksTheFrontier:
    """Epsilon is a control knob: the planner reward falls monotonically with it, close to
    the exact frontier, with calibrated regret estimates and multipliers that settle."""

    def test_planner_reward_is_monotone_in_epsilon(self, figure2):
        rewards = [stat(figure2["ermas", eps], "planner_reward") for eps in EPSILONS]
        for (low, se_low), (high, se_high) in zip(rewards, rewards[1:]):
            assert high <= low + 2 * (se_low**2 + se_high**2) ** 0.5, rewards

    def test_every_point_is_near_the_exact_frontier(self, figure2):
        frontier = figure2["frontier"]
        span = max(frontier.values()) - min(frontier.values())
        for eps in EPSILONS:
            reward, _ = stat(figure2["ermas", eps], "planner_reward")
            assert abs(reward - frontier[eps]) <= 0.1 * span + 2.0, (eps, reward, frontier[eps])

    def test_regret_estimates_are_calibrated(self, figure2):
        """The estimate of the final policies recovers at least 70 % of their exact regret
        in every run, for the agents whose exact regret exceeds 1."""
        for eps in EPSILONS:
            ratios = [
                estimated / exact
                for final in figure2["ermas", eps]
                for estimated, exact in zip(final["final_estimate"], final["exact_regret"])
                if exact > 1
            ]
            assert all(ratio >= 0.7 for ratio in ratios), (eps, ratios)

    def test_multipliers_settle(self, figure2):
        """Where the constraint can hold (epsilon >= 0) lambda has settled by the end of the
        run: its relative change over the last 20 % (``multiplier_settling``) is below 10 % on
        average over the seeds and agents, and below 15 % in every run (2 of 228 multipliers
        measured on the example's grids and this one moved over 10 %, the worst 11.1 %);
        where it cannot hold, lambda sits at its cap."""
        for eps in EPSILONS:
            finals = figure2["ermas", eps]
            if eps < 0:  # infeasible (regret >= 0 > epsilon)
                assert all(lam > 99.0 for f in finals for lam in f["lambda"]), eps  # cap: 100
                continue
            changes = [change for f in finals for change in f["lambda_change"]]
            assert sum(changes) / len(changes) < 0.1, (eps, changes)
            assert max(changes) < 0.15, (eps, changes)

    def test_very_negative_epsilon_matches_marl(self, figure2):
        ermas, se_e = stat(figure2["ermas", EPSILONS[0]], "planner_reward")
        marl, se_m = stat(figure2["marl", None], "planner_reward")
        assert abs(ermas - marl) <= 2 * (se_e + se_m) + 2.0, (ermas, marl)


# ---------------------------------------------------------------------------- Figure 4
# The test gaps of Figure 4 make fresh agents defect (Nash, position (0, 0)) for Q_test < 0.3
# and cooperate above (fully, position (3, 3), once the incentive 0.4 Q - 0.12 is clear).
# Each trained planner is scored at both with the agents pinned there: the planner reward a
# transfer measures once the agents converge.
NASH, COOPERATION = (0, 0), (3, 3)


@pytest.fixture(scope="module")
def figure4(tmp_path_factory) -> dict[str, list[dict[tuple, float]]]:
    """Per method, per seed: the planner's mean episode reward at each pinned position."""
    tmp = tmp_path_factory.mktemp("figure4")
    example = OmegaConf.load(CONFIGS / "bimatrix_robust_planner.yaml")
    base = with_overrides(
        with_overrides(TrainConfig(), OmegaConf.to_container(example.train)),
        {"logger.backend": "", "checkpoint_interval": 10**6},
    )
    methods = {name: OmegaConf.to_container(example.methods[name]) for name in ("ermas", "marl_q0", "marl_q05")}
    configs = method_seed_configs(base, methods, SEEDS, tmp)
    run_many(list(configs.values()), workers=2)
    scores: dict[str, list[dict[tuple, float]]] = {}
    for (name, _), cfg in configs.items():
        planner = ErmasTrainer(
            transfer_config(
                cfg,
                Path(cfg.output_dir) / "checkpoint.pt",
                {"output_dir": str(Path(cfg.output_dir) / "scored")},
            )
        ).planner_policy
        scores.setdefault(name, []).append(
            {position: pinned_planner_reward(planner, cfg.env, position) for position in (NASH, COOPERATION)}
        )
    return scores


@torch.no_grad()
def pinned_planner_reward(planner, env_cfg: dict, position: tuple[int, int]) -> float:
    """Mean planner episode reward when both agents stay at ``position`` throughout."""
    kwargs = {k: v for k, v in env_cfg.items() if not k.startswith("_")}
    env = SequentialBimatrixEnv(64, **{**kwargs, "start_position": position})
    env.set_seed(0)

    def stay(td):
        td = planner(td)
        return td.set(("agents", "action"), torch.zeros(64, 2, dtype=torch.long))

    # the planner samples, as in transfer, from a fixed seed
    with torch.random.fork_rng(), set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(0)
        rollout = env.rollout(env.max_steps, stay, break_when_any_done=False)
    return rollout["next", "planner", "reward"].sum(1).mean().item()


@pytest.mark.slow
class TestRobustPlanner:
    def test_ermas_planner_is_robust_beyond_the_crossover(self, figure4):
        """At least as good as MARL (Q_train 0.5) against cooperating agents, unlike MARL (0)."""
        ermas, se_e = mean_sem(s[COOPERATION] for s in figure4["ermas"])
        robust, se_r = mean_sem(s[COOPERATION] for s in figure4["marl_q05"])
        nominal, _ = mean_sem(s[COOPERATION] for s in figure4["marl_q0"])
        assert ermas >= robust - 2 * (se_e + se_r) - 0.5, (ermas, robust)
        assert ermas > nominal + 30.0, (ermas, nominal)

    def test_ermas_planner_stays_close_to_marl_at_the_nominal_game(self, figure4):
        """Close to MARL (Q_train 0) against Nash agents, far above MARL (Q_train 0.5)."""
        ermas, _ = mean_sem(s[NASH] for s in figure4["ermas"])
        nominal, _ = mean_sem(s[NASH] for s in figure4["marl_q0"])
        robust, _ = mean_sem(s[NASH] for s in figure4["marl_q05"])
        assert ermas >= 0.85 * nominal, (ermas, nominal)
        assert ermas > robust + 50.0, (ermas, robust)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
