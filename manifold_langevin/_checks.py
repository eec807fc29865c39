"""Checks of hyperparameters, shared by every layer (Python values only: no tensor is read)."""

from __future__ import annotations

import math
import operator

__all__ = ["check_int", "check_positive"]


def check_positive(name: str, value, *, allow_zero: bool = False, allow_inf: bool = False):
    """``float(value)``, or ``TypeError`` (not a real number) / ``ValueError`` (NaN, negative,
    zero unless ``allow_zero``, infinite unless ``allow_inf``) naming ``name``."""
    if isinstance(value, (str, bytes, complex)):  # float("1e-3") would pass
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        kind = "non-negative" if allow_zero else "positive"
        finite = "" if allow_inf else " and finite"
        raise ValueError(f"{name} must be {kind}{finite}, got {value}")
    return v


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``; otherwise ``ValueError`` (a
    number out of range or not integral) or ``TypeError`` (not a number) naming ``name``."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, (bool, float)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        v = operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v
