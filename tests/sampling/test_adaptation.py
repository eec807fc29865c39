"""Step-size adaptation of the HMC samplers: the dual-averaging recurrence, the acceptance it
reaches, the step frozen after burn-in, and exactness of the adapted run."""

from __future__ import annotations

import math

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.sampling.adaptation import DualAveraging

DT = torch.float64


def _sphere_start(n, generator):
    return torch.nn.functional.normalize(torch.randn(n, 3, dtype=DT, generator=generator), dim=-1)


def test_dual_averaging_follows_its_recurrence():
    # the recurrence written out in floats, against the tensor state
    h0, delta, gamma, t0, kappa = 0.2, 0.65, 0.05, 10.0, 0.75
    da = DualAveraging(h0, delta, torch.empty((), dtype=DT))
    mu, hbar, log_h, log_hbar = math.log(10 * h0), 0.0, math.log(h0), 0.0
    alphas = [0.1, 0.9, 0.5, 1.0, 0.0, 0.7, 0.66, 0.64]
    for m, a in enumerate(alphas, start=1):
        da.update(torch.tensor([a, a, math.nan if m == 3 else a], dtype=DT))
        a = (2 * a) / 3 if m == 3 else a  # a NaN (failed proposal) counts as 0
        w = 1 / (m + t0)
        hbar = (1 - w) * hbar + w * (delta - a)
        log_h = mu - math.sqrt(m) / gamma * hbar
        log_hbar = m**-kappa * log_h + (1 - m**-kappa) * log_hbar
        assert float(da.step_size) == pytest.approx(math.exp(log_h), rel=1e-12)
        assert float(da.final_step_size) == pytest.approx(math.exp(log_hbar), rel=1e-12)


@pytest.mark.parametrize("friction, target", [(None, 0.65), (1.0, 0.9)])
def test_adaptation_reaches_the_target_acceptance(friction, target):
    # vMF on S^2, HMC through RATTLE (geodesic=False, the reversibility check on), generalised
    # HMC along the exact geodesic; start far from the right step. Acceptance over 200 chains x
    # 300 steps has a standard error below 0.005; what remains is the adaptation's own error,
    # which Hoffman and Gelman's averaging keeps to a few hundredths after a few hundred updates
    hmc = ml.HMC(ml.Sphere(), potential=lambda x: -4.0 * x[..., 2], step_size=0.02, n_leapfrog=4,
                 friction=friction, geodesic=friction is not None,
                 adapt_step_size=True)  # fmt: skip
    assert hmc.target_accept == target
    g = torch.Generator().manual_seed(0)
    out = hmc.sample(_sphere_start(200, g), 700, burn_in=400, generator=g,
                     observables={"z": lambda x: x[..., 2]})  # fmt: skip
    assert abs(out.acceptance_rate - target) < 0.04, (out.acceptance_rate, out.step_size)
    assert out.step_size > 0.1  # it moved far from the start
    assert hmc.step_size == 0.02  # the sampler's own setting is left as it was
    # exact whatever the step: E[z] of vMF(kappa = 4) on S^2 is coth(4) - 1/4
    exact = 1 / math.tanh(4.0) - 0.25
    assert abs(float(out.means["z"]) - exact) < 4 * float(out.mcse["z"])


def test_the_step_is_frozen_after_burn_in():
    hmc = ml.HMC(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=0.1, n_leapfrog=2,
                 adapt_step_size=True)  # fmt: skip
    steps = []
    for n in (60, 120):
        g = torch.Generator().manual_seed(1)
        steps.append(hmc.sample(_sphere_start(16, g), n, burn_in=50, generator=g).step_size)
    assert steps[0] == steps[1]
    # and the recorded part is the fixed kernel at that step: nine more steps of it from the
    # state one step after burn-in (the generator where that run left it) end where the longer
    # adaptive run ends
    runs = []
    for n in (51, 60):
        g = torch.Generator().manual_seed(1)
        runs.append((hmc.sample(_sphere_start(16, g), n, burn_in=50, generator=g), g))
    (short, g), (long, _) = runs
    fixed = ml.HMC(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=short.step_size,
                   n_leapfrog=2)  # fmt: skip
    state = short.state
    for _ in range(9):
        state, _, _ = fixed.step(state, g)
    torch.testing.assert_close(state.x, long.state.x, rtol=0, atol=1e-12)


def test_adaptation_needs_a_burn_in_and_a_valid_target():
    hmc = ml.HMC(ml.Sphere(), step_size=0.1, adapt_step_size=True)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="burn_in"):
        hmc.sample(_sphere_start(4, g), 10, generator=g)
    for bad in (0.0, 1.0, -0.5, "high"):
        with pytest.raises(ValueError, match="target_accept"):
            ml.HMC(ml.Sphere(), step_size=0.1, adapt_step_size=True, target_accept=bad)
    with pytest.raises(ValueError, match="adapt_step_size"):
        ml.HMC(ml.Sphere(), step_size=0.1, adapt_step_size="yes")
