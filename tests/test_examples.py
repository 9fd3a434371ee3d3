"""The bimatrix examples (Figs. 2-4): their configs type-check, and each runs end to end.

The smoke runs use tiny budgets: they check the plumbing (runs, transfer, summary, figure,
table), not the results, which ``test_acceptance.py`` and the README's figures cover.
"""

from __future__ import annotations

import doctest
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


# (example, override, what the message must say); the last five examples' keys are owned
# by every experiment (seed, output folder), the others by one
REFUSED = [
    ("bimatrix_meta_ablation", "train.variant=ermass", r"train.variant is set per run .*variant=ermas"),
    ("bimatrix_meta_ablation", "train.ermas.meta_scale=-5", r"train.ermas.meta_scale .*set meta_scales instead"),
    (
        "bimatrix_meta_ablation",
        "meta_scales=[0.0,-5.0]",
        r"meta_scales must be a finite number >= 0 and <= 1, got -5.0",
    ),
    ("bimatrix_meta_ablation", "meta_scales=[1.5]", r"meta_scales must be a finite number >= 0 and <= 1, got 1.5"),
    ("bimatrix_meta_ablation", "ray_address=' '", r"ray_address must be None \(local processes\), 'local' or"),
    ("bimatrix_meta_ablation", "meta_scales=[]", r"meta_scales must list at least one value"),
    ("bimatrix_meta_ablation", "smoothing=0", r"smoothing must be an integer in \[1, train.iterations=100\], got 0"),
    ("bimatrix_adversarial_search", "train.ermas.epsilon=3", r"train.ermas.epsilon .*set epsilons instead"),
    ("bimatrix_adversarial_search", "train.variant=marl", r"train.variant is set per run"),
    ("bimatrix_adversarial_search", "epsilons=[]", r"epsilons must list at least one value"),
    ("bimatrix_adversarial_search", "train.env.planner=officers", r"train.env must be a .* with planner: passive"),
    ("bimatrix_adversarial_search", "train.reward.q=0.5", r"train.reward.q must be 0: the exact frontier"),
    ("bimatrix_adversarial_search", "fixed_lambdas=[-1.0]", r"fixed_lambdas must be a finite number >= 0, got -1.0"),
    ("bimatrix_adversarial_search", "fixed_lambdas=[200.0]", r"fixed_lambdas must be <= train.ermas.lambda_max=100.0"),
    ("bimatrix_robust_planner", "train.variant=marl", r"train.variant .*methods.<name>.variant"),
    ("bimatrix_robust_planner", "train.reward.q=0.2", r"train.reward.q .*q_test"),
    ("bimatrix_robust_planner", "q_test=[]", r"q_test must list at least one value"),
    ("bimatrix_robust_planner", "reference=nobody", r"reference must be one of"),
    ("bimatrix_robust_planner", "+transfer.seed=4", r"transfer.seed is set per run .*set seeds instead"),
    ("bimatrix_robust_planner", "+transfer.reward.q=0.3", r"transfer.reward.q .*set q_test instead"),
    ("bimatrix_robust_planner", "+transfer.variant=ermas", r"transfer.variant .*fresh MARL agents"),
    ("bimatrix_robust_planner", "+methods.ermas.seed=3", r"methods.ermas.seed .*set seeds instead"),
    ("vmas_adversarial_search", "seeds=[0,0,1]", r"seeds must list distinct values .*got \[0, 0, 1\]"),
    ("bimatrix_adversarial_search", "epsilons=[3.0,3.0000001]", r"epsilons must list distinct values"),
    ("bimatrix_meta_ablation", "train.seed=-3", r"train.seed .*set seeds instead"),
    ("bimatrix_adversarial_search", "train.seed=0", r"train.seed .*set seeds instead"),
    ("bimatrix_robust_planner", "train.output_dir=/proc/x", r"train.output_dir .*hydra.run.dir"),
    ("bimatrix_meta_ablation", "seeds=[]", r"seeds must list at least one value"),
    ("bimatrix_robust_planner", "workers=0", r"workers must be an int >= 1"),
    ("economy_tax_policy", "population_size=0", r"population_size must be an int >= 1"),
    (
        "economy_tax_policy",
        "train.episode_metrics=[tax_revenue]",
        r"train.episode_metrics must record \['equality', 'productivity'\]",
    ),
]


@pytest.mark.parametrize(("example", "override", "match"), REFUSED, ids=[f"{e}:{o}" for e, o, _ in REFUSED])
def test_example_refuses_keys_it_sets_and_empty_sweeps(example, override, match, import_example):
    """An override that the experiment would ignore or that leaves nothing to run is refused
    before any run starts, naming the key to use (``train.seed=0`` too: on the command line
    it is refused even at its default value)."""
    module = import_example(example)
    with initialize_config_dir(config_dir=str(EXAMPLES / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name=example, overrides=[override]))
    with pytest.raises(ValueError, match=match):
        module.validate(cfg, [override])


VALUE_REFUSED = [r for r in REFUSED if r[1].startswith("train.") and "=0" not in r[1]]


@pytest.mark.parametrize(("example", "override", "match"), VALUE_REFUSED, ids=[f"{e}:{o}" for e, o, _ in VALUE_REFUSED])
def test_example_refuses_owned_keys_set_in_the_config(example, override, match, import_example):
    """The same refusals when the value comes from a config file, not the command line."""
    module = import_example(example)
    with initialize_config_dir(config_dir=str(EXAMPLES / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name=example, overrides=[override]))
    with pytest.raises(ValueError, match=match):
        module.validate(cfg, [])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("example", sorted(path.stem for path in EXAMPLES.glob("*.py")))
def test_example_docstring_examples(example, import_example):
    """The ``>>>`` examples in the example scripts' docstrings stay true."""
    result = doctest.testmod(import_example(example), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize(("example", "config"), CONFIGS, ids=[c for _, c in CONFIGS])
def test_example_default_configs_validate(example, config, import_example):
    module = import_example(example)
    with initialize_config_dir(config_dir=str(EXAMPLES / "configs"), version_base="1.3"):
        module.validate(OmegaConf.to_object(compose(config_name=config)))


def test_example_script_exits_with_the_message(tmp_path):
    """The refusal reaches a user of the script: a non-zero exit naming the key, no runs."""
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "bimatrix_meta_ablation.py"),
            f"hydra.run.dir={tmp_path}",
            "train.variant=ermass",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "train.variant is set per run by this experiment" in proc.stderr
    assert not list(tmp_path.glob("beta*"))


def _run(example: str, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / f"{example}.py"),
            f"hydra.run.dir={tmp_path}",
            "workers=1",
            "seeds=[0]",
            "train.iterations=2",
            "train.num_envs=4",
            "train.env.max_steps=10",
            "train.ermas.warmup_iters=0",
            "train.ermas.regret_interval=1",
            "train.ermas.regret_envs=2",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
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
        assert all(len(stats[key]) == 2 for key in ("planner_reward", "planner_reward_sem", "relative"))
    assert summary["methods"]["marl_q0"]["relative"] == [0.0, 0.0]
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
        ("ermas", 5.0),
        ("fixed_lambda", 0.0),
        ("marl", None),
        ("frontier", 5.0),
    }
    assert (tmp_path / "adversarial_search.png").stat().st_size > 0
    assert "frontier planner" in proc.stdout


@pytest.mark.slow
def test_meta_ablation_example_smoke(tmp_path):
    """Fig. 3: learning curves per beta, mean and standard error over seeds, against the
    exact frontier at the runs' epsilon (10 steps per episode here)."""
    proc = _run("bimatrix_meta_ablation", tmp_path, "meta_scales=[0.0,1.0]", "smoothing=1")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"frontier", "0.0", "1.0"}
    assert 0 < summary["frontier"] <= 0.9 * 10  # the planner earns at most 0.9 per step
    for beta in ("0.0", "1.0"):
        curves = summary[beta]
        assert len(curves["planner"]["mean"]) == 2 and len(curves["agents"]["sem"]) == 2
        assert len(curves["iterations_to_frontier"]) == 1
    assert "planner reaches the frontier" in proc.stdout
    assert (tmp_path / "meta_ablation.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("ermas.regret_interval=0", r"ermas.regret_interval must be an int >= 1, got 0"),
        ("ermas.warmup_iters=-1", r"ermas.warmup_iters must be an int >= 0, got -1"),
        ("seed=-3", r"seed must be"),
    ],
)
def test_torchrl_pipeline_refuses_bad_loop_settings(override, match, import_example):
    module = import_example("torchrl_pipeline")
    with initialize_config_dir(config_dir=str(EXAMPLES / "configs"), version_base="1.3"):
        cfg = compose(config_name="torchrl_pipeline", overrides=[override])
    with pytest.raises(ValueError, match=match):
        module.validate(cfg)


def test_torchrl_pipeline_example_smoke(tmp_path):
    """The plain TorchRL script (collector, replay buffer, ErmasLoss with the planner side,
    the estimator on continuous VMAS actions) runs, estimates the regret and moves lambda."""
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "torchrl_pipeline.py"),
            f"hydra.run.dir={tmp_path}",
            "collector.n_iters=3",
            "env.num_envs=4",
            "env.max_steps=10",
            "train.minibatch_size=10",
            "ermas.warmup_iters=1",
            "ermas.regret_interval=1",
            "ermas.regret_envs=4",
            "ermas.epsilon=-5.0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iteration")]
    assert len(lines) == 3 and "regret_0" not in lines[0] and "regret_0" in lines[1]
    # epsilon = -5 is below any regret: lambda rises from its initial 1 (the selfish side)
    final = dict(item.split("=") for item in lines[-1].split(": ", 1)[1].split(", "))
    assert float(final["lambda_0"]) > 1.0 and float(final["lambda_1"]) > 1.0
    assert list((tmp_path / "logs").rglob("*.csv"))
