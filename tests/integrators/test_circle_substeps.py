"""The fused circle kick-and-rotate (CoLA's hot path) is the composition of the shared maps."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_langevin.integrators.circle_substeps import circle_kick_rotate
from manifold_langevin.manifolds.circles import circle_project, circle_rotate


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
