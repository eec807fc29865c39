"""Quick invariant-measure checks against exact values (the full study lives in validation/).

Targets: von Mises on the unit circle (E[x_1] = I_1(k)/I_0(k)) and von Mises-Fisher on S^2
(E[z] = coth(k) - 1/k), U = -k x_last with k = 2, and the ellipse x^2/4 + y^2 = 1 with U = y, whose
surface-measure mean (quadrature) differs from the conditional-measure mean -I_1(1)/I_0(1).

Thresholds: 4 batch-means standard errors plus an allowance for the O(h^2) step-size bias. At
h = 0.2 the measured BAOAB/ABOBA biases are below 1.5e-3 (4000 chains, stderr 9e-4), so at the
h = 0.1 used here they are below 4e-4; we allow 1e-3.

Each family also runs at a radius and a temperature other than 1 (r = 2, tau = 0.5), where a
radius or a temperature entering with the wrong power would show. The problem is then the unit
one rescaled: U = -k x_last with k = KAPPA tau / r (so the law is still vMF with concentration
KAPPA, E[x_last] = r (coth KAPPA - 1 / KAPPA)), lengths times r and times r / sqrt(tau)
(underdamped) or r^2 / tau (overdamped) for the step and the inverse friction, so that its
step-size bias, in units of r, and its mixing are those of the unit problem; the allowance is
r * BIAS.
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
# (radius, temperature): the unit problem, and one where both differ from 1
SCALES = [pytest.param(1.0, 1.0, id="r1-tau1"), pytest.param(2.0, 0.5, id="r2-tau0.5")]


def _vmf(dim, scheme, h=0.1, n_chains=1000, seed=0, overdamped=False, radius=1.0, tau=1.0,
         manifold=None):  # fmt: skip
    sphere = ml.Sphere(radius) if manifold is None else manifold
    x0 = sphere.random(
        n_chains, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    k = KAPPA * tau / radius
    if overdamped:
        sampler = ml.OverdampedLangevin(
            sphere,
            potential=lambda x: -k * x[..., -1],
            step_size=h * radius**2 / tau,
            temperature=tau,
            scheme=scheme,
        )
        n_steps, burn = int(20 / h), int(4 / h)
    else:
        s = radius / math.sqrt(tau)
        sampler = ml.Langevin(
            sphere,
            potential=lambda x: -k * x[..., -1],
            step_size=h * s,
            friction=1.0 / s,
            temperature=tau,
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


@pytest.mark.parametrize(("radius", "tau"), SCALES)
@pytest.mark.parametrize("scheme", ["BAOAB", "ABOBA", "OBABO"])
def test_vmf_on_s2(scheme, radius, tau):
    out = _vmf(3, scheme, radius=radius, tau=tau)
    exact = radius * (1 / math.tanh(KAPPA) - 1 / KAPPA)
    err = abs(float(out.means["z"]) - exact)
    assert err < 4 * float(out.stderrs["z"]) + radius * BIAS, (float(out.means["z"]), exact)
    assert out.max_residual < 1e-12 and out.n_failures == 0


@pytest.mark.parametrize(("radius", "tau"), SCALES)
@pytest.mark.parametrize("kind", ["sphere", "circles"])
def test_von_mises_on_circle(kind, radius, tau):
    # the circle as a 2-d Sphere and as Circles (its own exact rotation)
    manifold = ml.Sphere(radius) if kind == "sphere" else ml.Circles(radius)
    out = _vmf(2, "BAOAB", radius=radius, tau=tau, manifold=manifold)
    exact = radius * ive(1, KAPPA) / ive(0, KAPPA)
    assert abs(float(out.means["z"]) - exact) < 4 * float(out.stderrs["z"]) + radius * BIAS


@pytest.mark.parametrize(("radius", "tau"), SCALES)
def test_overdamped_lm_on_s2(radius, tau):
    # the BAOAB limit: second order for the invariant measure, dt = 0.01 (times r^2 / tau)
    out = _vmf(3, "lm", h=0.01, overdamped=True, radius=radius, tau=tau)
    exact = radius * (1 / math.tanh(KAPPA) - 1 / KAPPA)
    assert abs(float(out.means["z"]) - exact) < 4 * float(out.stderrs["z"]) + radius * BIAS


def _ellipse_exact(scale=1.0):
    """Surface-measure mean of y on x^2/(4 a^2) + y^2/a^2 = 1 (a = scale) under exp(-y / a), i.e.
    U = tau y / a at temperature tau: quadrature over the parametrisation (2a cos t, a sin t),
    whose arc length element is a |(2 sin t, cos t)| dt."""
    ds = lambda t: scale * np.sqrt(4 * np.sin(t) ** 2 + np.cos(t) ** 2)  # noqa: E731
    z = quad(lambda t: np.exp(-np.sin(t)) * ds(t), 0, 2 * np.pi)[0]
    return quad(lambda t: scale * np.sin(t) * np.exp(-np.sin(t)) * ds(t), 0, 2 * np.pi)[0] / z


@pytest.mark.parametrize(
    ("scale", "tau"),
    [SCALES[0], pytest.param(2.0, 0.5, id="r2-tau0.5", marks=pytest.mark.slow)],
)
def test_ellipse_samples_surface_not_conditional_measure(scale, tau):
    """The ellipse with semi-axes (2a, a) and U = tau y / a: the unit problem rescaled (lengths
    times a, times a / sqrt(tau)), whose surface mean is a times the unit one."""
    surface = _ellipse_exact(scale)
    conditional = -scale * ive(1, 1.0) / ive(0, 1.0)
    assert abs(surface - conditional) > 0.05 * scale
    g = torch.Generator().manual_seed(3)
    t = torch.rand(1000, generator=g, dtype=torch.float64) * 2 * math.pi
    x0 = scale * torch.stack([2 * torch.cos(t), torch.sin(t)], -1)
    manifold = ellipse() if scale == 1.0 else ml.ImplicitManifold(
        lambda x: x[..., :1] ** 2 / (4 * scale**2) + x[..., 1:] ** 2 / scale**2 - 1
    )  # fmt: skip
    s = scale / math.sqrt(tau)
    sampler = ml.Langevin(
        manifold,
        potential=lambda x: tau * x[..., 1] / scale,
        step_size=0.1 * s,
        friction=1.0 / s,
        temperature=tau,
    )
    out = sampler.sample(
        x0, n_steps=700, burn_in=100, observables={"y": lambda x: x[..., 1]}, generator=g
    )
    est, se = float(out.means["y"]), float(out.stderrs["y"])
    assert abs(est - surface) < 4 * se + 2 * BIAS * scale
    assert abs(est - conditional) > 8 * se
    assert out.max_residual < 1e-12
