"""What a user meets when things go wrong: resume checks, damaged checkpoints, leftover files,
occupied or unwritable output folders, non-finite results and bad input to the trainer.

Runs are as tiny as in ``test_training.py`` (4 environments, 10 steps), whose helpers they share.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf.errors import ConfigKeyError
from tensordict import TensorDict
from test_training import MAX_STEPS, _merge, make_cfg, run, without_times
from torchrl.envs import TransformedEnv
from torchrl.objectives.multiagent import MAPPOLoss
from torchrl_ermas.envs import SequentialBimatrixEnv

from torchrl_ermas.training import (
    ErmasTrainer,
    LoggerConfig,
    NonFiniteError,
    PPOConfig,
    TrainConfig,
    component_state,
    load_checkpoint,
    mean_sem,
    method_seed_configs,
    run_many,
    save_checkpoint,
    transfer_config,
    transfer_grid,
    validate,
    validate_experiment,
    with_overrides,
)
from torchrl_ermas.training.checkpoint import CheckpointError, load_latest_checkpoint
from torchrl_ermas.transforms import PlannerRewardGap
from torchrl_ermas.validation import check_module_params


@pytest.fixture(autouse=True)
def single_thread(one_thread):
    """Tiny runs: one torch thread (see conftest)."""


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory) -> tuple[dict, Path]:
    """A finished 2-iteration ERMAS run (checkpoint every iteration); copy it before changing it."""
    out = tmp_path_factory.mktemp("two")
    cfg = make_cfg(out, iterations=2, ermas={"warmup_iters": 0})
    ErmasTrainer(cfg).train()
    return cfg, out


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


# ---------------------------------------------------------------- 1. resume checks its config
@pytest.mark.parametrize(
    "changes, keys",
    [
        ({"seed": 5}, ["seed: 0 in the checkpoint, 5 now"]),
        ({"variant": "fixed_lambda"}, ["variant: 'ermas' in the checkpoint, 'fixed_lambda' now"]),
        ({"agents": {"lr": 1e-2}}, ["agents.lr"]),
        ({"ermas": {"epsilon": 1.0}, "reward": {"q": 0.1}}, ["ermas.epsilon", "reward.q"]),
        ({"iterations": 1}, ["iterations: 2 in the checkpoint, 1 now"]),
        ({"agents": {"hidden": 32}}, ["agents.hidden: 16 in the checkpoint, 32 now"]),
        ({"env": {"grid_size": 5}}, ["env.grid_size: '<absent>' in the checkpoint, 5 now"]),
    ],
)
def test_resume_refuses_another_configuration(tmp_path, two_iterations, changes, keys):
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    new = _merge(cfg, {**changes, "output_dir": str(out), "resume": True})
    with pytest.raises(ValueError, match="cannot resume from") as err:
        ErmasTrainer(new)
    message = str(err.value)
    assert str(out / "checkpoint.pt") in message and len(message) < 1500
    for key in keys:
        assert key in message


@pytest.mark.parametrize("value, resumes", [("l2", True), ("l1", False)])
def test_resume_of_a_checkpoint_older_than_a_setting(tmp_path, two_iterations, value, resumes):
    """A checkpoint written before a setting existed resumes when the setting is at its
    default (the behaviour the older run had) and is refused otherwise."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    config = json.loads(state["config"])
    del config["agents"]["loss_critic_type"]
    state["config"] = json.dumps(config)
    torch.save(state, out / "checkpoint.pt")
    new = _merge(cfg, {"output_dir": str(out), "resume": True, "agents": {"loss_critic_type": value}})
    if resumes:
        assert ErmasTrainer(new).start_iteration == 2
    else:
        with pytest.raises(ValueError, match=r"agents.loss_critic_type: 'l2' in the checkpoint, 'l1' now"):
            ErmasTrainer(new)


def test_resume_accepts_what_may_change(tmp_path, two_iterations):
    """More iterations, progress, logging, checkpoint interval and another folder resume."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "moved")
    new = _merge(
        cfg,
        {
            "output_dir": str(out),
            "resume": True,
            "iterations": 3,
            "progress": True,
            "checkpoint_interval": 5,
            "logger": {"backend": "csv", "exp_name": "again"},
        },
    )
    trainer = ErmasTrainer(new)
    assert trainer.start_iteration == 2
    results = trainer.train()
    assert results["history"]["iteration"] == [0, 1, 2]


def test_resume_with_other_parameter_shapes_names_the_file(tmp_path, two_iterations):
    """An env_fn that builds another game (same config) gives a short message, not a dump."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")

    def bigger_grid(batch_size, device):
        return SequentialBimatrixEnv(batch_size, grid_size=5, planner="officers", max_steps=MAX_STEPS, device=device)

    with pytest.raises(ValueError, match="does not fit this run") as err:
        ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True}), env_fn=bigger_grid)
    message = str(err.value)
    assert str(out / "checkpoint.pt") in message and "n_agents" in message
    assert "in the checkpoint" in message and len(message) < 1000


def _old_layout(state: dict) -> dict:
    """``state`` as the earlier layout wrote it: the losses' entries and a top-level planner."""
    old = dict(state)
    old["modules"] = {f"agents.{k}": v for k, v in state["modules"].items()}
    old["planner_policy"] = component_state(state["modules"], "planner_policy")
    return old


def test_a_checkpoint_of_the_earlier_layout_is_refused_by_name(tmp_path, two_iterations):
    """Resuming, or loading a planner from, a checkpoint of the per-loss layout says so (not
    that the environment or the network sizes differ)."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    state = load_checkpoint(out / "checkpoint.pt")
    save_checkpoint(_old_layout(state), out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="earlier version of torchrl-ermas.*overwrite=true"):
        ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True}))
    transfer = _merge(
        cfg,
        {
            "output_dir": str(tmp_path / "t"),
            "variant": "marl",
            "train_planner": False,
            "planner_checkpoint": str(out / "checkpoint.pt"),
        },
    )
    with pytest.raises(CheckpointError, match="earlier version of torchrl-ermas"):
        ErmasTrainer(transfer)


# ---------------------------------------------------------------- 2. damaged checkpoints
def test_checkpoint_rotation_keeps_the_previous_one(two_iterations):
    _, out = two_iterations
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    assert load_checkpoint(out / "checkpoint.prev.pt")["iteration"] == 1


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing"])
def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, two_iterations, damage):
    """The newest checkpoint is lost (truncated, emptied, deleted): the run resumes from the
    previous one, says so, sets an unreadable file aside (so that the next save keeps the
    good previous checkpoint), and ends as an uninterrupted run."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    newest = out / "checkpoint.pt"
    {"truncate": _truncate, "empty": lambda p: p.write_bytes(b""), "missing": Path.unlink}[damage](newest)
    resumed_cfg = _merge(cfg, {"output_dir": str(out), "resume": True, "iterations": 3})
    with pytest.warns(UserWarning, match="checkpoint.prev.pt") as record:
        trainer = ErmasTrainer(resumed_cfg)
    assert str(newest) in str(record[0].message)
    assert (out / "checkpoint.pt.unreadable").exists() == (damage != "missing")
    assert not newest.exists()
    assert trainer.start_iteration == 1
    resumed = trainer.train()
    assert load_checkpoint(out / "checkpoint.prev.pt")["iteration"] == 2
    full, _ = run(_merge(cfg, {"output_dir": str(tmp_path / "full"), "iterations": 3}))
    assert without_times(resumed["history"]) == without_times(full["history"])


def test_no_loadable_checkpoint_names_every_file(tmp_path, two_iterations):
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    _truncate(out / "checkpoint.pt")
    (out / "checkpoint.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True}))
    message = str(err.value)
    assert str(out / "checkpoint.pt") in message and str(out / "checkpoint.prev.pt") in message
    assert "0 bytes" in message and "overwrite=true" in message


@pytest.mark.parametrize("damage", [_truncate, lambda p: p.write_bytes(b""), lambda p: p.write_text("{}")])
def test_load_checkpoint_names_a_damaged_file(tmp_path, damage):
    path = save_checkpoint({"iteration": 1, "w": torch.ones(100)}, tmp_path / "c.pt")
    damage(path)
    with pytest.raises(CheckpointError, match=f"checkpoint {str(path)!r} .*cannot be read"):
        load_checkpoint(path)
    assert load_latest_checkpoint(tmp_path / "absent.pt") is None


def test_damaged_planner_checkpoint_names_the_file(tmp_path, two_iterations):
    cfg, src = two_iterations
    ckpt = _copy_run(src, tmp_path / "trained") / "checkpoint.pt"
    _truncate(ckpt)
    transfer = transfer_config(with_overrides(TrainConfig(), cfg), ckpt, {"output_dir": str(tmp_path / "t")})
    match = r"planner_checkpoint: checkpoint .*trained/checkpoint\.pt.*checkpoint\.prev\.pt"
    with pytest.raises(CheckpointError, match=match):
        ErmasTrainer(transfer)
    missing = transfer_config(transfer, tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match="planner_checkpoint: checkpoint .*nowhere.pt.* does not exist"):
        ErmasTrainer(missing)


# ---------------------------------------------------------------- 3. leftover temporaries
def test_stale_temporaries_are_removed_on_start(tmp_path, two_iterations):
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    stale = [out / ".checkpoint.pt.k1ll3d.tmp", out / ".results.json.a8c.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    unrelated = out / ".notes.tmp"
    unrelated.write_text("mine")
    ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True}))
    assert not any(path.exists() for path in stale)
    assert unrelated.read_text() == "mine"


# ---------------------------------------------------------------- 4./5. the output folder
def test_a_folder_with_another_run_is_refused(tmp_path, two_iterations):
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    before = (out / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds another run .*resume=true.*overwrite=true"):
        ErmasTrainer(_merge(cfg, {"output_dir": str(out)}))
    assert (out / "results.json").read_bytes() == before
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True, "overwrite": True}))


def test_overwrite_replaces_the_run_and_its_logs(tmp_path):
    cfg = make_cfg(tmp_path, variant="marl", iterations=3, logger={"backend": "csv"})
    ErmasTrainer(cfg).train()
    again = ErmasTrainer(_merge(cfg, {"iterations": 2, "overwrite": True, "agents": {"lr": 1e-2}}))
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "results.json").exists()
    results = again.train()
    assert results["config"]["agents"]["lr"] == 1e-2 and results["history"]["iteration"] == [0, 1]
    csv = tmp_path / "logs" / "marl_seed0" / "scalars" / "planner_reward.csv"
    assert [line.split(",")[0] for line in csv.read_text().splitlines()] == ["0", "1"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def test_unwritable_output_dir_fails_before_training(tmp_path):
    """Found at construction, not at the first checkpoint (root may write anywhere, so the
    folder is made unwritable by putting it under a file)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"output_dir .*a_file/run.* is not a writable folder"):
        ErmasTrainer(make_cfg(blocker / "run", variant="marl", logger={"backend": ""}))


# ---------------------------------------------------------------- 6. CSV log after a resume
def test_csv_log_holds_each_iteration_once_after_a_resume(tmp_path):
    """Killed after iteration 3 was logged but before its checkpoint: the resumed run replays
    iteration 3 and the CSV holds iterations 0..4 once each, equal to the history."""
    cfg = make_cfg(tmp_path, variant="marl", iterations=4, checkpoint_interval=3, logger={"backend": "csv"})
    ErmasTrainer(cfg).train()
    os.replace(tmp_path / "checkpoint.prev.pt", tmp_path / "checkpoint.pt")  # back to iteration 3
    results = ErmasTrainer(_merge(cfg, {"iterations": 5, "resume": True})).train()
    scalars = tmp_path / "logs" / "marl_seed0" / "scalars"
    rows = [line.split(",") for line in (scalars / "planner_reward.csv").read_text().splitlines()]
    assert [int(step) for step, _ in rows] == [0, 1, 2, 3, 4]
    assert [float(v) for _, v in rows] == pytest.approx(results["history"]["planner_reward"])
    agent_rows = (scalars / "agent_reward_1.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in agent_rows] == ["0", "1", "2", "3", "4"]


# ---------------------------------------------------------------- 7. non-finite results
class NaNPlannerBimatrix(SequentialBimatrixEnv):
    """A passive-planner game whose planner reward is NaN."""

    def _step(self, tensordict):
        out = super()._step(tensordict)
        out.set(("planner", "reward"), torch.full_like(out.get(("planner", "reward")), float("nan")))
        return out


def test_nan_planner_reward_stops_a_marl_run(tmp_path):
    cfg = make_cfg(tmp_path, planner_mode="passive", variant="marl", iterations=2)

    def env_fn(batch_size, device):
        return NaNPlannerBimatrix(batch_size, max_steps=MAX_STEPS, device=device)

    with pytest.raises(NonFiniteError, match=r"non-finite planner reward .*iteration 0"):
        ErmasTrainer(cfg, env_fn=env_fn).train()
    assert not (tmp_path / "results.json").exists()


def test_nan_loss_still_stops_the_run(tmp_path, monkeypatch):
    original = MAPPOLoss.forward

    def nan_objective(self, tensordict):
        out = original(self, tensordict)
        out.set("loss_objective", out.get("loss_objective") * float("nan"))
        return out

    monkeypatch.setattr(MAPPOLoss, "forward", nan_objective)
    cfg = make_cfg(tmp_path, variant="marl", iterations=2)
    with pytest.raises(NonFiniteError, match=r"non-finite agents loss_objective.*iteration 0"):
        ErmasTrainer(cfg).train()


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_results_json_is_strict(tmp_path):
    trainer = ErmasTrainer(make_cfg(tmp_path, variant="marl", iterations=1))
    results = trainer.train()
    assert _strict((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    trainer.extra_final["exact_regret"] = [1.0, float("nan")]
    with pytest.raises(ValueError, match=r"final\.exact_regret\.1 is not finite"):
        trainer.write_results()
    _strict((tmp_path / "results.json").read_text())  # the previous file stands


def test_checkpoint_and_results_have_the_same_file_mode(tmp_path):
    ErmasTrainer(make_cfg(tmp_path, variant="marl", iterations=1)).train()
    umask = os.umask(0)
    os.umask(umask)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("checkpoint.pt", "results.json")}
    assert modes == {"checkpoint.pt": 0o666 & ~umask, "results.json": 0o666 & ~umask}


# ---------------------------------------------------------------- 8. ERMAS that never estimates
@pytest.mark.parametrize("warmup, iterations", [(3, 3), (10, 4)])
def test_ermas_without_any_regret_estimate_is_refused(tmp_path, warmup, iterations):
    cfg = make_cfg(tmp_path, iterations=iterations, ermas={"warmup_iters": warmup})
    with pytest.raises(ValueError, match=r"ermas.warmup_iters.*< iterations.*fixed_lambda"):
        ErmasTrainer(cfg)
    ErmasTrainer(_merge(cfg, {"variant": "fixed_lambda"}))  # frozen multipliers are fine


# ---------------------------------------------------------------- 11./12. bad input, nested dicts
@pytest.mark.parametrize(
    "changes, match",
    [
        ({"env": None}, r"env must be a hydra node with a _target_ .*got env=None"),
        ({"device": "gpu"}, r"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'gpu'"),
        ({"seed": 2**70}, r"seed must be an int in \[0, 9223372036854775807\], got 1180591620717411303424"),
        ({"seed": -1}, r"seed must be an int in \[0, "),
        ({"device": "meta"}, r"device must be a cpu, cuda or mps device, got 'meta'"),
        ({"planner_checkpoint": ""}, r"planner_checkpoint must be None or the path of a checkpoint"),
        ({"fixed_planner": {}, "train_planner": False}, r"fixed_planner must be None or a hydra node with a _target_"),
        (
            {"logger": {"backend": "csv", "exp_name": "../../elsewhere"}},
            r"logger.exp_name must be None .* without path separators",
        ),
        ({"logger": {"backend": "csv", "exp_name": ""}}, r"logger.exp_name must be None"),
        ({"logger": {"backend": "wandb", "project": ""}}, r"logger.project must be a non-empty name"),
        ({"num_envs": 2.5}, r"Value .2.5. of type .float. could not be converted to Integer\s+full_key: num_envs"),
    ],
)
def test_bad_run_settings_are_named(tmp_path, changes, match):
    cfg = make_cfg(tmp_path, variant="marl")
    cfg.update(changes)
    with pytest.raises(ValueError, match=match):
        ErmasTrainer(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available on this machine"):
        ErmasTrainer(make_cfg(tmp_path, variant="marl", device="cuda"))


def test_mean_sem_of_nothing_is_refused():
    with pytest.raises(ValueError, match="mean_sem needs at least one value"):
        mean_sem([])


@pytest.mark.parametrize("workers", [1.5, "2", 0, True])
def test_run_many_workers_must_be_a_positive_int(workers):
    with pytest.raises(ValueError, match=r"workers must be an int >= 1"):
        run_many([], workers=workers)


def test_gap_key_is_checked_when_the_transform_is_attached():
    base = SequentialBimatrixEnv(2, max_steps=5)
    with pytest.raises(ValueError, match=r"planner_reward_key=\('planner', 'nope'\) is not an output"):
        TransformedEnv(base, PlannerRewardGap(0.5, planner_reward_key=("planner", "nope")))
    with pytest.raises(ValueError, match=r"agent_reward_key=\('agents', 'payoff'\)"):
        TransformedEnv(base, PlannerRewardGap(0.5, agent_reward_key=("agents", "payoff")))


def test_nested_nodes_may_be_dicts(tmp_path):
    cfg = TrainConfig(
        env={"_target_": "torchrl_ermas.envs.SequentialBimatrixEnv", "max_steps": MAX_STEPS},
        variant="marl",
        num_envs=4,
        iterations=1,
        progress=False,
        output_dir=str(tmp_path),
        logger={"backend": ""},
        agents={"lr": 1e-2, "hidden": 16},
    )
    trainer = ErmasTrainer(cfg)
    assert trainer.cfg.logger == LoggerConfig(backend="")
    assert trainer.cfg.agents == PPOConfig(lr=1e-2, hidden=16)
    bad = TrainConfig(logger={"backnd": ""}, output_dir=str(tmp_path / "bad"))
    with pytest.raises(ConfigKeyError, match="backnd"):
        ErmasTrainer(bad)
    assert trainer.train()["history"]["iteration"] == [0]


class NaNObservationBimatrix(SequentialBimatrixEnv):
    """A game whose agent observations are NaN after the reset."""

    def _step(self, tensordict):
        out = super()._step(tensordict)
        obs = out.get(("agents", "observation"))
        out.set(("agents", "observation"), torch.full_like(obs, float("nan")))
        return out


def test_nan_inside_the_regret_estimate_stops_the_run_with_the_last_good_state(tmp_path):
    """NaN in the estimator's rollouts only (its env has the larger batch) is reported as a
    NonFiniteError naming the estimate, and the checkpoint holds the state before it."""
    cfg = make_cfg(tmp_path, planner_mode="passive", iterations=3, ermas={"warmup_iters": 1})
    regret_batch = cfg["ermas"]["regret_envs"] * 2

    def env_fn(batch_size, device):
        cls = NaNObservationBimatrix if batch_size == regret_batch else SequentialBimatrixEnv
        return cls(batch_size, max_steps=MAX_STEPS, device=device)

    with pytest.raises(NonFiniteError, match=r"non-finite action probabilities in the regret estimate.*iteration 1"):
        ErmasTrainer(cfg, env_fn=env_fn).train()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 1


def test_seed_env_with_a_single_transform():
    """``TransformedEnv(base, transform)`` (no Compose) is seeded, transform included."""
    from torchrl_ermas.regret import seed_env
    from torchrl_ermas.transforms import DomainRandomizedReward

    env = TransformedEnv(SequentialBimatrixEnv(4, max_steps=5), DomainRandomizedReward(1.0))
    torch.manual_seed(0)  # the random actions of a policy-less rollout
    seed_env(env, 3)
    first = env.rollout(5)["next", "agents", "reward"]
    env.rollout(5)
    torch.manual_seed(0)
    seed_env(env, 3)
    assert torch.equal(env.rollout(5)["next", "agents", "reward"], first)


# ---------------------------------------------------------------- review follow-ups
def test_checkpoint_pt_exists_at_every_moment_of_a_rotating_save(tmp_path, monkeypatch):
    """The previous checkpoint is linked aside before the new file replaces checkpoint.pt,
    so a reader (e.g. a transfer run's planner_checkpoint) never finds it missing."""
    from torchrl_ermas.training import checkpoint

    path = save_checkpoint({"iteration": 1}, tmp_path / "checkpoint.pt")
    seen = []
    original = checkpoint._keep_as_previous

    def spy(p):
        original(p)
        seen.append((p.exists(), load_checkpoint(p)["iteration"]))

    monkeypatch.setattr(checkpoint, "_keep_as_previous", spy)
    save_checkpoint({"iteration": 2}, path, keep_previous=True)
    assert seen == [(True, 1)]
    assert load_checkpoint(path)["iteration"] == 2
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt")["iteration"] == 1


def test_a_run_loading_a_planner_needs_its_own_folder(tmp_path, two_iterations):
    """Even with overwrite=true on the base, a transfer into the training folder is refused
    before anything is deleted."""
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "trained")
    base = with_overrides(TrainConfig(), {**cfg, "output_dir": str(out), "overwrite": True})
    with pytest.raises(ValueError, match=r"planner_checkpoint .* lies in output_dir .* of its own"):
        transfer_config(base, out / "checkpoint.pt")
    assert (out / "checkpoint.pt").exists() and (out / "results.json").exists()


def test_resume_needs_a_checkpoint_where_there_are_results(tmp_path, two_iterations):
    cfg, src = two_iterations
    out = _copy_run(src, tmp_path / "run")
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.prev.pt").unlink()
    with pytest.raises(ValueError, match="holds results.json but no checkpoint"):
        ErmasTrainer(_merge(cfg, {"output_dir": str(out), "resume": True}))


def test_the_log_folder_belongs_to_the_run_whatever_the_backend(tmp_path):
    logs = tmp_path / "logs" / "marl_seed0"
    logs.mkdir(parents=True)
    (logs / "events.out").write_text("tensorboard")
    cfg = make_cfg(tmp_path, variant="marl", iterations=1)  # logger backend ""
    with pytest.raises(ValueError, match=r"holds another run \(marl_seed0\)"):
        ErmasTrainer(cfg)
    ErmasTrainer(_merge(cfg, {"overwrite": True}))
    assert not logs.exists()


def test_nested_dicts_work_beyond_the_trainer():
    cfg = TrainConfig(agents={"lr": 1e-2})
    validate(cfg)
    assert with_overrides(cfg, {"seed": 2}).agents == PPOConfig(lr=1e-2)


def test_experiment_checks_only_what_the_runs_use():
    """The base run's variant is replaced per run: marl methods with a warm-up longer than
    the run are fine, and overriding a parent node (train.ermas=...) is judged by value."""
    base = with_overrides(TrainConfig(), {"iterations": 5, "ermas.warmup_iters": 10})
    validate_experiment(base, sweeps={"seeds": [0]}, workers=1, methods={"marl": {"variant": "marl"}})
    lr = with_overrides(TrainConfig(), {"ermas.lambda_lr": 0.1})
    owned = {"ermas.epsilon": "set epsilons instead"}
    validate_experiment(lr, sweeps={}, workers=1, owned=owned, overrides=["train.ermas={lambda_lr:0.1}"])
    eps = with_overrides(TrainConfig(), {"ermas.epsilon": 3.0})
    with pytest.raises(ValueError, match=r"train.ermas.epsilon .*got train.ermas.epsilon=3.0"):
        validate_experiment(eps, sweeps={}, workers=1, owned=owned, overrides=["train.ermas={epsilon:3}"])


@pytest.mark.parametrize(
    ("test_key", "values", "message"),
    [
        ("seed", [1.0], r"test_key must be a setting of the test, not one the grid sets itself \(\['output_dir'"),
        ("planner_checkpoint", [1.0], r"not one the grid sets itself .*got 'planner_checkpoint'"),
        ("reward.q", [0.1, 0.1], r"test_values must give distinct folders \(q<value:g>\), got \[0.1, 0.1\]"),
        ("reward.q", [0.1, 0.1000001], r"test_values must give distinct folders .*\['q0.1', 'q0.1'\]"),
    ],
)
def test_transfer_grid_refuses_test_values_it_would_lose(tmp_path, test_key, values, message):
    trained = method_seed_configs(TrainConfig(), {"marl": {"variant": "marl"}}, [0], tmp_path / "train")
    with pytest.raises(ValueError, match=message):
        transfer_grid(TrainConfig(), trained, test_key, values, tmp_path / "t", "q")


def test_transfer_grid_adds_fixed_planners_on_the_trained_seeds(tmp_path):
    """Baselines that are not trained run fresh MARL agents on the seeds of the trained runs,
    in the same folder layout; a setting they cannot run is named with the baseline."""
    trained = method_seed_configs(TrainConfig(), {"ermas": {"variant": "ermas"}}, [3, 5], tmp_path / "train")
    fixed = {"free": {"fixed_planner": {"_target_": "torchrl_ermas.envs.economy.FreeMarketPlanner"}}}
    runs = transfer_grid(TrainConfig(), trained, "reward.q", [0.25], tmp_path / "t", "q", fixed_planners=fixed)
    assert sorted(runs) == [("ermas", 3, 0.25), ("ermas", 5, 0.25), ("free", 3, 0.25), ("free", 5, 0.25)]
    free = runs["free", 5, 0.25]
    assert (free.variant, free.train_planner, free.seed, free.reward.q) == ("marl", False, 5, 0.25)
    assert free.fixed_planner["_target_"].endswith("FreeMarketPlanner") and free.planner_checkpoint is None
    assert free.output_dir == str(tmp_path / "t" / "free" / "q0.25" / "seed5")
    assert runs["ermas", 5, 0.25].planner_checkpoint == str(tmp_path / "train" / "ermas" / "seed5" / "checkpoint.pt")
    bad = {"broken": {"fixed_planner": {}}}
    with pytest.raises(ValueError, match=r"fixed planner 'broken' \(seed 3, reward.q=0.25\): fixed_planner must"):
        transfer_grid(TrainConfig(), trained, "reward.q", [0.25], tmp_path / "t", "q", fixed_planners=bad)
    with pytest.raises(ValueError, match=r"fixed_planners must not reuse the names of trained runs, got \['ermas'\]"):
        transfer_grid(TrainConfig(), trained, "reward.q", [0.25], tmp_path / "t", "q", fixed_planners={"ermas": {}})


def test_huge_ints_are_refused_as_numbers():
    from torchrl_ermas.validation import check_real

    with pytest.raises(ValueError, match="x must be a finite number"):
        check_real("x", 10**400)


def test_module_params_check_names_the_forms_it_accepts():
    linear = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"stacked must be one of \[\(False,\), \(True,\), \(False, True\)\]"):
        check_module_params("params", TensorDict.from_module(linear), linear, stacked=(True, False))
