"""Validation problems on implicit constraint sets (``ImplicitManifold`` with an autodiff
Jacobian): tori, a plane, a sphere cut by a plane, an ellipse and an ellipsoid, with exact
expectations and, where they differ, the conditional measure's.

Derivations:

* Torus ``(R + r cos phi) (cos th, sin th) , r sin phi``: area element ``r (R + r cos phi)``, so the
  poloidal angle has density ``(R + r cos phi) / (2 pi R)``: ``E[cos phi] = r/(2R)``,
  ``E[z^2] = r^2/2``, ``E[x^2 + y^2] = R^2 + 3 r^2/2``. With the square-root constraint
  ``|grad g| = 2 sqrt((rho-R)^2 + z^2) = 2r`` is constant on the torus, so its conditional
  measure is the surface measure (no ``conditional`` values). With the quartic constraint
  ``|grad g| = 8 R r rho`` (before scaling), so the conditional measure has phi *uniform*:
  ``E[cos phi] = 0``, ``E[x^2 + y^2] = R^2 + r^2/2``.
* Harmonic potential on the plane ``1.x = 0`` (linear constraint, conditional = surface): a
  Gaussian with covariance ``C = A^-1 - A^-1 1 1^T A^-1 / (1^T A^-1 1)``; for ``A = diag(1,4,9)``,
  ``diag C = (13, 10, 5)/49`` and ``C_12 = -9/49``.
* Circle ``|x| = 1, z = c``: ``det(J J^T) = 4 (x^2 + y^2) = 4 (1 - c^2)`` is constant on it, so
  conditional = surface = arc length; exact values by quadrature in the azimuth.
* Ellipse ``(2 cos t, sin t)``: arc length ``ds = sqrt(4 sin^2 t + cos^2 t) dt`` while
  ``|grad g| = sqrt(cos^2 t + 4 sin^2 t)``: the conditional measure is ``exp(-U) dt``.
* Ellipsoid ``D u`` (``u`` on the unit sphere, ``D = diag(a, b, c)``): area element
  ``abc |grad g|/2 dS(u)``, so the conditional measure is the image of ``exp(-U) dS(u)`` (by
  Archimedes ``z/c`` is then uniform before tilting) and the surface measure carries the extra
  weight ``sqrt(u1^2/a^2 + u2^2/b^2 + u3^2/c^2)``; 2-D quadrature in ``(u3, azimuth)``.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from scipy.integrate import dblquad, quad

from .problem import (
    QUAD,
    LazyValues,
    Marginal,
    Problem,
    Tensor,
    constant_like,
    expectation,
    implicit,
    normalised_density,
    randn_points,
    uniform_numbers,
)

__all__ = ["ellipse", "ellipsoid", "harmonic_plane", "sphere_plane", "torus"]


# ---------------------------------------------------------------------------------------- torus
TORUS_R, TORUS_r = 2.0, 1.0


def _torus_sqrt_g(x: Tensor) -> Tensor:
    rho = torch.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2)
    return ((rho - TORUS_R) ** 2 + x[..., 2] ** 2 - TORUS_r**2).unsqueeze(-1)


def _torus_quartic_g(x: Tensor) -> Tensor:
    # scaled by 1/(8 R^2 r) so that |grad g| = rho/R is O(1) on the torus
    big, small = TORUS_R, TORUS_r
    r2 = (x * x).sum(-1)
    g = (r2 + big**2 - small**2) ** 2 - 4 * big**2 * (x[..., 0] ** 2 + x[..., 1] ** 2)
    return (g / (8 * big**2 * small)).unsqueeze(-1)


def _torus_phi(x: Tensor) -> Tensor:
    rho = torch.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2)
    return torch.atan2(x[..., 2], rho - TORUS_R)


def _torus_initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
    th = 2 * math.pi * uniform_numbers(n_chains, dtype, device, generator)
    ph = 2 * math.pi * uniform_numbers(n_chains, dtype, device, generator)
    rho = TORUS_R + TORUS_r * torch.cos(ph)
    return torch.stack([rho * torch.cos(th), rho * torch.sin(th), TORUS_r * torch.sin(ph)], -1)


def torus(quartic: bool) -> Problem:
    big, small = TORUS_R, TORUS_r

    def exact():
        return {
            "cos_phi": small / (2 * big),
            "rho_sq": big**2 + 1.5 * small**2,
            "z_sq": small**2 / 2,
            "abs_phi": math.pi / 2 - 2 * small / (math.pi * big),
        }

    def conditional():
        return {
            "cos_phi": 0.0,
            "rho_sq": big**2 + 0.5 * small**2,
            "z_sq": small**2 / 2,
            "abs_phi": math.pi / 2,
        }

    if quartic:
        name, g = "torus_quartic", _torus_quartic_g
        description = (
            "uniform on the torus R=2, r=1 as (|x|^2+R^2-r^2)^2 - 4R^2(x^2+y^2) = 0 (scaled): "
            "|grad g| = rho/R varies, so the conditional measure (phi uniform) differs"
        )
    else:
        name, g = "torus", _torus_sqrt_g
        description = (
            "uniform on the torus R=2, r=1 as (sqrt(x^2+y^2)-R)^2 + z^2 - r^2 = 0: "
            "|grad g| = 2r is constant on it, so conditional = surface measure"
        )
    return Problem(
        name=name,
        description=description,
        make_manifold=implicit(g),
        potential=lambda x: torch.zeros_like(x[..., 0]),
        observables={
            "cos_phi": lambda x: torch.cos(_torus_phi(x)),
            "rho_sq": lambda x: x[..., 0] ** 2 + x[..., 1] ** 2,
            "z_sq": lambda x: x[..., 2] ** 2,
            "abs_phi": lambda x: _torus_phi(x).abs(),
        },
        exact=LazyValues(exact),
        initial=_torus_initial,
        event_shape=(3,),
        constraint=g,
        conditional=LazyValues(conditional) if quartic else None,
        marginal=Marginal(
            "abs_phi",
            lambda p: (big + small * np.cos(p)) / (math.pi * big),
            (0.0, math.pi),
        ),
        conditional_density=(lambda p: np.full_like(np.asarray(p, float), 1 / math.pi))
        if quartic
        else None,
    )


# ------------------------------------------------------------------------------- harmonic plane
HARMONIC_A = (1.0, 4.0, 9.0)


def harmonic_plane() -> Problem:
    def exact():
        ainv = np.diag(1.0 / np.array(HARMONIC_A))
        one = np.ones(3)
        cov = ainv - np.outer(ainv @ one, ainv @ one) / (one @ ainv @ one)
        return {
            "x1_sq": cov[0, 0],
            "x2_sq": cov[1, 1],
            "x3_sq": cov[2, 2],
            "x1x2": cov[0, 1],
            "x1": 0.0,
        }

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        z = randn_points(n_chains, (3,), dtype, device, generator)
        return z - z.mean(-1, keepdim=True)

    def potential(x):
        return 0.5 * (x * x * constant_like(HARMONIC_A, x)).sum(-1)

    var1 = 13.0 / 49.0
    return Problem(
        name="harmonic_plane",
        description="Gaussian on the plane x1+x2+x3 = 0: U = x^T diag(1,4,9) x / 2, tau = 1",
        make_manifold=implicit(lambda x: x.sum(-1, keepdim=True)),
        potential=potential,
        observables={
            "x1_sq": lambda x: x[..., 0] ** 2,
            "x2_sq": lambda x: x[..., 1] ** 2,
            "x3_sq": lambda x: x[..., 2] ** 2,
            "x1x2": lambda x: x[..., 0] * x[..., 1],
            "x1": lambda x: x[..., 0],
        },
        exact=LazyValues(exact),
        initial=initial,
        event_shape=(3,),
        constraint=lambda x: x.sum(-1, keepdim=True),
        marginal=Marginal(
            "x1",
            lambda t: np.exp(-(np.asarray(t) ** 2) / (2 * var1)) / math.sqrt(2 * math.pi * var1),
            (-5 * math.sqrt(var1), 5 * math.sqrt(var1)),
        ),
    )


# ------------------------------------------------------------------- two constraints: a circle
PLANE_C = 0.6
PLANE_TAU = 0.5


def _sphere_plane_g(x: Tensor) -> Tensor:
    return torch.stack([(x * x).sum(-1) - 1, x[..., 2] - PLANE_C], dim=-1)


def _sphere_plane_u(x: Tensor) -> Tensor:
    return -2.0 * x[..., 0] + 2.0 * x[..., 0] * x[..., 1]


def sphere_plane() -> Problem:
    c, tau = PLANE_C, PLANE_TAU
    rho = math.sqrt(1 - c * c)

    def u_of(th):
        x, y = rho * math.cos(th), rho * math.sin(th)
        return -2.0 * x + 2.0 * x * y

    def weight(th):
        return math.exp(-u_of(th) / tau)

    def exact():
        return expectation(
            weight,
            {
                "x": lambda th: rho * math.cos(th),
                "y": lambda th: rho * math.sin(th),
                "xy": lambda th: rho**2 * math.cos(th) * math.sin(th),
                "angle": lambda th: th,
            },
            -math.pi,
            math.pi,
        )

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        th = 2 * math.pi * uniform_numbers(n_chains, dtype, device, generator)
        return torch.stack(
            [rho * torch.cos(th), rho * torch.sin(th), torch.full_like(th, c)], dim=-1
        )

    return Problem(
        name="sphere_plane",
        description=(
            "two constraints |x| = 1 and z = 0.6 (a circle of radius 0.8): U = -2x + 2xy, "
            "tau = 0.5; det(J J^T) = 4(x^2+y^2) is constant, so conditional = surface"
        ),
        make_manifold=implicit(_sphere_plane_g),
        potential=_sphere_plane_u,
        observables={
            "x": lambda x: x[..., 0],
            "y": lambda x: x[..., 1],
            "xy": lambda x: x[..., 0] * x[..., 1],
            "angle": lambda x: torch.atan2(x[..., 1], x[..., 0]),
        },
        exact=LazyValues(exact),
        initial=initial,
        event_shape=(3,),
        constraint=_sphere_plane_g,
        temperature=tau,
        marginal=Marginal(
            "angle", normalised_density(weight, -math.pi, math.pi), (-math.pi, math.pi)
        ),
    )


# -------------------------------------------------------- surface != conditional: ellipse
def _ellipse_g(x: Tensor) -> Tensor:
    return x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1


def ellipse() -> Problem:
    def speed(t):
        return math.sqrt(4 * math.sin(t) ** 2 + math.cos(t) ** 2)

    fns = {
        "y": math.sin,
        "y_sq": lambda t: math.sin(t) ** 2,
        "x_sq": lambda t: 4 * math.cos(t) ** 2,
        "t": lambda t: t,
    }

    def surface_w(t):
        return math.exp(-math.sin(t)) * speed(t)

    def conditional_w(t):
        return math.exp(-math.sin(t))

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        t = 2 * math.pi * uniform_numbers(n_chains, dtype, device, generator)
        return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)

    return Problem(
        name="ellipse",
        description=(
            "ellipse x^2/4 + y^2 = 1: U = y, tau = 1; the conditional measure (exp(-y) dt in "
            "(2 cos t, sin t)) lacks the arc-length factor"
        ),
        make_manifold=implicit(_ellipse_g),
        potential=lambda x: x[..., 1],
        observables={
            "y": lambda x: x[..., 1],
            "y_sq": lambda x: x[..., 1] ** 2,
            "x_sq": lambda x: x[..., 0] ** 2,
            "t": lambda x: torch.atan2(x[..., 1], x[..., 0] / 2),
        },
        exact=LazyValues(lambda: expectation(surface_w, fns, -math.pi, math.pi)),
        initial=initial,
        event_shape=(2,),
        constraint=_ellipse_g,
        conditional=LazyValues(lambda: expectation(conditional_w, fns, -math.pi, math.pi)),
        marginal=Marginal(
            "t", normalised_density(surface_w, -math.pi, math.pi), (-math.pi, math.pi)
        ),
        conditional_density=normalised_density(conditional_w, -math.pi, math.pi),
    )


# -------------------------------------------------------- surface != conditional: ellipsoid
ELLIPSOID_AXES = (0.5, 1.0, 2.0)


def _ellipsoid_g(x: Tensor) -> Tensor:
    return ((x / constant_like(ELLIPSOID_AXES, x)) ** 2).sum(-1, keepdim=True) - 1


def _ellipsoid_surface_factor(u3: float, ph: float) -> float:
    """``|grad g| / 2`` at ``D u`` with ``u = (s cos ph, s sin ph, u3)``, ``s = sqrt(1 - u3^2)``."""
    a, b, c = ELLIPSOID_AXES
    s2 = 1.0 - u3 * u3
    return math.sqrt(s2 * math.cos(ph) ** 2 / a**2 + s2 * math.sin(ph) ** 2 / b**2 + u3**2 / c**2)


@cache
def _ellipsoid_z_profile_norm() -> float:
    c = ELLIPSOID_AXES[2]
    return quad(lambda z: _ellipsoid_z_unnorm(z), -c, c, **QUAD)[0]


def _ellipsoid_z_unnorm(z: float) -> float:
    c = ELLIPSOID_AXES[2]
    u3 = z / c
    ring = quad(lambda ph: _ellipsoid_surface_factor(u3, ph), 0.0, 2 * math.pi, **QUAD)[0]
    return math.exp(z) * ring


def ellipsoid() -> Problem:
    a, b, c = ELLIPSOID_AXES
    fns = {
        "z": lambda x, y, z: z,
        "z_sq": lambda x, y, z: z * z,
        "x_sq": lambda x, y, z: x * x,
        "y_sq": lambda x, y, z: y * y,
    }

    def expect(surface: bool) -> dict[str, float]:
        # uniform sphere measure in (u3, ph) is du3 dph / (4 pi) (Archimedes)
        def integrand(f):
            def h(ph, u3):
                s = math.sqrt(max(1.0 - u3 * u3, 0.0))
                x, y, z = a * s * math.cos(ph), b * s * math.sin(ph), c * u3
                w = math.exp(z) * (_ellipsoid_surface_factor(u3, ph) if surface else 1.0)
                return f(x, y, z) * w

            return h

        opts = {"epsabs": 1e-12, "epsrel": 1e-11}
        z0 = dblquad(integrand(lambda x, y, z: 1.0), -1, 1, 0, 2 * math.pi, **opts)[0]
        return {
            k: dblquad(integrand(f), -1, 1, 0, 2 * math.pi, **opts)[0] / z0 for k, f in fns.items()
        }

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        u = randn_points(n_chains, (3,), dtype, device, generator)
        u = u / u.norm(dim=-1, keepdim=True)
        return u * constant_like(ELLIPSOID_AXES, u)

    def surface_density(z):
        z = np.asarray(z, dtype=float)
        return np.vectorize(_ellipsoid_z_unnorm, otypes=[float])(z) / _ellipsoid_z_profile_norm()

    def conditional_density(z):
        # z/c uniform on [-1, 1] under the conditional measure at U = 0, tilted by exp(z)
        z = np.asarray(z, dtype=float)
        return np.exp(z) / (2 * math.sinh(c))

    return Problem(
        name="ellipsoid",
        description=(
            "ellipsoid x^2/0.25 + y^2 + z^2/4 = 1: U = -z, tau = 1; |grad g| varies, so the "
            "conditional measure differs"
        ),
        make_manifold=implicit(_ellipsoid_g),
        potential=lambda x: -x[..., 2],
        observables={
            "z": lambda x: x[..., 2],
            "z_sq": lambda x: x[..., 2] ** 2,
            "x_sq": lambda x: x[..., 0] ** 2,
            "y_sq": lambda x: x[..., 1] ** 2,
        },
        exact=LazyValues(lambda: expect(True)),
        initial=initial,
        event_shape=(3,),
        constraint=_ellipsoid_g,
        conditional=LazyValues(lambda: expect(False)),
        marginal=Marginal("z", surface_density, (-c, c)),
        conditional_density=conditional_density,
    )
