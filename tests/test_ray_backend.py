"""run_many on Ray: a local 2-CPU Ray gives the results of local processes."""

from __future__ import annotations

import sys

import pytest
from test_training import _merge, make_cfg, without_times

from torchrl_ermas.training import run_many
from torchrl_ermas.training.ray_backend import check_ray_address

ray = pytest.importorskip("ray", reason="the optional ray extra is not installed")


def test_local_ray_reproduces_the_process_runs(tmp_path):
    """The same configs on a local Ray of 2 CPUs and in-process: identical results, in input
    order, each run in its own folder."""
    configs = [
        make_cfg(tmp_path / "a0", variant="marl", iterations=2, seed=0),
        make_cfg(tmp_path / "a1", planner_mode="passive", iterations=3, seed=1),
    ]
    on_ray = run_many(configs, workers=2, ray_address="local")
    local = run_many([_merge(cfg, {"output_dir": cfg["output_dir"] + "-local"}) for cfg in configs])
    assert not ray.is_initialized()  # the Ray started by run_many is shut down
    for a, b in zip(on_ray, local):
        assert without_times(a["history"]) == without_times(b["history"])
        assert a["final"] == b["final"]
    assert [r["config"]["seed"] for r in on_ray] == [0, 1]
    assert (tmp_path / "a1" / "results.json").exists()


def test_a_failing_run_raises_its_error(tmp_path):
    bad = make_cfg(tmp_path / "bad", variant="marl", iterations=2, agents={"minibatches": 7})
    with pytest.raises(ValueError, match="minibatches=7"):
        run_many([bad], workers=1, ray_address="local")


def test_ray_address_must_be_a_non_empty_string():
    with pytest.raises(ValueError, match="ray_address must be None"):
        check_ray_address("")


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "torchrl-ermas\[ray\]"'):
        check_ray_address("auto")
