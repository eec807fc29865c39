"""Test problems with exact answers for the invariant-measure checks.

Every problem is a target ``exp(-U/tau) x surface measure`` on a constraint set ``Sigma = {g = 0}``
together with observables whose expectations are known exactly (closed forms, or scipy quadrature
to ~1e-10). Where the *conditional* measure ``exp(-U/tau) dx | g = 0`` differs from the surface
measure -- it carries the extra factor ``det(J J^T)^(-1/2) = 1/|grad g|`` for a scalar constraint --
``Problem.conditional`` holds the values under that wrong measure, so that a check can show that
a sampler hits the surface measure and misses the conditional one.

``PROBLEMS`` maps names to [`Problem`][] objects; [`get_problem`][] looks one up. The module
imports without ``manifold_langevin`` (the package is only imported inside ``make_manifold``), and
the exact values are computed on first access and cached.

Problems (``tau = 1`` unless stated):

===================  ==============================================================================
``von_mises_s1``     unit circle in R^2, ``U = -2 x_1``
``vmf_s2``           unit sphere in R^3, ``U = -3 mu.x``, ``mu = (1, 2, 2)/3``
``vmf_s9``           unit sphere in R^10, ``U = -5 mu.x``, ``mu = (1..10)/|(1..10)|``
``torus``            torus R=2, r=1 as ``(sqrt(x^2+y^2)-R)^2 + z^2 - r^2 = 0``, ``U = 0``
``torus_quartic``    the same torus as ``(|x|^2+R^2-r^2)^2 - 4R^2(x^2+y^2) = 0`` (scaled), ``U = 0``
``harmonic_plane``   plane ``x1+x2+x3 = 0`` in R^3, ``U = x^T diag(1,4,9) x / 2``
``sphere_plane``     ``|x| = 1`` and ``z = 0.6`` (two constraints), ``U = -2x + 2xy``, ``tau = 0.5``
``stiefel_10_3``     Stiefel V(10, 3), ``U = -4 X_11``
``so3``              3x3 Stiefel started at det = +1 (SO(3)), ``U = -2 tr X``
``ellipse``          ``x^2/4 + y^2 = 1``, ``U = y``
``ellipsoid``        ``x^2/0.25 + y^2 + z^2/4 = 1``, ``U = -z``
===================  ==============================================================================

Derivations (``A_d(k) = I_{d/2}(k) / I_{d/2-1}(k)``):

* vMF on ``S^{d-1}``: ``t = mu.x`` has density ``~ exp(k t) (1 - t^2)^((d-3)/2)`` on [-1, 1],
  ``E[x] = A_d mu`` and ``E[x x^T] = (A_d/k) I + (1 - d A_d/k) mu mu^T``; in particular
  ``E[t^2] = 1 - (d-1) A_d/k``. Spheres have constant ``|grad g|``: conditional = surface.
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
* Stiefel V(10, 3) with ``U = -k X_11``: Haar measure is the surface measure (constant Gram), the
  first column is vMF on S^9 with ``mu = e_1``, and given it the other columns are a uniform
  orthonormal frame of its complement. So ``E[X_11] = A_10(k)``, ``E[X_11^2] = 1 - 9 A_10/k``,
  ``E[X_12^2] = E[(1 - X_11^2)/9] = A_10/k`` and ``E[X_22^2] = E[(1 - X_21^2)/9] = (1 - A_10/k)/9``.
* SO(3) with ``U = -k tr X``: Haar rotation angle density ``(1 - cos th)/pi`` on [0, pi] and
  ``tr X = 1 + 2 cos th``; ``E[X] = E[tr X]/3 I`` by conjugation invariance.
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
from scipy.special import ive

from ..manifolds.implicit import ImplicitManifold
from ..manifolds.sphere import Sphere
from ..manifolds.stiefel import Stiefel
from .problem import QUAD, LazyValues, Marginal, Problem, Tensor, expectation, normalised_density

__all__ = ["PROBLEMS", "get_problem"]


# ---------------------------------------------------------------------------------------- helpers
def _randn(n, shape, dtype, device, generator) -> Tensor:
    return torch.randn(n, *shape, dtype=dtype, device=device, generator=generator)


def _rand(n, dtype, device, generator) -> Tensor:
    return torch.rand(n, dtype=dtype, device=device, generator=generator)


def _const(values, like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def _sphere_constraint(x: Tensor) -> Tensor:
    return (x * x).sum(-1, keepdim=True) - 1


def _on_sphere(d: int):
    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        z = _randn(n_chains, (d,), dtype, device, generator)
        return z / z.norm(dim=-1, keepdim=True)

    return initial


def _make_sphere():
    return Sphere(radius=1.0)


def _make_stiefel():
    return Stiefel()


def _make_implicit(g):
    def make():
        return ImplicitManifold(g)

    return make


# ------------------------------------------------------------------------- von Mises(-Fisher)
def _vmf_A(d: int, kappa: float) -> float:
    return ive(d / 2, kappa) / ive(d / 2 - 1, kappa)


def _vmf_t_weight(d: int, kappa: float):
    # exp(kappa (t - 1)) keeps the weight O(1) for large kappa
    return lambda t: math.exp(kappa * (t - 1.0)) * (1.0 - t * t) ** ((d - 3) / 2)


def _von_mises_s1() -> Problem:
    kappa = 2.0

    def exact():
        i0, i1, i2 = (ive(k, kappa) for k in (0, 1, 2))
        w = lambda th: math.exp(kappa * (math.cos(th) - 1.0))  # noqa: E731
        return {
            "x1": i1 / i0,
            "x1_sq": 0.5 * (1.0 + i2 / i0),
            "abs_angle": expectation(w, {"a": lambda th: th}, 0.0, math.pi)["a"],
        }

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        th = (2 * _rand(n_chains, dtype, device, generator) - 1) * math.pi
        return torch.stack([torch.cos(th), torch.sin(th)], dim=-1)

    return Problem(
        name="von_mises_s1",
        description="von Mises on the unit circle in R^2: U = -2 x_1, tau = 1",
        make_manifold=_make_sphere,
        potential=lambda x: -kappa * x[..., 0],
        observables={
            "x1": lambda x: x[..., 0],
            "x1_sq": lambda x: x[..., 0] ** 2,
            "abs_angle": lambda x: torch.atan2(x[..., 1], x[..., 0]).abs(),
        },
        exact=LazyValues(exact),
        initial=initial,
        event_shape=(2,),
        constraint=_sphere_constraint,
        marginal=Marginal(
            "abs_angle",
            normalised_density(lambda th: math.exp(kappa * (math.cos(th) - 1.0)), 0.0, math.pi),
            (0.0, math.pi),
        ),
    )


def _vmf(d: int, kappa: float, mu: np.ndarray, name: str, j: int) -> Problem:
    """vMF on S^{d-1} with mean direction ``mu``; ``j``: a coordinate for E[x_j], E[x_j^2]."""
    mu = np.asarray(mu, dtype=float)
    mu = mu / np.linalg.norm(mu)
    mu_list = mu.tolist()

    def exact():
        a = _vmf_A(d, kappa)
        w = _vmf_t_weight(d, kappa)
        t2 = expectation(w, {"t2": lambda t: t * t}, -1.0, 1.0)["t2"]
        return {
            "mu_x": a,
            "mu_x_sq": t2,
            f"x{j + 1}": a * mu[j],
            f"x{j + 1}_sq": a / kappa + (1.0 - d * a / kappa) * mu[j] ** 2,
        }

    def mu_dot(x):
        return (x * _const(mu_list, x)).sum(-1)

    return Problem(
        name=name,
        description=(
            f"von Mises-Fisher on S^{d - 1} in R^{d}: U = -{kappa:g} mu.x, "
            f"mu = {np.round(mu, 4).tolist()}, tau = 1"
        ),
        make_manifold=_make_sphere,
        potential=lambda x: -kappa * mu_dot(x),
        observables={
            "mu_x": mu_dot,
            "mu_x_sq": lambda x: mu_dot(x) ** 2,
            f"x{j + 1}": lambda x: x[..., j],
            f"x{j + 1}_sq": lambda x: x[..., j] ** 2,
        },
        exact=LazyValues(exact),
        initial=_on_sphere(d),
        event_shape=(d,),
        constraint=_sphere_constraint,
        marginal=Marginal(
            "mu_x", normalised_density(_vmf_t_weight(d, kappa), -1.0, 1.0), (-1.0, 1.0)
        ),
    )


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
    th = 2 * math.pi * _rand(n_chains, dtype, device, generator)
    ph = 2 * math.pi * _rand(n_chains, dtype, device, generator)
    rho = TORUS_R + TORUS_r * torch.cos(ph)
    return torch.stack([rho * torch.cos(th), rho * torch.sin(th), TORUS_r * torch.sin(ph)], -1)


def _torus(quartic: bool) -> Problem:
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
        make_manifold=_make_implicit(g),
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


def _harmonic_plane() -> Problem:
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
        z = _randn(n_chains, (3,), dtype, device, generator)
        return z - z.mean(-1, keepdim=True)

    def potential(x):
        return 0.5 * (x * x * _const(HARMONIC_A, x)).sum(-1)

    var1 = 13.0 / 49.0
    return Problem(
        name="harmonic_plane",
        description="Gaussian on the plane x1+x2+x3 = 0: U = x^T diag(1,4,9) x / 2, tau = 1",
        make_manifold=_make_implicit(lambda x: x.sum(-1, keepdim=True)),
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


def _sphere_plane() -> Problem:
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
        th = 2 * math.pi * _rand(n_chains, dtype, device, generator)
        return torch.stack(
            [rho * torch.cos(th), rho * torch.sin(th), torch.full_like(th, c)], dim=-1
        )

    return Problem(
        name="sphere_plane",
        description=(
            "two constraints |x| = 1 and z = 0.6 (a circle of radius 0.8): U = -2x + 2xy, "
            "tau = 0.5; det(J J^T) = 4(x^2+y^2) is constant, so conditional = surface"
        ),
        make_manifold=_make_implicit(_sphere_plane_g),
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


# ------------------------------------------------------------------------------------ Stiefel
def _stiefel_constraint(x: Tensor) -> Tensor:
    k = x.shape[-1]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    iu = torch.triu_indices(k, k, device=x.device)
    return (x.transpose(-1, -2) @ x - eye)[..., iu[0], iu[1]]


def _haar_frames(n_chains, n, k, dtype, device, generator) -> Tensor:
    q, r = torch.linalg.qr(_randn(n_chains, (n, k), dtype, device, generator))
    # sign fix (Q diag(sign r_ii)) makes Q exactly Haar; not needed for "on the manifold", but free
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _stiefel_10_3() -> Problem:
    n, k, kappa = 10, 3, 4.0

    def exact():
        a = _vmf_A(n, kappa)
        return {
            "x11": a,
            "x11_sq": 1.0 - (n - 1) * a / kappa,
            "x12_sq": a / kappa,
            "x22_sq": (1.0 - a / kappa) / (n - 1),
        }

    observables = {
        "x11": lambda x: x[..., 0, 0],
        "x11_sq": lambda x: x[..., 0, 0] ** 2,
        "x12_sq": lambda x: x[..., 0, 1] ** 2,
        "x22_sq": lambda x: x[..., 1, 1] ** 2,
    }

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        return _haar_frames(n_chains, n, k, dtype, device, generator)

    return Problem(
        name="stiefel_10_3",
        description="Stiefel V(10, 3) (orthonormal columns): U = -4 X_11, tau = 1",
        make_manifold=_make_stiefel,
        potential=lambda x: -kappa * x[..., 0, 0],
        observables=observables,
        exact=LazyValues(exact),
        initial=initial,
        event_shape=(n, k),
        constraint=_stiefel_constraint,
        marginal=Marginal(
            "x11", normalised_density(_vmf_t_weight(n, kappa), -1.0, 1.0), (-1.0, 1.0)
        ),
    )


def _so3() -> Problem:
    kappa = 2.0

    def weight(th):  # exp(kappa tr X) * Haar angle density, tr X = 1 + 2 cos th
        return math.exp(2 * kappa * (math.cos(th) - 1.0)) * (1.0 - math.cos(th))

    def exact():
        e = expectation(
            weight,
            {
                "trace": lambda th: 1 + 2 * math.cos(th),
                "trace_sq": lambda th: (1 + 2 * math.cos(th)) ** 2,
                "angle": lambda th: th,
            },
            0.0,
            math.pi,
        )
        e["x11"] = e["trace"] / 3
        return e

    def trace(x):
        return x[..., 0, 0] + x[..., 1, 1] + x[..., 2, 2]

    def angle(x):
        return torch.acos(((trace(x) - 1) / 2).clamp(-1.0, 1.0))

    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        q = _haar_frames(n_chains, 3, 3, dtype, device, generator)
        # flip the first column where det = -1: lands in SO(3), still exactly orthogonal
        sign = torch.sign(torch.linalg.det(q))
        return torch.cat([q[..., :1] * sign[:, None, None], q[..., 1:]], dim=-1)

    return Problem(
        name="so3",
        description="SO(3) as the 3x3 Stiefel manifold started at det = +1: U = -2 tr X, tau = 1",
        make_manifold=_make_stiefel,
        potential=lambda x: -kappa * trace(x),
        observables={
            "trace": trace,
            "trace_sq": lambda x: trace(x) ** 2,
            "x11": lambda x: x[..., 0, 0],
            "angle": angle,
        },
        exact=LazyValues(exact),
        initial=initial,
        event_shape=(3, 3),
        constraint=_stiefel_constraint,
        marginal=Marginal("angle", normalised_density(weight, 0.0, math.pi), (0.0, math.pi)),
    )


# -------------------------------------------------------- surface != conditional: ellipse
def _ellipse_g(x: Tensor) -> Tensor:
    return x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1


def _ellipse() -> Problem:
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
        t = 2 * math.pi * _rand(n_chains, dtype, device, generator)
        return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)

    return Problem(
        name="ellipse",
        description=(
            "ellipse x^2/4 + y^2 = 1: U = y, tau = 1; the conditional measure (exp(-y) dt in "
            "(2 cos t, sin t)) lacks the arc-length factor"
        ),
        make_manifold=_make_implicit(_ellipse_g),
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
    return ((x / _const(ELLIPSOID_AXES, x)) ** 2).sum(-1, keepdim=True) - 1


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


def _ellipsoid() -> Problem:
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
        u = _randn(n_chains, (3,), dtype, device, generator)
        u = u / u.norm(dim=-1, keepdim=True)
        return u * _const(ELLIPSOID_AXES, u)

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
        make_manifold=_make_implicit(_ellipsoid_g),
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


# ----------------------------------------------------------------------------------- registry
def _build() -> dict[str, Problem]:
    problems = [
        _von_mises_s1(),
        _vmf(3, 3.0, np.array([1.0, 2.0, 2.0]), "vmf_s2", j=2),
        _vmf(10, 5.0, np.arange(1.0, 11.0), "vmf_s9", j=9),
        _torus(quartic=False),
        _torus(quartic=True),
        _harmonic_plane(),
        _sphere_plane(),
        _stiefel_10_3(),
        _so3(),
        _ellipse(),
        _ellipsoid(),
    ]
    return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _build()


def get_problem(name: str) -> Problem:
    """The problem called ``name``.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
    """
    try:
        return PROBLEMS[name]
    except KeyError:
        raise KeyError(
            f"unknown problem {name!r}; valid names: {', '.join(sorted(PROBLEMS))}"
        ) from None
