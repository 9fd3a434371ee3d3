"""The training loop on the economy: masked and multi-bracket policies, fixed planners,
episode metrics, and the deviation search under action masks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MaskedCategorical
from torchrl_ermas.envs.economy import (
    EconomyEnv,
    FreeMarketPlanner,
    SaezPlanner,
)

from torchrl_ermas.regret import ReptileRegretEstimator
from torchrl_ermas.regret.deviation import exploration_params
from torchrl_ermas.training import ErmasTrainer, PopulationTrainer, PPOConfig, TrainConfig
from torchrl_ermas.training.models import IndependentMaskedCategorical, make_policy

PPO = PPOConfig(hidden=16, depth=1)


def _labour_cfg(tmp_path, **overrides) -> dict:
    cfg = {
        "env": {
            "_target_": "torchrl_ermas.envs.economy.EconomyEnv",
            "tier": "labour",
            "episode_length": 20,
            "period": 5,
        },
        "iterations": 2,
        "num_envs": 4,
        "progress": False,
        "output_dir": str(tmp_path),
        "logger": {"backend": ""},
        "agents": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "planner": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "episode_metrics": ["equality", "productivity"],
        "ermas": {
            "warmup_iters": 0,
            "regret_interval": 1,
            "regret_envs": 2,
            "deviation_steps": 1,
            "regret_gamma": 1.0,
            "regret_baseline": "mean",
        },
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
    env = EconomyEnv(4, tier="gather_trade_build", episode_length=30, period=10, spatial_observation=False, seed=1)
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
    params = TensorDict({"logits": torch.randn(2, 4), "mask": mask}, [2])
    explore = exploration_params(params)
    uniform = MaskedCategorical(logits=explore["logits"], mask=explore["mask"]).probs
    torch.testing.assert_close(uniform[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(uniform[1], torch.full((4,), 0.25))


def test_regret_estimate_under_masks_is_finite_and_within_the_trust_region():
    env = EconomyEnv(
        4 * 2,
        tier="gather_build",
        episode_length=15,
        period=5,
        planner_action="rates",
        spatial_observation=False,
        seed=0,
    )
    policy = make_policy(env, "agents", PPO, torch.device("cpu"))
    estimator = ReptileRegretEstimator(
        policy, env, planner_policy=FreeMarketPlanner(), deviation_steps=1, trust_region=0.5, gamma=1.0
    )
    result = estimator.estimate(seed=0)
    assert result["regret"].shape == (4,)
    assert torch.isfinite(result["regret"]).all()
    assert (result["kl"] <= 0.5 + 1e-4).all()


def test_regret_estimate_measures_everything_in_the_curriculum_state_of_its_start():
    """The resets of the estimate's rollouts would advance the energy warm-up between the
    current policy's rollout and the deviation's: the estimate holds it at its start."""
    env = EconomyEnv(4 * 2, tier="labour", episode_length=10, period=5, energy_warmup=1.0, seed=0)
    env.completed_episodes.fill_(1)
    policy = make_policy(env, "agents", PPO, torch.device("cpu"))
    estimator = ReptileRegretEstimator(policy, env, planner_policy=FreeMarketPlanner(), deviation_steps=1, gamma=1.0)
    first, second = estimator.estimate(seed=3), estimator.estimate(seed=3)
    assert env.completed_episodes.tolist() == [1] * 8
    torch.testing.assert_close(first["current_return"], second["current_return"], rtol=0, atol=0)
    torch.testing.assert_close(first["regret"], second["regret"], rtol=0, atol=0)


@pytest.mark.parametrize("population", [False, True])
def test_regret_estimate_runs_in_the_training_environments_curriculum_state(tmp_path, population):
    runs = []
    for seed in (0, 1) if population else (0,):
        cfg = _labour_cfg(tmp_path / str(seed), variant="ermas", seed=seed, iterations=3)
        cfg["env"] = {**cfg["env"], "energy_warmup": 2.0, "tax_annealing": [-1, 0.25]}
        runs.append(cfg)
    trainer = PopulationTrainer(runs) if population else ErmasTrainer(runs[0])
    trainer.train()
    for run in trainer.runs if population else [trainer]:
        assert run.env.base_env.completed_episodes.tolist() == [3] * 4
    # 4 worlds of 2 envs per run; the population's runs estimate in one batch
    assert trainer.estimator.env.base_env.completed_episodes.tolist() == [3] * 8 * len(runs)


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
        tmp_path,
        variant="marl",
        train_planner=False,
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
    assert results["final"]["planner_reward"] == pytest.approx(sum(results["history"]["planner_reward"]) / 2)


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
    torch.testing.assert_close(
        restored(state.clone())["planner", "action"], planner(state.clone())["planner", "action"]
    )


# ------------------------------------------------------------ examples/economy_tax_policy.py
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "economy_tax_policy.py"


@pytest.mark.parametrize("name", ["economy_tax_policy", "economy_tax_policy_paper", "economy_tax_policy_gtb"])
def test_example_configs_type_check(name, import_example):
    example = import_example("economy_tax_policy")
    with initialize_config_dir(config_dir=str(ROOT / "examples" / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name=name))
        assert isinstance(cfg, example.TaxPolicyConfig)
        assert cfg.train.env["eta"] == 0.23 and cfg.eta_test == [0.11, 0.19, 0.23, 0.27, 0.35]
        assert {"marl", "ermas"} <= set(cfg.methods)
        assert {"saez", "us_federal", "free_market"} <= set(cfg.baselines)
        example.validate(cfg)
        with pytest.raises(Exception, match="bogus"):
            compose(config_name=name, overrides=["train.bogus=1"])


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"seeds": []}, "seeds"),
        ({"eta_test": [0.0]}, "eta_test"),
        ({"reference": "x"}, "reference"),
        ({"transfer": {"env": {"eta": 0.3}}}, r"transfer.env.eta .*set eta_test instead"),
        ({"transfer": {"seed": 1}}, r"transfer.seed .*set seeds instead"),
        ({"train": TrainConfig(seed=2)}, r"train.seed .*set seeds instead"),
        ({"train": TrainConfig(variant="marl")}, r"train.variant .*methods.<name>.variant"),
        ({"free_market": {"env": {"eta": 0.3}}}, r"free_market must not set \['env.eta'\]"),
        ({"free_market": {"variant": "ermas"}}, r"free_market must not set \['variant'\]"),
        ({"free_market": {}}, "free_market needs train.env.eta"),
    ],
)
def test_example_validate(changes, name, import_example):
    example = import_example("economy_tax_policy")
    cfg = example.TaxPolicyConfig(methods={"marl": {"variant": "marl"}}, **changes)
    with pytest.raises(ValueError, match=name):
        example.validate(cfg)


#: a tiny Fig. 5 grid: one seed, two etas, two iterations of 20-step episodes
SMOKE = [
    "workers=1",
    "seeds=[0]",
    "eta_test=[0.19,0.27]",
    "train.iterations=2",
    "transfer.iterations=1",
    "train.num_envs=4",
    "train.env.episode_length=20",
    "train.env.period=10",
    "train.ermas.warmup_iters=0",
    "train.ermas.regret_interval=1",
    "train.ermas.regret_envs=2",
    "baselines.saez.buffer_size=4",
]


@pytest.mark.slow
def test_example_smoke(tmp_path):
    overrides = [f"hydra.run.dir={tmp_path}", *SMOKE]
    proc = subprocess.run([sys.executable, str(EXAMPLE), *overrides], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["planners"]) == {"marl", "ermas", "saez", "us_federal", "free_market"}
    for stats in summary["planners"].values():
        assert len(stats["planner_reward"]) == 2 and len(stats["equality"]) == 2
    assert summary["planners"]["marl"]["relative"] == [0.0, 0.0]
    assert (tmp_path / "economy_tax_policy.png").stat().st_size > 0
    assert "social welfare" in proc.stdout


@pytest.mark.slow
def test_example_smoke_on_the_map_with_a_free_market_phase(tmp_path):
    overrides = [
        "--config-name",
        "economy_tax_policy_gtb",
        f"hydra.run.dir={tmp_path}",
        *SMOKE,
        "free_market.iterations=1",
    ]
    proc = subprocess.run([sys.executable, str(EXAMPLE), *overrides], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "free_market").iterdir()) == ["eta0.19", "eta0.23", "eta0.27"]
    config = json.loads((tmp_path / "evaluate" / "saez" / "eta0.27" / "seed0" / "results.json").read_text())["config"]
    assert config["agents_checkpoint"] == str(tmp_path / "free_market" / "eta0.27" / "seed0" / "checkpoint.pt")
    config = json.loads((tmp_path / "train" / "ermas" / "seed0" / "results.json").read_text())["config"]
    assert config["agents_checkpoint"].endswith("free_market/eta0.23/seed0/checkpoint.pt")
    assert config["env"]["tier"] == "gather_build"
    summary = json.loads((tmp_path / "summary.json").read_text())["planners"]
    assert len(summary["ermas"]["builds"]) == 2 and len(summary["saez"]["labour"]) == 2
    assert "labour / builds" in proc.stdout


def test_a_saez_planner_in_training_sees_every_tax_period(tmp_path):
    """The collector resets at each batch, after the episode's last tax day: that day still
    reaches the planner (20-step episodes of two 10-step periods, 4 envs x 4 agents)."""
    cfg = _labour_cfg(
        tmp_path,
        variant="marl",
        iterations=3,
        train_planner=False,
        fixed_planner={
            "_target_": "torchrl_ermas.envs.economy.SaezPlanner",
            "fixed_elasticity": 3.0,
            "buffer_size": 1000,
        },
    )
    cfg["env"] = {**cfg["env"], "period": 10, "planner_action": "rates"}
    trainer = ErmasTrainer(cfg)
    trainer.train()
    assert trainer.planner_policy.n_samples == (1 + 2 + 2) * 4 * 4  # the last day comes with the next batch


def test_a_run_with_a_saez_planner_resumes_from_its_checkpoint(tmp_path):
    """The Saez planner sizes its sample buffers at its first call: a run against it resumes
    from its checkpoint, the fresh planner's empty buffers taking the stored samples, and
    goes on adding its new ones. (The tax day that the collector carries into the next batch,
    the last of the batch before the checkpoint, is not in the checkpoint: the resumed run
    holds one day fewer than a run trained without a break.)"""
    saez = {"_target_": "torchrl_ermas.envs.economy.SaezPlanner", "fixed_elasticity": 3.0, "buffer_size": 1000}

    def trained(iterations, resume):
        cfg = _labour_cfg(
            tmp_path, variant="marl", iterations=iterations, train_planner=False, fixed_planner=saez, resume=resume
        )
        cfg["env"] = {**cfg["env"], "period": 10, "planner_action": "rates"}
        trainer = ErmasTrainer(cfg)
        trainer.train()
        return trainer

    first = trained(2, False)
    stored, _ = first.planner_policy._ordered_samples()
    resumed = trained(3, True)
    samples, _ = resumed.planner_policy._ordered_samples()
    per_day = 4 * 4  # environments x agents
    assert stored.numel() == (1 + 2) * per_day and samples.numel() == stored.numel() + per_day
    torch.testing.assert_close(samples[: stored.numel()], stored)
    assert len(resumed.history["planner_reward"]) == 3


def test_saez_planner_keeps_its_samples_when_the_batch_changes():
    planner = SaezPlanner(fixed_elasticity=3.0, buffer_size=4)
    env = EconomyEnv(2, tier="labour", planner_action="rates", episode_length=20, period=5, seed=0)
    td = env.reset()
    for _ in range(20):
        _, td = env.step_and_maybe_reset(planner(env.rand_action(td)))
    income, _ = planner._ordered_samples()
    bigger = EconomyEnv(6, tier="labour", planner_action="rates", episode_length=20, period=5, seed=1)
    state = bigger.reset()
    rates = planner(state)["planner", "action"]
    assert planner.warmed_up and planner.n_samples == income.numel()
    torch.testing.assert_close(planner._ordered_samples()[0], income)
    assert torch.isfinite(rates).all() and (rates == rates[:1]).all()  # one shared schedule


def test_ermas_against_a_fixed_saez_planner_leaves_the_planner_untouched(tmp_path):
    cfg = _labour_cfg(
        tmp_path,
        variant="ermas",
        train_planner=False,
        iterations=3,
        fixed_planner={"_target_": "torchrl_ermas.envs.economy.SaezPlanner", "fixed_elasticity": 3.0, "buffer_size": 2},
    )
    cfg["env"]["planner_action"] = "rates"
    trainer = ErmasTrainer(cfg)
    trainer._collect(0)  # warms the planner up on the training batch
    before = copy.deepcopy(trainer.planner_policy.state_dict())
    result = trainer.estimator.estimate(seed=0)
    assert torch.isfinite(result["regret"]).all()
    after = trainer.planner_policy.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], torch.Tensor):
            torch.testing.assert_close(after[key], before[key])
        else:
            assert after[key] == before[key]
    results = trainer.train()
    assert all(r is not None for r in results["history"]["regret"])


@pytest.mark.parametrize("population", [False, True])
def test_a_resumed_run_keeps_the_curricula_counts(tmp_path, population):
    """The economy's completed-episode counts (energy warm-up, tax annealing) travel in the
    checkpoint: a run cut after one iteration and resumed ends where the whole run does."""
    env = {"energy_warmup": 2.0, "tax_annealing": [-1, 0.25]}

    def cfgs(folder, **overrides):
        runs = []
        for seed in (0, 1) if population else (0,):
            cfg = _labour_cfg(
                tmp_path / folder / str(seed), variant="marl", seed=seed, **{"iterations": 3, **overrides}
            )
            cfg["env"] = {**cfg["env"], **env}
            runs.append(cfg)
        return runs

    def train(runs):
        trainer = PopulationTrainer(runs) if population else ErmasTrainer(runs[0])
        trainer.train()
        return trainer.runs if population else [trainer]

    whole = train(cfgs("whole"))
    train(cfgs("cut", iterations=1))
    resumed = train([{**cfg, "resume": True} for cfg in cfgs("cut")])
    for run, other in zip(whole, resumed):
        assert other.env.base_env.completed_episodes.tolist() == [3] * 4
        assert run.history["agent_reward"] == other.history["agent_reward"]


def test_agents_checkpoint_starts_a_run_from_another_runs_agents(tmp_path):
    """The AI Economist's two phases: agents trained in a free market, then a planner joins."""
    free_market = _labour_cfg(
        tmp_path / "phase1",
        variant="marl",
        train_planner=False,
        fixed_planner={"_target_": "torchrl_ermas.envs.economy.FreeMarketPlanner"},
    )
    free_market["env"] = {**free_market["env"], "planner_action": "rates"}
    phase1 = ErmasTrainer(free_market)
    phase1.train()
    phase2 = ErmasTrainer(
        _labour_cfg(tmp_path / "phase2", variant="marl", agents_checkpoint=str(tmp_path / "phase1" / "checkpoint.pt"))
    )
    for name in ("agent_policy", "agent_critic"):
        ours, theirs = phase2.modules[name].state_dict(), phase1.modules[name].state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    phase2.train()  # the planner joins and trains
    wider = _labour_cfg(
        tmp_path / "wider", agents={"hidden": 32}, agents_checkpoint=str(tmp_path / "phase1" / "checkpoint.pt")
    )
    with pytest.raises(ValueError, match="does not fit this run"):
        ErmasTrainer(wider)
