"""``validation/rattle_budget.py``: its search finds the smallest sufficient budget."""

from __future__ import annotations

import json

import torch

from manifold_langevin import Stiefel
from validation import rattle_budget


def test_quick_run_reports_the_smallest_budget(tmp_path):
    out = rattle_budget.main(["--quick", "--out", str(tmp_path / "rb.json")])
    assert json.loads((tmp_path / "rb.json").read_text()) == out
    rows = out["rows"]
    assert len(rows) == 2 * 2 * len(rattle_budget.STEPS) * len(rattle_budget.NORMALS)
    m = Stiefel()
    for r in rows:
        assert r["covered"] == (r["needed"] is not None and r["needed"] <= r["budget"])
    # the minimum, checked directly on a few rows: converged at `needed`, not one below
    for r in [r for r in rows if r["step"] in (0.1, 0.3) and r["normal"] == 1.0]:
        n, k = r["shape"]
        gen = torch.Generator().manual_seed(0)
        dtype = getattr(torch, r["dtype"])
        x, u = rattle_budget.random_step(n, k, r["step"], r["normal"], dtype, gen, r["trials"])
        need = r["needed"]
        assert m.rattle(x, u, 1.0, max_iter=need)[2].all()
        if need > 0:
            assert not m.rattle(x, u, 1.0, max_iter=need - 1)[2].all()
    # more iterations are needed for larger steps and in float64 (smaller tolerance)
    by = {(r["dtype"], tuple(r["shape"]), r["step"], r["normal"]): r["needed"] for r in rows}
    assert by[("float64", (20, 10), 0.3, 0.0)] > by[("float64", (20, 10), 0.1, 0.0)]
    assert by[("float64", (66, 64), 0.1, 0.0)] > by[("float32", (66, 64), 0.1, 0.0)]


def test_shake_reach_quick_run(tmp_path):
    """``validation/shake_reach.py --quick``: exact Newton (p <= 8) reaches further than the
    Neumann-series Newton on a near-square frame, and each reported reach converges."""
    from validation import shake_reach

    out = shake_reach.main(["--quick", "--out", str(tmp_path / "sr.json")])
    by = {(r["dtype"], tuple(r["shape"])): r["reach"] for r in out["rows"]}
    m = Stiefel()
    for dtype in ("float32", "float64"):
        assert by[(dtype, (6, 3))] > by[(dtype, (10, 9))]
        gen = torch.Generator().manual_seed(0)
        x, v = rattle_budget.random_step(10, 9, 1.0, 0.0, getattr(torch, dtype), gen, 20)
        assert m.shake(x, x + by[(dtype, (10, 9))] * v)[1].all()
