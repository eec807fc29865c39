"""``argparse`` types shared by the subcommands: numbers with their ranges, devices, lists."""

from __future__ import annotations

import argparse

__all__ = [
    "device",
    "int_list",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "radii",
]


def _number(kind: type, text: str, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: an integer ``>= 1``."""
    return _number(int, text, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer ``>= 0``."""
    return _number(int, text, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number ``> 0`` (a step size, a learning rate)."""
    return _number(float, text, "a positive number", lambda v: 0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    """``argparse`` type: a number ``>= 0`` (``inf`` allowed, NaN not)."""
    return _number(float, text, "a non-negative number", lambda v: v >= 0)


def device(text: str) -> str:
    """``argparse`` type: a string ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``...)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu, cuda or cuda:0, got {text!r}"
        ) from None
    return text


def int_list(text: str) -> tuple[int, ...]:
    """``argparse`` type: comma-separated positive integers (layer widths)."""
    try:
        out = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def radii(text: str) -> float | tuple[float, float]:
    """``argparse`` type: one radius ``r`` or a pair ``r0,r1`` (first layer, other layers)."""
    try:
        parts = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected r or r0,r1, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected one or two positive radii, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])
