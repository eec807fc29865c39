"""The validation problems' exact values, checked by routes independent of how they were computed.

``manifold_langevin/testing/problems.py`` derives its values from Bessel ratios, closed forms and
quadrature of area elements. Here every value is re-derived another way, with numpy only:

* direct Monte Carlo from the known distribution with a large fixed-seed sample (numpy's von Mises
  sampler, the inverse CDF of the vMF on S^2, Wood's rejection algorithm on S^9), tolerance 5 MC
  standard errors;
* Haar matrices by QR with importance weights (Stiefel V(10,3), SO(3));
* *thin-shell* Monte Carlo, which tests the definitions of the two measures themselves: uniform
  points in a box, weighted by ``exp(-U/tau)``, kept where ``|g|/|grad g| < eps`` (a tube of
  half-width ``eps`` around the set: the surface measure as ``eps -> 0``) or where ``|g| < eps``
  (the conditional measure); the shell bias is O(eps^2), far below the MC error here;
* polygon / triangle-mesh quadrature of arc length and area (no area-element formula);
* null-space linear algebra for the Gaussian on a plane.

Also: shapes and dtypes of potentials and observables, start points exactly on the set, and the
conditional values differing from the surface values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.linalg import null_space

from manifold_langevin.testing.problem import Marginal, Problem
from manifold_langevin.testing.problems import PROBLEMS, get_problem

NAMES = sorted(PROBLEMS)
N_SIGMA = 5.0


# ------------------------------------------------------------------------------------ helpers
def _weighted(f: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Self-normalised weighted mean and its delta-method standard error."""
    sw = w.sum()
    est = float((w * f).sum() / sw)
    se = float(np.sqrt((w**2 * (f - est) ** 2).sum()) / sw)
    return est, se


def _mean_se(f: np.ndarray) -> tuple[float, float]:
    return float(f.mean()), float(f.std(ddof=1) / math.sqrt(f.size))


def _assert_close(name, est, se, exact, slack=0.0):
    assert abs(est - exact) <= N_SIGMA * se + slack, (
        f"{name}: MC {est:.6f} +- {se:.2e} vs exact {exact:.6f} ({(est - exact) / se:+.1f} sigma)"
    )


def _shell(box_lo, box_hi, g_and_grad, energy, fns, eps, n_total, seed, tau=1.0, chunk=2_000_000):
    """Thin-shell estimates of ``E[f]`` under the surface and the conditional measure.

    Returns ``{"surface": {name: (est, se)}, "conditional": {...}}``.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(box_lo, float), np.asarray(box_hi, float)
    keep = {"surface": [], "conditional": []}
    for _ in range(n_total // chunk):
        x = lo + (hi - lo) * rng.random((chunk, lo.size))
        g, grad_norm = g_and_grad(x)
        keep["surface"].append(x[np.abs(g) < eps * grad_norm])
        keep["conditional"].append(x[np.abs(g) < eps])
    out = {}
    for kind, parts in keep.items():
        x = np.concatenate(parts)
        w = np.exp(-energy(x) / tau)
        out[kind] = {k: _weighted(f(x), w) for k, f in fns.items()}
        out[kind]["_count"] = (len(x), 0.0)
    return out


def _haar(rng, n_samples, n, k) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n_samples, n, k)))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]


# ------------------------------------------------------------------------------ the registry
def test_registry_names_and_lookup():
    required = {
        "von_mises_s1", "vmf_s2", "vmf_s9", "torus", "harmonic_plane", "sphere_plane",
        "stiefel_10_3", "so3", "ellipse", "ellipsoid",
    }  # fmt: skip
    assert required <= set(PROBLEMS)
    assert get_problem("vmf_s2") is PROBLEMS["vmf_s2"]
    with pytest.raises(KeyError, match=r"valid names: .*vmf_s2"):
        get_problem("no_such_problem")


@pytest.mark.parametrize("name", NAMES)
def test_problem_fields(name):
    p = PROBLEMS[name]
    assert isinstance(p, Problem) and p.name == name and p.description
    assert set(p.exact) == set(p.observables)
    assert all(math.isfinite(v) for v in p.exact.values())
    assert p.temperature > 0
    if p.conditional is not None:
        assert set(p.conditional) == set(p.observables)
    if p.marginal is not None:
        assert isinstance(p.marginal, Marginal) and p.marginal.observable in p.observables
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        p.name = "x"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_initial_on_set_and_shapes(name, dtype):
    p = PROBLEMS[name]
    n = 257
    x = p.initial(n, dtype=dtype, device="cpu", generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, *p.event_shape) and x.dtype == dtype
    res = p.constraint(x)
    assert res.dim() == 2 and res.shape[0] == n
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(res.abs().max()) < tol
    # deterministic given the generator, and really random across chains
    y = p.initial(n, dtype=dtype, device="cpu", generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, y)
    assert float(x.reshape(n, -1).std(0).max()) > 0.05
    u = p.potential(x)
    assert u.shape == (n,) and u.dtype == dtype and bool(torch.isfinite(u).all())
    for key, f in p.observables.items():
        v = f(x)
        assert v.shape == (n,) and v.dtype == dtype, key
        assert bool(torch.isfinite(v).all()), key
    if name == "so3":
        assert float((torch.linalg.det(x) - 1).abs().max()) < 10 * tol


@pytest.mark.parametrize("name", NAMES)
def test_potential_autograd(name):
    p = PROBLEMS[name]
    x = p.initial(8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    u = p.potential(x)
    if u.requires_grad:  # U = 0 problems may return a constant
        (grad,) = torch.autograd.grad(u.sum(), x, allow_unused=True)
        assert grad is None or grad.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_initial_on_package_manifold(name):
    p = PROBLEMS[name]
    manifold = p.make_manifold()
    x = p.initial(64, generator=torch.Generator().manual_seed(2))
    assert float(manifold.residual_norm(x).max()) < 1e-12
    assert manifold.ndim == len(p.event_shape)


@pytest.mark.parametrize("name", [n for n in NAMES if PROBLEMS[n].conditional is not None])
def test_conditional_differs_from_surface(name):
    p = PROBLEMS[name]
    rel = max(
        abs(p.exact[k] - p.conditional[k]) / max(abs(p.exact[k]), abs(p.conditional[k]), 1e-300)
        for k in p.exact
    )
    assert rel > 0.10, rel


def test_problems_with_surface_neq_conditional_exist():
    assert sum(p.conditional is not None for p in PROBLEMS.values()) >= 2


@pytest.mark.parametrize("name", [n for n in NAMES if PROBLEMS[n].marginal is not None])
def test_marginal_density_normalised_and_consistent(name):
    p = PROBLEMS[name]
    obs, dens, (a, b) = p.marginal
    f = lambda t: float(dens(np.array([t]))[0])  # noqa: E731
    opts = {"limit": 200}
    assert quad(f, a, b, **opts)[0] == pytest.approx(1.0, abs=1e-6)
    mean = quad(lambda t: t * f(t), a, b, **opts)[0]
    assert mean == pytest.approx(p.exact[obs], abs=1e-6)
    if p.conditional_density is not None:
        fc = lambda t: float(p.conditional_density(np.array([t]))[0])  # noqa: E731
        assert quad(fc, a, b, **opts)[0] == pytest.approx(1.0, abs=1e-6)
        assert quad(lambda t: t * fc(t), a, b, **opts)[0] == pytest.approx(
            p.conditional[obs], abs=1e-6
        )


# ---------------------------------------------------------------- von Mises and vMF: direct MC
def test_von_mises_s1_by_numpy_sampler():
    p = PROBLEMS["von_mises_s1"]
    th = np.random.default_rng(11).vonmises(0.0, 2.0, size=2_000_000)
    for key, vals in {"x1": np.cos(th), "x1_sq": np.cos(th) ** 2, "abs_angle": np.abs(th)}.items():
        _assert_close(key, *_mean_se(vals), p.exact[key])


def _frame(mu: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the complement of ``mu`` (columns)."""
    return null_space(mu[None, :])


def _vmf_points(mu, t, rng):
    """``t mu + sqrt(1 - t^2) v`` with ``v`` uniform on the unit sphere of ``mu``'s complement."""
    basis = _frame(mu)
    v = rng.standard_normal((t.size, basis.shape[1]))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return t[:, None] * mu[None, :] + np.sqrt(1 - t**2)[:, None] * (v @ basis.T)


def _check_vmf(p, mu, x):
    vals = {"mu_x": x @ mu, "mu_x_sq": (x @ mu) ** 2}
    for key in p.observables:
        if key.startswith("x") and key.endswith("_sq"):
            vals[key] = x[:, int(key[1:-3]) - 1] ** 2
        elif key.startswith("x"):
            vals[key] = x[:, int(key[1:]) - 1]
    assert set(vals) == set(p.observables)
    for key, v in vals.items():
        _assert_close(key, *_mean_se(v), p.exact[key])


def test_vmf_s2_by_inverse_cdf():
    # on S^2, t = mu.x has density k e^{kt} / (2 sinh k): invert its CDF
    p, kappa = PROBLEMS["vmf_s2"], 3.0
    mu = np.array([1.0, 2.0, 2.0]) / 3.0
    rng = np.random.default_rng(12)
    u = rng.random(1_000_000)
    t = 1.0 + np.log(u + (1.0 - u) * math.exp(-2 * kappa)) / kappa
    x = _vmf_points(mu, t, rng)
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-12
    _check_vmf(p, mu, x)
    # and the closed form E[t] = coth k - 1/k
    assert p.exact["mu_x"] == pytest.approx(1 / math.tanh(kappa) - 1 / kappa, rel=1e-12)


def _wood(kappa: float, d: int, n: int, rng) -> np.ndarray:
    """Wood (1994): rejection sampler for ``t = mu.x`` of the vMF on S^{d-1}."""
    b = (-2 * kappa + math.sqrt(4 * kappa**2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * math.log(1 - x0**2)
    out = np.empty(0)
    while out.size < n:
        m = 2 * (n - out.size) + 1000
        z = rng.beta((d - 1) / 2, (d - 1) / 2, size=m)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = rng.random(m)
        ok = kappa * w + (d - 1) * np.log(1 - x0 * w) - c >= np.log(u)
        out = np.concatenate([out, w[ok]])
    return out[:n]


def test_vmf_s9_by_wood():
    p = PROBLEMS["vmf_s9"]
    mu = np.arange(1.0, 11.0)
    mu /= np.linalg.norm(mu)
    rng = np.random.default_rng(13)
    x = _vmf_points(mu, _wood(5.0, 10, 1_000_000, rng), rng)
    _check_vmf(p, mu, x)


# ----------------------------------------------------------------------- Haar QR + weights
def test_stiefel_by_haar_importance_sampling():
    p, kappa = PROBLEMS["stiefel_10_3"], 4.0
    x = _haar(np.random.default_rng(14), 400_000, 10, 3)
    w = np.exp(kappa * (x[:, 0, 0] - 1))
    vals = {
        "x11": x[:, 0, 0],
        "x11_sq": x[:, 0, 0] ** 2,
        "x12_sq": x[:, 0, 1] ** 2,
        "x22_sq": x[:, 1, 1] ** 2,
    }
    assert set(vals) == set(p.observables)
    for key, v in vals.items():
        _assert_close(key, *_weighted(v, w), p.exact[key])
    # and E[X_11] = I_5/I_4 agrees with quadrature of the vMF marginal on S^9
    wt = lambda t: math.exp(kappa * (t - 1)) * (1 - t * t) ** 3.5  # noqa: E731
    z = quad(wt, -1, 1)[0]
    assert quad(lambda t: t * wt(t), -1, 1)[0] / z == pytest.approx(p.exact["x11"], rel=1e-9)


def test_so3_by_haar_importance_sampling():
    p, kappa = PROBLEMS["so3"], 2.0
    rng = np.random.default_rng(15)
    x = _haar(rng, 1_000_000, 3, 3)
    x[:, :, 0] *= np.sign(np.linalg.det(x))[:, None]
    assert np.abs(np.linalg.det(x) - 1).max() < 1e-10
    tr = np.trace(x, axis1=1, axis2=2)
    # the Haar angle density (1 - cos th)/pi gives E[cos th] = -1/2, i.e. E[tr X] = 0
    _assert_close("haar trace", *_mean_se(tr), 0.0)
    w = np.exp(kappa * (tr - 3))
    vals = {
        "trace": tr,
        "trace_sq": tr**2,
        "x11": x[:, 0, 0],
        "angle": np.arccos(np.clip((tr - 1) / 2, -1, 1)),
    }
    assert set(vals) == set(p.observables)
    for key, v in vals.items():
        _assert_close(key, *_weighted(v, w), p.exact[key])


# ------------------------------------------------------------------------- harmonic plane
def test_harmonic_plane_by_null_space_and_conditioning():
    p = PROBLEMS["harmonic_plane"]
    # by hand (the derivations in manifold_langevin/testing/problems_implicit.py): diag of the
    # restricted covariance is (13, 10, 5)/49
    assert p.exact["x1_sq"] == pytest.approx(13 / 49, rel=1e-12)
    assert p.exact["x2_sq"] == pytest.approx(10 / 49, rel=1e-12)
    assert p.exact["x3_sq"] == pytest.approx(5 / 49, rel=1e-12)
    # null-space route: C = B (B^T A B)^-1 B^T with B an orthonormal basis of {1.x = 0}
    a = np.diag([1.0, 4.0, 9.0])
    b = null_space(np.ones((1, 3)))
    cov = b @ np.linalg.inv(b.T @ a @ b) @ b.T
    for key, val in {"x1_sq": cov[0, 0], "x2_sq": cov[1, 1], "x3_sq": cov[2, 2],
                     "x1x2": cov[0, 1], "x1": 0.0}.items():  # fmt: skip
        assert p.exact[key] == pytest.approx(val, abs=1e-12), key
    # Monte Carlo: x ~ exp(-U) dx in R^3, kept where |x1 + x2 + x3| < eps
    rng = np.random.default_rng(16)
    kept = []
    for _ in range(10):
        x = rng.standard_normal((2_000_000, 3)) / np.sqrt([1.0, 4.0, 9.0])
        kept.append(x[np.abs(x.sum(1)) < 0.01])
    x = np.concatenate(kept)
    vals = {"x1_sq": x[:, 0] ** 2, "x2_sq": x[:, 1] ** 2, "x3_sq": x[:, 2] ** 2,
            "x1x2": x[:, 0] * x[:, 1], "x1": x[:, 0]}  # fmt: skip
    for key, v in vals.items():
        _assert_close(key, *_mean_se(v), p.exact[key])


# ------------------------------------------------------------------ two constraints: a circle
def test_sphere_plane_by_thin_tube():
    # uniform points in a box around the circle |x| = 1, z = 0.6, kept within Euclidean distance
    # eps of it (a tube: the 1-D Hausdorff measure as eps -> 0), weighted by exp(-U/tau)
    p = PROBLEMS["sphere_plane"]
    c, rho, eps, tau = 0.6, 0.8, 0.01, 0.5
    rng = np.random.default_rng(17)
    kept = []
    for _ in range(5):
        x = rng.random((2_000_000, 3)) * [2 * (rho + eps), 2 * (rho + eps), 2 * eps]
        x -= [rho + eps, rho + eps, eps - c]
        dist = np.hypot(np.hypot(x[:, 0], x[:, 1]) - rho, x[:, 2] - c)
        kept.append(x[dist < eps])
    x = np.concatenate(kept)
    w = np.exp(-(-2 * x[:, 0] + 2 * x[:, 0] * x[:, 1]) / tau)
    vals = {"x": x[:, 0], "y": x[:, 1], "xy": x[:, 0] * x[:, 1],
            "angle": np.arctan2(x[:, 1], x[:, 0])}  # fmt: skip
    assert set(vals) == set(p.observables)
    for key, v in vals.items():
        _assert_close(key, *_weighted(v, w), p.exact[key])


# ----------------------------------------------------------- ellipse: polygon and thin shells
def _ellipse_fns():
    return {
        "y": lambda x: x[:, 1],
        "y_sq": lambda x: x[:, 1] ** 2,
        "x_sq": lambda x: x[:, 0] ** 2,
        "t": lambda x: np.arctan2(x[:, 1], x[:, 0] / 2),
    }


def test_ellipse_surface_values_by_polygon():
    p = PROBLEMS["ellipse"]
    t = np.linspace(-math.pi, math.pi, 400_001)
    v = np.stack([2 * np.cos(t), np.sin(t)], 1)
    seg = np.linalg.norm(np.diff(v, axis=0), axis=1)
    mid = 0.5 * (v[1:] + v[:-1])
    w = seg * np.exp(-mid[:, 1])
    for key, f in _ellipse_fns().items():
        val = float((w * f(mid)).sum() / w.sum())
        assert val == pytest.approx(p.exact[key], abs=1e-6), key


def test_ellipse_both_measures_by_thin_shell():
    p = PROBLEMS["ellipse"]

    def g_and_grad(x):
        g = x[:, 0] ** 2 / 4 + x[:, 1] ** 2 - 1
        return g, np.hypot(x[:, 0] / 2, 2 * x[:, 1])

    est = _shell([-2.02, -1.02], [2.02, 1.02], g_and_grad, lambda x: x[:, 1], _ellipse_fns(),
                 eps=0.005, n_total=20_000_000, seed=18)  # fmt: skip
    for key in p.observables:
        _assert_close("surface " + key, *est["surface"][key], p.exact[key])
        _assert_close("conditional " + key, *est["conditional"][key], p.conditional[key])


# ------------------------------------------------------------------------------- the torus
def _torus_fns():
    def phi(x):
        return np.arctan2(x[:, 2], np.hypot(x[:, 0], x[:, 1]) - 2.0)

    return {
        "cos_phi": lambda x: np.cos(phi(x)),
        "rho_sq": lambda x: x[:, 0] ** 2 + x[:, 1] ** 2,
        "z_sq": lambda x: x[:, 2] ** 2,
        "abs_phi": lambda x: np.abs(phi(x)),
    }


def _mesh_average(param, fns, weight, n_u, n_v, u_range, v_range):
    """Area-weighted averages over a triangle mesh of a parametrised surface (centroid rule)."""
    u = np.linspace(*u_range, n_u + 1)
    v = np.linspace(*v_range, n_v + 1)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    pts = param(uu, vv)  # (n_u+1, n_v+1, 3)
    p00, p10, p01, p11 = pts[:-1, :-1], pts[1:, :-1], pts[:-1, 1:], pts[1:, 1:]
    tris = [(p00, p10, p11), (p00, p11, p01)]
    num = {k: 0.0 for k in fns}
    den = 0.0
    for a, b, c in tris:
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1).ravel()
        cen = ((a + b + c) / 3).reshape(-1, 3)
        w = area * weight(cen)
        den += w.sum()
        for k, f in fns.items():
            num[k] += (w * f(cen)).sum()
    return {k: num[k] / den for k in fns}


def test_torus_surface_values_by_mesh():
    def param(th, ph):
        rho = 2.0 + np.cos(ph)
        return np.stack([rho * np.cos(th), rho * np.sin(th), np.sin(ph)], -1)

    vals = _mesh_average(param, _torus_fns(), lambda x: np.ones(len(x)), 600, 600,
                         (0, 2 * math.pi), (-math.pi, math.pi))  # fmt: skip
    for name in ("torus", "torus_quartic"):
        for key, val in vals.items():
            assert val == pytest.approx(PROBLEMS[name].exact[key], abs=2e-4), (name, key)


def test_torus_both_constraints_by_thin_shell():
    def sqrt_g(x):
        rho = np.hypot(x[:, 0], x[:, 1])
        g = (rho - 2) ** 2 + x[:, 2] ** 2 - 1
        return g, 2 * np.hypot(rho - 2, x[:, 2])

    def quartic_g(x):
        r2 = (x**2).sum(1)
        s = r2 + 3.0
        g = (s**2 - 16 * (x[:, 0] ** 2 + x[:, 1] ** 2)) / 32
        grad = (4 * s[:, None] * x - 32 * np.c_[x[:, :2], np.zeros(len(x))]) / 32
        return g, np.linalg.norm(grad, axis=1)

    lo, hi = [-3.01, -3.01, -1.01], [3.01, 3.01, 1.01]
    zero = lambda x: np.zeros(len(x))  # noqa: E731
    fns = _torus_fns()
    sq = _shell(lo, hi, sqrt_g, zero, fns, eps=0.005, n_total=12_000_000, seed=19)
    qu = _shell(lo, hi, quartic_g, zero, fns, eps=0.005, n_total=12_000_000, seed=20)
    for key in fns:
        # the surface measure does not depend on the equation; the sqrt form's conditional
        # measure equals it (|grad g| = 2r on the torus), the quartic form's does not
        _assert_close("sqrt surface " + key, *sq["surface"][key], PROBLEMS["torus"].exact[key])
        _assert_close("sqrt conditional " + key, *sq["conditional"][key],
                      PROBLEMS["torus"].exact[key])  # fmt: skip
        _assert_close("quartic surface " + key, *qu["surface"][key],
                      PROBLEMS["torus_quartic"].exact[key])  # fmt: skip
        _assert_close("quartic conditional " + key, *qu["conditional"][key],
                      PROBLEMS["torus_quartic"].conditional[key])  # fmt: skip
    assert PROBLEMS["torus"].conditional is None


# ---------------------------------------------------------------------------- the ellipsoid
AXES = np.array([0.5, 1.0, 2.0])


def _ellipsoid_fns():
    return {
        "z": lambda x: x[:, 2],
        "z_sq": lambda x: x[:, 2] ** 2,
        "x_sq": lambda x: x[:, 0] ** 2,
        "y_sq": lambda x: x[:, 1] ** 2,
    }


def test_ellipsoid_surface_values_by_mesh():
    p = PROBLEMS["ellipsoid"]

    def param(ph, th):
        return np.stack(
            [AXES[0] * np.sin(ph) * np.cos(th), AXES[1] * np.sin(ph) * np.sin(th),
             AXES[2] * np.cos(ph)], -1)  # fmt: skip

    vals = _mesh_average(param, _ellipsoid_fns(), lambda x: np.exp(x[:, 2]), 600, 800,
                         (0, math.pi), (0, 2 * math.pi))  # fmt: skip
    for key, val in vals.items():
        assert val == pytest.approx(p.exact[key], abs=2e-4), key


def test_ellipsoid_both_measures_by_thin_shell():
    p = PROBLEMS["ellipsoid"]

    def g_and_grad(x):
        g = ((x / AXES) ** 2).sum(1) - 1
        return g, np.linalg.norm(2 * x / AXES**2, axis=1)

    est = _shell(-AXES - 0.01, AXES + 0.01, g_and_grad, lambda x: -x[:, 2], _ellipsoid_fns(),
                 eps=0.004, n_total=14_000_000, seed=21)  # fmt: skip
    for key in p.observables:
        _assert_close("surface " + key, *est["surface"][key], p.exact[key])
        _assert_close("conditional " + key, *est["conditional"][key], p.conditional[key])
