"""The bimatrix examples (Figs. 2-4): their configs type-check, and each runs end to end.

The smoke runs use tiny budgets: they check the plumbing (runs, transfer, summary, figure,
table), not the results, which ``test_acceptance.py`` and the README's figures cover.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# example -> the name of its schema class
BIMATRIX = {
    "bimatrix_adversarial_search": "AdversarialSearchConfig",
    "bimatrix_meta_ablation": "MetaAblationConfig",
    "bimatrix_robust_planner": "RobustPlannerConfig",
}
CONFIGS = [(name, name + suffix) for name in BIMATRIX for suffix in ("", "_paper")]


@pytest.mark.parametrize(("example", "config"), CONFIGS, ids=[c for _, c in CONFIGS])
def test_example_configs_type_check(example, config, import_example):
    schema = getattr(import_example(example), BIMATRIX[example])
    with initialize_config_dir(config_dir=str(EXAMPLES / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name=config))
        assert isinstance(cfg, schema)
        assert len(cfg.seeds) >= 3
        for key in ("bogus", "train.bogus", "train.planner.bogus"):
            with pytest.raises(Exception, match="bogus"):
                compose(config_name=config, overrides=[f"{key}=1"])


def _run(example: str, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py"), f"hydra.run.dir={tmp_path}",
         "workers=1", "seeds=[0]", "train.iterations=2", "train.num_envs=4",
         "train.env.max_steps=10", "train.ermas.warmup_iters=0",
         "train.ermas.regret_interval=1", "train.ermas.regret_envs=2", *overrides],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_robust_planner_example_smoke(tmp_path):
    """The README's main job: every method, transferred to every Q_test, in one table."""
    proc = _run("bimatrix_robust_planner", tmp_path, "q_test=[0.0,0.6]", "transfer.iterations=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["q_test"] == [0.0, 0.6]
    assert set(summary["methods"]) == {"ermas", "marl_q0", "marl_q05", "dr", "rr"}
    for stats in summary["methods"].values():
        assert all(len(stats[key]) == 2 for key in ("mean", "sem", "relative_mean"))
    assert summary["methods"]["marl_q0"]["relative_mean"] == [0.0, 0.0]
    for method in summary["methods"]:
        assert (tmp_path / "transfer" / method / "q0.6" / "seed0" / "results.json").exists()
    assert (tmp_path / "robust_planner.png").stat().st_size > 0
    assert "planner episode reward after transfer" in proc.stdout


@pytest.mark.slow
def test_adversarial_search_example_smoke(tmp_path):
    """Fig. 2: the epsilon sweep, MARL and fixed lambda, with the exact frontier."""
    proc = _run("bimatrix_adversarial_search", tmp_path, "epsilons=[5.0]", "fixed_lambdas=[0.0]")
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["method"], r["value"]) for r in rows} == {
        ("ermas", 5.0), ("fixed_lambda", 0.0), ("marl", None), ("frontier", 5.0)
    }
    assert (tmp_path / "adversarial_search.png").stat().st_size > 0
    assert "frontier planner" in proc.stdout


@pytest.mark.slow
def test_meta_ablation_example_smoke(tmp_path):
    """Fig. 3: learning curves per beta, mean and standard error over seeds."""
    _run("bimatrix_meta_ablation", tmp_path, "meta_scales=[0.0,1.0]")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"0.0", "1.0"}
    for curves in summary.values():
        assert len(curves["planner"]["mean"]) == 2 and len(curves["agents"]["sem"]) == 2
    assert (tmp_path / "meta_ablation.png").stat().st_size > 0
