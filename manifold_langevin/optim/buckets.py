"""How CoLA groups its parameters: one bucket per kind, shape, dtype, device and kick, each
updated in one batched call, and the stacking, scattering and flat views that this needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..manifolds.base import ConstrainedManifold
from .params import param_name

__all__ = [
    "CHUNK",
    "Bucket",
    "Entry",
    "FlatView",
    "gather",
    "make_buckets",
    "scatter",
    "select_into",
]


@dataclass
class Entry:
    """One parameter taking part in a step."""

    param: torch.Tensor
    grad: torch.Tensor
    state: dict
    where: tuple  # (group, group index, index in the group): the name is built only when needed
    kind: str = "free"  # "manifold" | "circle" | "free"
    manifold: ConstrainedManifold | None = None
    shape: tuple = ()

    @property
    def name(self) -> str:
        return param_name(*self.where)


@dataclass
class Bucket:
    """Parameters of one group processed together: same kind, shape, dtype, device, kick."""

    kind: str  # "manifold" | "circle" | "free"
    group: dict
    manifold: ConstrainedManifold | None = None
    shape: tuple = ()
    kick_h: float = 0.0
    entries: list = field(default_factory=list)
    # on_failure="subdivide": re-runs the failed points before the bucket is committed
    retry: Callable[[], None] | None = None


def make_buckets(work) -> list[Bucket]:
    """The buckets of a step's ``work`` (``[(group index, group, entries)]``): entries of one
    group with the same kind, manifold, shape, dtype, device and kick time share a bucket."""
    buckets: dict = {}
    for gi, group, entries in work:
        h = float(group["lr"])
        for e in entries:
            st = e.state
            if group["scheme"] == "ud":
                full = st["step"] == 0 and group["first_kick"] == "full"
                kick_h = h if full else st["pending_kick"] + 0.5 * h
            else:
                kick_h = 0.0
            p = e.param
            key = (gi, e.kind, id(e.manifold), e.shape, p.dtype, p.device, kick_h)
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = Bucket(e.kind, group, e.manifold, e.shape, kick_h)
            b.entries.append(e)
    return list(buckets.values())


def gather(tensors: list[torch.Tensor], shape) -> torch.Tensor:
    """Stack same-shape tensors as ``(B, *shape)`` (a view when there is only one)."""
    if len(tensors) == 1:
        return tensors[0].reshape(1, *shape)
    return torch.stack([t.reshape(shape) for t in tensors])


def scatter(new: torch.Tensor, targets: list[torch.Tensor]) -> None:
    """Copy the rows of a ``(B, ...)`` tensor back into ``targets`` (in place)."""
    if len(targets) == 1:
        targets[0].copy_(new.reshape(targets[0].shape))
        return
    torch._foreach_copy_(targets, [n.reshape(t.shape) for n, t in zip(new.unbind(0), targets)])


def select_into(targets: list[torch.Tensor], keep: torch.Tensor, new: torch.Tensor, old) -> None:
    """``targets <- where(keep, new, old)`` (``new``/``old`` stacked as by [`gather`][]).

    A single contiguous target is written directly (no temporary, no copy)."""
    if len(targets) == 1 and targets[0].is_contiguous():
        if not isinstance(old, torch.Tensor):
            old = new.new_full((), old)
        torch.where(keep, new, old, out=targets[0].view(new.shape))
        return
    scatter(torch.where(keep, new, old), targets)


#: elements per chunk of an eager circle update on CPU: the temporaries of the elementwise update
#: then stay in cache and in the allocator's free lists (fresh multi-megabyte temporaries cost
#: page faults that made the whole-vector update about 4x slower on CPU). On a GPU a tensor is one
#: chunk: there every pass is a kernel launch, whose host cost (about 10 us on the H200 machine of
#: validation/results/cuda) is what the update's time is made of, and the caching allocator
#: recycles the temporaries.
CHUNK = 1 << 16


class FlatView:
    """A 1-D alias of a tensor (or of a contiguous working copy, written back by ``flush``)."""

    def __init__(self, t: torch.Tensor):
        self.target = t
        self.copy = not t.is_contiguous()
        self.flat = (t.contiguous() if self.copy else t).view(-1)

    def flush(self) -> None:
        if self.copy:
            self.target.copy_(self.flat.view(self.target.shape))
