"""Metropolis-adjusted constrained HMC: the leapfrog's reversibility and volume preservation, the
rejection semantics, the acceptance of an exact flow, and exactness at a large step size.

Exactness is the point of the kernel: at a step size where BAOAB's bias on the ellipse is tens of
standard errors, HMC's averages must agree with the exact surface values within 4 standard
errors (and the conditional option with the conditional values).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_langevin as ml
from manifold_langevin.testing import PROBLEMS

DT = torch.float64


def _ellipse():
    return ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)


def _on_ellipse(t):
    return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)


def _tangent(t):
    """The unit tangent of the ellipse at parameter ``t``."""
    d = torch.stack([-2 * torch.sin(t), torch.cos(t)], dim=-1)
    return d / d.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------- the leapfrog itself
@settings(max_examples=40, deadline=None, derandomize=True)
@given(t=st.floats(-3.0, 3.0), v=st.floats(-1.5, 1.5), h=st.floats(0.01, 0.3),
       n=st.integers(1, 4))  # fmt: skip
def test_leapfrog_is_reversible(t, v, h, n):
    kernel = ml.integrators.HMCKernel(_ellipse(), lambda x: x[..., 1], step_size=h, n_leapfrog=n)
    tt = torch.tensor([t], dtype=DT)
    x0, p0 = _on_ellipse(tt), v * _tangent(tt)
    x1, p1, f1, ok = kernel.leapfrog(x0, p0, kernel.force(x0))
    assert bool(ok.all())
    xb, pb, _, okb = kernel.leapfrog(x1, -p1, f1)
    assert bool(okb.all())
    torch.testing.assert_close(xb, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(-pb, p0, rtol=0, atol=1e-10)


def test_leapfrog_preserves_phase_space_volume():
    # on the ellipse (x = (2 cos t, sin t)) the canonical pair is (t, p_t) with p_t = p . dx/dt:
    # a symplectic map has Jacobian determinant 1 in it (finite differences, central)
    kernel = ml.integrators.HMCKernel(_ellipse(), lambda x: x[..., 1] + 0.3 * x[..., 0] ** 2,
                                      step_size=0.25, n_leapfrog=3)  # fmt: skip

    def flow(t, pt):
        tt = torch.tensor([t], dtype=DT)
        x = _on_ellipse(tt)
        dxdt = torch.stack([-2 * torch.sin(tt), torch.cos(tt)], dim=-1)
        p = pt * dxdt / (dxdt * dxdt).sum(-1, keepdim=True)
        x1, p1, _, ok = kernel.leapfrog(x, p, kernel.force(x))
        assert bool(ok.all())
        t1 = torch.atan2(x1[..., 1], x1[..., 0] / 2)
        d1 = torch.stack([-2 * torch.sin(t1), torch.cos(t1)], dim=-1)
        return float(t1), float((p1 * d1).sum(-1))

    eps = 1e-6
    for t, pt in [(0.3, 0.7), (-2.0, -1.1), (1.4, 0.2)]:
        a = [(u - v) / (2 * eps) for u, v in zip(flow(t + eps, pt), flow(t - eps, pt))]
        b = [(u - v) / (2 * eps) for u, v in zip(flow(t, pt + eps), flow(t, pt - eps))]
        det = a[0] * b[1] - a[1] * b[0]
        assert det == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------ rejection semantics
def test_a_rejected_proposal_leaves_the_state_and_flips_the_momentum():
    # friction 0: the partial refresh is the identity, so a rejected GHMC step returns -p exactly
    m = ml.Sphere()
    x0 = m.random(64, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    # a potential so steep that every proposal is rejected
    ghmc = ml.HMC(m, lambda x: 1e4 * x[..., 2], step_size=0.5, friction=0.0)
    g = torch.Generator().manual_seed(1)
    state = ghmc.init(x0, generator=g)
    new, _, _ = ghmc.step(state, g)
    rejected = ~new.info["accepted"]
    assert int(rejected.sum()) >= 60
    assert torch.equal(new.x[rejected], state.x[rejected])
    assert torch.equal(new.p[rejected], -state.p[rejected])
    assert torch.equal(new.force[rejected], state.force[rejected])


def test_failed_solves_are_rejections_never_nan():
    m = _ellipse()
    t = torch.linspace(0, 2 * math.pi, 201, dtype=DT)[:-1]
    hmc = ml.HMC(m, lambda x: x[..., 1], step_size=3.0, n_leapfrog=2)
    out = hmc.sample(_on_ellipse(t), n_steps=20, generator=torch.Generator().manual_seed(0))
    assert out.n_failures > 0 and out.n_rejected >= out.n_failures
    assert bool(torch.isfinite(out.state.x).all())
    assert out.max_residual < 1e-10


def test_acceptance_is_one_for_a_flat_potential_with_the_exact_geodesic():
    m = ml.Sphere(1.7)
    x0 = m.random(500, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    hmc = ml.HMC(m, step_size=0.9, n_leapfrog=5)
    out = hmc.sample(x0, n_steps=20, generator=torch.Generator().manual_seed(1))
    assert out.acceptance_rate == 1.0 and out.n_reverse_failed == 0


# ---------------------------------------------------------------------------------- exactness
def _run(sampler, problem, n_chains=2000, n_steps=400, burn_in=100, seed=0):
    x0 = problem.initial(n_chains, dtype=DT, generator=torch.Generator().manual_seed(seed))
    return sampler.sample(x0, n_steps=n_steps, burn_in=burn_in,
                          observables=dict(problem.observables),
                          generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip


@pytest.mark.parametrize("friction", [None, 1.0], ids=["hmc", "ghmc"])
def test_exact_at_a_step_size_where_baoab_is_biased(friction):
    p = PROBLEMS["ellipse"]
    # BAOAB at h = 0.8 gives E[y] = -0.533 against the exact -0.5031 (30 standard errors off)
    hmc = ml.HMC(p.make_manifold(), p.potential, step_size=0.8, friction=friction)
    out = _run(hmc, p)
    assert out.acceptance_rate > 0.5
    for k in p.observables:
        est, se = float(out.means[k]), float(out.stderrs[k])
        assert abs(est - p.exact[k]) <= 4 * se, (k, est, se, p.exact[k])
        # and the test has the power to see the other measure
        assert abs(p.conditional[k] - p.exact[k]) > 10 * se or k == "t"


@pytest.mark.slow
def test_conditional_measure_is_hit_by_hmc_and_langevin():
    p = PROBLEMS["ellipse"]
    m = p.make_manifold()
    for sampler in (ml.HMC(m, p.potential, step_size=0.6, measure="conditional"),
                    ml.Langevin(m, p.potential, step_size=0.1, measure="conditional")):  # fmt: skip
        out = _run(sampler, p, n_steps=300, burn_in=100)
        for k in ("y_sq", "x_sq"):  # the observables that separate the two measures most
            est, se = float(out.means[k]), float(out.stderrs[k])
            assert abs(est - p.conditional[k]) <= 4 * se + 2e-3, (sampler, k, est, se)
            assert abs(est - p.exact[k]) > 10 * se


def test_conditional_equals_surface_where_the_gram_determinant_is_constant():
    m = ml.Sphere(2.0)
    x0 = m.random(8, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    runs = []
    for measure in ("surface", "conditional"):
        s = ml.Langevin(m, lambda x: -x[..., 0], step_size=0.1, measure=measure)
        runs.append(s.sample(x0, 30, generator=torch.Generator().manual_seed(1)).state.x)
    assert torch.equal(runs[0], runs[1])


# --------------------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    m = ml.Sphere()
    with pytest.raises(ValueError, match="temperature > 0"):
        ml.HMC(m, lambda x: x[..., 0], step_size=0.1, temperature=0.0)
    with pytest.raises(ValueError, match="potential"):
        ml.HMC(m, force=lambda x: torch.zeros_like(x), step_size=0.1)
    with pytest.raises(ValueError, match="n_leapfrog"):
        ml.HMC(m, step_size=0.1, n_leapfrog=0)
    with pytest.raises(ValueError, match="measure"):
        ml.Langevin(m, step_size=0.1, measure="flexible")
    with pytest.raises(ValueError, match="friction"):
        ml.HMC(m, step_size=0.1, friction=-1.0)


def test_rank_deficient_jacobian_is_named():
    origin = ml.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True))  # grad g = 0 at 0
    twice = ml.ImplicitManifold(lambda x: torch.cat([x[..., :1] - 1, x[..., :1] - 1], dim=-1))
    for m, x0 in ((origin, torch.zeros(3, 2, dtype=DT)), (twice, torch.ones(3, 2, dtype=DT))):
        for sampler in (ml.Langevin(m, step_size=0.1), ml.HMC(m, step_size=0.1)):
            with pytest.raises(ml.RankDeficientError, match="rank deficient") as err:
                sampler.sample(x0, 5)
            assert err.value.chains == [0, 1, 2]


def test_a_run_whose_steps_all_fail_warns():
    p = PROBLEMS["ellipse"]
    s = ml.Langevin(p.make_manifold(), p.potential, step_size=50.0)
    x0 = p.initial(50, dtype=DT, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ml.UntrustedRunWarning, match="every chain-step failed"):
        s.sample(x0, 20, generator=torch.Generator().manual_seed(1))
