"""``validation/hmc_reversibility.py --quick``: on the quartic torus at ``h = 1`` SHAKE's
backward solve reaches a second root, and the reversibility check rejects those proposals."""

from __future__ import annotations

import json

import torch

from manifold_langevin.testing import get_problem
from validation import hmc_reversibility as hr

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_run_reports_both_settings(tmp_path):
    path = tmp_path / "hr.json"
    doc = hr.main(["--quick", "--out", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert path.with_suffix(".png").read_bytes()[:8] == PNG
    (row,) = doc["cases"]["torus_newton6"]["runs"]
    assert row["h"] == 1.0
    problem = get_problem("torus_quartic")
    for key, check in (("no_check", False), ("check", True)):
        run = row[key]
        assert run["reverse_check"] is check
        assert set(run["observables"]) == set(problem.observables)
        for k, v in run["observables"].items():
            assert v["exact"] == problem.exact[k] and v["stderr"] > 0
            assert abs(v["z"] - (v["estimate"] - v["exact"]) / v["stderr"]) < 1e-9
        assert 0.3 < run["acceptance_rate"] < 1.0
        assert run["max_residual"] < 1e-10
    # the check rejects something here, and only the checked run counts it
    assert row["check"]["reverse_failed_rate"] > 0
    assert row["no_check"]["reverse_failed_rate"] == 0
    assert row["check"]["acceptance_rate"] < row["no_check"]["acceptance_rate"]
    cl = row["classification"]
    assert cl["n"] == hr.QUICK["n_classify"]
    assert cl["other_root"] > 0 and cl["backward_failed"] > 0
    # another root is a tube diameter (2 r = 2) away, not a loose tolerance
    assert cl["other_root_median_distance"] > 0.5
    # fixed seeds: the checked run is exact within the script's own criterion
    assert row["check"]["exact"]


def test_a_proposal_that_fails_the_check_is_never_accepted():
    p = get_problem("torus_quartic")
    kernel = hr._kernel(p, 6, 1.0, True)
    gen = torch.Generator().manual_seed(0)
    state = kernel.init(p.initial(4000, dtype=torch.float64, generator=gen), generator=gen)
    new, _, _ = kernel.step(state, gen)
    info = new.info
    assert bool(info["reverse_failed"].any())
    assert not bool((info["reverse_failed"] & info["accepted"]).any())
    failed = info["reverse_failed"]
    assert torch.equal(new.x[failed], state.x[failed])
