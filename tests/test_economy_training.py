"""The training loop on the economy: masked and multi-bracket policies, fixed planners,
episode metrics, and the deviation search under action masks."""
from __future__ import annotations

import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MaskedCategorical

from torchrl_ermas.envs.economy import (
    EconomyEnv,
    FreeMarketPlanner,
    make_economy_env,
    SaezPlanner,
)
from torchrl_ermas.regret import ReptileRegretEstimator
from torchrl_ermas.regret.deviation import _uniform_over_support
from torchrl_ermas.training import ErmasTrainer, PPOConfig
from torchrl_ermas.training.models import IndependentMaskedCategorical, make_policy

PPO = PPOConfig(hidden=16, depth=1)


def _labour_cfg(tmp_path, **overrides) -> dict:
    cfg = {
        "env": {"_target_": "torchrl_ermas.envs.economy.make_economy_env", "tier": "labour",
                "episode_length": 20, "period": 5},
        "iterations": 2, "num_envs": 4, "progress": False, "output_dir": str(tmp_path),
        "logger": {"backend": ""}, "agents": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "planner": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "episode_metrics": ["equality", "productivity"],
        "ermas": {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2,
                  "deviation_steps": 1, "regret_gamma": 1.0, "regret_baseline": "mean"},
    }
    cfg.update(overrides)
    return cfg


def test_planner_policy_acts_per_bracket_only_at_period_start():
    env = EconomyEnv(3, tier="labour", episode_length=10, period=5, seed=0)
    policy = make_policy(env, "planner", PPO, torch.device("cpu"))
    with set_exploration_type(ExplorationType.RANDOM):
        data = env.rollout(10, lambda td: policy(env.rand_action(td)))  # random agents
    action = data["planner", "action"]
    assert action.shape == (3, 10, 1, 7)
    log_prob = data["planner", "action_log_prob"]
    assert log_prob.shape == (3, 10, 1)
    start = data["planner", "period_start"].squeeze(-1).squeeze(-1)
    assert start[:, 0].all() and start[:, 5].all() and not start[:, 1:5].any()
    assert (action[~start] == 0).all()  # keep the previous rates
    assert (log_prob[~start] == 0).all()  # the only allowed choice
    assert (log_prob[start] < 0).all()  # 22 choices in each of the 7 brackets


def test_agent_policy_only_takes_allowed_actions_on_the_map():
    env = EconomyEnv(4, tier="gather_trade_build", episode_length=30, period=10,
                     spatial_observation=False, seed=1)
    policy = make_policy(env, "agents", PPO, torch.device("cpu"))
    assert policy.module[-1].distribution_class is MaskedCategorical
    with set_exploration_type(ExplorationType.RANDOM):
        data = env.rollout(30, lambda td: policy(env.rand_action(td)))  # random planner
    mask = data["agents", "action_mask"]
    taken = mask.gather(-1, data["agents", "action"].unsqueeze(-1))
    assert not mask.all()  # the masks do forbid actions here
    assert taken.all()


def test_independent_masked_categorical_sums_over_components():
    logits = torch.randn(5, 3, 4)
    mask = torch.rand(5, 3, 4) > 0.3
    mask[..., 0] = True
    dist = IndependentMaskedCategorical(logits, mask)
    action = dist.sample()
    parts = MaskedCategorical(logits=logits, mask=mask)
    torch.testing.assert_close(dist.log_prob(action), parts.log_prob(action).sum(-1))
    torch.testing.assert_close(dist.entropy(), parts.entropy().sum(-1))
    assert mask.gather(-1, dist.deterministic_sample.unsqueeze(-1)).all()


def test_deviation_exploration_stays_within_the_mask():
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    dist = MaskedCategorical(logits=torch.randn(2, 4), mask=mask)
    uniform = _uniform_over_support(dist)
    torch.testing.assert_close(uniform[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(uniform[1], torch.full((4,), 0.25))


def test_regret_estimate_under_masks_is_finite_and_within_the_trust_region():
    env = make_economy_env(4 * 2, tier="gather_build", episode_length=15, period=5,
                           planner_action="rates", spatial_observation=False, seed=0)
    policy = make_policy(env, "agents", PPO, torch.device("cpu"))
    estimator = ReptileRegretEstimator(
        policy, env, planner_policy=FreeMarketPlanner(), num_steps=1, trust_region=0.5, gamma=1.0
    )
    result = estimator.estimate(seed=0)
    assert result["regret"].shape == (4,)
    assert torch.isfinite(result["regret"]).all()
    assert (result["kl"] <= 0.5 + 1e-4).all()


@pytest.mark.parametrize("variant", ["marl", "ermas"])
def test_trainer_records_episode_metrics(tmp_path, variant):
    results = ErmasTrainer(_labour_cfg(tmp_path, variant=variant)).train()
    for key in ("equality", "productivity"):
        assert len(results["history"][key]) == 2
        assert 0 <= results["history"]["equality"][-1] <= 1
        assert key in results["final"]
    assert results["final"]["productivity"] > 0  # random agents work some hours
    if variant == "ermas":
        assert all(r is not None for r in results["history"]["regret"])


def test_unknown_episode_metric_raises(tmp_path):
    with pytest.raises(ValueError, match="episode_metrics.*'welfare'"):
        ErmasTrainer(_labour_cfg(tmp_path, episode_metrics=["welfare"]))


def test_fixed_planner_sets_the_rates(tmp_path):
    cfg = _labour_cfg(
        tmp_path, variant="marl", train_planner=False,
        fixed_planner={"_target_": "torchrl_ermas.envs.economy.USFederalPlanner"},
    )
    cfg["env"]["planner_action"] = "rates"
    trainer = ErmasTrainer(cfg)
    results = trainer.train()
    assert "planner" not in trainer.optimizers
    data = trainer._collect(0)
    torch.testing.assert_close(
        data["planner", "action"][0, 0, 0], torch.tensor([0.1, 0.12, 0.22, 0.24, 0.32, 0.35, 0.37])
    )
    assert results["final"]["planner_reward"] == pytest.approx(
        sum(results["history"]["planner_reward"]) / 2
    )


def test_saez_planner_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    env = EconomyEnv(4, tier="labour", planner_action="rates", episode_length=40, period=10, seed=0)
    planner = SaezPlanner(fixed_elasticity=3.0, buffer_size=8)
    td = env.reset()
    for _ in range(40):
        _, td = env.step_and_maybe_reset(planner(env.rand_action(td)))
    torch.save(planner.state_dict(), tmp_path / "saez.pt")
    restored = SaezPlanner(fixed_elasticity=3.0, buffer_size=8)
    restored.load_state_dict(torch.load(tmp_path / "saez.pt", weights_only=True))
    assert (restored.n_samples, restored.warmed_up) == (planner.n_samples, planner.warmed_up)
    state = env.reset()
    state["planner", "period_start"][:] = True
    torch.testing.assert_close(restored(state.clone())["planner", "action"],
                               planner(state.clone())["planner", "action"])
