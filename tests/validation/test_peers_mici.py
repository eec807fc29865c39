"""``validation/peers_mici.py --quick``: ml.HMC and mici on the same problems (schema, not speed).

mici and arviz are peers of the comparison, not dependencies of the package: the test is skipped
where they are not installed. No timing is asserted.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("mici")
pytest.importorskip("arviz")

from validation import peers_mici


def test_numpy_problems_match_the_torch_ones():
    for name in peers_mici.NUMPY_PROBLEMS:
        assert peers_mici.check_numpy_problem(name) < 1e-12


def test_quick_run(tmp_path):
    out = peers_mici.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "peers_mici.json").read_text())
    assert result == json.loads(json.dumps(out))
    assert (tmp_path / "peers_mici.png").stat().st_size > 0
    assert result["quick"] is True and result["schema_version"] == peers_mici.SCHEMA_VERSION
    env = result["environment"]
    assert {"torch", "mici", "arviz", "torch_threads", "load_average_start"} <= set(env)
    assert env["torch_threads"] == 1
    assert result["settings"]["step_size"] == peers_mici.STEP_SIZE

    cfg = peers_mici.CONFIG["quick"]
    rows = result["rows"]
    assert len(rows) == len(cfg["problems"]) * (len(cfg["ml"]) + len(cfg["mici"]))
    assert "ellipse" in cfg["problems"]
    for name in cfg["problems"]:
        samplers = {r["sampler"] for r in rows if r["problem"] == name}
        assert samplers == {"ml.HMC", "mici"}
    keys = {"problem", "sampler", "n_chains", "n_steps", "burn_in", "acceptance_rate",
            "solve_failure_rate", "reverse_failure_rate", "wall_s", "cpu_s", "observables",
            "min_ess_bulk", "ess_per_s", "max_abs_z", "load_average", "max_residual"}  # fmt: skip
    for r in rows:
        assert keys <= set(r)
        assert 0 < r["acceptance_rate"] <= 1
        assert 0 <= r["solve_failure_rate"] <= 1 and 0 <= r["reverse_failure_rate"] <= 1
        assert r["wall_s"] > 0 and r["ess_per_s"] > 0
        assert r["max_residual"] < 1e-8  # both keep the chains on the set
        obs = r["observables"]
        assert set(obs) == set(peers_mici.get_problem(r["problem"]).exact)
        for o in obs.values():
            assert {"estimate", "mcse", "ess_bulk", "exact", "z"} <= set(o)
            assert math.isfinite(o["z"]) and o["mcse"] > 0 and o["ess_bulk"] > 0
        assert r["max_abs_z"] == max(abs(o["z"]) for o in obs.values())

    comps = result["comparisons"]
    assert {(c["problem"], c["mici_chains"]) for c in comps} == {
        (name, c) for name in cfg["problems"] for c, _ in cfg["mici"]
    }
    for c in comps:
        assert c["ratio"] == pytest.approx(c["ml_ess_per_s"] / c["mici_ess_per_s"])
