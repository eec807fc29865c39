"""Quick run of ``validation.spiral``: the table, JSON and figure are written, every method learns.

The quick settings train for 60 epochs on two seeds; measured test accuracies are 0.67-0.88
(chance is 0.5, the Bayes accuracy about 0.93), so ``> 0.6`` for every method and seed leaves
margin for seed variation while still failing for a method that does not learn.
"""

from __future__ import annotations

import json

from validation import spiral


def test_quick_run_writes_table_and_every_method_learns(tmp_path, capsys):
    assert spiral.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "quick" / "spiral.json").read_text())
    png = (tmp_path / "quick" / "spiral.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["method"]: r for r in doc["table"]}
    assert list(rows) == list(spiral.METHODS)
    runs = doc["runs"]
    assert len(runs) == len(spiral.METHODS) * len(spiral.QUICK.seeds)
    for r in runs:
        assert r["test_acc"] > 0.6, (r["method"], r["seed"], r["test_acc"])
        assert r["train_acc"] > 0.6, (r["method"], r["seed"], r["train_acc"])
        assert "grid_prob" not in r
    for method in ("c-sgd", "c-sgld"):
        assert rows[method]["max_residual"] <= 1e-5
        for r in runs:
            if r["method"] == method:
                assert r["max_abs_weight"] <= max(spiral.QUICK.radius) * (1 + 1e-6)
    out = capsys.readouterr().out
    for label in spiral.METHODS.values():
        assert label in out
    assert doc["meta"]["settings"]["epochs"] == spiral.QUICK.epochs


def test_constrained_sgd_runs_at_the_cola_twin_of_the_sgd_settings():
    """``c-sgd`` takes its step and friction from ``ml.optim.sgd_equivalent`` of the SGD settings:
    the tuned ``h = 0.3``, ``gamma = 1`` exactly, and SGD's momentum is ``exp(-gamma h)``."""
    import math

    import torch

    import manifold_langevin as ml

    s = spiral.SETTINGS
    twin = ml.optim.sgd_equivalent(s.sgd_lr, s.sgd_momentum)
    assert (twin["lr"], twin["friction"]) == (0.3, 1.0)
    assert s.sgd_momentum == math.exp(-0.3)
    torch.manual_seed(0)
    opt = spiral.make_optimizer("c-sgd", ml.nn.mlp([2, 8, 2]), s, seed=0)
    assert {(g["lr"], g["friction"], g.get("radius")) for g in opt.param_groups} == {
        (0.3, 1.0, 2.0),
        (0.3, 1.0, 0.5),
        (0.3, 1.0, None),
    }
