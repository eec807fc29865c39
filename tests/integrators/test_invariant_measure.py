"""Quick invariant-measure checks against exact values (the full study lives in validation/).

Targets: von Mises on the unit circle (E[x_1] = I_1(k)/I_0(k)) and von Mises-Fisher on S^2
(E[z] = coth(k) - 1/k), U = -k x_last with k = 2, and the ellipse x^2/4 + y^2 = 1 with U = y, whose
surface-measure mean (quadrature) differs from the conditional-measure mean -I_1(1)/I_0(1).

Thresholds: 4 batch-means standard errors plus an allowance for the O(h^2) step-size bias. At
h = 0.2 the measured BAOAB/ABOBA biases are below 1.5e-3 (4000 chains, stderr 9e-4), so at the
h = 0.1 used here they are below 4e-4; we allow 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import ive

import manifold_langevin as ml
from tests.cases import ellipse

KAPPA = 2.0
BIAS = 1e-3


def _vmf(dim, scheme, h=0.1, n_chains=1000, seed=0, overdamped=False):
    sphere = ml.Sphere()
    x0 = sphere.random(
        n_chains, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    if overdamped:
        sampler = ml.OverdampedLangevin(
            sphere, potential=lambda x: -KAPPA * x[..., -1], step_size=h, scheme=scheme
        )
        n_steps, burn = int(20 / h), int(4 / h)
    else:
        sampler = ml.Langevin(
            sphere,
            potential=lambda x: -KAPPA * x[..., -1],
            step_size=h,
            friction=1.0,
            scheme=scheme,
        )
        n_steps, burn = int(60 / h), int(10 / h)
    out = sampler.sample(
        x0,
        n_steps=n_steps,
        burn_in=burn,
        observables={"z": lambda x: x[..., -1]},
        generator=torch.Generator().manual_seed(seed),
    )
    return out


@pytest.mark.parametrize("scheme", ["BAOAB", "ABOBA", "OBABO"])
def test_vmf_on_s2(scheme):
    out = _vmf(3, scheme)
    exact = 1 / math.tanh(KAPPA) - 1 / KAPPA
    err = abs(float(out.means["z"]) - exact)
    assert err < 4 * float(out.stderrs["z"]) + BIAS, (float(out.means["z"]), exact)
    assert out.max_residual < 1e-12 and out.n_failures == 0


def test_von_mises_on_circle():
    out = _vmf(2, "BAOAB")
    exact = ive(1, KAPPA) / ive(0, KAPPA)
    assert abs(float(out.means["z"]) - exact) < 4 * float(out.stderrs["z"]) + BIAS


def test_overdamped_lm_on_s2():
    # the BAOAB limit: second order for the invariant measure, dt = 0.01
    out = _vmf(3, "lm", h=0.01, overdamped=True)
    exact = 1 / math.tanh(KAPPA) - 1 / KAPPA
    assert abs(float(out.means["z"]) - exact) < 4 * float(out.stderrs["z"]) + BIAS


def _ellipse_exact():
    ds = lambda t: np.sqrt(4 * np.sin(t) ** 2 + np.cos(t) ** 2)  # noqa: E731
    z = quad(lambda t: np.exp(-np.sin(t)) * ds(t), 0, 2 * np.pi)[0]
    return quad(lambda t: np.sin(t) * np.exp(-np.sin(t)) * ds(t), 0, 2 * np.pi)[0] / z


def test_ellipse_samples_surface_not_conditional_measure():
    surface, conditional = _ellipse_exact(), -ive(1, 1.0) / ive(0, 1.0)
    assert abs(surface - conditional) > 0.05
    g = torch.Generator().manual_seed(3)
    t = torch.rand(1000, generator=g, dtype=torch.float64) * 2 * math.pi
    x0 = torch.stack([2 * torch.cos(t), torch.sin(t)], -1)
    sampler = ml.Langevin(ellipse(), potential=lambda x: x[..., 1], step_size=0.1, friction=1.0)
    out = sampler.sample(
        x0, n_steps=700, burn_in=100, observables={"y": lambda x: x[..., 1]}, generator=g
    )
    est, se = float(out.means["y"]), float(out.stderrs["y"])
    assert abs(est - surface) < 4 * se + 2 * BIAS
    assert abs(est - conditional) > 8 * se
    assert out.max_residual < 1e-12
