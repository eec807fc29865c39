"""Quick runs of ``manifold_langevin.testing.invariant_measure``: exact values hit, conditional
values missed.

The thresholds are ``4 stderr + allowance`` with the runner's step-size bias allowance
``C h^p`` (``manifold_langevin.testing.invariant_measure.bias_allowance``; ``C = 0.25, p = 2`` for
BAOAB, so 2.5e-3 at the ``h = 0.1`` used here). Justification (measured with 4000 chains, T = 100):
BAOAB's bias at h = 0.2 is at most 0.0084 over all problems (vMF on S^9; it falls to 0.0015 at h =
0.1, second order), i.e. ``|bias| <= 0.21 h^2``; on the problems tested here (vMF S^2, von Mises
S^1, ellipse, torus) it is at most 0.0069 at h = 0.2, i.e. below 2e-3 at h = 0.1. The quick runs'
stderrs are 3e-3 to 4e-2, so the allowance is at most comparable to one standard error.
"""

from __future__ import annotations

import json

import pytest

from manifold_langevin.testing import invariant_measure as im
from manifold_langevin.testing.problems import PROBLEMS


def _check(rec):
    tol = im.N_SIGMA
    for key, o in rec["observables"].items():
        assert abs(o["error"]) <= tol * o["stderr"] + rec["bias_allowance"], (
            f"{rec['problem']}/{rec['scheme']} {key}: {o['estimate']:.5f} +- {o['stderr']:.1e} "
            f"vs exact {o['exact']:.5f} (z {o['z']:+.1f})"
        )
    assert rec["consistent"]
    assert rec["max_residual"] < 1e-10
    assert rec["n_failures"] == 0


@pytest.mark.parametrize("name", ["vmf_s2", "von_mises_s1"])
def test_baoab_hits_exact_values(name):
    (rec,) = im.run(problems=[name], schemes=["BAOAB"], quick=True, seed=0)
    assert rec["step_size"] == pytest.approx(0.1)
    _check(rec)
    # the histogram of the marginal matches the density (chi-square with the batch-means
    # covariance; a p-value below 1e-4 would be a 4-sigma event)
    m = rec["marginal"]
    assert m["chi2_p_value"] > 1e-4, m["chi2"]
    assert m["ks_p_value"] > 1e-4, m["ks_statistic"]


@pytest.mark.parametrize("name", ["ellipse", "torus_quartic"])
def test_surface_measure_not_conditional(name):
    (rec,) = im.run(problems=[name], schemes=["BAOAB"], quick=True, seed=0)
    _check(rec)
    assert rec["rejects_conditional"] is True
    # at least one observable misses the conditional value by many standard errors
    z_cond = max(abs(o["z_conditional"]) for o in rec["observables"].values())
    assert z_cond > 10, z_cond
    m = rec["marginal"]
    assert m["chi2_conditional"] > 5 * m["chi2"]


def test_cli_writes_json_and_png(tmp_path):
    rc = im.main(["--quick", "--problem", "von_mises_s1", "--scheme", "BAOAB",
                  "--out", str(tmp_path)])  # fmt: skip
    out = tmp_path / "quick"
    data = json.loads((out / "invariant_measure.json").read_text())
    assert rc == 0 and data["meta"]["all_consistent"]
    (rec,) = data["runs"]
    assert rec["problem"] == "von_mises_s1" and rec["scheme"] == "BAOAB"
    assert set(rec["observables"]) == set(PROBLEMS["von_mises_s1"].observables)
    assert (out / "invariant_measure_von_mises_s1.png").stat().st_size > 1000


def test_plan_and_errors():
    plan = im._plan(None, None, quick=True)
    assert {p for p, _, _ in plan} == set(PROBLEMS)
    assert all(s in im.SCHEMES for _, s, _ in plan)
    with pytest.raises(KeyError, match="valid names"):
        im.run(problems=["nope"])
    with pytest.raises(ValueError, match="unknown scheme"):
        im.run(problems=["vmf_s2"], schemes=["RK4"])
