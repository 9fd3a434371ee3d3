"""Experiment-level acceptance: the Figure 2 trend of Agent-Adv-Search, across seeds.

Small budget (the Figure 2 example's settings, read from its yaml, with fewer iterations),
three seeds per configuration. Marked slow; CI runs it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_ermas.training import mean_sem, run_many, TrainConfig, with_overrides

SEEDS = (0, 1, 2)
EPSILONS = (-10.0, 20.0)


EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples/configs/bimatrix_adversarial_search.yaml"


def base_config(tmp_path) -> TrainConfig:
    """The Figure 2 example's training run (its yaml), with 50 instead of 80 iterations."""
    train = OmegaConf.load(EXAMPLE_CONFIG).train
    overrides = {"iterations": 50, "checkpoint_interval": 50, "logger.backend": ""}
    return with_overrides(
        with_overrides(TrainConfig(), OmegaConf.to_container(train)),
        {**overrides, "output_dir": str(tmp_path)},
    )


@pytest.fixture(scope="module")
def figure2(tmp_path_factory) -> dict[tuple, list[dict]]:
    tmp = tmp_path_factory.mktemp("figure2")
    base = base_config(tmp)
    runs = {}
    for seed in SEEDS:
        for eps in EPSILONS:
            runs["ermas", eps, seed] = {"variant": "ermas", "ermas.epsilon": eps}
        runs["marl", None, seed] = {"variant": "marl"}
    configs = {
        key: with_overrides(base, {**o, "seed": key[2], "output_dir": str(tmp / f"{key[0]}{key[1]}_{key[2]}")})
        for key, o in runs.items()
    }
    results = run_many(list(configs.values()), workers=2)
    grouped: dict[tuple, list[dict]] = {}
    for key, result in zip(configs, results):
        grouped.setdefault(key[:2], []).append(result["final"])
    return grouped


def stat(finals: list[dict], name: str) -> tuple[float, float]:
    if name == "regret":
        return mean_sem(max(f["regret"]) for f in finals)
    return mean_sem(f[name] for f in finals)


@pytest.mark.slow
class TestAdversarialSearchTrend:
    def test_raising_epsilon_lowers_planner_and_raises_agent_reward(self, figure2):
        low, high = figure2["ermas", -10.0], figure2["ermas", 20.0]
        (p_low, se_low), (p_high, se_high) = stat(low, "planner_reward"), stat(high, "planner_reward")
        assert p_high + 2 * (se_low + se_high) < p_low, (p_low, p_high)
        (a_low, s1), (a_high, s2) = stat(low, "combined_agent_reward"), stat(high, "combined_agent_reward")
        assert a_high - 2 * (s1 + s2) > a_low, (a_low, a_high)

    def test_regret_rises_with_epsilon_and_stays_within_it(self, figure2):
        (r_low, _), (r_high, se_high) = stat(figure2["ermas", -10.0], "regret"), stat(figure2["ermas", 20.0], "regret")
        assert r_high > r_low + 5.0, (r_low, r_high)
        assert r_low < 2.0  # very negative epsilon: (near) Nash, no profitable deviation
        assert r_high <= 20.0 + 5.0 + 2 * se_high  # at most epsilon plus noise

    def test_very_negative_epsilon_matches_marl(self, figure2):
        ermas, se_e = stat(figure2["ermas", -10.0], "planner_reward")
        marl, se_m = stat(figure2["marl", None], "planner_reward")
        assert abs(ermas - marl) <= 2 * (se_e + se_m) + 2.0, (ermas, marl)
        lambdas = torch.tensor([f["lambda"] for f in figure2["ermas", -10.0]])
        assert (lambdas > 8.0).all()  # lambda grew from its initial value: the constraint binds


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
