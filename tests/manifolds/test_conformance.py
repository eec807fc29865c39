"""Every manifold through the same checks (the optax/geoopt conformance pattern), float32/64."""

from __future__ import annotations

import geoopt
import pytest
import torch

from manifold_langevin.integrators.substeps import drift
from tests.cases import CASES, DTYPES

N = 64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _setup(case, dtype, seed=0):
    m = case.make()
    x = case.points(N, dtype, _gen(seed))
    p = m.random_normal_tangent(x, _gen(seed + 1))
    # speeds proportional to the size of the manifold, so that h is a relative step everywhere
    size = _scale(x, m)
    return m, x, p * size.reshape(size.shape + (1,) * m.ndim)


def _scale(x, m):
    # the size of a point, to turn absolute tolerances on x into relative ones
    return x.abs().amax(dim=tuple(range(-m.ndim, 0)))


@pytest.fixture(params=CASES, ids=repr)
def case(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=str)
def dtype(request):
    return request.param


def test_points_on_manifold(case, dtype):
    m, x, _ = _setup(case, dtype)
    assert m.residual_norm(x).max() <= m.tolerance(x)
    assert m.check_point_on_manifold(x, atol=10 * m.tolerance(x))


def test_projection_is_tangent_and_idempotent(case, dtype):
    m, x, _ = _setup(case, dtype)
    u = torch.randn(x.shape, generator=_gen(5), dtype=dtype)
    v = m.proju(x, u)
    eps = torch.finfo(dtype).eps
    jv = m.jvp(x, v).abs().amax(-1)
    assert (jv <= 100 * eps * _scale(x, m) * _scale(u, m)).all(), jv.max()
    assert torch.allclose(m.proju(x, v), v, atol=100 * eps, rtol=0)
    # P is an orthogonal projection: u - Pu is normal, so <u - Pu, v> = 0
    assert m.inner(x, u - v, v).abs().max() <= 1000 * eps


def test_jvp_vjp_adjoint(case, dtype):
    m, x, _ = _setup(case, dtype)
    v = torch.randn(x.shape, generator=_gen(6), dtype=dtype)
    lam = torch.randn(m.constraint(x).shape, generator=_gen(7), dtype=dtype)
    lhs = (m.jvp(x, v) * lam).sum(-1)
    rhs = m.inner(x, v, m.vjp(x, lam))
    assert torch.allclose(lhs, rhs, atol=1e3 * torch.finfo(dtype).eps, rtol=1e-4)


def test_shake_lands_on_manifold_along_old_normals(case, dtype):
    m, x, p = _setup(case, dtype)
    x_tilde = x + 0.05 * p
    y, ok = m.shake(x, x_tilde)
    assert ok.all()
    assert (m.residual_norm(y) <= m.tolerance(x)).all()
    # the correction y - x_tilde lies in the span of the old normals J(x)^T
    corr = m.proju(x, y - x_tilde)
    assert corr.abs().max() <= 100 * m.tolerance(x) * 10


@pytest.mark.parametrize("geodesic", [True, False])
def test_drift_is_reversible(case, dtype, geodesic):
    m, x0, p0 = _setup(case, dtype)
    h = 0.1
    x1, p1, ok1 = drift(m, x0, p0, h, geodesic=geodesic)
    x2, p2, ok2 = drift(m, x1, -p1, h, geodesic=geodesic)
    assert ok1.all() and ok2.all()
    tol = 200 * m.tolerance(x0)
    assert torch.allclose(x2, x0, atol=tol, rtol=0), (x2 - x0).abs().max()
    assert torch.allclose(-p2, p0, atol=tol / h, rtol=0), (p2 + p0).abs().max()


def test_drift_keeps_state_on_manifold_and_tangent(case, dtype):
    m, x, p = _setup(case, dtype)
    x1, p1, ok = drift(m, x, p, 0.1, substeps=3, geodesic=False)
    assert ok.all()
    assert (m.residual_norm(x1) <= m.tolerance(x)).all()
    jp = m.jvp(x1, p1).abs().amax(-1)
    assert (jp <= 1e3 * torch.finfo(dtype).eps * (1 + _scale(p1, m) * _scale(x1, m))).all()


def test_drift_without_projection_only_skips_it(case, dtype):
    """``project=False`` (what CoLA passes when the manifold absorbs normal momenta): the same
    points, and velocities whose tangent projection is the projected drift's."""
    m, x, p = _setup(case, dtype)
    x1, p1, ok1 = drift(m, x, p, 0.1, substeps=2, geodesic=False)
    x2, p2, ok2 = drift(m, x, p, 0.1, substeps=2, geodesic=False, project=False)
    assert ok1.all() and ok2.all()
    tol = 10 * m.tolerance(x)
    assert torch.allclose(x2, x1, atol=tol * float(_scale(x, m).max()), rtol=0)
    speed = float(_scale(p1, m).max()) + 1.0
    assert torch.allclose(m.proju(x2, p2), p1, atol=tol * speed / 0.05, rtol=0)
    # and the projection was skipped: the chord velocity has a normal part O(h |p|^2)
    assert (p2 - p1).abs().max() > 1e3 * torch.finfo(dtype).eps * speed


def test_geodesic_is_the_limit_of_rattle(case):
    m, x, p = _setup(case, torch.float64)
    if not m.has_geodesic:
        pytest.skip(f"{case.name} has no closed-form geodesic")
    xg, _pg, _ = drift(m, x, p, 0.2, geodesic=True)
    errs = []
    for k in (4, 8, 16):
        xr, _, ok = drift(m, x, p, 0.2, substeps=k, geodesic=False)
        assert ok.all()
        errs.append(float((xr - xg).abs().max()))
    # RATTLE is second order: halving the sub-step divides the error by about 4
    assert errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3, errs
    assert (m.residual_norm(xg) <= m.tolerance(x)).all()


def test_geodesic_time_as_number_or_tensor(case, monkeypatch):
    """A Python-number time stays a number (turning it into a device tensor would be a
    synchronising host-to-device copy on a GPU, once per step); a 0-d tensor and a per-chain
    tensor give the same flow."""
    m, x, p = _setup(case, torch.float64)
    if not m.has_geodesic:
        pytest.skip(f"{case.name} has no closed-form geodesic")
    batch = x.shape[: x.dim() - m.ndim]
    as_tensor = torch.as_tensor

    def no_number(data, *args, **kwargs):
        assert not isinstance(data, (int, float)), "a Python-number time became a tensor"
        return as_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", no_number)
    x_num, p_num = m.geodesic(x, p, 0.3)
    monkeypatch.undo()
    x_0d, p_0d = m.geodesic(x, p, torch.tensor(0.3, dtype=torch.float64))
    x_b, p_b = m.geodesic(x, p, torch.full(batch, 0.3, dtype=torch.float64))
    for a, b in ((x_num, x_0d), (p_num, p_0d), (x_num, x_b), (p_num, p_b)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_geoopt_riemannian_sgd_keeps_points_on_manifold(case):
    m, x, _ = _setup(case, torch.float64)
    param = geoopt.ManifoldParameter(x.clone(), manifold=m)
    opt = geoopt.optim.RiemannianSGD([param], lr=0.05, momentum=0.5)
    target = torch.randn(x.shape, generator=_gen(3), dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        ((param - target) ** 2).sum().backward()
        opt.step()
    assert torch.isfinite(param).all()
    assert m.residual_norm(param.detach()).max() <= 10 * m.tolerance(x)
