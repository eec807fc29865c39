"""``manifold_langevin.nn.training`` and the ``train`` subcommand: models, the optimizer factory,
the
training loop's records, and the files ``run_train --quick`` writes."""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch

import manifold_langevin.nn as mlnn
from manifold_langevin.cli.train import add_train_parser, optimizer_name
from manifold_langevin.nn import data
from manifold_langevin.optim import CoLA


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def test_cola_circle_learns_digits_and_stays_on_circles(digits):
    # measured (seeds 0..7, MLP 64-128-10, c-CoLA-ud at the paper's h = 0.3, gamma = 1,
    # r0 = 0.05, r1 = 0.1, batch 32): test accuracy 0.81-0.89 after 4 epochs; chance is 0.1
    train_set, test_set = digits
    torch.manual_seed(0)
    model = mlnn.mlp([64, 128, 10])
    opt = mlnn.make_optimizer("cola-circle", model, seed=0)
    assert isinstance(opt, CoLA)
    hist = mlnn.train(
        model, opt, train_set, {"test": test_set}, epochs=4, batch_size=32,
        generator=torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert hist[-1]["test_acc"] > 0.7, hist[-1]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    for r in hist:
        assert r["max_residual"] is not None and r["max_residual"] <= 1e-5
        assert r["n_rejected"] == 0
        assert r["seconds"] > 0 and r["eval_seconds"] >= 0 and r["lr"] == 0.3
    # |w| <= r in the weights' own precision (float32(0.05) is slightly above 0.05)
    assert bool(model[0].weight.detach().abs().max() <= torch.tensor(0.05))
    assert bool(model[2].weight.detach().abs().max() <= torch.tensor(0.1))
    again = mlnn.evaluate(model, test_set)
    assert again["acc"] == pytest.approx(hist[-1]["test_acc"])
    assert again["loss"] == pytest.approx(hist[-1]["test_loss"], rel=1e-5)


def test_orthogonal_residual_is_reported(digits):
    train_set, _ = digits
    torch.manual_seed(0)
    model = mlnn.mlp([64, 32, 32, 10], "tanh")
    opt = mlnn.make_optimizer("cola-orthogonal", model, seed=0)
    small = train_set.subset(slice(0, 256))
    (rec,) = mlnn.train(model, opt, small, epochs=1, batch_size=64, progress=False)
    w = model[2].weight.detach()
    assert rec["max_residual"] <= 1e-5
    assert float((w.T @ w - torch.eye(32)).abs().max()) <= 1e-5
    assert set(rec) >= {"train_loss", "train_acc", "max_residual", "n_rejected"}


def test_plain_optimizers_have_no_residual(digits):
    train_set, test_set = digits
    torch.manual_seed(0)
    model = mlnn.mlp([64, 16, 10])
    opt = mlnn.make_optimizer("sgd", model, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    hist = mlnn.train(model, opt, train_set, {"a": test_set}, epochs=2, progress=False)
    assert hist[-1]["max_residual"] is None and hist[-1]["n_rejected"] is None
    assert {"a_loss", "a_acc"} <= set(hist[-1])


def test_nonfinite_loss_stops_training(digits):
    train_set, _ = digits
    torch.manual_seed(0)
    model = mlnn.mlp([64, 16, 10])
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    hist = mlnn.train(model, opt, train_set, epochs=5, batch_size=256, progress=False)
    assert len(hist) < 5 and not math.isfinite(hist[-1]["train_loss"])


def test_make_optimizer_defaults_and_errors():
    model = mlnn.mlp([4, 8, 8, 2])
    opt = mlnn.make_optimizer("cola-orthogonal", model, seed=0)
    g = opt.param_groups[0]
    assert g["constraint"] == "orthogonal"
    assert g["friction"] == pytest.approx(-math.log(0.9) / 0.1) and g["lr"] == 0.1
    od = mlnn.make_optimizer("cola-od-circle", model, temperature=1e-3, radius=0.5, seed=0)
    assert {g["scheme"] for g in od.param_groups} == {"od"}
    assert {g.get("radius") for g in od.param_groups} == {0.5, None}
    assert isinstance(mlnn.make_optimizer("adam", model), torch.optim.Adam)
    with pytest.raises(ValueError, match="temperature"):
        mlnn.make_optimizer("sgd", model, temperature=0.1)
    with pytest.raises(ValueError, match="weight decay"):
        mlnn.make_optimizer("cola-circle", model, weight_decay=1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        mlnn.make_optimizer("rmsprop", model)


def test_models():
    net = mlnn.mlp([3, 5, 2], "gelu", bias=False)
    assert net(torch.zeros(4, 3)).shape == (4, 2) and net[0].bias is None
    conv = mlnn.cnn(1, 10, 28, channels=(4, 8), hidden=16)
    assert conv(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="activation"):
        mlnn.mlp([2, 2], "swish2")
    with pytest.raises(ValueError):
        mlnn.mlp([2])


def test_optimizer_name():
    assert optimizer_name("cola", "circle") == "cola-circle"
    assert optimizer_name("cola-od", "none") == "cola-od"
    with pytest.raises(ValueError, match="takes no constraint"):
        optimizer_name("sgd", "circle")


def _parse(argv):
    ap = argparse.ArgumentParser(prog="manifold-langevin")
    add_train_parser(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def test_run_train_quick_writes_history(tmp_path):
    out = tmp_path / "run"
    args = _parse(["train", "--dataset", "digits", "--quick", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    doc = json.loads((out / "history.json").read_text())
    assert doc["meta"]["optimizer"] == "cola-circle" and doc["meta"]["quick"] is True
    assert doc["meta"]["radii"] == [0.05, 0.1]
    epochs = doc["epochs"]
    assert len(epochs) == 3 and epochs[-1]["test_acc"] > 0.5
    assert all(r["max_residual"] <= 1e-5 for r in epochs)
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[-1]["test_acc"]) == pytest.approx(epochs[-1]["test_acc"])
    png = (out / "history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_run_train_spiral_sgd_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "spiral", "--optimizer", "sgd", "--constraint", "none"]
    args = _parse([*argv, "--quick", "--seed", "3", "--no-progress", "--epochs", "5"])
    assert args.func(args) == 0
    doc = json.loads((tmp_path / "runs" / "spiral-none-3" / "history.json").read_text())
    assert len(doc["epochs"]) == 5 and doc["meta"]["optimizer"] == "sgd"
    assert doc["epochs"][-1]["max_residual"] is None


def test_run_train_rejects_bad_combination():
    args = _parse(["train", "--optimizer", "adam", "--constraint", "circle"])
    with pytest.raises(ValueError, match="takes no constraint"):
        args.func(args)
