"""Argument checks shared by the core: each raises a ``ValueError`` naming the argument."""
from __future__ import annotations

import math
from numbers import Real


def check_int(name: str, value, low: int, *, optional: bool = False) -> None:
    """``value`` must be an int ``>= low`` (or ``None`` when ``optional``).

    Examples:
        >>> check_int("num_steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: num_steps must be an int >= 1, got 0.
    """
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        prefix = "None or " if optional else ""
        raise ValueError(f"{name} must be {prefix}an int >= {low}, got {value!r}.")


def check_number(name: str, value, *, strict: bool = True) -> None:
    """``value`` must be a finite number ``> 0`` (``>= 0`` when ``strict=False``).

    Examples:
        >>> check_number("trust_region", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: trust_region must be a finite number > 0, got 0.0.
    """
    ok = isinstance(value, Real) and math.isfinite(value)
    ok = ok and (value > 0 if strict else value >= 0)
    if not ok:
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
