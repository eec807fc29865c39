"""The circle maps on angular velocities (CoLA's hot path) are the composition of the shared
maps on ``(w, xi)`` and its two momentum components."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_langevin as ml
from manifold_langevin.integrators.circle_substeps import (
    baoa_step_circles,
    circle_turn,
    hold_nonfinite,
)
from manifold_langevin.integrators.substeps import ou_coefficients
from manifold_langevin.manifolds.circles import (
    circle_angular_velocity,
    circle_momentum,
    circle_project,
    circle_rotate,
    circle_tangent_normal,
)

EPS64 = torch.finfo(torch.float64).eps


def _circles(n, radius, g, dtype=torch.float64):
    angle = torch.rand(n, dtype=dtype, generator=g) * 2 * torch.pi
    return radius * torch.cos(angle), radius * torch.sin(angle)


def test_angular_velocity_and_momentum_convert_tangent_momenta():
    g = torch.Generator().manual_seed(0)
    w, xi = _circles(1000, 0.3, g)
    pw, pxi = torch.randn(2, 1000, dtype=torch.float64, generator=g)
    qw, qxi = circle_project(w, xi, pw, pxi)
    omega = circle_angular_velocity(w, xi, pw, pxi)
    # the angular velocity of a momentum is that of its tangent part, and it gives it back
    assert torch.allclose(circle_angular_velocity(w, xi, qw, qxi), omega, rtol=1e-12, atol=0)
    back = circle_momentum(w, xi, omega)
    assert torch.allclose(back[0], qw, rtol=0, atol=1e-14)
    assert torch.allclose(back[1], qxi, rtol=0, atol=1e-14)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    radius=st.floats(1e-3, 10.0),
    h=st.floats(1e-3, 1.0),
    gamma=st.floats(0.0, 5.0),
    tau=st.sampled_from([0.0, 1e-6, 1e-2, 1.0]),
    fuse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_step_on_angular_velocities_is_the_composition_of_the_shared_maps(
    radius, h, gamma, tau, fuse, seed
):
    """``B A O A`` on ``(w, xi, omega)`` equals the kick, tangent projection, rotations and O
    step of the generic maps on ``(w, xi, pw, pxi)`` with ``(pw, pxi) = omega (-xi, w)``, to
    rounding, fused (one rotation) or not, with or without noise."""
    g = torch.Generator().manual_seed(seed)
    n = 257
    w, xi = _circles(n, radius, g)
    omega, grad = (torch.randn(n, dtype=torch.float64, generator=g) for _ in range(2))
    z = torch.randn(n, dtype=torch.float64, generator=g) if tau > 0 else None
    c1, c2 = ou_coefficients(gamma, tau, h)
    got = baoa_step_circles(w, xi, omega, grad, 0.5 * h, h, c1, c2, radius, z, fuse)
    # the composition written from the generic pieces
    pw, pxi = circle_momentum(w, xi, omega)
    qw, qxi = circle_project(w, xi, pw - 0.5 * h * grad, pxi)
    mw, mxi, mpw, mpxi = circle_rotate(w, xi, qw, qxi, 0.5 * h, radius)
    if z is None:
        mpw, mpxi = c1 * mpw, c1 * mpxi
    else:
        rw, rxi = circle_tangent_normal(mw, mxi, z)
        mpw, mpxi = c1 * mpw + c2 * rw, c1 * mpxi + c2 * rxi
    ww, wxi, wpw, wpxi = circle_rotate(mw, mxi, mpw, mpxi, 0.5 * h, radius)
    want = (ww, wxi, circle_angular_velocity(ww, wxi, wpw, wpxi))
    # angles up to |omega h| ~ 10^2 rad lose a few digits in sin and cos
    speed = float(torch.stack([qw, qxi, mpw, mpxi]).abs().max()) / radius + 1.0
    for name, a, b, scale in zip(("w", "xi", "omega"), got, want, (radius, radius, 1.0)):
        err = float((a - b).abs().max())
        assert err <= 1e-9 * scale * speed, (name, err)
    # on the circle, |w| <= r
    assert torch.allclose(got[0] ** 2 + got[1] ** 2, torch.full_like(w, radius**2), rtol=1e-12)
    assert (got[0].abs() <= radius).all()


@pytest.mark.parametrize("delta", [-0.75, -0.3, 0.3, 1.0])
def test_a_point_off_its_circle_is_brought_back_quadratically(delta):
    """The Newton factor takes a point with ``|x|^2 = (1 + delta) r^2`` to
    ``1 + delta'`` with ``|delta'| <= delta^2`` (for ``|delta| <= 1``), onto the circle to
    rounding within a few rotations; ``exact`` does it in one."""
    g = torch.Generator().manual_seed(2)
    radius = 0.2
    w, xi = _circles(512, radius * (1 + delta) ** 0.5, g)
    prev = abs(delta)
    for _ in range(10):
        theta = 0.1 * torch.randn(512, dtype=torch.float64, generator=g)
        w, xi = circle_turn(w, xi, theta, radius)
        err = float(((w * w + xi * xi) / radius**2 - 1).abs().max())
        assert err <= prev * prev + 1e-15, (prev, err)  # delta' = -3/4 delta^2 + delta^3/4
        prev = err
    assert err <= 4 * EPS64
    w, xi = _circles(512, radius * (1 + delta) ** 0.5, g)
    w, xi = circle_turn(w, xi, torch.zeros(512, dtype=torch.float64), radius, exact=True)
    assert float(((w * w + xi * xi) / radius**2 - 1).abs().max()) <= 4 * EPS64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_radius_does_not_drift(dtype):
    """Rounding off the radius is taken off at every rotation: after 20,000 rotations by random
    angles the radius is still within a few ulps, where an unrenormalised rotation drifts."""
    g = torch.Generator().manual_seed(1)
    radius = 0.05
    w, xi = _circles(4096, radius, g, dtype)
    free_w, free_xi = w.clone(), xi.clone()
    eps = torch.finfo(dtype).eps
    for _ in range(20_000 if dtype == torch.float32 else 2_000):
        theta = 0.3 * torch.randn(4096, dtype=dtype, generator=g)
        w, xi = circle_turn(w, xi, theta.clone(), radius, inplace=True)
        c, s = torch.cos(theta), torch.sin(theta)
        free_w, free_xi = c * free_w - s * free_xi, s * free_w + c * free_xi
    rel = ((w * w + xi * xi).double() / radius**2 - 1).abs().max()
    assert rel <= 8 * eps, rel
    if dtype == torch.float32:
        # the control: the same rotations without the renormalisation leave the radius
        free = ((free_w * free_w + free_xi * free_xi).double() / radius**2 - 1).abs().max()
        assert free > 20 * eps, free


def test_circle_tangent_normal_has_the_projected_normal_law():
    """``Circles.random_normal_tangent`` (one normal per circle) is tangent and has covariance
    ``P = I - x x^T / r^2``, the law of the projected ambient normal: each entry of the sample
    covariance within 5 standard errors (``sqrt((P_ii P_jj + P_ij^2) / n)``)."""
    m = ml.Circles(0.7)
    n = 100_000
    x = m.random(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xs = x.expand(n, 6, 2)
    v = m.random_normal_tangent(xs, torch.Generator().manual_seed(2))
    assert v.shape == xs.shape
    assert (v * xs).sum(-1).abs().max() <= 1e-12
    cov = torch.einsum("nki,nkj->kij", v, v) / n
    u = x / 0.7
    p = torch.eye(2, dtype=torch.float64) - u[:, :, None] * u[:, None, :]
    diag = torch.diagonal(p, dim1=-2, dim2=-1)
    se = torch.sqrt((diag[:, :, None] * diag[:, None, :] + p**2) / n)
    assert ((cov - p).abs() <= 5 * se + 1e-12).all(), (cov - p) / (se + 1e-12)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("noisy", [False, True])
def test_writing_into_the_state_gives_the_same_numbers(noisy, fuse):
    """``inplace`` (CoLA's eager path writes the step into its state) gives the functional
    path's numbers to rounding (the in-place path folds the scales into ``addcmul`` forms)."""
    g = torch.Generator().manual_seed(3)
    n, radius, h = 1000, 0.3, 0.2
    w, xi = _circles(n, radius, g)
    state = [w, xi, torch.randn(n, dtype=torch.float64, generator=g)]
    grad = torch.randn(n, dtype=torch.float64, generator=g)
    z = torch.randn(n, dtype=torch.float64, generator=g) if noisy else None
    c1, c2 = ou_coefficients(1.0, 0.1 if noisy else 0.0, h)
    want = baoa_step_circles(*state, grad, h, h, c1, c2, radius, z, fuse)
    out = [t.clone() for t in state]
    got = baoa_step_circles(*out, grad, h, h, c1, c2, radius, z, fuse, inplace=True)
    for a, b, c in zip(got, want, out):
        assert a is c  # written in place
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_hold_keeps_the_nonfinite_entries_exactly(dtype, fuse, noisy, inplace, exact):
    """``hold``: an entry whose angle is not finite (a NaN or infinite gradient, or a finite one
    so large that the angle overflows) keeps its point exactly, with zero angular velocity;
    every other entry gets the numbers of ``hold=False`` bit for bit, and all are finite."""
    g = torch.Generator().manual_seed(11)
    n, radius, h = 400, 0.3, 2.5  # h > 2: the angle is more than the kicked velocity
    w, xi = _circles(n, radius, g, dtype)
    # off the circle by the rounding a float32 run leaves (the held entries must not be
    # renormalised either)
    off = 1 + 1e-6 * torch.randn(n, dtype=dtype, generator=g)
    w, xi = w * off, xi * off
    omega = torch.randn(n, dtype=dtype, generator=g)
    grad = torch.randn(n, dtype=dtype, generator=g)
    big = torch.finfo(dtype).max
    grad[[3, 50]] = torch.nan
    grad[7], grad[8] = torch.inf, -torch.inf
    # finite kick, infinite angle: omega + kick * grad * xi / r^2 near the largest float
    grad[100] = big / 4 * radius / xi[100].abs()
    omega[100] = 0.0
    z = torch.randn(n, dtype=dtype, generator=g) if noisy else None
    c1, c2 = ou_coefficients(1.0, 0.1 if noisy else 0.0, h)
    args = (grad, 0.5 * h, h, c1, c2, radius, z, fuse, inplace, exact)
    state = [w, xi, omega]
    want = baoa_step_circles(*[t.clone() for t in state], *args)
    *got, held = baoa_step_circles(*[t.clone() for t in state], *args, hold=True)
    bad = torch.zeros(n, dtype=torch.bool)
    bad[[3, 50, 7, 8, 100]] = True
    assert torch.equal(held, bad.to(dtype))
    for new, ref in zip(got, want):
        assert torch.isfinite(new).all()
        assert torch.equal(new[~bad], ref[~bad])
    assert torch.equal(got[0][bad], w[bad]) and torch.equal(got[1][bad], xi[bad])
    assert torch.equal(got[2][bad], torch.zeros(5, dtype=dtype))
    assert not torch.isfinite(want[0][bad]).any()  # without hold these entries are lost


def test_hold_nonfinite_indicator():
    theta = torch.tensor([0.5, -torch.inf, torch.nan, torch.inf, -2.0, 0.0])
    clean, held = hold_nonfinite(theta.clone())
    assert torch.equal(clean, torch.tensor([0.5, 0.0, 0.0, 0.0, -2.0, 0.0]))
    assert torch.equal(held, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
