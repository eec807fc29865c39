"""``validation/hmc_acceptance.py --quick``: the grid's structure, acceptance falling with the
step, the energy error's growth in ``d`` and ``h``, and the ESS rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from validation import hmc_acceptance as ha

PNG = b"\x89PNG\r\n\x1a\n"


def test_crossing_interpolates_in_log_h():
    log_h = np.log([0.1, 0.2, 0.4])
    acc = np.array([0.95, 0.8, 0.4])
    assert ha.crossing(log_h, acc, 0.6) == pytest.approx(log_h[1] + 0.5 * (log_h[2] - log_h[1]))
    assert math.isnan(ha.crossing(log_h, acc, 0.99))
    assert math.isnan(ha.crossing(log_h, acc, 0.3))


def test_quick_run(tmp_path):
    path = tmp_path / "ha.json"
    doc = ha.main(["--quick", "--out", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert path.with_suffix(".png").read_bytes()[:8] == PNG
    cfg = ha.QUICK
    grid = doc["grid"]
    assert len(grid) == len(cfg["dims"]) * 2 * len(cfg["c_grid"])
    for d in cfg["dims"]:
        for a_step in ("geodesic", "rattle"):
            pts = sorted((r for r in grid if r["d"] == d and r["a_step"] == a_step),
                         key=lambda r: r["h"])  # fmt: skip
            acc = [r["acceptance"] for r in pts]
            # small steps are accepted; the largest (h > 1 = 2 / the top frequency for d <= 100)
            # is beyond the leapfrog's stability limit
            assert acc[0] > 0.9 and acc[-1] < 0.5, (d, a_step, acc)
            dh = [r["mean_abs_dH"] for r in pts]
            assert dh[0] < dh[2] < dh[3], (d, a_step, dh)
            assert all(r["reverse_failed_fraction"] == 0 for r in pts if a_step == "geodesic")
    for a_step in ("geodesic", "rattle"):
        s = doc["scaling"][a_step]
        for t in s["targets"].values():
            assert t["exponent"] < 0  # a larger dimension needs a smaller step
        e = s["energy_error_fit"]
        # |dH| grows with the step like h^2 and with the dimension like d^(1/2) (Beskos et al.):
        # within four of the fit's standard errors
        assert abs(e["gamma_log_h"] - 2.0) <= 4 * e["gamma_stderr"], e
        assert abs(e["beta_log_d"] - 0.5) <= 4 * e["beta_stderr"], e
    if "skipped" in doc["ess"]:
        pytest.skip(doc["ess"]["skipped"])
    assert path.with_name("ha_ess.png").read_bytes()[:8] == PNG
    rows = doc["ess"]["rows"]
    assert [r["n_chains"] for r in rows] == cfg["ess_chains"]
    for r in rows:
        for run in r["repeats"]:
            assert 0 < run["ess_bulk"] <= 2 * cfg["ess_steps"] * r["n_chains"]
            assert 0.5 < run["acceptance"] <= 1.0
