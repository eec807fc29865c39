"""The shared manifold test table: every manifold of the package, with a way to make points on it.

Each case builds its manifold and start points for a dtype; the conformance suite and the
integrator tests run through all of them (the geoopt pattern, plus float32 and long horizons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import geoopt
import torch

import manifold_langevin as ml


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], ml.ConstrainedManifold]
    points: Callable[[int, torch.dtype, torch.Generator], torch.Tensor]

    def __repr__(self) -> str:
        return self.name


def _ellipse_points(n, dtype, gen):
    t = torch.rand(n, generator=gen, dtype=dtype) * 2 * torch.pi
    return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)


def _ellipsoid_points(n, dtype, gen):
    z = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=dtype), dim=-1)
    return z * torch.tensor([1.5, 1.0, 0.7], dtype=dtype)


def _sphere_plane_points(n, dtype, gen, c=0.3):
    t = torch.rand(n, generator=gen, dtype=dtype) * 2 * torch.pi
    rho = (1 - c**2) ** 0.5
    return torch.stack([rho * torch.cos(t), rho * torch.sin(t), torch.full_like(t, c)], dim=-1)


def _stiefel_points(shape):
    def points(n, dtype, gen):
        return ml.Stiefel().random(n, *shape, dtype=dtype, generator=gen)

    return points


def ellipse() -> ml.ImplicitManifold:
    """x^2/4 + y^2 = 1: curvature varies, surface and conditional measures differ."""
    return ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)


def ellipsoid() -> ml.ImplicitManifold:
    axes = (1.5, 1.0, 0.7)

    def g(x):
        return sum((x[..., i : i + 1] / a) ** 2 for i, a in enumerate(axes)) - 1

    return ml.ImplicitManifold(g)


def sphere_plane(c: float = 0.3) -> ml.ImplicitManifold:
    """Two constraints at once: the unit sphere cut by the plane z = c."""
    return ml.ImplicitManifold(
        lambda x: torch.cat([(x * x).sum(-1, keepdim=True) - 1, x[..., 2:3] - c], dim=-1)
    )


CASES = [
    Case(
        "sphere-r1-d3",
        lambda: ml.Sphere(1.0),
        lambda n, dt, g: ml.Sphere(1.0).random(n, 3, dtype=dt, generator=g),
    ),
    Case(
        "sphere-r2.5-d10",
        lambda: ml.Sphere(2.5),
        lambda n, dt, g: ml.Sphere(2.5).random(n, 10, dtype=dt, generator=g),
    ),
    Case(
        "circles-r0.1",
        lambda: ml.Circles(0.1),
        lambda n, dt, g: ml.Circles(0.1).random(n, 2, dtype=dt, generator=g),
    ),
    Case("ellipse", ellipse, _ellipse_points),
    Case("ellipsoid", ellipsoid, _ellipsoid_points),
    Case("sphere-plane", sphere_plane, _sphere_plane_points),
    Case(
        "product-sphere-ellipse",
        lambda: ml.Product([ml.Sphere(1.0), ellipse()], dims=[3, 2]),
        lambda n, dt, g: torch.cat(
            [ml.Sphere(1.0).random(n, 3, dtype=dt, generator=g), _ellipse_points(n, dt, g)], -1
        ),
    ),
    Case("stiefel-tall-6x3", ml.Stiefel, _stiefel_points((6, 3))),
    Case("stiefel-square-4x4", ml.Stiefel, _stiefel_points((4, 4))),
    Case("stiefel-wide-2x5", ml.Stiefel, _stiefel_points((2, 5))),
    Case(
        "geoopt-sphere",
        lambda: ml.as_manifold(geoopt.Sphere()),
        lambda n, dt, g: ml.Sphere(1.0).random(n, 4, dtype=dt, generator=g),
    ),
    Case("geoopt-stiefel", lambda: ml.as_manifold(geoopt.Stiefel()), _stiefel_points((5, 2))),
]

DTYPES = [torch.float64, torch.float32]
