"""The ratio ``sin(theta) / theta`` of the closed-form geodesics (sphere rotation, Rodrigues):
equal to ``torch.sinc`` to rounding at every angle, 1 at zero, and with a finite gradient there;
and the geodesics written with it are the same maps as before (to rounding)."""

from __future__ import annotations

import math

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.manifolds.elementary import sine_ratio
from manifold_langevin.manifolds.frames import expm_skew


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sine_ratio_equals_sinc_to_rounding(dtype):
    tiny = torch.finfo(dtype).tiny
    theta = torch.cat(
        [
            torch.tensor([0.0, tiny, tiny / 4, 1e-30, 1e-8, 1e-4, 0.5, 1.0, 3.0, math.pi, 10.0]),
            torch.linspace(-7.0, 7.0, 1001),
        ]
    ).to(dtype)
    got = sine_ratio(torch.sin(theta), theta)
    # the reference from Python's libm in float64 (the series where it is exact), not from torch
    want = torch.tensor(
        [1 - t * t / 6 if abs(t) < 1e-5 else math.sin(t) / t for t in theta.double().tolist()],
        dtype=torch.float64,
    )
    eps = torch.finfo(dtype).eps
    err = (got.double() - want).abs()
    # a sine within an ulp, a division within half of one, the reference's own rounding
    assert (err <= 4 * eps * want.abs()).all(), (err / want.abs()).max() / eps
    assert got[0] == 1.0 and got[1] == 1.0 and got[2] == 1.0
    # torch.sinc (of theta / pi) is the same function, up to the rounding of theta / pi
    sinc = torch.sinc(theta.double() / math.pi)
    assert ((sinc - want).abs() <= 64 * torch.finfo(torch.float64).eps).all()


def test_sine_ratio_gradient_is_finite_at_zero():
    theta = torch.tensor([0.0, 1e-3, 0.7], dtype=torch.float64, requires_grad=True)
    sine_ratio(torch.sin(theta), theta).sum().backward()
    assert torch.isfinite(theta.grad).all()
    # d/dtheta (sin theta / theta) = (theta cos theta - sin theta) / theta^2
    t = theta.detach()[1:]
    want = (t * torch.cos(t) - torch.sin(t)) / t**2
    torch.testing.assert_close(theta.grad[1:], want, rtol=1e-9, atol=1e-12)


def _sphere_geodesic_with_sinc(x, v, t, radius):
    """The great-circle rotation written with ``torch.sinc`` (the earlier form)."""
    r = x.norm(dim=-1, keepdim=True)
    omega = v.norm(dim=-1, keepdim=True) / r
    angle = omega * t
    x_t = x * torch.cos(angle) + v * (t * torch.sinc(angle / math.pi))
    v_t = v * torch.cos(angle) - x * (omega * torch.sin(angle))
    return x_t * (radius / x_t.norm(dim=-1, keepdim=True)), v_t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sphere_geodesic_is_the_rotation_to_rounding(dtype):
    gen = torch.Generator().manual_seed(3)
    s = ml.Sphere(radius=1.5)
    x = s.random(257, 4, generator=gen, dtype=dtype)
    v = s.proju(x, torch.randn(257, 4, generator=gen, dtype=dtype))
    v[0] = 0.0  # zero speed: the point stays, the velocity stays zero
    v[1] *= 1e-20
    v[2] *= 40.0  # several turns
    x_t, v_t = s.geodesic(x, v, 0.3)
    x_ref, v_ref = _sphere_geodesic_with_sinc(x.double(), v.double(), 0.3, 1.5)
    eps = torch.finfo(dtype).eps
    scale = 1.0 + v.double().norm(dim=-1, keepdim=True)
    assert ((x_t.double() - x_ref).abs() <= 64 * eps * scale).all()
    assert ((v_t.double() - v_ref).abs() <= 64 * eps * scale**2).all()
    assert torch.equal(v_t[0], v[0])  # zero speed: no motion (x only renormalised)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rodrigues_matches_matrix_exp(dtype):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    w[:100] *= 1e-9  # near the identity, where the ratios must not cancel
    w[100:150] = 0.0
    w[150:200] *= 3.0  # angles past pi
    a = torch.zeros(300, 3, 3, dtype=torch.float64)
    a[:, 2, 1], a[:, 0, 2], a[:, 1, 0] = w[:, 0], w[:, 1], w[:, 2]
    a = a - a.mT
    got = expm_skew(a.to(dtype))
    want = torch.linalg.matrix_exp(a)
    eps = torch.finfo(dtype).eps
    assert ((got.double() - want).abs() <= 16 * eps).all()
