"""The fused circle maps (CoLA's hot path) are the composition of the shared maps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_langevin as ml
from manifold_langevin.integrators.circle_substeps import baoa_step_circles, circle_kick_rotate
from manifold_langevin.integrators.substeps import ou_coefficients
from manifold_langevin.manifolds.circles import (
    circle_project,
    circle_rotate,
    circle_tangent_normal,
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    radius=st.floats(1e-3, 10.0),
    kick=st.floats(-1.0, 1.0),
    t=st.floats(0.0, 2.0),
    scale=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_kick_rotate_is_project_then_rotate(radius, kick, t, scale, seed):
    g = torch.Generator().manual_seed(seed)
    n = 257
    angle = torch.rand(n, dtype=torch.float64, generator=g) * 2 * torch.pi
    w, xi = radius * torch.cos(angle), radius * torch.sin(angle)
    pw, pxi, force = (radius * torch.randn(n, dtype=torch.float64, generator=g) for _ in range(3))
    got = circle_kick_rotate(w, xi, pw, pxi, force, kick, t, radius, scale)
    qw, qxi = circle_project(w, xi, pw + kick * force, pxi)
    w_t, xi_t, pw_t, pxi_t = circle_rotate(w, xi, qw, qxi, t, radius)
    want = (w_t, xi_t, scale * pw_t, scale * pxi_t)
    # the same map written two ways: they differ by rounding only (angles up to |omega t| ~ 10^2
    # rad lose a few digits in sin/cos, hence the relative bound on the momentum's size)
    speed = float(torch.stack([qw, qxi]).abs().max()) + 1.0
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-9 * radius * speed)
    # the result is on the circle and its momentum tangent
    assert torch.allclose(got[0] ** 2 + got[1] ** 2, torch.full_like(w, radius**2), rtol=1e-12)
    assert (got[0] * got[2] + got[1] * got[3]).abs().max() <= 1e-9 * radius * speed


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    radius=st.floats(1e-3, 10.0),
    h=st.floats(1e-3, 1.0),
    gamma=st.floats(0.0, 5.0),
    tau=st.floats(1e-6, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_fused_noisy_step_is_rotate_o_rotate(radius, h, gamma, tau, seed):
    """With noise, the fused ``A O A`` (one rotation) equals rotate, O, rotate on the same
    normal to rounding: the O step changes only the angular velocity."""
    g = torch.Generator().manual_seed(seed)
    n = 257
    angle = torch.rand(n, dtype=torch.float64, generator=g) * 2 * torch.pi
    w, xi = radius * torch.cos(angle), radius * torch.sin(angle)
    pw, pxi, grad = (radius * torch.randn(n, dtype=torch.float64, generator=g) for _ in range(3))
    z = torch.randn(n, dtype=torch.float64, generator=g)
    c1, c2 = ou_coefficients(gamma, tau, h)
    fused = baoa_step_circles(w, xi, pw, pxi, grad, 0.5 * h, h, c1, c2, radius, z, True)
    # the composition written from the generic pieces
    qw, qxi = circle_project(w, xi, pw - 0.5 * h * grad, pxi)
    mw, mxi, mpw, mpxi = circle_rotate(w, xi, qw, qxi, 0.5 * h, radius)
    rw, rxi = circle_tangent_normal(mw, mxi, z)
    mpw, mpxi = c1 * mpw + c2 * rw, c1 * mpxi + c2 * rxi
    want = circle_rotate(mw, mxi, mpw, mpxi, 0.5 * h, radius)
    unfused = baoa_step_circles(w, xi, pw, pxi, grad, 0.5 * h, h, c1, c2, radius, z, False)
    speed = float(torch.stack([qw, qxi, rw, rxi]).abs().max()) + 1.0
    for a, b, c in zip(fused, want, unfused):
        assert torch.allclose(a, b, rtol=0, atol=1e-9 * radius * speed)
        assert torch.allclose(c, b, rtol=0, atol=1e-9 * radius * speed)


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


@pytest.mark.parametrize("noisy", [False, True])
def test_writing_into_the_state_gives_the_same_bits(noisy):
    """``out=`` (CoLA's eager path writes the step into its state) changes no bit."""
    g = torch.Generator().manual_seed(3)
    n, radius, h = 1000, 0.3, 0.2
    angle = torch.rand(n, dtype=torch.float64, generator=g) * 2 * torch.pi
    state = [radius * torch.cos(angle), radius * torch.sin(angle)]
    state += [torch.randn(n, dtype=torch.float64, generator=g) for _ in range(2)]
    grad = torch.randn(n, dtype=torch.float64, generator=g)
    z = torch.randn(n, dtype=torch.float64, generator=g) if noisy else None
    c1, c2 = ou_coefficients(1.0, 0.1 if noisy else 0.0, h)
    want = baoa_step_circles(*state, grad, h, h, c1, c2, radius, z, True)
    out = [t.clone() for t in state]
    got = baoa_step_circles(*out, grad, h, h, c1, c2, radius, z, True, out=out)
    for a, b, c in zip(got, want, out):
        assert a is c  # written in place
        assert torch.equal(a, b)
