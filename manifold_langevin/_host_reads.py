"""Where reading a tensor's value on the host is free: the one switch between the CPU paths that
read a number to skip work and the device-generic paths, which read nothing (an accelerator would
synchronise; a ``torch.compile`` or ``torch.func`` trace cannot branch on a value)."""

from __future__ import annotations

import torch

from ._compiling import is_compiling

__all__ = ["HOST_READABLE_DEVICES", "host_reads_free"]

#: device types whose tensors the host reads without a synchronisation (their memory is the
#: host's)
HOST_READABLE_DEVICES = ("cpu",)

_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def host_reads_free(t: torch.Tensor) -> bool:
    """Whether the host may read values of ``t`` at no cost: its device is one of
    `HOST_READABLE_DEVICES`, and no ``torch.compile`` trace or ``torch.func`` transform
    (``vmap``, ``grad``) is running through it."""
    return (
        t.device.type in HOST_READABLE_DEVICES
        and not is_compiling()
        and _is_wrapped is not None
        and not _is_wrapped(t)
    )
