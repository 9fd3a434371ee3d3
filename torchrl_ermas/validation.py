"""Argument checks shared by the core and the environments.

Each check raises a ``ValueError`` that names the argument and the accepted values (and the
type of a value of the wrong type), so that callers catch one exception type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from tensordict import TensorDict, TensorDictBase

#: seeds accepted everywhere: torch's generators take unsigned 64-bit seeds, kept signed-safe
MAX_SEED = 2**63 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, low: int, high: int | None = None, *, optional: bool = False) -> None:
    """``value`` must be an int in ``[low, high]`` (``>= low`` without ``high``).

    ``optional`` also accepts ``None``.

    Examples:
        >>> check_int("num_steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: num_steps must be an int >= 1, got 0.
        >>> check_int("workers", "2", 1)
        Traceback (most recent call last):
        ...
        ValueError: workers must be an int >= 1, got '2' (str).
    """
    if optional and value is None:
        return
    accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
    prefix = "None or " if optional else ""
    if not _is_int(value):
        raise ValueError(f"{name} must be {prefix}an int {accepted}, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {prefix}an int {accepted}, got {value!r}.")


def check_seed(name: str, value, *, optional: bool = False) -> None:
    """``value`` must be an int in ``[0, 2**63 - 1]`` (or ``None`` when ``optional``).

    Examples:
        >>> check_seed("seed", 2**70)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an int in [0, 9223372036854775807], got 1180591620717411303424.
    """
    check_int(name, value, 0, MAX_SEED, optional=optional)


def check_number(name: str, value, *, strict: bool = True) -> None:
    """``value`` must be a finite number ``> 0`` (``>= 0`` when ``strict=False``).

    Examples:
        >>> check_number("trust_region", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: trust_region must be a finite number > 0, got 0.0.
    """
    check_real(name, value, low=0, low_inclusive=not strict)


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` must be a finite real number in the given bounds; returns it as a float.

    Examples:
        >>> check_real("q", 0.5)
        0.5
        >>> check_real("energy_cost", float("nan"), low=0.0)
        Traceback (most recent call last):
        ...
        ValueError: energy_cost must be a finite number >= 0.0, got nan.
        >>> check_real("exploration", 1.0, low=0, high=1, high_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: exploration must be a finite number >= 0 and < 1, got 1.0.
        >>> check_real("officer_weight", "x")
        Traceback (most recent call last):
        ...
        ValueError: officer_weight must be a finite number, got 'x' (str).
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        bounds.append(f"{'<=' if high_inclusive else '<'} {high}")
    accepted = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be {accepted}, got {value!r} ({type(value).__name__}).")
    try:
        ok = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        ok = False
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices) -> None:
    """``value`` must be one of ``choices``.

    Examples:
        >>> check_choice("variant", "ermass", ("ermas", "marl"))
        Traceback (most recent call last):
        ...
        ValueError: variant must be one of ('ermas', 'marl'), got 'ermass'.
    """
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_bool(name: str, value) -> None:
    """``value`` must be a bool.

    Examples:
        >>> check_bool("agent_id", "no")
        Traceback (most recent call last):
        ...
        ValueError: agent_id must be a bool (True or False), got 'no' (str).
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__}).")


#: the forms :func:`check_module_params` accepts, by its ``stacked`` argument
_PARAMS_FORMS = {
    (False,): "",
    (True,): ", stacked on a leading dim (batch_size=[R], one entry per run)",
    (False, True): ", or such TensorDicts stacked on one leading dim",
}


def check_module_params(name: str, params, module: torch.nn.Module, *, stacked: tuple[bool, ...] = (False,)):
    """``params`` must have the keys and shapes of ``TensorDict.from_module(module)``, unstacked
    and / or stacked on one leading dim as ``stacked`` allows (``(False,)``, ``(True,)`` or
    ``(False, True)``); returns ``params``.

    Examples:
        >>> from tensordict import TensorDict
        >>> linear = torch.nn.Linear(2, 1)
        >>> params = TensorDict.from_module(linear).data
        >>> check_module_params("params", params.expand(3), linear, stacked=(True,)).batch_size
        torch.Size([3])
        >>> check_module_params("params", params, linear, stacked=(True,))
        Traceback (most recent call last):
        ...
        ValueError: params must be a TensorDict ..., stacked on a leading dim (batch_size=[R], ...).
    """
    stacked = tuple(stacked)
    if stacked not in _PARAMS_FORMS:
        raise ValueError(f"stacked must be one of {list(_PARAMS_FORMS)}, got {stacked}.")
    expected = TensorDict.from_module(module)
    ok = isinstance(params, TensorDictBase) and params.batch_dims in [int(s) for s in stacked]
    if ok:
        keys = set(expected.keys(True, True))
        ok = set(params.keys(True, True)) == keys and all(
            params.get(k).shape == (*params.batch_size, *expected.get(k).shape) for k in keys
        )
    if not ok:
        raise ValueError(
            f"{name} must be a TensorDict with the keys and shapes of "
            f"TensorDict.from_module({type(module).__name__}){_PARAMS_FORMS[stacked]}."
        )
    return params


def as_batch_size(value, *, max_dims: int | None = None, name: str = "batch_size") -> torch.Size:
    """``value`` as a ``torch.Size``: a positive int or a non-empty sequence of positive ints
    (a ``torch.Size`` too), with at most ``max_dims`` dims when given.

    Examples:
        >>> as_batch_size(8), as_batch_size(torch.Size([2, 3]))
        (torch.Size([8]), torch.Size([2, 3]))
        >>> as_batch_size((2, 3), max_dims=1)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive int or a non-empty sequence of at most 1 positive ints, got (2, 3).
    """
    dims = (value,) if _is_int(value) else tuple(value) if isinstance(value, Sequence) else ()
    valid = len(dims) > 0 and all(_is_int(d) and d > 0 for d in dims)
    if not valid or (max_dims is not None and len(dims) > max_dims):
        most = "" if max_dims is None else f"at most {max_dims} "
        raise ValueError(
            f"{name} must be a positive int or a non-empty sequence of {most}positive ints, got {value!r}."
        )
    return torch.Size(dims)
