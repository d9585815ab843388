"""Argument checks shared by the public API: each raises a ValueError naming the argument and value."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def check_int(name: str, value, *, minimum: int) -> int:
    """Return ``value`` as an int, refusing non-integers and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, refusing non-finite and non-positive values."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {name}={value!r}")
    return x


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_finite(name: str, array: np.ndarray) -> np.ndarray:
    """Refuse arrays with NaN or inf, saying how many and where the first one is."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s), first at index {first}: "
            f"{array[first]!r}"
        )
    return array
