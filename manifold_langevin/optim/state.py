"""CoLA's ``state_dict`` format: what it holds beyond torch's optimizer state, and the checks
that a loaded state fits the optimizer it is loaded into."""

from __future__ import annotations

import warnings

import torch

from ..manifolds.circles import circle_angular_velocity
from .distributed import device_key
from .params import constraint_key, param_name

__all__ = [
    "STATE_VERSION",
    "accelerators",
    "check_compatible",
    "extra_state",
    "restore_generators",
    "split_extra",
    "upgrade_circle_momenta",
]

#: format of ``CoLA.state_dict()``; bumped when the layout changes. Version 1 held a circle
#: weight's momentum as two tensors, ``momentum_buffer`` (of ``w``) and ``xi_momentum``; version
#: 2 holds its angular velocity, ``angular_velocity`` ([`upgrade_circle_momenta`][] converts).
STATE_VERSION = 2
#: older formats that [`split_extra`][] accepts (the caller upgrades them)
READABLE_VERSIONS = (1, 2)


def extra_state(param_groups, generators: dict, seed: int, n_skipped: int) -> dict:
    """The ``"cola"`` entry of a state dict: format version, seed, skip counter, the state of
    every noise generator (so that a resumed run is bit-identical) and the parameter shapes per
    group."""
    return {
        "version": STATE_VERSION,
        "seed": seed,
        "n_skipped": n_skipped,
        "generators": {k: g.get_state() for k, g in generators.items()},
        "shapes": [[tuple(p.shape) for p in g["params"]] for g in param_groups],
    }


def split_extra(state_dict: dict) -> tuple[dict, dict]:
    """``(torch's part, the "cola" entry)`` of a state dict.

    Raises:
        ValueError: the state dict was not written by CoLA, or by a format version this one
            cannot read.
    """
    state_dict = dict(state_dict)
    extra = state_dict.pop("cola", None)
    if extra is None:
        raise ValueError(
            "this state dict was not written by CoLA (it has no 'cola' entry); load it into "
            "the optimizer that wrote it"
        )
    if extra.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"CoLA state dict format version {extra.get('version')!r} is not supported "
            f"(this version writes {STATE_VERSION} and reads {READABLE_VERSIONS})"
        )
    return state_dict, extra


def upgrade_circle_momenta(state: dict) -> None:
    """Convert the circle states of a version-1 state dict, once loaded: the momentum
    ``(momentum_buffer, xi_momentum)`` of ``(w, xi)`` becomes its angular velocity
    [`circle_angular_velocity`][manifold_langevin.manifolds.circles.circle_angular_velocity]
    (the momenta were tangent, so nothing is lost). ``state`` maps the parameters to their
    states; the conversion reads the parameters' current values, so load the model's state
    before the optimizer's (as after any checkpoint)."""
    for p, st in state.items():
        if "xi_momentum" in st:
            pw, pxi = st.pop("momentum_buffer"), st.pop("xi_momentum")
            w = p.detach().reshape(st["xi"].shape).to(st["xi"].dtype)
            omega = circle_angular_velocity(w, st["xi"], pw.reshape(w.shape), pxi)
            st["angular_velocity"] = omega.contiguous()


def restore_generators(saved: dict, here: list[str], generator) -> None:
    """Set the noise generators from their ``saved`` states; ``generator(device)`` returns (or
    creates) the optimizer's generator of a device and ``here`` lists the parameters'
    accelerators ([`accelerators`][manifold_langevin.optim.state.accelerators]).

    Accelerator generators are matched by order, not by name, as the optimizer seeds them: the
    k-th saved one goes to the k-th accelerator of these parameters, so that a checkpoint written
    by rank 0 (``cuda:0``) resumes on rank 1 (``cuda:1``) with the same stream."""
    k = 0
    for key, gstate in saved.items():
        device = torch.device(key)
        if device.type != "cpu":
            if k < len(here) and torch.device(here[k]).type == device.type:
                device = torch.device(here[k])
            k += 1
        if device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"the state dict holds the noise generator of {key}, which is not available "
                "here; its stream restarts from the seed",
                stacklevel=3,
            )
            continue
        generator(device).set_state(gstate)


def accelerators(param_groups: list) -> list[str]:
    """The non-CPU devices of the parameters, in order of first appearance."""
    seen: dict[str, None] = {}
    for group in param_groups:
        for p in group["params"]:
            if p.device.type not in ("cpu", "meta"):
                seen.setdefault(device_key(p.device), None)
    return list(seen)


def check_compatible(param_groups: list, state_dict: dict, shapes: list | None) -> None:
    """Raise ``ValueError`` unless ``state_dict`` (without its ``"cola"`` entry) was written for
    ``param_groups``: the same number of groups and parameters, the same constraints, shapes
    (``shapes``, the per-group parameter shapes, is absent from state dicts written before it
    was added: the same format version) and state tensors of the parameters' shapes."""
    # ``shapes``: absent from state dicts written before it was added (same format version);
    # the per-parameter state alone has no shape in the "od" scheme
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"the state dict has {len(saved_groups)} param group(s), this optimizer "
            f"{len(param_groups)}: it was written for a different model or grouping"
        )
    saved_state = state_dict["state"]
    for gi, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                f"param group {gi} has {len(group['params'])} parameters here but "
                f"{len(saved['params'])} in the state dict: a different model or grouping"
            )
        if constraint_key(group["constraint"]) != constraint_key(saved.get("constraint")):
            raise ValueError(
                f"param group {gi} has constraint {group['constraint']!r} here but "
                f"{saved.get('constraint')!r} in the state dict"
            )
        for i, (p, pid) in enumerate(zip(group["params"], saved["params"])):
            if shapes is not None and tuple(shapes[gi][i]) != tuple(p.shape):
                raise ValueError(
                    f"parameter {param_name(group, gi, i)}: shape {tuple(p.shape)} here but "
                    f"{tuple(shapes[gi][i])} in the state dict, which belongs to a different "
                    "model"
                )
            st = saved_state.get(pid, {})
            for key in ("momentum_buffer", "xi", "xi_momentum", "angular_velocity"):
                if key in st and tuple(st[key].shape) != tuple(p.shape):
                    raise ValueError(
                        f"parameter {param_name(group, gi, i)} has shape {tuple(p.shape)} "
                        f"but its saved {key!r} has shape {tuple(st[key].shape)}: the state "
                        "dict belongs to a different model"
                    )
