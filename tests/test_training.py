"""Tests of the ERMAS training loop: variants, results schema, checkpoints, resume, transfer.

Every run is tiny (4 environments, 10 steps, hidden 16, one epoch) so that the whole file
runs in well under a minute on two CPU cores. Runs shared by several tests are module-scoped
fixtures.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf.errors import ConfigKeyError, ValidationError
from torchrl.envs import StepCounter, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl_ermas.envs import SequentialBimatrixEnv

from torchrl_ermas.regret import MetaGradient, PPODeviationStep, seed_env
from torchrl_ermas.training import (
    ErmasConfig,
    ErmasTrainer,
    LoggerConfig,
    NonFiniteError,
    PPOConfig,
    RewardConfig,
    TrainConfig,
    component_state,
    load_checkpoint,
    run_many,
    save_checkpoint,
    validate,
    with_overrides,
)
from torchrl_ermas.training.config import as_config, multiplier_updates
from torchrl_ermas.training.variants import VARIANTS as TRAINING_VARIANTS

ENV_TARGET = "torchrl_ermas.envs.SequentialBimatrixEnv"
MAX_STEPS = 10
N_AGENTS = 2
TIME_KEYS = ("time_collect", "time_train", "time_regret")
HISTORY_KEYS = {"iteration", "planner_reward", "agent_reward", "lambda", "regret", "kl", *TIME_KEYS}
FINAL_KEYS = {"planner_reward", "agent_reward", "combined_agent_reward", "regret", "lambda"}
CHECKPOINT_KEYS = {"iteration", "modules", "env", "optimizers", "history", "config"}


# ---------------------------------------------------------------------------- helpers
def _merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge (``overrides`` wins), leaving both inputs untouched."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_cfg(output_dir: Path | str, planner_mode: str = "officers", **overrides: Any) -> dict:
    """A tiny nested-dict config; nested ``overrides`` (dicts) are merged, not replaced."""
    ppo = {"epochs": 1, "minibatches": 2, "hidden": 16}
    base = {
        "env": {"_target_": ENV_TARGET, "max_steps": MAX_STEPS, "planner": planner_mode},
        "variant": "ermas",
        "seed": 0,
        "iterations": 3,
        "num_envs": 4,
        "agents": dict(ppo),
        "planner": dict(ppo),
        # epsilon and lambda_lr chosen so that any regret estimate moves lambda visibly
        "ermas": {
            "epsilon": 5.0,
            "lambda_lr": 0.05,
            "regret_envs": 4,
            "deviation_steps": 1,
            "warmup_iters": 1,
            "regret_interval": 1,
        },
        "logger": {"backend": ""},
        "output_dir": str(output_dir),
        "checkpoint_interval": 1,
        "progress": False,
    }
    return _merge(base, overrides)


def run(cfg: dict | TrainConfig, env_fn=None) -> tuple[dict, dict]:
    """Trains ``cfg``; returns ``(results, final checkpoint)``."""
    results = ErmasTrainer(cfg, env_fn=env_fn).train()
    out = Path(cfg["output_dir"] if isinstance(cfg, dict) else cfg.output_dir)
    return results, load_checkpoint(out / "checkpoint.pt")


def without_times(history: dict) -> dict:
    return {k: v for k, v in history.items() if k not in TIME_KEYS}


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def state_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def agent_actor_params(modules: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in modules.items() if k.startswith("agent_policy.")}


def is_finite_state(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def assert_results_schema(results: dict, cfg: dict, output_dir: Path) -> None:
    """``results`` follows the documented schema and matches ``output_dir/results.json``."""
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(on_disk) == {"config", "seed", "variant", "final", "history"}
    assert on_disk["seed"] == cfg["seed"]
    assert on_disk["variant"] == cfg["variant"]
    assert on_disk["config"]["variant"] == cfg["variant"]
    assert on_disk["config"]["iterations"] == cfg["iterations"]
    assert on_disk["config"]["env"] == cfg["env"]

    n = cfg["iterations"]
    history = on_disk["history"]
    assert set(history) == HISTORY_KEYS
    assert all(len(v) == n for v in history.values())
    assert history["iteration"] == list(range(n))
    assert all(math.isfinite(x) for x in history["planner_reward"])
    assert all(len(row) == N_AGENTS for row in history["agent_reward"])
    assert all(t >= 0 for key in TIME_KEYS for t in history[key])
    for key in ("regret", "kl", "lambda"):
        assert all(row is None or len(row) == N_AGENTS for row in history[key]), key

    final = on_disk["final"]
    assert set(final) == FINAL_KEYS
    window = history["planner_reward"][-on_disk["config"]["history_window"] :]
    assert final["planner_reward"] == pytest.approx(sum(window) / len(window))
    assert len(final["agent_reward"]) == N_AGENTS
    assert final["combined_agent_reward"] == pytest.approx(sum(final["agent_reward"]))
    lambdas = [row for row in history["lambda"] if row is not None]
    assert final["lambda"] == (lambdas[-1] if lambdas else None)
    regrets = [row for row in history["regret"] if row is not None]
    if regrets:
        assert len(final["regret"]) == N_AGENTS
    else:
        assert final["regret"] is None


# ---------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: the tensors are tiny, and on a busy 2-core machine torch's
    thread pool makes these runs 10x slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def officers_run(tmp_path_factory) -> tuple[dict, dict, dict, Path]:
    """ERMAS with the officers planner and a CSV log: ``(cfg, results, checkpoint, dir)``."""
    out = tmp_path_factory.mktemp("officers")
    cfg = make_cfg(out, logger={"backend": "csv"})
    results, ckpt = run(cfg)
    return cfg, results, ckpt, out


@pytest.fixture(scope="module")
def marl_run(tmp_path_factory) -> tuple[dict, dict, dict, Path]:
    """Plain MARL with the officers planner: ``(cfg, results, checkpoint, dir)``."""
    out = tmp_path_factory.mktemp("marl")
    cfg = make_cfg(out, variant="marl")
    results, ckpt = run(cfg)
    return cfg, results, ckpt, out


# ---------------------------------------------------------------------------- 1. integration
def test_ermas_officers_results_schema(officers_run):
    cfg, results, ckpt, out = officers_run
    assert_results_schema(results, cfg, out)
    history = results["history"]
    # warm-up 1, regret every iteration after it
    assert history["regret"][0] is None and history["kl"][0] is None
    assert all(row is not None for row in history["regret"][1:])
    assert all(all(k >= 0 and math.isfinite(k) for k in row) for row in history["kl"][1:])
    assert ckpt["iteration"] == cfg["iterations"]


def test_marl_results_schema(marl_run):
    cfg, results, _, out = marl_run
    assert_results_schema(results, cfg, out)
    history = results["history"]
    assert history["lambda"] == [None] * cfg["iterations"]
    assert history["regret"] == [None] * cfg["iterations"]
    assert history["kl"] == [None] * cfg["iterations"]
    assert results["final"]["lambda"] is None and results["final"]["regret"] is None


VARIANTS = {
    "ermas-passive": {"planner_mode": "passive"},
    # epsilon < 0 keeps lambda > 0, so the meta term has a non-zero weight
    "ermas-meta": {"planner_mode": "passive", "ermas": {"meta_scale": 0.2, "epsilon": -5.0}},
    "fixed_lambda": {"variant": "fixed_lambda", "ermas": {"lambda_init": 3.0}},
    # the baselines of examples/configs/bimatrix_robust_planner.yaml
    "domain-randomization": {"variant": "marl", "reward": {"dr_scale": 1.0}},
    "risk-robustness": {"variant": "marl", "reward": {"rr_eta": 1.0}},
    "reality-gap": {"variant": "marl", "reward": {"q": 0.5}},
}


def _spy_meta_updates(monkeypatch) -> list[bool]:
    """Records, for each update of the meta-gradient term, whether it holds a non-zero gradient."""
    nonzero: list[bool] = []
    original = MetaGradient.update

    def update(self, gradients, lagrange):
        original(self, gradients, lagrange)
        nonzero.append(any(bool(v.abs().sum() > 0) for v in self.gradient.values(True, True)))

    monkeypatch.setattr(MetaGradient, "update", update)
    return nonzero


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_runs_and_writes_results(tmp_path, monkeypatch, name):
    cfg = make_cfg(tmp_path, **VARIANTS[name])
    meta_updates = _spy_meta_updates(monkeypatch)
    results, ckpt = run(cfg)
    assert_results_schema(results, cfg, tmp_path)
    assert ckpt["iteration"] == cfg["iterations"]
    assert is_finite_state(ckpt["modules"])
    history = results["history"]
    if cfg["variant"] == "ermas":
        assert history["regret"][0] is None
        assert all(row is not None for row in history["regret"][1:])
        if cfg["ermas"].get("meta_scale", ErmasConfig().meta_scale) > 0:
            assert meta_updates == [True] * (cfg["iterations"] - 1)  # one per regret estimate
            assert ckpt["modules"].keys() >= {"meta_gradient.gradient.module.0.module.params.0.weight"}
        else:
            assert meta_updates == []  # meta_scale=0: no meta-gradient term
    elif cfg["variant"] == "fixed_lambda":
        assert history["lambda"] == [[3.0] * N_AGENTS] * cfg["iterations"]
        assert history["regret"] == [None] * cfg["iterations"]
        assert history["kl"] == [None] * cfg["iterations"]
        assert results["final"]["lambda"] == [3.0] * N_AGENTS
        assert torch.equal(ckpt["modules"]["lagrange.multiplier"], torch.full((N_AGENTS,), 3.0))
    else:
        assert history["lambda"] == [None] * cfg["iterations"]
    if cfg["variant"] != "ermas":
        assert meta_updates == []


def test_trainconfig_dataclass_is_accepted(tmp_path):
    """The dataclass entry point (nested dataclass instances) runs like the dict one."""
    ppo = PPOConfig(epochs=1, minibatches=1, hidden=16)
    cfg = TrainConfig(
        env={"_target_": ENV_TARGET, "max_steps": MAX_STEPS},
        variant="marl",
        iterations=2,
        num_envs=4,
        agents=ppo,
        planner=ppo,
        logger=LoggerConfig(backend=""),
        output_dir=str(tmp_path),
        progress=False,
    )
    results = ErmasTrainer(cfg).train()
    assert results["history"]["iteration"] == [0, 1]
    assert results["config"]["agents"]["hidden"] == 16


@pytest.mark.parametrize(("critic_depth", "policy_bias"), [(None, True), (2, False)])
def test_depth_zero_gives_linear_planner_that_trains(tmp_path, critic_depth, policy_bias):
    """``planner.depth=0``: a policy linear in the observation (the critic too, unless
    ``critic_depth`` sets it apart), with or without a bias."""
    planner = {"depth": 0, "critic_depth": critic_depth, "policy_bias": policy_bias}
    trainer = ErmasTrainer(make_cfg(tmp_path, variant="marl", iterations=2, planner=planner))
    before = copy.deepcopy(trainer.planner_policy.state_dict())
    trainer.train()

    def linear_layers(module):
        return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]

    (layer,) = linear_layers(trainer.planner_policy)
    assert layer.in_features == trainer.env.base_env.planner_obs_dim
    assert (layer.bias is not None) == policy_bias
    assert len(linear_layers(trainer.planner_critic)) == (1 if critic_depth is None else 3)
    after = trainer.planner_policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_reward_baselines_report_untransformed_planner_reward(tmp_path, marl_run):
    """RR and the reality gap train on transformed rewards but report the planner's own.

    The first iteration collects with the initial policies (same seed, same initial
    parameters), so its reported planner reward must equal plain MARL's.
    """
    _, plain, _, _ = marl_run
    for i, reward in enumerate(({"rr_eta": 1.0}, {"q": 0.5})):
        cfg = make_cfg(tmp_path / str(i), variant="marl", iterations=1, reward=reward)
        results, _ = run(cfg)
        assert results["history"]["planner_reward"][0] == plain["history"]["planner_reward"][0]


def test_collector_batch_is_the_seeded_rollout_of_the_collection_policy(tmp_path):
    """The trainer's Collector gives exactly what ``env.rollout`` gives for the same seeds
    (each iteration a fresh, re-seeded episode per environment), and a fresh batch each
    time: no key that training writes (advantages) survives into the next collection."""
    trainer = ErmasTrainer(make_cfg(tmp_path, iterations=2))
    torch.manual_seed(7)
    data = trainer._collect(seed=11)
    trainer._advantages(data)
    assert ("agents", "advantage") in data.keys(True)
    torch.manual_seed(7)
    seed_env(trainer.env, 11)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        expected = trainer.env.rollout(
            trainer.horizon, trainer.collection_policy, auto_reset=True, break_when_any_done=False
        )
    assert data.shape == expected.shape == (4, MAX_STEPS)
    for key in expected.keys(True, True):
        assert torch.equal(data[key], expected[key]), key
    torch.manual_seed(7)
    again = trainer._collect(seed=11)
    assert ("agents", "advantage") not in again.keys(True)
    assert torch.equal(again["next", "agents", "reward"], expected["next", "agents", "reward"])


def test_train_planner_false_freezes_planner_policy(tmp_path):
    cfg = make_cfg(tmp_path, iterations=2, train_planner=False)
    trainer = ErmasTrainer(cfg)
    planner_before = clone_state(trainer.planner_policy)
    agents_before = clone_state(trainer.agent_policy)
    trainer.train()
    assert state_equal(clone_state(trainer.planner_policy), planner_before)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state_equal(component_state(ckpt["modules"], "planner_policy"), planner_before)
    assert not state_equal(clone_state(trainer.agent_policy), agents_before)  # it did train


@pytest.fixture(scope="module")
def interval_run(tmp_path_factory) -> tuple[dict, dict]:
    """ERMAS with warm-up 2 and a regret estimate every 2 iterations, 6 iterations; the
    agents' learning rate anneals over the second half."""
    out = tmp_path_factory.mktemp("interval")
    cfg = make_cfg(
        out,
        planner_mode="passive",
        iterations=6,
        agents={"anneal_start": 0.5},
        ermas={"lambda_init": 6.0, "warmup_iters": 2, "regret_interval": 2},
    )
    results, _ = run(cfg)
    return cfg, results


def test_lambda_frozen_during_warmup_then_updated(interval_run):
    _, results = interval_run
    lambdas = results["history"]["lambda"]
    init = [6.0] * N_AGENTS
    assert lambdas[0] == lambdas[1] == init
    assert all(a != b for a, b in zip(lambdas[2], init))  # first update right after warm-up


@pytest.mark.parametrize("iterations, warmup, interval", [(6, 2, 2), (7, 2, 2), (80, 10, 2), (12, 0, 5), (3, 2, 4)])
def test_the_multipliers_budget_is_the_run_s_number_of_estimates(iterations, warmup, interval):
    cfg = TrainConfig(iterations=iterations, ermas=ErmasConfig(warmup_iters=warmup, regret_interval=interval))
    trainer = SimpleNamespace(cfg=cfg, variant=TRAINING_VARIANTS["ermas"])
    estimates = sum(ErmasTrainer.estimates_at(trainer, i) for i in range(iterations))
    assert multiplier_updates(cfg) == estimates


def test_the_run_s_multipliers_anneal_over_its_estimates(interval_run):
    """The trainer gives the multipliers the run's number of estimates: the run ends on the
    last update of the schedule (2 here), with the step shrunk at it."""
    cfg, results = interval_run
    assert multiplier_updates(as_config(cfg)) == 2
    state = torch.load(Path(cfg["output_dir"]) / "checkpoint.pt", weights_only=True)
    assert int(state["modules"]["lagrange._updates"]) == 2


def test_learning_rates_anneal_over_the_run(interval_run):
    """The agents' learning rate decays linearly over the iterations after the first
    ``anneal_start`` share (the last of 6 iterations runs at 1 / 3 of it); the planner's
    critic keeps its constant one."""
    cfg, _ = interval_run
    state = torch.load(Path(cfg["output_dir"]) / "checkpoint.pt", weights_only=True)
    lrs = {group: state["optimizers"][group]["param_groups"][0]["lr"] for group in ("agents", "planner")}
    defaults = TrainConfig()
    assert lrs == {"agents": pytest.approx(defaults.agents.lr / 3), "planner": pytest.approx(defaults.planner.lr)}


def test_an_extended_run_anneals_over_its_new_budget(interval_run, tmp_path):
    """Resuming the finished 6-iteration run with 12 iterations extends it: the multipliers
    take the 3 further estimates of the new budget (the old budget of 2 would refuse them)
    and the agents' learning rate ends at the new schedule's share, 1 / 6."""
    cfg, results = interval_run
    folder = tmp_path / "extended"
    shutil.copytree(cfg["output_dir"], folder)
    extended = ErmasTrainer({**cfg, "output_dir": str(folder), "resume": True, "iterations": 12})
    history = extended.train()["history"]
    assert history["lambda"][:6] == results["history"]["lambda"]
    assert len({tuple(row) for row in history["lambda"][6:]}) > 1  # lambda moves again
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert int(state["modules"]["lagrange._updates"]) == multiplier_updates(as_config({**cfg, "iterations": 12})) == 5
    lr = state["optimizers"]["agents"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(TrainConfig().agents.lr / 6)


def test_regret_only_every_regret_interval_after_warmup(interval_run):
    _, results = interval_run
    history = results["history"]
    with_regret = [i for i, row in enumerate(history["regret"]) if row is not None]
    assert with_regret == [2, 4]
    assert [i for i, row in enumerate(history["kl"]) if row is not None] == [2, 4]
    lambdas = history["lambda"]
    # lambda moves only on the regret iterations
    assert lambdas[3] == lambdas[2] and lambdas[5] == lambdas[4]
    assert lambdas[4] != lambdas[3]


# ---------------------------------------------------------------------------- 2. transfer
def test_transfer_loads_and_freezes_the_trained_planner(tmp_path, officers_run):
    """A MARL run with ``planner_checkpoint`` plays exactly the first run's planner."""
    _, _, first, first_dir = officers_run
    cfg = make_cfg(
        tmp_path,
        variant="marl",
        seed=1,
        iterations=2,
        train_planner=False,
        planner_checkpoint=str(first_dir / "checkpoint.pt"),
    )
    fresh = ErmasTrainer(_merge(cfg, {"planner_checkpoint": None}))
    trained = component_state(first["modules"], "planner_policy")
    assert trained and not state_equal(clone_state(fresh.planner_policy), trained)

    trainer = ErmasTrainer(cfg)
    assert state_equal(clone_state(trainer.planner_policy), trained)
    agents_before = clone_state(trainer.agent_policy)
    trainer.train()
    second = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state_equal(component_state(second["modules"], "planner_policy"), trained)
    assert not state_equal(clone_state(trainer.agent_policy), agents_before)


# ---------------------------------------------------------------------------- 3. checkpoints
@pytest.mark.parametrize(
    ("overrides", "components"),
    [
        ({}, {"agent_policy", "agent_critic", "lagrange", "planner_policy", "planner_critic"}),
        ({"train_planner": False}, {"agent_policy", "agent_critic", "lagrange", "planner_policy", "planner_critic"}),
        ({"variant": "fixed_lambda"}, {"agent_policy", "agent_critic", "lagrange", "planner_policy", "planner_critic"}),
        ({"variant": "marl"}, {"agent_policy", "agent_critic", "planner_policy", "planner_critic"}),
        ({"variant": "marl", "train_planner": False}, {"agent_policy", "agent_critic", "planner_policy"}),
    ],
)
def test_checkpoint_holds_one_entry_per_component_whatever_the_config(tmp_path, overrides, components):
    """Each component is stored under its own name, whether the planner trains or not and
    whatever the variant; a component the run lacks is absent."""
    trainer = ErmasTrainer(make_cfg(tmp_path, iterations=2, ermas={"warmup_iters": 0}, **overrides))
    names = {key.split(".", 1)[0] for key in trainer.state(0)["modules"]}
    assert names == components
    assert set(trainer.state(0)) == CHECKPOINT_KEYS


def test_checkpoint_loads_weights_only(officers_run):
    cfg, results, _, out = officers_run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(ckpt) == CHECKPOINT_KEYS
    assert ckpt["iteration"] == cfg["iterations"]
    assert without_times(ckpt["history"]) == without_times(results["history"])
    assert json.loads(ckpt["config"]) == results["config"]
    assert set(ckpt["optimizers"]) == {"agents", "planner"}
    assert is_finite_state(ckpt["modules"])


def _failing_save(calls_before_failure: int):
    """A ``torch.save`` that works ``calls_before_failure`` times, then dies mid-write."""
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls_before_failure:
            f.write(b"PK\x03\x04 truncated")  # a partial file, as after a crash
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    return save


def test_save_checkpoint_crash_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"iteration": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", _failing_save(0))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"iteration": 2, "w": torch.zeros(3)}, path)
    state = torch.load(path, weights_only=True)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left


def test_trainer_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, variant="marl", iterations=3)
    monkeypatch.setattr(torch, "save", _failing_save(1))
    with pytest.raises(OSError, match="disk full"):
        ErmasTrainer(cfg).train()
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 1 and len(ckpt["history"]["iteration"]) == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("ermas", [{}, {"meta_scale": 0.5, "epsilon": -5.0}], ids=["ermas", "meta"])
def test_resume_after_stop_equals_uninterrupted(tmp_path, ermas):
    """In-process: 2 iterations, then ``resume=True`` to 4, equals 4 uninterrupted (with the
    meta term, iteration 2 trains on the meta gradient of iteration 1's estimate)."""
    cfg = make_cfg(tmp_path / "a", iterations=4, ermas={"regret_interval": 2, **ermas})
    full, full_ckpt = run(cfg)
    split = _merge(cfg, {"output_dir": str(tmp_path / "b")})
    run(_merge(split, {"iterations": 2}))
    resumed, resumed_ckpt = run(_merge(split, {"resume": True}))
    assert without_times(resumed["history"]) == without_times(full["history"])
    assert resumed["final"] == full["final"]
    assert_tree_equal(resumed_ckpt["modules"], full_ckpt["modules"])
    assert_tree_equal(resumed_ckpt["optimizers"], full_ckpt["optimizers"])


def test_resume_with_domain_randomization_equals_uninterrupted(tmp_path):
    """Regression: resuming a DR run must replay the uninterrupted run exactly.

    The trainer re-seeds the env with ``env.set_seed(iteration_seed)`` in ``_collect``,
    but in torchrl 0.14 ``TransformedEnv.set_seed`` only seeds the base env; the
    ``DomainRandomizedReward`` noise comes from the transform's own generator, seeded once
    at construction (from torch's global RNG) and not saved in the checkpoint. A resumed
    run therefore restarts the noise stream from the beginning: iterations 0-1 match,
    iteration 2's agent rewards (and everything after) differ.
    """
    cfg = make_cfg(tmp_path / "a", variant="marl", iterations=4, reward={"dr_scale": 1.0})
    full, full_ckpt = run(cfg)
    split = _merge(cfg, {"output_dir": str(tmp_path / "b")})
    run(_merge(split, {"iterations": 2}))
    resumed, resumed_ckpt = run(_merge(split, {"resume": True}))
    assert without_times(resumed["history"]) == without_times(full["history"])
    assert_tree_equal(resumed_ckpt["modules"], full_ckpt["modules"])


_CHILD = """
import json, sys, time
import torch
from torchrl_ermas.training import ErmasTrainer

torch.set_num_threads(1)  # as in the parent test module

original = ErmasTrainer._update

def slow_update(self, data):  # slows the run down without changing its results
    time.sleep(0.4)
    return original(self, data)

ErmasTrainer._update = slow_update
ErmasTrainer(json.loads(sys.argv[1])).train()
"""


def _kill_when_checkpointed(proc: subprocess.Popen, path: Path, at_least: int, timeout: float, seen: dict) -> None:
    """Polls ``path`` until it holds ``iteration >= at_least``, then SIGKILLs ``proc``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            try:
                iteration = torch.load(path, weights_only=True)["iteration"]
            except Exception:  # noqa: BLE001 - a file being replaced; poll again
                iteration = -1
            if iteration >= at_least:
                proc.send_signal(signal.SIGKILL)
                seen["iteration"] = iteration
                return
        time.sleep(0.02)


@pytest.mark.timeout(240)
def test_resume_after_kill_is_deterministic(tmp_path):
    """A run SIGKILLed mid-way and resumed equals an uninterrupted run exactly (CPU).

    Run B trains in a subprocess whose ``_update`` sleeps (same results, slower), so that it
    is killed mid-iteration once its checkpoint reports iteration >= 2. Run A, uninterrupted,
    trains in this process meanwhile. B is then resumed here with ``resume=True``.
    """
    iterations = 12  # regret at 1, 6, 11: two estimates fall after the resume
    cfg_a = make_cfg(
        tmp_path / "a",
        iterations=iterations,
        agents={"minibatches": 1},
        planner={"minibatches": 1},
        ermas={"regret_interval": 5},
    )
    cfg_b = _merge(cfg_a, {"output_dir": str(tmp_path / "b")})
    ckpt_b = tmp_path / "b" / "checkpoint.pt"
    with open(tmp_path / "child.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(cfg_b)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    seen: dict[str, int] = {}
    killer = threading.Thread(target=_kill_when_checkpointed, args=(proc, ckpt_b, 2, 180.0, seen), daemon=True)
    killer.start()
    try:
        full, full_ckpt = run(cfg_a)
        killer.join(timeout=200)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "child.err").read_text()
    assert proc.returncode == -signal.SIGKILL, f"B was not killed:\n{stderr[-3000:]}"
    assert 2 <= seen["iteration"] < iterations
    assert not (tmp_path / "b" / "results.json").exists()

    trainer = ErmasTrainer(_merge(cfg_b, {"resume": True}))
    assert 2 <= trainer.start_iteration < iterations
    resumed = trainer.train()
    resumed_ckpt = load_checkpoint(ckpt_b)
    assert len(resumed["history"]["time_collect"]) == iterations
    assert without_times(resumed["history"]) == without_times(full["history"])
    assert resumed["final"] == full["final"]
    assert_tree_equal(resumed_ckpt["modules"], full_ckpt["modules"])
    assert_tree_equal(resumed_ckpt["optimizers"], full_ckpt["optimizers"])


# ---------------------------------------------------------------------------- 4. seeds
def test_same_seed_same_results(tmp_path, officers_run):
    cfg, results, ckpt, _ = officers_run
    again, again_ckpt = run(_merge(cfg, {"output_dir": str(tmp_path), "logger": {"backend": ""}}))
    assert without_times(again["history"]) == without_times(results["history"])
    assert again["final"] == results["final"]
    assert_tree_equal(again_ckpt["modules"], ckpt["modules"])


def test_different_seed_different_results(tmp_path, officers_run):
    cfg, results, ckpt, _ = officers_run
    other, other_ckpt = run(_merge(cfg, {"output_dir": str(tmp_path), "seed": 1, "logger": {"backend": ""}}))
    assert other["seed"] == 1
    assert other["history"]["planner_reward"] != results["history"]["planner_reward"]
    assert other["history"]["agent_reward"] != results["history"]["agent_reward"]
    assert not state_equal(agent_actor_params(other_ckpt["modules"]), agent_actor_params(ckpt["modules"]))


# ---------------------------------------------------------------------------- 5. validation
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"iterationz": 3}, "iterationz"),
        ({"ermas": {"epsilonn": 0.1}}, "epsilonn"),
        ({"agents": {"learning_rate": 1e-3}}, "learning_rate"),
    ],
    ids=["top", "ermas", "agents"],
)
def test_unknown_key_raises(tmp_path, overrides, key):
    with pytest.raises(ConfigKeyError, match=key):
        ErmasTrainer(_merge(make_cfg(tmp_path), overrides))


def test_wrong_type_raises(tmp_path):
    with pytest.raises(ValidationError, match="iterations"):
        ErmasTrainer(make_cfg(tmp_path, iterations="three"))


INVALID = [
    ("variant", {"variant": "maddpg"}),
    ("iterations", {"iterations": 0}),
    ("num_envs", {"num_envs": 0}),
    ("checkpoint_interval", {"checkpoint_interval": 0}),
    ("history_window", {"history_window": 0}),
    ("rollout_steps", {"rollout_steps": 0}),
    ("agents.lr", {"agents": {"lr": 0.0}}),
    ("agents.lr", {"agents": {"lr": float("nan")}}),
    ("agents.anneal_start", {"agents": {"anneal_start": 1.5}}),
    ("agents.gamma", {"agents": {"gamma": 1.5}}),
    ("agents.gamma", {"agents": {"gamma": 0.0}}),
    ("agents.entropy_coeff", {"agents": {"entropy_coeff": -0.1}}),
    ("agents.clip_epsilon", {"agents": {"clip_epsilon": 1.5}}),
    ("agents.epochs", {"agents": {"epochs": 0}}),
    ("planner.lmbda", {"planner": {"lmbda": -0.5}}),
    ("planner.minibatches", {"planner": {"minibatches": 0}}),
    ("planner.depth", {"planner": {"depth": -1}}),
    ("agents.critic_depth", {"agents": {"critic_depth": -1}}),
    ("agents.loss_critic_type", {"agents": {"loss_critic_type": "l3"}}),
    ("ermas.lambda_init", {"ermas": {"lambda_init": 200.0, "lambda_max": 100.0}}),
    ("ermas.lambda_init", {"ermas": {"lambda_init": -1.0}}),
    ("ermas.lambda_lr", {"ermas": {"lambda_lr": -0.1}}),
    ("ermas.epsilon", {"ermas": {"epsilon": float("inf")}}),
    ("ermas.trust_region", {"ermas": {"trust_region": 0.0}}),
    ("ermas.exploration", {"ermas": {"exploration": 1.0}}),
    ("ermas.exploration", {"ermas": {"exploration": -0.1}}),
    ("ermas.confidence", {"ermas": {"confidence": -1.0}}),
    ("ermas.confidence", {"ermas": {"confidence": float("nan")}}),
    ("ermas.deviation_optimizer", {"ermas": {"deviation_optimizer": "adam"}}),
    ("ermas.confidence", {"ermas": {"deviation_optimizer": "ppo", "confidence": 0.5}}),
    ("ermas.warmup_iters", {"ermas": {"warmup_iters": -1}}),
    ("ermas.regret_interval", {"ermas": {"regret_interval": 0}}),
    ("ermas.regret_envs", {"ermas": {"regret_envs": 0}}),
    ("ermas.deviation_steps", {"ermas": {"deviation_steps": 0}}),
    ("ermas.meta_scale", {"ermas": {"meta_scale": -0.2}}),
    ("ermas.meta_scale", {"ermas": {"meta_scale": 1.5}}),
    ("ermas.regret_gamma", {"ermas": {"regret_gamma": 0.0}}),
    ("ermas.regret_gamma", {"ermas": {"regret_gamma": 1.5}}),
    ("ermas.regret_baseline", {"ermas": {"regret_baseline": "zero"}}),
    ("fixed_planner", {"fixed_planner": {"_target_": "torchrl_ermas.envs.economy.FreeMarketPlanner"}}),
    ("reward.q", {"reward": {"q": float("nan")}}),
    ("reward.gap_key", {"reward": {"gap_key": []}}),
    ("reward.dr_scale", {"reward": {"dr_scale": -1.0}}),
    ("reward.dr_resample", {"reward": {"dr_resample": "never"}}),
    ("reward.rr_eta", {"reward": {"rr_eta": -1.0}}),
    ("logger.backend", {"logger": {"backend": "mlflow"}}),
]


@pytest.mark.parametrize(("field", "overrides"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_invalid_value_raises_naming_field(tmp_path, field, overrides):
    cfg = make_cfg(tmp_path, **overrides)
    with pytest.raises(ValueError, match=rf"(^|\W){re.escape(field)}\b"):
        ErmasTrainer(cfg)
    with pytest.raises(ValueError, match=re.escape(field)):
        validate(TrainConfig(**_as_dataclass_kwargs(cfg)))
    assert not (tmp_path / "checkpoint.pt").exists()


def _as_dataclass_kwargs(cfg: dict) -> dict:
    """``cfg`` with its nested groups as the config dataclasses (``validate``'s input)."""
    groups = {
        "agents": PPOConfig,
        "planner": PPOConfig,
        "ermas": ErmasConfig,
        "reward": RewardConfig,
        "logger": LoggerConfig,
    }
    return {k: groups[k](**v) if k in groups else v for k, v in cfg.items()}


@pytest.mark.parametrize("horizon", [0, -1])
def test_invalid_regret_horizon_raises_naming_field(tmp_path, horizon):
    """Regression: ``ermas.regret_horizon`` must be ``None`` or an int >= 1."""
    with pytest.raises(ValueError, match=re.escape("ermas.regret_horizon")):
        ErmasTrainer(make_cfg(tmp_path, ermas={"regret_horizon": horizon}))


def test_too_many_minibatches_raises_naming_field(tmp_path):
    """Regression: 4 envs x 10 steps = 40 transitions cannot be split into 64 minibatches.

    Today ``_update`` slices ``flat.shape[0] // 64 == 0`` samples per minibatch and the
    PPO loss fails on an empty batch (a torch warning, then ``RuntimeError: max(): Expected
    reduction dim ...``) during the first iteration.
    """
    cfg = make_cfg(tmp_path, variant="marl", iterations=1, agents={"minibatches": 64})
    with pytest.raises(ValueError, match=re.escape("agents.minibatches")):
        ErmasTrainer(cfg).train()


@pytest.mark.parametrize("minibatches", [7, 9, 11])
def test_minibatches_that_do_not_split_a_pass_evenly_are_refused(tmp_path, minibatches):
    """40 transitions in minibatches of 40 // m: a pass without replacement would take more
    than m gradient steps (e.g. 5 of 8 for m = 7); the error names the field and what to do."""
    cfg = make_cfg(tmp_path, variant="marl", iterations=1, planner={"minibatches": minibatches})
    with pytest.raises(ValueError, match=r"planner.minibatches=\d+ does not split the 40 .* divisor of 40"):
        ErmasTrainer(cfg)


# ---------------------------------------------------------------------------- 6. NaN
class NaNRewardBimatrix(SequentialBimatrixEnv):
    """The bimatrix game, with NaN agent rewards from the ``nan_after``-th step on."""

    def __init__(self, *args, nan_after: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_after = nan_after
        self.steps = 0

    def _step(self, tensordict):
        out = super()._step(tensordict)
        self.steps += 1
        if self.nan_after is not None and self.steps > self.nan_after:
            reward = out.get(("agents", "reward"))
            out.set(("agents", "reward"), torch.full_like(reward, float("nan")))
        return out


def _nan_env_fn(after: int | None):
    def env_fn(batch_size: int, device: torch.device) -> SequentialBimatrixEnv:
        return NaNRewardBimatrix(
            batch_size,
            planner="officers",
            max_steps=MAX_STEPS,
            device=device,
            nan_after=after,
        )

    return env_fn


def test_nan_reward_raises_and_keeps_last_good_state(tmp_path):
    """A NaN reward in iteration 2 stops the run with a message naming the rewards and the
    iteration; the checkpoint holds exactly the state after iterations 0 and 1."""
    cfg = make_cfg(tmp_path / "nan", variant="fixed_lambda", iterations=4)
    trainer = ErmasTrainer(cfg, env_fn=_nan_env_fn(after=2 * MAX_STEPS + 3))
    with pytest.raises(NonFiniteError, match=r"non-finite agent rewards.*iteration 2"):
        trainer.train()
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ckpt["iteration"] == 2
    assert ckpt["history"]["iteration"] == [0, 1]
    assert is_finite_state(ckpt["modules"])
    assert not (tmp_path / "nan" / "results.json").exists()

    reference = make_cfg(tmp_path / "ref", variant="fixed_lambda", iterations=2)
    _, ref_ckpt = run(reference, env_fn=_nan_env_fn(after=None))
    assert_tree_equal(ckpt["modules"], ref_ckpt["modules"])
    assert_tree_equal(ckpt["optimizers"], ref_ckpt["optimizers"])


def test_per_world_deviation_rates_need_ppo_deviations(tmp_path):
    """The line search has no learning rate: per-world rates for it are refused, not ignored."""
    trainer = ErmasTrainer(make_cfg(tmp_path))
    env = trainer._make_env(2 * trainer.cfg.ermas.regret_envs)
    with pytest.raises(ValueError, match=r"deviation_lr applies to ermas.deviation_optimizer='ppo' only, got 'line"):
        trainer.make_estimator(
            trainer.agent_policy, env, planner_policy=None, critic=trainer.agent_critic, deviation_lr=torch.ones(2)
        )


def test_ppo_deviations_train_with_the_agents_ppo_settings(tmp_path):
    """``ermas.deviation_optimizer="ppo"``: the estimator's deviations take the agents' PPO
    settings, and a run with them trains, estimates and checkpoints as with the line search."""
    agents = {"lr": 2e-3, "epochs": 2, "minibatches": 2, "clip_epsilon": 0.1, "hidden": 16}
    cfg = make_cfg(tmp_path, agents=agents, ermas={"deviation_optimizer": "ppo"})
    trainer = ErmasTrainer(cfg)
    step = trainer.estimator.step
    assert isinstance(step, PPODeviationStep)
    assert (step.lr, step.epochs, step.minibatches, step.clip_epsilon) == (2e-3, 2, 2, 0.1)
    trainer.train()
    regrets = [r for r in trainer.history["regret"] if r is not None]
    assert len(regrets) == 2 and all(math.isfinite(x) for r in regrets for x in r)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 3


def test_nan_regret_raises_and_keeps_lambda(tmp_path, monkeypatch):
    """A NaN regret estimate stops the run before lambda or the meta term use it."""
    cfg = make_cfg(tmp_path, planner_mode="passive", iterations=3)
    trainer = ErmasTrainer(cfg)
    nan = torch.full((N_AGENTS,), float("nan"))
    monkeypatch.setattr(
        trainer.estimator,
        "estimate",
        lambda seed=None: {"regret": nan, "kl": torch.zeros(N_AGENTS)},
    )
    with pytest.raises(NonFiniteError, match=r"regret.*iteration 1"):
        trainer.train()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["iteration"] == 1
    start = torch.full((N_AGENTS,), ErmasConfig().lambda_init)
    assert torch.equal(ckpt["modules"]["lagrange.multiplier"], start)
    assert is_finite_state(ckpt["modules"])


# ---------------------------------------------------------------------------- env_fn
def test_env_fn_may_return_a_transformed_env(tmp_path, monkeypatch):
    """Regression: ``env_fn`` may return a ``TransformedEnv`` (the usual way to wrap an env
    in TorchRL) without warnings.

    ``ErmasTrainer._make_env`` wraps it in ``TransformedEnv(env, Compose(...))`` without
    ``auto_unwrap``, and torchrl 0.14 then warns "Nested TransformedEnvs are automatically
    unwrapped by default ..." (once per process, hence the reset of its flag here).
    """
    torchrl_base = sys.modules[TransformedEnv.__module__]
    monkeypatch.setattr(torchrl_base, "_AUTO_UNWRAP_WARNING_EMITTED", False, raising=False)

    def env_fn(batch_size: int, device: torch.device) -> TransformedEnv:
        env = SequentialBimatrixEnv(batch_size, planner="officers", max_steps=MAX_STEPS, device=device)
        return TransformedEnv(env, StepCounter())

    results, _ = run(make_cfg(tmp_path, variant="marl", iterations=1), env_fn=env_fn)
    assert results["history"]["iteration"] == [0]


# ---------------------------------------------------------------------------- 7. logging
def test_csv_logger_writes_under_output_dir(officers_run):
    cfg, results, _, out = officers_run
    scalars = out / "logs" / "ermas_seed0" / "scalars"
    assert scalars.is_dir(), sorted(str(p) for p in (out / "logs").rglob("*"))
    rows = (scalars / "planner_reward.csv").read_text().split()
    assert [int(r.split(",")[0]) for r in rows] == list(range(cfg["iterations"]))
    values = [float(r.split(",")[1]) for r in rows]
    assert values == pytest.approx(results["history"]["planner_reward"])
    for name in ("agent_reward_0", "agent_reward_1", "lambda_0", "regret_1", "kl_0"):
        assert (scalars / f"{name}.csv").exists(), name


def test_no_logger_writes_no_logs(marl_run):
    _, _, _, out = marl_run
    assert not (out / "logs").exists()


def test_run_many_builds_envs_with_the_env_factory(tmp_path):
    calls = []

    def factory(cfg, batch_size, device):
        calls.append((cfg.seed, batch_size))
        env = SequentialBimatrixEnv(batch_size=batch_size, max_steps=MAX_STEPS, device=device)
        return TransformedEnv(env, StepCounter())

    base = TrainConfig(**_as_dataclass_kwargs(make_cfg(tmp_path, variant="marl", iterations=1)))
    configs = [with_overrides(base, {"seed": s, "output_dir": str(tmp_path / str(s))}) for s in (0, 1)]
    results = run_many(configs, workers=1, population_size=1, env_factory=factory)
    assert [r["seed"] for r in results] == [0, 1]
    assert calls == [(0, 4), (1, 4)]
    calls.clear()
    configs = [with_overrides(cfg, {"output_dir": cfg.output_dir + "-population"}) for cfg in configs]
    run_many(configs, workers=1, population_size=2, env_factory=factory)  # one population: the first run's config
    assert calls == [(0, 4), (0, 4), (0, 8)]  # each run's own environment, then the batch of both


def test_gap_on_the_raw_payoff_excludes_the_officer_terms(tmp_path):
    """reward.gap_key=[planner, payoff]: agents earn r_i - q * r_p on the raw table."""
    q = 0.5
    base = make_cfg(tmp_path, variant="marl", iterations=1)
    raw = ErmasTrainer(_merge(base, {"reward": {"q": q, "gap_key": ["planner", "payoff"]}}))
    plain = ErmasTrainer(_merge(base, {"output_dir": str(tmp_path / "plain")}))
    torch.manual_seed(0)
    data = raw._collect(0)
    torch.manual_seed(0)
    reference = plain._collect(0)  # same seeds and parameters: the same trajectory
    expected = reference["next", "agents", "reward"] - q * reference["next", "planner", "payoff"]
    torch.testing.assert_close(data["next", "agents", "reward"], expected)
    officers = data["next", "planner", "reward"] != data["next", "planner", "payoff"]
    assert officers.any()  # the planner reward differs from the raw payoff here


def test_unknown_gap_key_raises(tmp_path):
    cfg = make_cfg(tmp_path, reward={"q": 0.3, "gap_key": ["planner", "payof"]})
    with pytest.raises(ValueError, match=r"reward.gap_key \['planner', 'payof'\]"):
        ErmasTrainer(cfg)


if __name__ == "__main__":
    # hydra (imported above) is also a pytest plugin: pytest warns that it cannot rewrite
    # it, and filterwarnings=error would turn that warning into a failure
    pytest.main([__file__, "-q", "-W", "ignore::pytest.PytestAssertRewriteWarning"])
