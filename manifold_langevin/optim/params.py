"""What each parameter of a CoLA group is: its kind (manifold, circle or free), its manifold and
matrix view, and the checks of a group's hyperparameters."""

from __future__ import annotations

import math

import geoopt
import torch

from .._checks import check_positive
from ..manifolds.adapters import as_manifold
from ..manifolds.base import ConstrainedManifold
from ..manifolds.euclidean import Euclidean
from ..manifolds.sphere import Sphere
from ..manifolds.stiefel import Stiefel

__all__ = [
    "FIRST_KICKS",
    "NAMED",
    "ON_FAILURE",
    "ON_NONFINITE",
    "SCHEMES",
    "LazyName",
    "check_group",
    "check_step_numbers",
    "classify",
    "constraint_key",
    "param_name",
    "uses_geodesic",
]

SCHEMES = ("ud", "od")
NAMED = ("orthogonal", "stiefel", "circle", "sphere")
FIRST_KICKS = ("half", "full")
ON_NONFINITE = ("raise", "skip", "mask")
ON_FAILURE = ("reject", "raise", "subdivide")

_NAMED_MANIFOLDS: dict = {}


def _named_manifold(name: str, radius: float | None) -> ConstrainedManifold:
    """One shared manifold object per named constraint (a plain dict: ``functools.cache`` makes
    ``torch.compile`` warn)."""
    key = ("stiefel", None) if name in ("orthogonal", "stiefel") else ("sphere", radius)
    m = _NAMED_MANIFOLDS.get(key)
    if m is None:
        m = Stiefel() if key[0] == "stiefel" else Sphere(1.0 if radius is None else radius)
        _NAMED_MANIFOLDS[key] = m
    return m


def classify(group: dict, p: torch.Tensor, name):
    """``(kind, manifold, point shape)`` of parameter ``p`` in ``group``.

    ``name`` is the parameter's name or its ``(group, group index, index)`` (for messages).
    """
    if isinstance(name, tuple):
        name = LazyName(name)
    constraint = group["constraint"]
    if not p.is_floating_point():
        raise TypeError(f"parameter {name} has dtype {p.dtype}; CoLA needs floating point")
    if p.device.type == "meta":
        raise ValueError(
            f"parameter {name} is on the meta device (a shape without values); materialise "
            "and initialise the model (e.g. model.to_empty(device=...)) before building CoLA"
        )
    if isinstance(p, geoopt.ManifoldParameter):
        own = as_manifold(p.manifold)
        if not isinstance(own, Euclidean):
            if constraint is not None:
                raise ValueError(
                    f"parameter {name} is a geoopt.ManifoldParameter on {own.name} but its "
                    f"group also asks for constraint={constraint!r}; put it in a group with "
                    "constraint=None"
                )
            return _manifold_kind(own, p, name)
    if constraint is None:
        return "free", None, ()
    if isinstance(constraint, str):
        radius = group["radius"]
        if constraint == "circle":
            return "circle", None, ()
        if constraint in ("orthogonal", "stiefel"):
            if p.dim() < 2:
                raise ValueError(
                    f"parameter {name} has shape {tuple(p.shape)}: the orthogonal constraint "
                    "needs a matrix (or a conv kernel, taken as (out, in*kh*kw)); put "
                    "vectors in an unconstrained group"
                )
            if p.numel() == 0:
                raise ValueError(
                    f"parameter {name} has shape {tuple(p.shape)}: an empty matrix has no "
                    "orthonormal frame; put it in an unconstrained group"
                )
            m = _named_manifold(constraint, None)
            return "manifold", m, (p.shape[0], math.prod(p.shape[1:]))
        if p.dim() == 0:
            raise ValueError(f"parameter {name} is a scalar; a sphere needs a vector")
        shape = (p.shape[0], math.prod(p.shape[1:])) if p.dim() >= 2 else tuple(p.shape)
        return "manifold", _named_manifold("sphere", radius), shape
    return _manifold_kind(as_manifold(constraint), p, name)


def _manifold_kind(m: ConstrainedManifold, p: torch.Tensor, name: str):
    if isinstance(m, Euclidean):
        return "free", None, ()
    if p.dim() < m.ndim:
        raise ValueError(
            f"parameter {name} has shape {tuple(p.shape)} but points of {m.name} have "
            f"{m.ndim} dimension(s)"
        )
    check = getattr(m, "_check_shape", None)
    if check is not None:
        ok, reason = check(p.shape, f"parameter {name}")
        if not ok:
            raise ValueError(reason)
    return "manifold", m, tuple(p.shape)


class LazyName:
    """Formats as the parameter's name; built only when a message needs it."""

    __slots__ = ("where",)

    def __init__(self, where: tuple):
        self.where = where

    def __str__(self) -> str:
        return param_name(*self.where)


def param_name(group: dict, gi: int, i: int) -> str:
    names = group.get("param_names")
    if names:
        return repr(str(names[i]))
    p = group["params"][i]
    return f"param_groups[{gi}]['params'][{i}] (shape {tuple(p.shape)})"


def constraint_key(c):
    if c is None or isinstance(c, str):
        return "orthogonal" if c == "stiefel" else c
    return type(as_manifold(c)).__name__


def check_step_numbers(gi: int, group: dict) -> None:
    """The hyperparameters a step reads besides ``lr`` (cheap; called at every step)."""
    gamma, tau, sub = float(group["friction"]), float(group["temperature"]), group["substeps"]
    if not gamma >= 0:
        raise ValueError(f"param group {gi}: friction must be >= 0, got {group['friction']}")
    if not 0 <= tau < math.inf:
        raise ValueError(
            f"param group {gi}: temperature must be >= 0 and finite, got {group['temperature']}"
        )
    if type(sub) is not int or sub < 1:
        raise ValueError(f"param group {gi}: substeps must be a positive integer, got {sub!r}")


def check_group(group: dict) -> None:
    """Validate a param group's hyperparameters (raises ValueError/TypeError)."""
    check_positive("lr", group["lr"], allow_zero=True)
    check_positive("friction", group["friction"], allow_zero=True, allow_inf=True)
    check_positive("temperature", group["temperature"], allow_zero=True)
    if group["scheme"] not in SCHEMES:
        raise ValueError(f"scheme must be 'ud' or 'od', got {group['scheme']!r}")
    if group["first_kick"] not in FIRST_KICKS:
        raise ValueError(f"first_kick must be 'half' or 'full', got {group['first_kick']!r}")
    if group["fuse"] not in (True, False):
        raise ValueError(f"fuse must be True or False, got {group['fuse']!r}")
    if group["geodesic"] not in (None, True, False):
        raise ValueError(f"geodesic must be None, True or False, got {group['geodesic']!r}")
    sub = group["substeps"]
    if isinstance(sub, bool) or not isinstance(sub, int) or sub < 1:
        raise ValueError(f"substeps must be a positive integer, got {sub!r}")
    c, radius = group["constraint"], group["radius"]
    if isinstance(c, str):
        if c not in NAMED:
            raise ValueError(f"constraint must be one of {NAMED}, a manifold or None; got {c!r}")
        if c == "circle" and radius is None:
            raise ValueError(
                "constraint='circle' needs radius= (the paper used 0.05 for the first layer and "
                "0.1 for the others; constrained_groups sets them)"
            )
        if c in ("orthogonal", "stiefel") and radius is not None:
            raise ValueError("radius applies to the circle and sphere constraints only")
    elif c is not None:
        as_manifold(c)  # raises TypeError for anything unsupported
    if radius is not None:
        check_positive("radius", radius)


def uses_geodesic(group: dict, manifold: ConstrainedManifold) -> bool:
    """Whether a group's A steps on ``manifold`` take the closed-form geodesic: the group's
    ``geodesic`` option, or by default where the manifold has a cheap one (circles and spheres
    rotate exactly; Stiefel takes RATTLE, whose step costs a few products against the
    geodesic's two matrix exponentials)."""
    choice = group["geodesic"]
    if choice is not None:
        return bool(choice) and manifold.has_geodesic
    return manifold.has_geodesic and manifold.cheap_geodesic
