"""Quick runs of the real-data experiments (``validation.exp_e2``, ``validation.exp_orthogonal``).

They check that the scripts write their JSON and PNG, that constrained weights stay on their
constraint set at every step (float32: residual below 1e-5), and that a few steps of every
method lower the training loss. Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``. ``.ci/run`` installs it and sets ``MANIFOLD_LANGEVIN_CI=1``: there a
missing dataset fails the module (a broken install must not pass as a skip); elsewhere (a
developer machine without the package) the module is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.optim import CoLA
from tests.validation import fashion_mnist
from validation import exp_e2, exp_orthogonal
from validation.experiment_data import load_fashion_mnist

MISSING = fashion_mnist.require()

TOL = 1e-5


@pytest.fixture(autouse=True)
def _dataset():
    # under CI each test of the module fails (the rest of the suite still runs)
    fashion_mnist.fail_if_missing(MISSING)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batches(n=512):
    xtr, ytr, _, _ = load_fashion_mnist()
    return xtr[:n].reshape(n, -1), ytr[:n]


def _ortho_residual(w: torch.Tensor) -> float:
    m = w.detach().reshape(w.shape[0], -1).double()
    gram = m @ m.T if m.shape[0] < m.shape[1] else m.T @ m
    return float((gram - torch.eye(len(gram), dtype=gram.dtype)).abs().max())


#: tuned value used here (default: the middle of the grid). The CNN's first steps on raw [0, 1]
#: pixels are the least stable: at lr 0.03 SGD's loss rises to 3.4 after 16 steps, and o-CoLA at
#: h = 0.3 meets a gradient spike (norm 17) whose SHAKE solve fails (one rejected step).
STEP = {("make_cnn", "sgd"): 0.01, ("make_cnn", "ocola"): 0.1, ("make_cnn", "ocola_body"): 0.1}


def _setup(method, model_fn, seed=0):
    model = model_fn(seed)
    if method.init == "orthogonal":
        ml.optim.constrained_groups(model, "orthogonal")
    if method.tune:
        middle = method.grid[len(method.grid) // 2]
        hyper = method.with_value(STEP.get((model_fn.__name__, method.key), middle))
    else:
        hyper = dict(method.hyper)
    return model, exp_e2.build_optimizer(method.kind, model, seed, **hyper)


def _check_constraints(model, opt, kind):
    if kind == "cola-circle":
        weights = [p.detach() for p in model.parameters() if p.dim() >= 2]
        assert float(weights[0].abs().max()) <= exp_e2.RADII[0]
        assert all(float(w.abs().max()) <= exp_e2.RADII[1] for w in weights[1:])
        res = opt.residuals()
        assert len(res) == len(weights) and max(res.values()) <= TOL, res
    elif kind == "cola-circle-all":  # every parameter, biases included, on its circle
        params = list(model.named_parameters())
        assert float(params[0][1].detach().abs().max()) <= exp_e2.RADII[0]
        assert all(float(p.detach().abs().max()) <= exp_e2.RADII[1] for _, p in params[1:])
        res = opt.residuals()
        assert set(res) == {n for n, _ in params} and max(res.values()) <= TOL, res
    elif kind in ("cola-orthogonal", "cola-orthogonal-body"):
        weights = [p for p in model.parameters() if p.dim() >= 2][1:]  # all but the first layer
        if kind == "cola-orthogonal-body":
            weights = weights[:-1]  # the output layer is free too
        assert weights
        for w in weights:
            assert _ortho_residual(w) <= TOL, (tuple(w.shape), _ortho_residual(w))


CASES = (
    [(m, exp_e2.make_mlp) for m in exp_e2.METHODS]
    + [(m, exp_orthogonal.make_cnn) for m in exp_orthogonal.CNN_METHODS]
    + [(m, exp_orthogonal.make_deep) for m in exp_orthogonal.DEEP_METHODS]
)


@pytest.mark.parametrize("method, model_fn", CASES, ids=[f"{f.__name__}-{m.key}" for m, f in CASES])
def test_few_steps_reduce_training_loss_and_keep_constraints(method, model_fn):
    x, y = _batches()
    model, opt = _setup(method, model_fn)
    before = ml.nn.evaluate(model, ml.nn.data.Split(x, y))["loss"]
    g = torch.Generator().manual_seed(0)
    steps = 0
    while steps < 16:
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
            _check_constraints(model, opt, method.kind)  # after every step
    after = ml.nn.evaluate(model, ml.nn.data.Split(x, y))["loss"]
    if isinstance(opt, CoLA):
        assert opt.n_rejected() == 0
    if model_fn is exp_orthogonal.make_deep and method.init == "default":
        # 22 tanh layers from PyTorch's default init: the gradients vanish, progress is slow
        # (measured: 2.3048 -> 2.3006 after 20 steps), but the loss must still go down
        assert after < before - 1e-3, (before, after)
    else:
        assert after < 0.85 * before, (before, after)


def test_e2_resumes_from_its_progress_file(tmp_path, monkeypatch):
    calls, tuning = [], []
    real_train, real_tune = exp_e2.train_run, exp_e2.tune

    def counted_train(method, *args, **kwargs):
        if not tuning:  # the final runs, not the tuning runs inside tune()
            calls.append(("train", method.key, args[4]))  # the seed
        return real_train(method, *args, **kwargs)

    def counted_tune(method, *args, **kwargs):
        calls.append(("tune", method.key))
        tuning.append(True)
        try:
            return real_tune(method, *args, **kwargs)
        finally:
            tuning.pop()

    monkeypatch.setattr(exp_e2, "train_run", counted_train)
    monkeypatch.setattr(exp_e2, "tune", counted_tune)
    argv = ["--quick", "--out", str(tmp_path), "--resume", "--method", "cola_t0", "--method", "sgd"]
    assert exp_e2.main(argv) == 0
    first = json.loads((tmp_path / "quick" / "exp_e2.json").read_text())
    assert sorted(calls) == sorted([("tune", "cola_t0"), ("tune", "sgd"),
                                    ("train", "cola_t0", 0), ("train", "sgd", 0)])  # fmt: skip
    calls.clear()
    # started again with one more seed: only the new seed's runs are trained
    assert exp_e2.main([*argv, "--seeds", "2"]) == 0
    assert sorted(calls) == [("train", "cola_t0", 1), ("train", "sgd", 1)]
    again = json.loads((tmp_path / "quick" / "exp_e2.json").read_text())
    assert again["runs"]["sgd"][0] == first["runs"]["sgd"][0]  # seed 0 kept as it was
    assert len(again["runs"]["sgd"]) == 2
    # other settings start afresh
    calls.clear()
    assert exp_e2.main([*argv, "--epochs", "3"]) == 0
    assert ("train", "sgd", 0) in calls


def test_e2_quick_writes_json_and_png(tmp_path):
    assert exp_e2.main(["--quick", "--out", str(tmp_path)]) == 0
    out = tmp_path / "quick"
    data = json.loads((out / "exp_e2.json").read_text())
    assert (out / "exp_e2.png").stat().st_size > 10_000
    assert set(data["summary"]) == set(exp_e2.DEFAULT_METHODS)
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["seconds"] > 0
    assert "| c-CoLA-ud, T=0 (paper) |" in data["table"]
    for key in ("sgd", "adam"):
        t = data["tuning"][key]
        assert t["chosen"] in t["grid"] and len(t["runs"]) == len(t["grid"])
    (rec,) = data["runs"]["cola_t0"]
    assert rec["hyper"] == {"lr": 0.3, "friction": 1.0, "temperature": 0.0}
    assert rec["init_entries_changed"] == 0  # the default init lies inside the radii
    assert rec["max_residual"] <= TOL and rec["n_rejected"] == 0
    w0, w1 = rec["max_abs_weight"].values()
    assert w0 <= exp_e2.RADII[0] and w1 <= exp_e2.RADII[1]
    for key, s in data["summary"].items():
        assert len(s["curves"]["test_loss"]["mean"]) == len(s["curves"]["epochs"]) == 2, key
        # two epochs on 512 images already beat chance (loss log 10 = 2.30, accuracy 0.1)
        assert s["final_test_loss"]["mean"] < 2.0 and s["final_test_acc"]["mean"] > 0.4, key
    matched = data["matched_train_loss"]
    assert set(matched["methods"]) == set(data["summary"])
    assert all(1 <= m["epoch"]["mean"] <= 2 for m in matched["methods"].values())
    # --reanalyze rebuilds the same summary and table from the JSON alone
    (out / "exp_e2.png").unlink()
    assert exp_e2.main(["--quick", "--reanalyze", "--out", str(tmp_path)]) == 0
    again = json.loads((out / "exp_e2.json").read_text())
    assert again["table"] == data["table"] and again["summary"] == data["summary"]
    assert (out / "exp_e2.png").is_file()


@pytest.mark.parametrize("part", ["cnn", "deep"])
def test_orthogonal_quick_writes_json_and_png(tmp_path, part):
    assert exp_orthogonal.main(["--quick", "--part", part, "--out", str(tmp_path)]) == 0
    out = tmp_path / "quick"
    data = json.loads((out / "exp_orthogonal.json").read_text())
    assert (out / f"exp_orthogonal_{part}.png").stat().st_size > 10_000
    assert data["table"] and data["meta"]["torch"] == torch.__version__
    res = data[part]
    (rec,) = res["runs"]["ocola"]
    assert rec["max_residual"] <= TOL and rec["n_rejected"] == 0
    if part == "deep":
        n_layers = exp_orthogonal.DEPTH + 2
        probes = {k: rs[0]["probes"] for k, rs in res["runs"].items()}
        assert all(len(p["grad_norm"]) == n_layers for ps in probes.values() for p in ps)
        # at the start, the orthogonal net's hidden-layer gradients are all of one size, while
        # the default init's shrink by orders of magnitude towards the input
        g_orth = probes["ocola"][0]["grad_norm"][1:-1]
        g_def = probes["sgd"][0]["grad_norm"][1:-1]
        assert max(g_orth) / min(g_orth) < 10
        assert g_def[-1] / g_def[0] > 100


def _run_record(seed, losses, diverged_at=None):
    epochs = list(range(1, len(losses) + 1))
    rec = {
        "method": "m",
        "seed": seed,
        "epochs": epochs,
        "test_loss": losses,
        "test_acc": [0.5] * len(losses),
        "train_loss": [1.0 / e for e in epochs],
        "train_acc": [0.5] * len(losses),
        "max_residual": 0.0,
        "n_rejected": 0,
        "seconds": 1.0,
    }
    if diverged_at is not None:
        rec["diverged_at"] = diverged_at
        rec["train_loss"][-1] = float("nan")
    rec.update(exp_e2.summarize(rec))
    return rec


def test_summary_uses_the_last_epochs_and_leaves_out_a_diverged_run():
    # last-epochs window: every one of the last LAST epochs is evaluated, their mean is reported
    sched = exp_e2.eval_schedule(150)
    assert sched[-exp_e2.LAST :] == list(range(151 - exp_e2.LAST, 151))
    assert 7 not in sched and 12 not in sched  # sparse before the window
    losses = [1.0] * 20 + [float(v) for v in range(10)]  # last ten: 0..9, mean 4.5
    rec = _run_record(0, losses)
    assert rec["last_test_loss"] == 4.5 and rec["last_n_evaluations"] == 10
    assert rec["final_test_loss"] == 9.0
    good = [_run_record(s, [1.0] * 20 + [0.3 + 0.01 * s] * 10) for s in range(2)]
    bad = _run_record(2, [2.0] * 6, diverged_at=8)
    agg = exp_e2.aggregate([*good, bad])
    assert agg["diverged"] == [{"seed": 2, "epoch": 8}]
    stat = agg["last_test_loss"]
    assert stat["n"] == 2 and abs(stat["mean"] - 0.305) < 1e-12
    assert abs(stat["sem"] - 0.01 / 2**0.5 / 2**0.5) < 1e-12  # std 0.00707, over sqrt(2)
    assert len(agg["curves"]["epochs"]) == 30  # the curves are not cut to the diverged run's
    matched = exp_e2.matched_train_loss({"m": [*good, bad]})
    assert matched["level"] == 1.0 / 30  # the finished runs' final training loss
    table = exp_e2.markdown_table(
        {"m": agg}, {"m": "method"}, {"m": ""}, n_seeds=3, epochs=30, matched=matched
    )
    assert "method (2 of 3 seeds)" in table
    assert "seed 2 stopped at epoch 8" in table


@pytest.mark.parametrize("rotation", ["released", "exact"])
def test_circle_bounds_record_the_released_radius_shrink(rotation):
    x, y = _batches(256)
    model = exp_e2.make_mlp(0)
    opt = exp_e2.build_optimizer("released", model, 0, lr=0.3, rotation=rotation)
    start = exp_e2.circle_bounds(model, opt)
    assert set(start) == {"1.weight", "3.weight"} and "rho_min" not in start["1.weight"]
    for idx in torch.arange(256).split(32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    bounds = exp_e2.circle_bounds(model, opt)
    for name, r in zip(("1.weight", "3.weight"), exp_e2.RADII):
        b = bounds[name]
        w = dict(model.named_parameters())[name].detach()
        assert b["max_abs"] == float(w.abs().max()) and b["max_abs"] <= r
        q = b["rho_quantiles"]
        assert b["rho_min"] <= q[0] <= q[1] <= q[2] <= q[3] <= 1.0 + 1e-6
        if rotation == "exact":
            assert b["rho_min"] > 1 - 1e-5
    if rotation == "released":
        # the output layer's weights move most: some lose more than 1e-3 of their radius
        assert bounds["3.weight"]["rho_min"] < 1 - 1e-3
    # the library's CoLA keeps rho = r: only the use of the bound is recorded
    net = exp_e2.make_mlp(0)
    cola = exp_e2.build_optimizer("cola-circle", net, 0, lr=0.3)
    held = exp_e2.circle_bounds(net, cola)
    assert set(held) == {"1.weight", "3.weight"}
    assert all(set(b) == {"max_abs", "at_bound"} for b in held.values())


def test_the_train_command_reproduces_the_e2_cola_rows(tmp_path):
    """``manifold-langevin train`` with its Fashion-MNIST defaults is the E2 script's
    ``cola_t0`` run (same initialisation, noise, shuffling and evaluation set): the same
    per-epoch training losses, and the same held-out loss up to the evaluation's float32
    summation order. The experiments page quotes this command for the CoLA rows."""
    from manifold_langevin.cli import main as cli_main

    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--train-size", "512", "--seed", "3", "--threads", "1"]
    assert cli_main([*argv, "--out", str(out), "--no-progress"]) == 0
    history = json.loads((out / "history.json").read_text())["epochs"]
    data = exp_e2.split_data(n_train=512, n_val=128)
    method = next(m for m in exp_e2.METHODS if m.key == "cola_t0")
    rec = exp_e2.train_run(method, dict(method.hyper), data["train"], data["eval"], 2, 3, [1, 2])
    assert [r["train_loss"] for r in history] == rec["train_loss"]
    for r, loss, acc in zip(history, rec["test_loss"], rec["test_acc"]):
        assert r["heldout_loss"] == pytest.approx(loss, rel=1e-6)
        assert r["heldout_acc"] == pytest.approx(acc, abs=1e-12)


def test_tuning_reuses_the_runs_of_an_earlier_grid(monkeypatch):
    # a grid extended after a tuning ran: only its new values are trained
    trained = []

    def fake_train(method, hyper, *args, **kwargs):
        trained.append(hyper["friction"])
        loss = abs(hyper["friction"] - 0.3)  # lowest near 0.3
        return {"test_acc": [0.8], "test_loss": [loss], "epochs": [1], "n_rejected": 0,
                "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(exp_e2, "train_run", fake_train)
    method = next(m for m in exp_e2.METHODS if m.key == "cola_friction")
    data = {"tune_train": None, "tune_val": None}
    first = exp_e2.tune(method, data, 1, 0, grid=(0.5, 1.0), criterion="last_loss")
    assert trained == [0.5, 1.0] and first["chosen"] == 0.5
    trained.clear()
    saved = json.loads(json.dumps(first))  # as read back from the progress file
    again = exp_e2.tune(method, data, 1, 0, grid=(0.25, 0.5, 1.0), criterion="last_loss",
                        reuse=saved["runs"])  # fmt: skip
    assert trained == [0.25]
    assert again["chosen"] == 0.25 and [r["value"] for r in again["runs"]] == [0.25, 0.5, 1.0]


def test_the_stated_friction_is_the_one_chosen_on_validation():
    # cola_friction_fixed states the friction that cola_friction chose in the committed run
    committed = Path(exp_e2.__file__).parent / "results" / "e2_ablation" / "exp_e2.json"
    chosen = json.loads(committed.read_text())["methods"]["cola_friction"]["chosen"]
    fixed = next(m for m in exp_e2.METHODS if m.key == "cola_friction_fixed")
    assert fixed.hyper == {**chosen, "friction": exp_e2.FRICTION_CHOSEN}
    assert chosen["friction"] == exp_e2.FRICTION_CHOSEN
