"""Defaults are written once, in the signature of the class they configure.

The dataclass config :class:`~torchrl_ermas.training.ErmasConfig` reads its defaults from
the constructors it feeds (the multipliers, the regret estimator, the meta-gradient), so a
default changes in one place.
"""

from __future__ import annotations

import inspect
from typing import Any


def default_of(fn: Any, name: str) -> Any:
    """The default of parameter ``name`` of ``fn`` (a class: of its constructor).

    Examples:
        >>> from torchrl_ermas.objectives import LagrangeMultiplier
        >>> default_of(LagrangeMultiplier, "lr")
        0.01
        >>> default_of(LagrangeMultiplier, "n_agents")
        Traceback (most recent call last):
        ...
        ValueError: LagrangeMultiplier has no default for 'n_agents'.
    """
    parameter = inspect.signature(fn).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{fn.__name__} has no default for {name!r}.")
    return parameter.default
