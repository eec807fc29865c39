"""Test problems with exact answers for the invariant-measure checks.

Every problem is a target ``exp(-U/tau) x surface measure`` on a constraint set ``Sigma = {g = 0}``
together with observables whose expectations are known exactly (closed forms, or scipy quadrature
to ~1e-10). Where the *conditional* measure ``exp(-U/tau) dx | g = 0`` differs from the surface
measure -- it carries the extra factor ``det(J J^T)^(-1/2) = 1/|grad g|`` for a scalar constraint --
``Problem.conditional`` holds the values under that wrong measure, so that a check can show that
a sampler hits the surface measure and misses the conditional one.

``PROBLEMS`` maps names to [`Problem`][manifold_langevin.testing.problem.Problem] objects;
[`get_problem`][] looks one up. The exact values are computed on first access and cached. Each
problem's ``constraint`` is written independently of the package's manifolds, so that its
``initial`` points can be checked without them.

Problems (``tau = 1`` unless stated):

- ``von_mises_s1``: unit circle in R^2, ``U = -2 x_1``
- ``vmf_s2``: unit sphere in R^3, ``U = -3 mu.x``, ``mu = (1, 2, 2)/3``
- ``vmf_s9``: unit sphere in R^10, ``U = -5 mu.x``, ``mu = (1..10)/|(1..10)|``
- ``torus``: torus R=2, r=1 as ``(sqrt(x^2+y^2)-R)^2 + z^2 - r^2 = 0``, ``U = 0``
- ``torus_quartic``: the same torus as ``(|x|^2+R^2-r^2)^2 - 4R^2(x^2+y^2) = 0`` (scaled), ``U = 0``
- ``harmonic_plane``: plane ``x1+x2+x3 = 0`` in R^3, ``U = x^T diag(1,4,9) x / 2``
- ``sphere_plane``: ``|x| = 1`` and ``z = 0.6`` (two constraints), ``U = -2x + 2xy``, ``tau = 0.5``
- ``stiefel_10_3``: Stiefel V(10, 3), ``U = -4 X_11``
- ``so3``: 3x3 Stiefel started at det = +1 (SO(3)), ``U = -2 tr X``
- ``ellipse``: ``x^2/4 + y^2 = 1``, ``U = y``
- ``ellipsoid``: ``x^2/0.25 + y^2 + z^2/4 = 1``, ``U = -z``

``EXTRA_PROBLEMS`` holds problems that [`get_problem`][] finds but that are not in ``PROBLEMS``
(so ``manifold-langevin validate`` and the pages built from its results do not run them):

- ``rigid_triatomic``: three atoms in R^9 with their three distances fixed (a vector-valued
  constraint), a tether on the centre of mass and an orienting field on the first bond
  ([`problems_molecule`][manifold_langevin.testing.problems_molecule])

The problems on implicit constraint sets (tori, the plane, the sphere cut by a plane, the
ellipse and the ellipsoid) are in
[`problems_implicit`][manifold_langevin.testing.problems_implicit].

Derivations (``A_d(k) = I_{d/2}(k) / I_{d/2-1}(k)``):

* vMF on ``S^{d-1}``: ``t = mu.x`` has density ``~ exp(k t) (1 - t^2)^((d-3)/2)`` on [-1, 1],
  ``E[x] = A_d mu`` and ``E[x x^T] = (A_d/k) I + (1 - d A_d/k) mu mu^T``; in particular
  ``E[t^2] = 1 - (d-1) A_d/k``. Spheres have constant ``|grad g|``: conditional = surface.
* Stiefel V(10, 3) with ``U = -k X_11``: Haar measure is the surface measure (constant Gram), the
  first column is vMF on S^9 with ``mu = e_1``, and given it the other columns are a uniform
  orthonormal frame of its complement. So ``E[X_11] = A_10(k)``, ``E[X_11^2] = 1 - 9 A_10/k``,
  ``E[X_12^2] = E[(1 - X_11^2)/9] = A_10/k`` and ``E[X_22^2] = E[(1 - X_21^2)/9] = (1 - A_10/k)/9``.
* SO(3) with ``U = -k tr X``: Haar rotation angle density ``(1 - cos th)/pi`` on [0, pi] and
  ``tr X = 1 + 2 cos th``; ``E[X] = E[tr X]/3 I`` by conjugation invariance."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ive

from ..manifolds.sphere import Sphere
from ..manifolds.stiefel import Stiefel
from .problem import (
    LazyValues,
    Marginal,
    Problem,
    Tensor,
    constant_like,
    expectation,
    normalised_density,
    randn_points,
    uniform_numbers,
)
from .problems_implicit import ellipse, ellipsoid, harmonic_plane, sphere_plane, torus
from .problems_molecule import rigid_triatomic

__all__ = ["EXTRA_PROBLEMS", "PROBLEMS", "get_problem"]


# ---------------------------------------------------------------------------------------- helpers
def _sphere_constraint(x: Tensor) -> Tensor:
    return (x * x).sum(-1, keepdim=True) - 1


def _on_sphere(d: int):
    def initial(n_chains, dtype=torch.float64, device="cpu", generator=None):
        z = randn_points(n_chains, (d,), dtype, device, generator)
        return z / z.norm(dim=-1, keepdim=True)

    return initial


def _make_sphere():
    return Sphere(radius=1.0)


def _make_stiefel():
    return Stiefel()


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
        th = (2 * uniform_numbers(n_chains, dtype, device, generator) - 1) * math.pi
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
        return (x * constant_like(mu_list, x)).sum(-1)

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


# ------------------------------------------------------------------------------------ Stiefel
def _stiefel_constraint(x: Tensor) -> Tensor:
    k = x.shape[-1]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    iu = torch.triu_indices(k, k, device=x.device)
    return (x.transpose(-1, -2) @ x - eye)[..., iu[0], iu[1]]


def _haar_frames(n_chains, n, k, dtype, device, generator) -> Tensor:
    q, r = torch.linalg.qr(randn_points(n_chains, (n, k), dtype, device, generator))
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


# ----------------------------------------------------------------------------------- registry
def _build() -> dict[str, Problem]:
    problems = [
        _von_mises_s1(),
        _vmf(3, 3.0, np.array([1.0, 2.0, 2.0]), "vmf_s2", j=2),
        _vmf(10, 5.0, np.arange(1.0, 11.0), "vmf_s9", j=9),
        torus(quartic=False),
        torus(quartic=True),
        harmonic_plane(),
        sphere_plane(),
        _stiefel_10_3(),
        _so3(),
        ellipse(),
        ellipsoid(),
    ]
    return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _build()
#: problems found by [`get_problem`][] that the default runs (``PROBLEMS``) leave out
EXTRA_PROBLEMS: dict[str, Problem] = {p.name: p for p in (rigid_triatomic(),)}


def get_problem(name: str) -> Problem:
    """The problem called ``name``, in ``PROBLEMS`` or ``EXTRA_PROBLEMS``.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
    """
    found = PROBLEMS.get(name, EXTRA_PROBLEMS.get(name))
    if found is None:
        valid = ", ".join(sorted({**PROBLEMS, **EXTRA_PROBLEMS}))
        raise KeyError(f"unknown problem {name!r}; valid names: {valid}")
    return found
