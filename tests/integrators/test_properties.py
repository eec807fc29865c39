"""Property tests over random manifolds, step sizes, dtypes and batch shapes (hypothesis).

After every Langevin step, whatever happened: the state is on the manifold (residual <= tolerance),
the momentum is tangent, nothing is NaN; the A-step is reversible.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manifold_langevin as ml
from manifold_langevin.integrators.substeps import drift

DTYPES = st.sampled_from([torch.float32, torch.float64])
BATCH = st.sampled_from([(), (5,), (2, 3)])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def quadrics(draw):
    """A random ellipsoid sum_i (x_i / a_i)^2 = 1 in R^n, and a way to put points on it."""
    n = draw(st.integers(2, 5))
    axes = draw(st.lists(st.floats(0.4, 2.5), min_size=n, max_size=n))
    a = torch.tensor(axes, dtype=torch.float64)

    def g(x):
        return ((x / a.to(x.dtype)) ** 2).sum(-1, keepdim=True) - 1

    def points(batch, dtype, gen):
        z = torch.nn.functional.normalize(
            torch.randn(*batch, n, generator=gen, dtype=torch.float64), dim=-1
        )
        return (z * a).to(dtype)

    return ml.ImplicitManifold(g), points, n


@st.composite
def manifolds(draw):
    kind = draw(st.sampled_from(["quadric", "sphere", "stiefel", "product"]))
    if kind == "quadric":
        return draw(quadrics())[:2]
    if kind == "sphere":
        r = draw(st.floats(0.1, 5.0))
        n = draw(st.integers(2, 6))
        m = ml.Sphere(r)
        return m, lambda b, dt, g: m.random(*b, n, dtype=dt, generator=g)
    if kind == "stiefel":
        n, k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        m = ml.Stiefel()
        return m, lambda b, dt, g: m.random(*b, n, k, dtype=dt, generator=g)
    q, qpoints, nq = draw(quadrics())
    m = ml.Product([ml.Sphere(1.0), q], dims=[3, nq])
    return m, lambda b, dt, g: torch.cat(
        [ml.Sphere(1.0).random(*b, 3, dtype=dt, generator=g), qpoints(b, dt, g)], -1
    )


def _size(x, m):
    return float(x.abs().max()) if x.numel() else 1.0


@SETTINGS
@given(
    manifolds(),
    DTYPES,
    BATCH,
    st.floats(1e-3, 0.3),
    st.sampled_from(["BAOAB", "OBABO", "ABOBA"]),
    st.integers(0, 2**31 - 1),
)
def test_every_step_stays_on_manifold_with_tangent_momentum(mp, dtype, batch, h, scheme, seed):
    m, points = mp
    gen = torch.Generator().manual_seed(seed)
    x = points(batch, dtype, gen)
    size = _size(x, m)
    target = torch.randn(x.shape, generator=gen, dtype=dtype)
    sampler = ml.Langevin(
        m,
        potential=lambda y: ((y - target) ** 2).flatten(len(batch)).sum(-1),
        step_size=h * size,
        scheme=scheme,
        temperature=0.5,
    )
    state = sampler.init(x, generator=gen)
    tol = m.tolerance(x)
    eps = torch.finfo(dtype).eps
    for _ in range(5):
        state, _ok, finite = sampler.step(state, gen)
        assert finite.all()
        assert torch.isfinite(state.x).all() and torch.isfinite(state.p).all()
        assert (m.residual_norm(state.x) <= tol).all()
        jp = m.jvp(state.x, state.p).abs()
        assert float(jp.max()) <= 1e3 * eps * (1 + size) * (1 + float(state.p.abs().max()))


@SETTINGS
@given(manifolds(), DTYPES, BATCH, st.floats(1e-3, 0.2), st.integers(0, 2**31 - 1))
def test_a_step_is_reversible(mp, dtype, batch, h, seed):
    m, points = mp
    gen = torch.Generator().manual_seed(seed)
    x0 = points(batch, dtype, gen)
    size = _size(x0, m)
    p0 = m.random_normal_tangent(x0, gen) * size
    x1, p1, ok1 = drift(m, x0, p0, h, geodesic=False)
    x2, _p2, ok2 = drift(m, x1, -p1, h, geodesic=False)
    ok = ok1 & ok2
    tol = m.tolerance(x0)
    # chains whose solve converged both ways return to their start
    dx = (x2 - x0).abs().reshape(*batch, -1).amax(-1)
    assert bool(((dx <= 300 * tol * (1 + size)) | ~ok).all()), dx


@SETTINGS
@given(manifolds(), DTYPES, BATCH, st.integers(0, 2**31 - 1))
def test_projection_idempotent(mp, dtype, batch, seed):
    m, points = mp
    gen = torch.Generator().manual_seed(seed)
    x = points(batch, dtype, gen)
    u = torch.randn(x.shape, generator=gen, dtype=dtype)
    v = m.proju(x, u)
    assert torch.allclose(
        m.proju(x, v), v, atol=100 * torch.finfo(dtype).eps * (1 + float(u.abs().max()))
    )
