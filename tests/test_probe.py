"""The regret probe: a finished run's final agents re-estimated as the run itself would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchrl_ermas.training import ErmasTrainer, probe_regret

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _economy_run(folder: Path, variant: str) -> dict:
    return {
        "env": {
            "_target_": "torchrl_ermas.envs.economy.EconomyEnv",
            "tier": "labour",
            "episode_length": 20,
            "period": 5,
            "energy_warmup": 2.0,
        },
        "variant": variant,
        "iterations": 2,
        "num_envs": 4,
        "progress": False,
        "output_dir": str(folder),
        "logger": {"backend": ""},
        "agents": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "planner": {"hidden": 16, "epochs": 1, "minibatches": 2},
        "ermas": {"warmup_iters": 0, "regret_interval": 1, "regret_envs": 2, "deviation_steps": 1},
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_probe_with_the_runs_own_estimator_is_the_estimate_the_run_would_make(tmp_path):
    """Agents, critic, planner and curriculum state all come from the checkpoint: with the
    run's settings and seed the probe reproduces the finished trainer's own estimate."""
    trainer = ErmasTrainer(_economy_run(tmp_path / "run", "ermas"))
    trainer.train()
    before = _files(tmp_path / "run")
    expected = trainer.estimate_regret(7)
    probe = probe_regret(tmp_path / "run", tmp_path / "probe", seeds=[7], estimates=1)
    assert probe["regret"] == [expected["regret"].tolist()]
    assert probe["current_return"] == [expected["current_return"].tolist()]
    assert _files(tmp_path / "run") == before


def test_probe_of_a_marl_run_with_a_wider_estimator(tmp_path):
    ErmasTrainer(_economy_run(tmp_path / "run", "marl")).train()
    probe = probe_regret(
        tmp_path / "run", tmp_path / "probe", ermas={"trust_region": 12.0, "deviation_steps": 2}, estimates=2
    )
    assert probe["ermas"]["trust_region"] == 12.0 and probe["ermas"]["deviation_steps"] == 2
    regret, kl = torch.tensor(probe["regret"]), torch.tensor(probe["kl"])
    assert regret.shape == (2, 4) and torch.isfinite(regret).all() and (regret >= 0).all()
    assert (kl <= 12.0 + 1e-4).all()


def test_probe_refuses_a_folder_without_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_dir .* must hold a finished run"):
        probe_regret(tmp_path, tmp_path / "probe")
    with pytest.raises(ValueError, match="estimates must be an int >= 1"):
        probe_regret(tmp_path, tmp_path / "probe", estimates=0)
    with pytest.raises(ValueError, match="seeds must hold one seed per estimate"):
        probe_regret(tmp_path, tmp_path / "probe", estimates=2, seeds=[1])


def test_regret_probe_example_smoke(tmp_path):
    ErmasTrainer(_economy_run(tmp_path / "runs" / "marl", "marl")).train()
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "regret_probe.py"),
            f"hydra.run.dir={tmp_path / 'out'}",
            f"runs=[{tmp_path / 'runs' / '*'}]",
            "estimates=2",
            "settings.wide.regret_envs=4",
            "settings.widest.regret_envs=4",
            "settings.widest.deviation_steps=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(table[str(tmp_path / "runs" / "marl")]) == {"training", "wide", "widest"}
    assert "largest agent regret" in proc.stdout
    bad = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "regret_probe.py"),
            f"hydra.run.dir={tmp_path / 'bad'}",
            "runs=[/nonexistent*]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "matches no folder" in bad.stderr
