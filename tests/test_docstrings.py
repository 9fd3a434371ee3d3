"""The runnable examples in the docstrings of every module of the package stay runnable.

The modules are discovered (``pkgutil.walk_packages`` over the package and over
``torchrl_ermas.envs``, installed from ``envs/``), so a new module joins by existing; a module
that defines public classes or functions must show at least one of them in a ``>>>``
example.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest
import torchrl_ermas.envs

import torchrl_ermas

MODULES = sorted(
    {
        info.name
        for package in (torchrl_ermas, torchrl_ermas.envs)  # envs/ lives outside the package dir
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    }
)


def _defines_public_api(module) -> bool:
    """Whether ``module`` is public and defines (not re-exports) a public class or function."""
    return not module.__name__.rpartition(".")[2].startswith("_") and any(
        (inspect.isclass(value) or inspect.isfunction(value))
        and not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        for name, value in vars(module).items()
    )


def test_discovery_covers_the_environments():
    assert {"torchrl_ermas.envs.bimatrix", "torchrl_ermas.envs.economy.observations"} <= set(MODULES)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.failed == 0
    if _defines_public_api(module):
        assert result.attempted > 0, f"{name} has no docstring example"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
