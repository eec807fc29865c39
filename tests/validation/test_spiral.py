"""Quick run of ``validation.spiral``: the table, JSON and figure are written, every method learns.

"Learns" is measured against the best linear classifier (logistic regression) fitted to the same
training draw, which is what a model that found no curved boundary could reach: 0.622 and 0.658
test accuracy on seeds 0 and 1 (chance is 0.5, the untrained networks 0.38 and 0.50, the Bayes
accuracy about 0.93). The quick settings train for 60 epochs; measured test accuracies are
0.73-0.81. Each accuracy is a proportion over ``n_test = 2000`` points with variance at most
``0.25 / n_test``, so the difference of two on the same test points has standard deviation at
most ``sqrt(0.5 / 2000) = 0.016``; a method must beat the linear baseline by 5 of those (0.079).
On its own 100 training points a method must beat the linear fit's accuracy (0.67 and 0.66;
measured 0.83-0.88).
"""

from __future__ import annotations

import json
import math

from sklearn.linear_model import LogisticRegression

from manifold_langevin.nn import data
from validation import spiral


def _linear_baseline(seed, s=spiral.QUICK):
    """``(train, test)`` accuracy of logistic regression on the spiral draw of ``seed``."""
    train, test = data.spirals(s.n_train, s.n_test, s.noise, seed, turns=s.turns)
    fit = LogisticRegression().fit(train.x.numpy(), train.y.numpy())
    return fit.score(train.x.numpy(), train.y.numpy()), fit.score(test.x.numpy(), test.y.numpy())


def test_quick_run_writes_table_and_every_method_learns(tmp_path, capsys):
    assert spiral.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "quick" / "spiral.json").read_text())
    png = (tmp_path / "quick" / "spiral.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["method"]: r for r in doc["table"]}
    assert list(rows) == list(spiral.METHODS)
    runs = doc["runs"]
    assert len(runs) == len(spiral.METHODS) * len(spiral.QUICK.seeds)
    baseline = {seed: _linear_baseline(seed) for seed in spiral.QUICK.seeds}
    margin = 5 * math.sqrt(0.5 / spiral.QUICK.n_test)
    for r in runs:
        linear_train, linear_test = baseline[r["seed"]]
        assert r["test_acc"] >= linear_test + margin, (r["method"], r["seed"], r["test_acc"])
        assert r["train_acc"] > linear_train, (r["method"], r["seed"], r["train_acc"])
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
