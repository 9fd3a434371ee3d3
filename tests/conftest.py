"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _import_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` once (which registers its schema in hydra's ConfigStore)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture
def import_example():
    """``import_example(name)``: the module of ``examples/<name>.py``, imported once."""
    return _import_example


@pytest.fixture
def one_thread():
    """One torch thread for the test: per-step tensors are small, and one thread avoids
    OpenMP spinning on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
