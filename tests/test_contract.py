"""The public sampling API as the README and the docs use it (manifolds that are geoopt manifolds,
``Langevin`` / ``OverdampedLangevin``, ``sample`` and its result), run as written; only the run
lengths are shortened."""

from __future__ import annotations

import math

import geoopt
import torch

import manifold_langevin as ml


def test_public_contract_sampling():
    ellipse = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
    sphere, stiefel, circles = ml.Sphere(radius=1.0), ml.Stiefel(), ml.Circles(radius=0.1)
    assert all(isinstance(m, geoopt.Manifold) for m in (ellipse, sphere, stiefel, circles))

    sampler = ml.Langevin(
        ellipse,
        potential=lambda x: x[..., 1],
        step_size=0.05,
        friction=1.0,
        temperature=1.0,
        scheme="BAOAB",
    )
    t = torch.linspace(0, 2 * math.pi, 33, dtype=torch.float64)[:-1]
    x0 = torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)  # (n_chains, 2) on the ellipse
    out = sampler.sample(
        x0,
        n_steps=400,
        burn_in=40,
        observables={"y": lambda x: x[..., 1]},
        generator=torch.Generator().manual_seed(0),
    )
    assert out.means["y"].shape == () and out.stderrs["y"].shape == ()
    assert out.max_residual < 1e-12 and out.n_failures == 0
    assert out.state.x.shape == x0.shape

    for scheme in ("euler", "lm"):
        od = ml.OverdampedLangevin(
            ellipse, potential=lambda x: x[..., 1], step_size=0.01, temperature=1.0, scheme=scheme
        )
        res = od.sample(x0, n_steps=50, generator=torch.Generator().manual_seed(0))
        assert res.max_residual < 1e-12


def test_plain_geoopt_manifolds_are_accepted():
    x0 = ml.Sphere().random(8, 3, dtype=torch.float64)
    out = ml.Langevin(geoopt.Sphere(), step_size=0.1).sample(x0, n_steps=20)
    assert out.max_residual < 1e-12
    m0 = ml.Stiefel().random(4, 5, 2, dtype=torch.float64)
    param = geoopt.ManifoldParameter(m0, manifold=geoopt.Stiefel())
    out = ml.Langevin(param.manifold, step_size=0.1).sample(param.data, n_steps=20)
    assert out.max_residual < 1e-10
