"""Accept plain geoopt manifolds wherever one of ours is expected."""

from __future__ import annotations

import geoopt

from .base import ConstrainedManifold
from .euclidean import Euclidean
from .sphere import Sphere
from .stiefel import Stiefel

__all__ = ["as_manifold"]


def as_manifold(manifold) -> ConstrainedManifold:
    """Return the constrained manifold for ``manifold``.

    Ours pass through unchanged. ``geoopt.Sphere()`` becomes [`Sphere`][] (radius 1),
    ``geoopt.Stiefel()`` (canonical or Euclidean) becomes [`Stiefel`][] (the Langevin dynamics
    always use the Euclidean metric of the embedding), ``geoopt.Euclidean(ndim)`` becomes
    [`Euclidean`][]. A ``geoopt.ManifoldParameter`` is replaced by its manifold.

    Raises:
        TypeError: for anything else, naming the type.
    """
    if isinstance(manifold, geoopt.ManifoldParameter):
        manifold = manifold.manifold
    if isinstance(manifold, ConstrainedManifold):
        return manifold
    if isinstance(manifold, geoopt.SphereExact) or type(manifold) is geoopt.Sphere:
        if getattr(manifold, "projector", None) is not None:
            raise TypeError("geoopt.Sphere restricted to a subspace is not supported")
        return Sphere(1.0)
    if isinstance(manifold, geoopt.Stiefel):
        return Stiefel()
    if isinstance(manifold, geoopt.Euclidean):
        return Euclidean(ndim=manifold.ndim)
    raise TypeError(
        "expected a manifold_langevin manifold, geoopt.Sphere, geoopt.Stiefel or "
        f"geoopt.Euclidean; "
        f"got {type(manifold).__name__}"
    )
