"""``validation/hmc_exactness.py --quick``: the JSON and the figure are written, BAOAB is biased at
the quick step sizes, and HMC, generalised HMC and the conditional HMC run are within 4 standard
errors of the values of their measures (fixed seeds)."""

from __future__ import annotations

import json

from manifold_langevin.testing import get_problem
from validation import hmc_exactness as he


def test_leapfrog_rule():
    assert [he.n_leapfrog_for(h) for h in (0.1, 0.2, 0.35, 0.5, 1.0, 2.0)] == [5, 5, 3, 2, 1, 1]


def test_quick_run(tmp_path):
    assert he.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "quick" / "hmc_exactness.json").read_text())
    assert (tmp_path / "quick" / "hmc_exactness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["meta"]["quick"] and doc["meta"]["all_exact_runs_within"]
    assert list(doc["problems"]) == list(he.QUICK_PROBLEMS)
    for name, entry in doc["problems"].items():
        problem = get_problem(name)
        h = he.QUICK_PROBLEMS[name][0]
        assert entry["step_size"] == h and [r["step_size"] for r in entry["grid"]] == [h]
        runs = entry["runs"]
        expected = {"BAOAB", "HMC", "GHMC"} | (
            {"HMC-conditional"} if problem.conditional is not None else set()
        )
        assert set(runs) == expected
        assert runs["HMC"]["n_leapfrog"] == he.n_leapfrog_for(h)
        assert runs["GHMC"]["n_leapfrog"] == 1 and runs["GHMC"]["friction"] == he.FRICTION
        assert runs["BAOAB"]["acceptance_rate"] is None
        for label, rec in runs.items():
            assert set(rec["observables"]) == set(problem.observables)
            assert rec["max_residual"] < 1e-9
            for key, o in rec["observables"].items():
                assert o["exact"] == problem.exact[key]
                assert abs(o["z"] - (o["estimate"] - o["exact"]) / o["stderr"]) < 1e-9
            if label != "BAOAB":
                assert rec["acceptance_rate"] > 0.5, (name, label)
                assert rec["within"] and rec["max_abs_z"] <= he.N_SIGMA, (name, label)
    # the quick step sizes are where BAOAB is biased, even at this run length
    assert doc["problems"]["sphere_plane"]["runs"]["BAOAB"]["max_abs_z"] > he.BIAS_SIGMA
    # the ellipse's conditional HMC run hits the conditional values and misses the surface ones
    cond = doc["problems"]["ellipse"]["runs"]["HMC-conditional"]
    assert cond["measure"] == "conditional" and cond["misses_surface"]
    assert all(abs(o["z_conditional"]) <= he.N_SIGMA for o in cond["observables"].values())
