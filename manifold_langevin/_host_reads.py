"""Where reading a tensor's value on the host is free: the one switch between the CPU paths that
read a number to skip work and the device-generic paths, which read nothing (an accelerator would
synchronise; a ``torch.compile`` or ``torch.func`` trace cannot branch on a value)."""

from __future__ import annotations

import torch

from ._compiling import is_compiling

__all__ = ["HOST_READABLE_DEVICES", "host_reads_free", "traced"]

#: device types whose tensors the host reads without a synchronisation (their memory is the
#: host's)
HOST_READABLE_DEVICES = ("cpu",)

_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def traced(t: torch.Tensor) -> bool:
    """Whether a ``torch.compile`` trace or a ``torch.func`` transform (``vmap``, ``grad``) runs
    through ``t`` (also ``True`` on a torch without the hook that tells a transformed tensor):
    then no value of ``t`` may reach Python, nor its memory another library."""
    return is_compiling() or _is_wrapped is None or _is_wrapped(t)


def host_reads_free(t: torch.Tensor) -> bool:
    """Whether the host may read values of ``t`` at no cost: its device is one of
    `HOST_READABLE_DEVICES`, and no trace runs through it ([`traced`][])."""
    return t.device.type in HOST_READABLE_DEVICES and not traced(t)
