"""Whether ``torch.compile`` is tracing: the one switch between the eager paths and the
compiled ones."""

from __future__ import annotations

import torch

__all__ = ["is_compiling"]


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller (``False`` on torch without it)."""
    check = getattr(torch.compiler, "is_compiling", None) if hasattr(torch, "compiler") else None
    if check is None:
        check = getattr(getattr(torch, "_dynamo", None), "is_compiling", lambda: False)
    return bool(check())
