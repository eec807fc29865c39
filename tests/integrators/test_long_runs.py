"""No drift off the manifold over long float32 runs: 10^4 steps stay at the SHAKE tolerance
(3000 on the implicit ellipse)."""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml


def _quadratic(target):
    return lambda x: 0.5 * ((x - target) ** 2).flatten(-2).sum(-1)


@pytest.mark.parametrize("geodesic", [True, False])
def test_stiefel_float32_ten_thousand_steps(geodesic):
    gen = torch.Generator().manual_seed(0)
    m = ml.Stiefel()
    x0 = m.random(4, 64, 16, dtype=torch.float32, generator=gen)
    target = m.random(64, 16, dtype=torch.float32, generator=gen)
    sampler = ml.Langevin(m, _quadratic(target), step_size=0.05, friction=1.0,
                          temperature=0.01, geodesic=geodesic)  # fmt: skip
    out = sampler.sample(x0, n_steps=10_000, burn_in=0, generator=gen, check_every=1000)
    tol = float(m.tolerance(x0))
    assert tol <= 1e-5
    assert out.max_residual <= tol, (out.max_residual, tol)
    assert out.n_failures == 0
    final = m.residual_norm(out.state.x)
    assert float(final.max()) <= tol
    # and the dynamics did something: the chains moved towards the target
    assert float((out.state.x - target).norm()) < float((x0 - target).norm())


def test_sphere_and_ellipse_float32_ten_thousand_steps():
    gen = torch.Generator().manual_seed(1)
    sphere = ml.Sphere(2.0)
    x0 = sphere.random(256, 3, dtype=torch.float32, generator=gen)
    out = ml.Langevin(sphere, lambda x: -x[..., -1], step_size=0.1).sample(
        x0, n_steps=10_000, burn_in=0, generator=gen
    )
    assert out.max_residual <= float(sphere.tolerance(x0))

    ellipse = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
    t = torch.linspace(0, 6.28, 64)
    x0 = torch.stack([2 * torch.cos(t), torch.sin(t)], -1)
    x0 = ellipse.projx(x0)
    # the implicit manifold is slower (autograd Jacobians, Newton SHAKE): 3000 steps
    out = ml.Langevin(ellipse, lambda x: x[..., 1], step_size=0.05).sample(
        x0, n_steps=3_000, burn_in=0, generator=gen
    )
    assert out.max_residual <= float(ellipse.tolerance(x0))
    assert out.failure_rate < 1e-3
