"""``manifold-langevin train --checkpoint/--resume``: a run interrupted and resumed ends with the
same parameters, optimizer state and history as the uninterrupted run (bit for bit, timings
aside); a checkpoint of another configuration is refused with the differences named."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from manifold_langevin import cli
from manifold_langevin.cli.train import add_train_parser
from manifold_langevin.errors import CheckpointError
from manifold_langevin.nn import training
from manifold_langevin.nn.checkpoint import load_checkpoint

TINY = ["--hidden", "16", "--train-size", "256", "--batch-size", "64", "--threads", "1"]
TINY += ["--no-progress"]
CASES = [
    pytest.param(["--dataset", "digits", "--constraint", "orthogonal"], id="digits-orthogonal"),
    pytest.param(["--dataset", "spiral", "--constraint", "circle"], id="spiral-circle"),
]
TIMINGS = ("seconds", "eval_seconds")


def _run(*argv):
    ap = argparse.ArgumentParser()
    add_train_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["train", *TINY, *argv])
    return args.func(args)


def _epochs(out):
    doc = json.loads((out / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in doc["epochs"]], doc["meta"]


def _assert_same_state(a: dict, b: dict) -> None:
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"], b["optimizer"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i, st in sa["state"].items():
        for k, v in st.items():
            assert (
                torch.equal(v, sb["state"][i][k]) if torch.is_tensor(v) else v == sb["state"][i][k]
            )
    for key, state in sa["cola"]["generators"].items():
        assert torch.equal(state, sb["cola"]["generators"][key])
    assert torch.equal(a["shuffle_generator"], b["shuffle_generator"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])


@pytest.mark.parametrize("case", CASES)
def test_interrupted_run_resumes_bit_identically(case, tmp_path, monkeypatch, capsys):
    case = [*case, "--temperature", "1e-3"]  # noise: CoLA's generators must be restored too
    full = tmp_path / "full"
    assert _run(*case, "--epochs", "4", "--out", str(full), "--checkpoint-every", "4") == 0

    # the second run dies during epoch 3; its last checkpoint is epoch 2's
    real_epoch, calls = training._train_epoch, []

    def dying_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    part = tmp_path / "part"
    monkeypatch.setattr(training, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(*case, "--epochs", "4", "--out", str(part), "--checkpoint-every", "2")
    monkeypatch.undo()
    ckpt = load_checkpoint(part / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and [r["epoch"] for r in ckpt["history"]] == [1, 2]
    assert not (part / "history.json").exists()

    capsys.readouterr()
    assert _run(*case, "--epochs", "4", "--out", str(part), "--resume") == 0
    assert "resuming from" in capsys.readouterr().out
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4
    _assert_same_state(a, b)
    (ha, meta_a), (hb, meta_b) = _epochs(full), _epochs(part)
    assert [r["epoch"] for r in hb] == [1, 2, 3, 4]
    assert ha == hb
    assert meta_a["resumed_from_epoch"] is None and meta_b["resumed_from_epoch"] == 2
    # and the run moved after the checkpoint (else equality proves little)
    assert not torch.equal(ckpt["model"]["0.weight"], b["model"]["0.weight"])


def test_resume_extends_a_finished_run(tmp_path):
    args = ["--dataset", "digits", "--constraint", "circle", "--out", str(tmp_path)]
    assert _run(*args, "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt")) == 0
    assert _run(*args, "--epochs", "2", "--checkpoint", str(tmp_path / "c.pt"), "--resume") == 0
    hist, _ = _epochs(tmp_path)
    assert [r["epoch"] for r in hist] == [1, 2]
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2
    with pytest.raises(CheckpointError, match="holds 2 epochs, more than --epochs 1"):
        _run(*args, "--epochs", "1", "--checkpoint", str(tmp_path / "c.pt"), "--resume")


def test_resume_without_checkpoint_starts_fresh_and_existing_one_needs_resume(tmp_path, capsys):
    args = [
        "--dataset",
        "digits",
        "--constraint",
        "circle",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert _run(*args, "--resume") == 0
    assert "starting from scratch" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(CheckpointError, match="exists: pass --resume"):
        _run(*args, "--checkpoint-every", "1")
    # the command line prints the message and exits, without a traceback
    with pytest.raises(SystemExit, match=r"manifold-langevin train: error: checkpoint .* exists"):
        cli.main(["train", *TINY, *args, "--checkpoint-every", "1"])


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    base = ["--epochs", "1", "--out", str(tmp_path)]
    assert _run("--dataset", "digits", "--constraint", "orthogonal", *base, "--resume") == 0
    cases = {
        ("--constraint", "circle"): ["constraint: 'circle' here, 'orthogonal'", "optimizer"],
        ("--constraint", "orthogonal", "--hidden", "32"): ["hidden: (32,) here, (16,)", "shape of"],
        ("--constraint", "orthogonal", "--lr", "0.05"): ["group 0 lr: 0.05 here, 0.1"],
        ("--constraint", "orthogonal", "--dataset", "spiral"): ["dataset: 'spiral' here"],
        ("--constraint", "orthogonal", "--dtype", "float64"): ["dtype: 'float64' here"],
    }
    for argv, messages in cases.items():
        argv = ["--dataset", "digits", *argv] if "--dataset" not in argv else list(argv)
        with pytest.raises(CheckpointError, match="different configuration") as info:
            _run(*argv, *base, "--resume")
        for m in messages:
            assert m in str(info.value), (argv, str(info.value))
