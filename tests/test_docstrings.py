"""The runnable examples in the public docstrings stay runnable."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchrl_ermas.envs.bimatrix",
    "torchrl_ermas.envs.bimatrix_frontier",
    "torchrl_ermas.envs.nmatrix",
    "torchrl_ermas.validation",
    "torchrl_ermas.objectives.lagrange",
    "torchrl_ermas.objectives.ermas",
    "torchrl_ermas.regret.reptile",
    "torchrl_ermas.training.checkpoint",
    "torchrl_ermas.training.experiments",
    "torchrl_ermas.training.config",
    "torchrl_ermas.training.models",
    "torchrl_ermas.training.run_folder",
    "torchrl_ermas.training.trainer",
    "torchrl_ermas.transforms.kl",
    "torchrl_ermas.transforms.planner",
    "torchrl_ermas.transforms.reward",
    "torchrl_ermas.transforms.time_limit",
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(name), optionflags=flags)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
