"""Tests of PlannerFromAgents on VMAS, and a smoke test of examples/vmas_adversarial_search.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import Compose, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.envs.utils import check_env_specs
from torchrl.modules import TanhNormal

from torchrl_ermas.training import ErmasTrainer
from torchrl_ermas.transforms import TimeLimitAsTruncated
from torchrl_ermas.transforms.planner import PlannerFromAgents

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vmas_adversarial_search.py"
CONFIGS = ROOT / "examples" / "configs"
VELOCITY = (2, 4)  # navigation observations: position, velocity, goal offset, lidar
OBS_P = ("planner", "observation")
REWARD_P = ("next", "planner", "reward")


def navigation(num_envs: int = 4, n_agents: int = 2, max_steps: int = 6) -> VmasEnv:
    """Categorical navigation (the transforms' tests; the example uses continuous actions)."""
    return VmasEnv(
        "navigation",
        num_envs=num_envs,
        n_agents=n_agents,
        max_steps=max_steps,
        continuous_actions=False,
        categorical_actions=True,
        shared_rew=False,
    )


def total_speed(features: torch.Tensor) -> torch.Tensor:
    """A user rule: the sum of the agents' first feature, ``[*B]``."""
    return features[..., 0].sum(-1)


TRANSFORMS = {
    "speed": lambda: PlannerFromAgents("speed", features=VELOCITY),
    "separation": lambda: PlannerFromAgents("separation", features=(0, 2), scale=2.0),
    "callable": lambda: PlannerFromAgents(total_speed, scale=-1.0),
}


def rollout(env, steps: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    env.set_seed(seed)
    return env.rollout(steps, break_when_any_done=False)


# ------------------------------------------------------------------------ specs and online
@pytest.mark.parametrize("name", TRANSFORMS)
def test_check_env_specs_on_vmas(name):
    env = TransformedEnv(navigation(), TRANSFORMS[name]())
    check_env_specs(env)
    obs_dim = env.full_observation_spec["agents", "observation"].shape[-1]
    assert env.full_observation_spec[OBS_P].shape == (4, 1, 2 * obs_dim)
    assert env.full_reward_spec["planner", "reward"].shape == (4, 1, 1)
    assert env.full_reward_spec["agents", "reward"].shape == (4, 2, 1)
    assert env.full_done_spec["done"].shape == (4, 1)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_time_limit_as_truncated_on_vmas(name):
    """VMAS's time limit becomes truncated (not terminated); specs stay consistent with the
    regulator on top, and GAE then bootstraps at the time limit."""
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    transforms = Compose(TimeLimitAsTruncated(3), TRANSFORMS[name]())
    env = TransformedEnv(navigation(max_steps=3), transforms)
    check_env_specs(env)
    data = rollout(env, steps=6)
    truncated = data["next", "truncated"].squeeze(-1)
    assert truncated[:, 2].all() and truncated[:, 5].all() and truncated.sum() == 2 * 4
    assert not data["next", "terminated"].any()
    assert torch.equal(data["next", "done"], data["next", "truncated"])
    raw = rollout(navigation(max_steps=3), steps=6)
    assert raw["next", "terminated"].squeeze(-1)[:, 2].all()  # what VMAS says without it
    value = torch.ones(4, 6, 1)
    reward = torch.zeros(4, 6, 1)
    kwargs = dict(gamma=0.9, lmbda=1.0, state_value=value, next_state_value=value, reward=reward)
    bootstrapped, _ = vec_generalized_advantage_estimate(
        done=data["next", "done"], terminated=data["next", "terminated"], **kwargs
    )
    cut, _ = vec_generalized_advantage_estimate(
        done=raw["next", "done"], terminated=raw["next", "terminated"], **kwargs
    )
    assert torch.allclose(bootstrapped[:, 2], torch.full((4, 1), -0.1))  # 0.9 * 1 - 1
    assert torch.allclose(cut[:, 2], torch.full((4, 1), -1.0))  # no value after a "terminal"


def test_time_limit_as_truncated_validates_max_steps():
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        TimeLimitAsTruncated(0)


def test_online_shapes_and_values():
    env = TransformedEnv(navigation(), PlannerFromAgents("speed", features=VELOCITY))
    data = rollout(env)
    obs = data["agents", "observation"]  # [4, T, 2, F]
    assert data[OBS_P].shape == (4, 6, 1, 2 * obs.shape[-1])
    assert torch.equal(data[OBS_P][..., 0, :], obs.flatten(-2))
    next_obs = data["next", "agents", "observation"]
    assert torch.equal(data[("next", *OBS_P)][..., 0, :], next_obs.flatten(-2))
    velocity = data["next", "agents", "observation"][..., 2:4]
    expected = -velocity.square().sum(-1).mean(-1)
    assert data[REWARD_P].shape == (4, 6, 1, 1)
    torch.testing.assert_close(data[REWARD_P][..., 0, 0], expected)
    assert (data[REWARD_P] <= 0).all()


def test_partial_resets_keep_shapes():
    """navigation ends an episode when every agent is on its goal: auto-reset keeps shapes."""
    env = TransformedEnv(navigation(max_steps=3), PlannerFromAgents("speed", features=VELOCITY))
    data = rollout(env, steps=7)
    assert data["next", "done"].any()
    assert data[REWARD_P].shape == (4, 7, 1, 1)
    assert data[OBS_P].shape[:3] == (4, 7, 1)


# ------------------------------------------------------------------------ hand-computed values
def synthetic(batch=(2,)) -> torch.Tensor:
    """[*batch, 3 agents, 4 features]: position in 0:2, velocity in 2:4."""
    obs = torch.zeros(*batch, 3, 4)
    obs[..., 0, :] = torch.tensor([0.0, 0.0, 3.0, 4.0])  # |v|^2 = 25
    obs[..., 1, :] = torch.tensor([3.0, 4.0, 0.0, 1.0])  # |v|^2 = 1
    obs[..., 2, :] = torch.tensor([0.0, 4.0, 1.0, 1.0])  # |v|^2 = 2
    return obs


def test_speed_rule_by_hand():
    td = TensorDict({("agents", "observation"): synthetic()}, [2])
    out = PlannerFromAgents("speed", features=(2, 4), scale=0.5)(td)
    torch.testing.assert_close(out["planner", "reward"], torch.full((2, 1, 1), -0.5 * 28 / 3))
    assert out["planner"].batch_size == (2, 1)


def test_separation_rule_by_hand():
    td = TensorDict({("agents", "observation"): synthetic()}, [2])
    out = PlannerFromAgents("separation", features=(0, 2))(td)
    # pairwise distances 5 (0-1), 4 (0-2), 3 (1-2)
    torch.testing.assert_close(out["planner", "reward"], torch.full((2, 1, 1), 4.0))


def test_callable_rule_and_planner_observation_by_hand():
    obs = synthetic((2, 5))
    td = TensorDict({("agents", "observation"): obs}, [2, 5])
    out = PlannerFromAgents(total_speed, features=(2, 3), scale=-2.0)(td)
    torch.testing.assert_close(out["planner", "reward"], torch.full((2, 5, 1, 1), -2.0 * 4.0))
    assert out["planner", "observation"].shape == (2, 5, 1, 12)
    torch.testing.assert_close(out["planner", "observation"][0, 0, 0], obs[0, 0].reshape(-1))


# ------------------------------------------------------------------------ offline == online
@pytest.mark.parametrize("name", TRANSFORMS)
def test_offline_equals_online(name):
    env = TransformedEnv(navigation(), TRANSFORMS[name]())
    online = rollout(env)
    offline = online.exclude("planner", ("next", "planner"))
    assert "planner" not in offline.keys() and "planner" not in offline["next"].keys()
    offline = TRANSFORMS[name]()(offline)
    torch.testing.assert_close(offline[OBS_P], online[OBS_P])
    torch.testing.assert_close(offline[("next", *OBS_P)], online[("next", *OBS_P)])
    torch.testing.assert_close(offline[REWARD_P], online[REWARD_P])
    assert ("planner", "reward") not in offline.keys(True)  # rewards live under "next"


def test_offline_without_next_uses_the_root():
    env = TransformedEnv(navigation(), PlannerFromAgents("speed", features=VELOCITY))
    online = rollout(env)
    transition = online["next"].exclude("planner")
    out = PlannerFromAgents("speed", features=VELOCITY)(transition)
    torch.testing.assert_close(out["planner", "reward"], online[REWARD_P])
    torch.testing.assert_close(out[OBS_P], online[("next", *OBS_P)])


def test_replay_buffer_transform():
    env = TransformedEnv(navigation(), PlannerFromAgents("speed", features=VELOCITY))
    online = rollout(env).reshape(-1)
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(online.numel()),
        transform=PlannerFromAgents("speed", features=VELOCITY),
        batch_size=online.numel(),
        sampler=SamplerWithoutReplacement(shuffle=False),
    )
    buffer.extend(online.exclude("planner", ("next", "planner")))
    sample = buffer.sample()
    torch.testing.assert_close(sample[REWARD_P], online[REWARD_P])
    torch.testing.assert_close(sample[OBS_P], online[OBS_P])


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rule": "fast"}, "rule"),
        ({"rule": 3}, "rule"),
        ({"rule": "speed", "features": (4, 2)}, "features"),
        ({"rule": "speed", "features": (2,)}, "features"),
        ({"rule": "speed", "features": (-1, 2)}, "features"),
        ({"rule": "speed", "features": (0.0, 2)}, "features"),
        ({"rule": "speed", "scale": float("nan")}, "scale"),
        ({"rule": "speed", "scale": "1"}, "scale"),
        ({"rule": "speed", "agent_group": ""}, "agent_group"),
        ({"rule": "speed", "planner_group": "agents"}, "planner_group"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PlannerFromAgents(**kwargs)


@pytest.mark.parametrize(
    "transform, name",
    [
        (lambda: PlannerFromAgents("speed", features=(2, 99)), "features"),
        (lambda: PlannerFromAgents("speed", agent_group="robots"), "agent_group"),
    ],
)
def test_bad_environment_raises(transform, name):
    env = TransformedEnv(navigation(), transform())
    with pytest.raises(ValueError, match=name):
        _ = env.full_observation_spec


def test_custom_planner_group():
    env = TransformedEnv(navigation(), PlannerFromAgents("speed", planner_group="regulator"))
    check_env_specs(env)
    data = rollout(env, steps=2)
    assert data["next", "regulator", "reward"].shape == (4, 2, 1, 1)
    assert "planner" not in data.keys()


def test_existing_planner_group_raises():
    env = TransformedEnv(navigation(), PlannerFromAgents("speed", features=VELOCITY))
    env.append_transform(PlannerFromAgents("separation", features=(0, 2)))
    with pytest.raises(ValueError, match="planner_group"):
        _ = env.full_observation_spec


def test_separation_needs_two_agents():
    env = TransformedEnv(navigation(n_agents=1), PlannerFromAgents("separation", features=(0, 2)))
    with pytest.raises(ValueError, match="rule"):
        _ = env.full_reward_spec


def test_callable_with_wrong_output_raises():
    td = TensorDict({("agents", "observation"): synthetic()}, [2])
    with pytest.raises(ValueError, match="rule"):
        PlannerFromAgents(lambda features: features)(td)


# ------------------------------------------------------------------------ continuous actions
@pytest.mark.slow
@pytest.mark.parametrize("epsilon, rises", [(-100.0, True), (100.0, False)])
def test_ermas_trains_with_continuous_vmas_actions(tmp_path, epsilon, rises):
    """VMAS's default continuous actions: a TanhNormal policy, finite regret estimates,
    their KL within the trust region, and lambda moving towards the constraint."""

    def make_env(batch_size: int, device: torch.device):
        base = VmasEnv(
            "navigation",
            num_envs=batch_size,
            n_agents=2,
            max_steps=20,
            continuous_actions=True,
            shared_rew=False,
            device=device,
        )
        return TransformedEnv(
            base, Compose(TimeLimitAsTruncated(base.max_steps), PlannerFromAgents("speed", features=VELOCITY))
        )

    cfg = {
        "variant": "ermas",
        "iterations": 4,
        "num_envs": 8,
        "output_dir": str(tmp_path),
        "logger": {"backend": ""},
        "agents": {"epochs": 1, "minibatches": 1, "hidden": 32},
        "ermas": {
            "epsilon": epsilon,
            "lambda_init": 2.0,
            "warmup_iters": 1,
            "regret_interval": 1,
            "regret_envs": 16,
            "deviation_steps": 1,
            "trust_region": 0.3,
        },
    }
    trainer = ErmasTrainer(cfg, env_fn=make_env)
    assert isinstance(trainer.agent_policy.get_dist(trainer.env.reset()), TanhNormal)
    results = trainer.train()
    regrets = [r for r in results["history"]["regret"] if r is not None]
    kls = [k for k in results["history"]["kl"] if k is not None]
    assert len(regrets) == 3 and torch.isfinite(torch.tensor(regrets)).all()
    assert (torch.tensor(kls) <= 0.3 * 1.05).all()  # sampled KL (TanhNormal has no rule)
    lambdas = torch.tensor(results["history"]["lambda"])
    moved = lambdas[-1] - lambdas[0]
    assert ((moved > 0) if rises else (moved < 0)).all(), lambdas


# ------------------------------------------------------------------------ the example
@pytest.mark.parametrize("name", ["vmas_adversarial_search", "vmas_adversarial_search_paper"])
def test_example_configs_type_check(name, import_example):
    example = import_example("vmas_adversarial_search")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name=name, overrides=["hydra.job.chdir=false"]))
        assert isinstance(cfg, example.VmasSearchConfig)
        assert cfg.train.env["continuous_actions"] is True
        assert min(cfg.epsilons) < 0 and cfg.marl and len(cfg.seeds) >= 3
        for key in ("bogus", "train.bogus", "train.ermas.bogus", "regulator.bogus"):
            with pytest.raises(Exception, match="bogus"):
                compose(config_name=name, overrides=[f"{key}=1"])


def test_example_yaml_rejects_unknown_keys(tmp_path, import_example):
    import_example("vmas_adversarial_search")
    (tmp_path / "typo.yaml").write_text("defaults:\n  - vmas_search_schema\n  - _self_\nregulator:\n  rulle: speed\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        with pytest.raises(Exception, match="rulle"):
            compose(config_name="typo")


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"workers": 0}, "workers"),
        ({"seeds": []}, "seeds"),
        ({"epsilons": [], "marl": False}, "epsilons"),
    ],
)
def test_example_validate(changes, name, import_example):
    example = import_example("vmas_adversarial_search")
    with pytest.raises(ValueError, match=name):
        example.validate(example.VmasSearchConfig(**changes))
    regulator = example.RegulatorConfig(rule="fast")
    with pytest.raises(ValueError, match="rule"):
        example.validate(example.VmasSearchConfig(regulator=regulator))


@pytest.mark.slow
def test_example_smoke(tmp_path):
    """The example's main, 2 iterations of a tiny sweep (MARL and one epsilon)."""
    overrides = [
        "train.iterations=2",
        "train.num_envs=4",
        "train.env.max_steps=5",
        "train.ermas.warmup_iters=0",
        "train.ermas.regret_interval=1",
        "train.ermas.regret_envs=2",
        "epsilons=[0.5]",
        "seeds=[0]",
        "workers=1",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run([sys.executable, str(EXAMPLE), *overrides], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "regulator" in proc.stdout and "marl" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["marl", "0.5"]
    assert summary["0.5"]["lambda"] is not None and summary["marl"]["lambda"] is None
    assert (tmp_path / "vmas_adversarial_search.png").stat().st_size > 0
    for name in summary:
        results = json.loads((tmp_path / name / "seed0" / "results.json").read_text())
        assert len(results["history"]["planner_reward"]) == 2

    bad = subprocess.run(
        [sys.executable, str(EXAMPLE), "train.bogus=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "bogus" in bad.stderr
