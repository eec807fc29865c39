"""BAOAB is exact for a harmonic potential on a linear subspace, at every stable step size.

x in R^3 with x1 + x2 + x3 = 0 and U = x^T diag(1, 4, 9) x / 2: the restricted Gaussian has
E[x_i^2] = (13, 10, 5) / 49 (the diagonal of B (B^T D B)^{-1} B^T for an orthonormal basis B of the
plane). BAOAB reproduces the configurational marginal exactly for Gaussian targets; OBABO (a
velocity-Verlet core) does not, which shows the test has the power to see a bias. At temperature
tau the second moments are tau times these (run at tau = 0.3 too, where tau^2 would be 0.09).
"""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml

EXACT = torch.tensor([13.0, 10.0, 5.0], dtype=torch.float64) / 49
D = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)


def _run(scheme, h, n_chains=1000, n_steps=1200, seed=0, tau=1.0):
    plane = ml.ImplicitManifold(lambda x: x.sum(-1, keepdim=True), max_iter=2)
    sampler = ml.Langevin(
        plane,
        potential=lambda x: 0.5 * (D * x * x).sum(-1),
        step_size=h,
        friction=1.0,
        temperature=tau,
        scheme=scheme,
    )
    x0 = torch.zeros(n_chains, 3, dtype=torch.float64)
    return sampler.sample(
        x0,
        n_steps=n_steps,
        burn_in=200,
        observables={"x2": lambda x: x * x},
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize(
    ("h", "tau"), [(0.3, 1.0), (0.6, 1.0), pytest.param(0.6, 0.3, marks=pytest.mark.slow)]
)
def test_baoab_has_no_configurational_bias(h, tau):
    out = _run("BAOAB", h, tau=tau)
    z = (out.means["x2"] - tau * EXACT) / out.stderrs["x2"]
    # three estimates at once: 4 standard errors leaves a false-alarm rate below 1e-3
    assert z.abs().max() < 4.0, (out.means["x2"], out.stderrs["x2"])
    assert out.max_residual < 1e-12


def test_obabo_bias_is_visible_at_the_same_step():
    out = _run("OBABO", 0.6)
    z = (out.means["x2"] - EXACT) / out.stderrs["x2"]
    assert z.abs().max() > 10.0, z
