"""Optimizers by name with the paper's defaults: SGD, Adam and the CoLA variants."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..optim import CoLA, constrained_groups
from .models import model_device

__all__ = ["OPTIMIZERS", "make_optimizer"]

#: ``name -> defaults`` of [`make_optimizer`][]. CoLA's ``lr`` is the Langevin step ``h``
#: (see [`manifold_langevin.optim.cola`][manifold_langevin.optim.cola]). ``cola-circle`` is the
#: paper's E2 setting
#: (``h = 0.3, gamma = 1, r0 = 0.05, r1 = 0.1``); ``cola-orthogonal`` its E1 setting (``h = 0.1``,
#: momentum factor 0.9, i.e. ``gamma = -log(0.9)/0.1 = 1.054``). The overdamped (``-od``)
#: defaults ``h = 0.1`` are ours (at ``T = 0`` the unconstrained one is SGD with ``lr = h``).
OPTIMIZERS: dict[str, dict] = {
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "adam": {"lr": 1e-3},
    "cola": {"lr": 0.3, "friction": 1.0, "scheme": "ud", "constraint": None},
    "cola-od": {"lr": 0.1, "scheme": "od", "constraint": None},
    "cola-circle": {"lr": 0.3, "friction": 1.0, "scheme": "ud", "constraint": "circle"},
    "cola-od-circle": {"lr": 0.1, "scheme": "od", "constraint": "circle"},
    "cola-orthogonal": {
        "lr": 0.1,
        "friction": -math.log(0.9) / 0.1,
        "scheme": "ud",
        "constraint": "orthogonal",
    },
    "cola-od-orthogonal": {"lr": 0.1, "scheme": "od", "constraint": "orthogonal"},
}


def make_optimizer(
    name: str,
    model: nn.Module,
    lr: float | None = None,
    *,
    friction: float | None = None,
    temperature: float = 0.0,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    radius: float | tuple[float, float] | None = None,
    seed: int | None = None,
    **options,
) -> torch.optim.Optimizer:
    """An optimizer for ``model`` by name, with the defaults of ``OPTIMIZERS``.

    Constrained CoLA variants build their param groups with
    [`constrained_groups`][manifold_langevin.optim.constrained_groups], which also puts the weights
    on the constraint set (circle: clipped into ``[-r, r]``; orthogonal: QR). Build the optimizer
    after moving the model to its device: when the parameters are on an accelerator, CoLA runs with
    ``on_nonfinite="mask"`` (unless ``options`` say otherwise) so that a step never synchronises
    with the host (a non-finite update is rejected entry by entry and counted in ``n_rejected``;
    [`train`][] stops when an epoch's loss is not finite). On the CPU a host read costs nothing,
    so there CoLA keeps its default ``"raise"``: a NaN/Inf gradient stops with the parameter's
    name instead of being masked.

    Args:
        name: ``"sgd"`` (momentum), ``"adam"``, ``"cola"`` (underdamped, unconstrained),
            ``"cola-od"`` (overdamped, unconstrained: SGD at ``temperature=0``, SGLD above),
            ``"cola-circle"``, ``"cola-orthogonal"``, ``"cola-od-circle"``,
            ``"cola-od-orthogonal"``.
        model: the network (its weights are modified by the constrained initialisation).
        lr: SGD/Adam learning rate, or CoLA's step ``h`` (default from ``OPTIMIZERS``).
        friction: CoLA's ``gamma`` (underdamped schemes).
        temperature: CoLA's ``tau`` (``0``: deterministic); must be 0 for SGD and Adam.
        momentum: SGD's momentum (default 0.9).
        weight_decay: SGD/Adam weight decay (CoLA has none: use a constraint).
        radius: circle radii, one float or ``(r0, r1)`` for the first / other layers (default
            the paper's ``(0.05, 0.1)``).
        seed: seed of CoLA's noise generators.
        **options: further keyword arguments of the optimizer class.

    Returns:
        a ``torch.optim.Optimizer``.

    Examples:
        >>> from manifold_langevin.nn import mlp
        >>> net = mlp([4, 8, 2])
        >>> opt = make_optimizer("cola-circle", net, seed=0)
        >>> groups = [(g["constraint"], g.get("radius"), g["lr"]) for g in opt.param_groups]
        >>> groups
        [('circle', 0.05, 0.3), ('circle', 0.1, 0.3), (None, None, 0.3)]
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    spec = dict(OPTIMIZERS[key])
    default_lr = spec.pop("lr")
    lr = default_lr if lr is None else float(lr)
    if key in ("sgd", "adam"):
        if temperature:
            raise ValueError(f"{name} has no temperature; use a CoLA optimizer for SGLD")
        if friction is not None or radius is not None:
            raise ValueError(f"friction and radius apply to CoLA, not {name}")
        if key == "sgd":
            mu = spec["momentum"] if momentum is None else momentum
            return torch.optim.SGD(
                model.parameters(), lr=lr, momentum=mu, weight_decay=weight_decay, **options
            )
        if momentum is not None:
            raise ValueError("momentum applies to sgd only")
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **options)

    if weight_decay:
        raise ValueError("CoLA has no weight decay; constrain the weights instead")
    if momentum is not None:
        raise ValueError("CoLA has no momentum argument; set friction (mu = exp(-friction * lr))")
    constraint = spec.pop("constraint")
    if constraint is None and radius is not None:
        raise ValueError(f"radius applies to the circle constraint, not {name}")
    if friction is not None:
        spec["friction"] = float(friction)
    if model_device(model).type != "cpu":
        options.setdefault("on_nonfinite", "mask")
    if constraint is None:
        params = model.parameters()
    else:
        params = constrained_groups(model, constraint, radius)
    return CoLA(params, lr=lr, temperature=temperature, seed=seed, **spec, **options)
