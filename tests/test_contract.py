"""The public sampling API as the README and the docs use it (manifolds that are geoopt manifolds,
``Langevin`` / ``OverdampedLangevin``, ``sample`` and its result), run as written with shortened
run lengths, and the sampled means compared with their exact values."""

from __future__ import annotations

import math

import geoopt
import torch
from scipy import integrate

import manifold_langevin as ml


def _chain_stderr(out, key):
    """Standard error of ``out.means[key]`` from the spread of the chains' own means.

    The chains are independent, so this is honest whatever the autocorrelation time; the batch
    means within a chain of a run this short are not (their ``out.stderrs`` came out 2x smaller
    than this on the ellipse)."""
    per_chain = out.batch_means[key].mean(0)
    return per_chain.std(0) / math.sqrt(per_chain.shape[0])


def _ellipse_mean_y(temperature=1.0):
    """``E[y]`` under ``exp(-y / tau)`` times arc length on ``x^2/4 + y^2 = 1`` (quadrature)."""

    def weight(t):
        return math.exp(-math.sin(t) / temperature) * math.hypot(2 * math.sin(t), math.cos(t))

    z = integrate.quad(weight, 0, 2 * math.pi, epsabs=1e-13, epsrel=1e-13)[0]
    m = integrate.quad(lambda t: math.sin(t) * weight(t), 0, 2 * math.pi, epsabs=1e-13)[0]
    return m / z


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
    t = torch.linspace(0, 2 * math.pi, 129, dtype=torch.float64)[:-1]
    x0 = torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)  # (n_chains, 2) on the ellipse
    out = sampler.sample(
        x0,
        n_steps=400,
        burn_in=100,
        observables={"y": lambda x: x[..., 1]},
        generator=torch.Generator().manual_seed(0),
    )
    assert out.means["y"].shape == () and out.stderrs["y"].shape == ()
    assert out.max_residual < 1e-12 and out.n_failures == 0
    assert out.state.x.shape == x0.shape
    # E[y] = -0.5031 under the surface measure (-0.279 at tau = 2, 0 for the chains' start).
    # Bound: 4 standard errors (127 degrees of freedom; measured 0.031-0.035 over seeds) plus
    # 0.005 for the biases: BAOAB's at h = 0.05 (at most 0.21 h^2 = 5e-4 on the validation
    # problems) and what is left of the start after the burn-in (5 time units; the ensemble mean
    # relaxes with an e-fold time of about 1.5, so its share of the average is about 2e-3)
    exact = _ellipse_mean_y()
    err, se = float(out.means["y"]) - exact, float(_chain_stderr(out, "y"))
    assert abs(err) <= 4 * se + 0.005, (float(out.means["y"]), exact, se)

    for scheme in ("euler", "lm"):
        od = ml.OverdampedLangevin(
            ellipse, potential=lambda x: x[..., 1], step_size=0.01, temperature=1.0, scheme=scheme
        )
        res = od.sample(x0, n_steps=50, generator=torch.Generator().manual_seed(0))
        assert res.max_residual < 1e-12


def test_plain_geoopt_manifolds_are_accepted():
    # every chain starts at the same point, so the means below are reached only by sampling:
    # uniform on S^2 (E[x] = 0, E[z^2] = 1/3) and Haar on V_2(R^5) (E[X] = 0, E[X_ij^2] = 1/5).
    # Bound: 5 standard errors per entry (with 14 entries tested, and the chain standard error
    # estimated from 64 / 32 chains, a false alarm has probability below 1e-3); the samplers
    # are exact for these free motions, so the only bias is the start's, gone after burn-in
    north = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(64, 3).clone()
    out = ml.Langevin(geoopt.Sphere(), step_size=0.1).sample(
        north,
        n_steps=200,
        burn_in=100,
        observables={"x": lambda x: x, "z2": lambda x: x[..., 2] ** 2},
        generator=torch.Generator().manual_seed(0),
    )
    assert out.max_residual < 1e-12
    for key, exact in (("x", torch.zeros(3)), ("z2", torch.tensor(1 / 3))):
        z = (out.means[key] - exact.double()) / _chain_stderr(out, key)
        assert z.abs().max() <= 5, (key, out.means[key], z)

    m0 = torch.eye(5, 2, dtype=torch.float64).expand(32, 5, 2).clone()
    param = geoopt.ManifoldParameter(m0, manifold=geoopt.Stiefel())
    out = ml.Langevin(param.manifold, step_size=0.1).sample(
        param.data,
        n_steps=100,
        burn_in=50,
        observables={"x": lambda x: x[..., :, 0], "x2": lambda x: x[..., :, 0] ** 2},
        generator=torch.Generator().manual_seed(0),
    )
    assert out.max_residual < 1e-10
    for key, exact in (("x", 0.0), ("x2", 0.2)):
        z = (out.means[key] - exact) / _chain_stderr(out, key)
        assert z.abs().max() <= 5, (key, out.means[key], z)
