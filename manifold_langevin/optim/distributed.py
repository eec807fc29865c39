"""Data-parallel training: one seed for every replica, and the refusal of sharded parameters.

Under ``DistributedDataParallel`` every rank holds the whole model, receives the gradient
averaged over the global batch and must draw the same noise, so that the replicas stay
identical: the noise generators are seeded identically on every rank, and a seed drawn from
torch's global generator is rank 0's, broadcast. Sharded parameters (DTensors, FSDP shards) are
refused for constrained groups: an orthogonal matrix cannot be updated shard by shard.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

__all__ = ["broadcast_seed", "check_unsharded", "device_key", "fsdp_flat", "is_dtensor"]


def broadcast_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank when the default process group is initialised (one
    broadcast, so every rank must construct the optimizer), else ``seed`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return seed
    box = [seed]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def is_dtensor(p: torch.Tensor) -> bool:
    # no DTensor can exist before its module is imported; importing it here would cost ~0.3 s
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(p, module.DTensor)


def fsdp_flat(p: torch.Tensor) -> bool:
    """An FSDP1 ``FlatParameter`` or an original parameter FSDP1 flattened into one."""
    return bool(getattr(p, "_is_flat_param", False) or getattr(p, "_fsdp_flattened", False))


def check_unsharded(group: dict, p: torch.Tensor, kind: str, name) -> None:
    """Refuse a sharded parameter where CoLA's update would be wrong (raises TypeError).

    A constrained update needs the whole tensor (an orthogonal matrix or a sphere row cannot be
    moved shard by shard), and every rank's generator draws the same normals, which is right for
    replicas but makes the shards' noise identical. An FSDP1 shard of an unconstrained group is
    accepted at ``temperature == 0`` (the update is then elementwise and deterministic)."""
    dtensor = is_dtensor(p)
    if not dtensor and not fsdp_flat(p):
        return
    what = "a DTensor (FSDP2 fully_shard, tensor parallel)" if dtensor else "an FSDP1 shard"
    fix = (
        "keep such layers whole on every rank: use DistributedDataParallel, or leave them out of "
        "FSDP (FSDP(..., use_orig_params=True, ignored_states=...) or fully_shard(..., "
        "ignored_params=...)) and average their gradients yourself before opt.step() "
        "(docs/tutorials/distributed.md)"
    )
    if kind != "free":
        c = group["constraint"]
        label = "(a geoopt.ManifoldParameter's manifold)" if c is None else repr(c)
        raise TypeError(
            f"parameter {name} is {what}: CoLA's constrained updates need the full tensor on "
            f"every rank, sharded parameters are not supported for constraint {label}; {fix}"
        )
    if dtensor:
        raise TypeError(
            f"parameter {name} is {what}: CoLA does not support DTensor parameters (its state "
            f"and noise are plain tensors); {fix}, or use another optimizer for them"
        )
    if float(group["temperature"]) > 0:
        raise TypeError(
            f"parameter {name} is {what}: at temperature > 0 every rank would draw the same "
            "noise for its own shard; FSDP shards are supported at temperature 0 only (in "
            f"unconstrained groups); {fix}"
        )


def device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)
