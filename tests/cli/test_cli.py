"""The command line: `manifold-langevin validate` writes its evidence and reports failure."""

import json

import pytest

from manifold_langevin.cli import main


def test_validate_quick_one_problem(tmp_path, capsys):
    status = main(
        ["validate", "--quick", "--problem", "vmf_s2", "--scheme", "BAOAB", "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "quick" / "invariant_measure.json").read_text())
    assert status == 0
    assert report["meta"]["all_consistent"]
    (run,) = report["runs"]
    assert (run["problem"], run["scheme"]) == ("vmf_s2", "BAOAB")
    assert abs(run["observables"]["mu_x"]["z"]) < 4
    assert (tmp_path / "quick" / "invariant_measure_vmf_s2.png").stat().st_size > 1000
    assert "vmf_s2 | BAOAB" in capsys.readouterr().out


def test_validate_rejects_unknown_problem():
    with pytest.raises(SystemExit) as err:
        main(["validate", "--quick", "--problem", "no_such_problem"])
    assert err.value.code == 2


def test_command_is_required():
    with pytest.raises(SystemExit):
        main([])


@pytest.mark.parametrize("command", [[], ["validate"], ["train"], ["bench"]])
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([*command, "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: manifold-langevin")
    for word in {(): ["validate", "train", "bench"], ("validate",): ["--quick", "--what", "--jobs"],
                 ("train",): ["--dataset", "--constraint", "--resume"],
                 ("bench",): ["--what", "--case"]}[tuple(command)]:  # fmt: skip
        assert word in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--lr", "-0.1"], "argument --lr: expected a positive number, got '-0.1'"),
        (["train", "--lr", "0"], "argument --lr: expected a positive number"),
        (["train", "--epochs", "-3"], "argument --epochs: expected a positive integer"),
        (["train", "--batch-size", "0"], "argument --batch-size: expected a positive integer"),
        (["train", "--friction", "-1"], "argument --friction: expected a non-negative number"),
        (["train", "--temperature", "nan"], "argument --temperature: expected a non-negative"),
        (["train", "--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
        (["train", "--device", "gpu0"], "argument --device: expected a torch device"),
        (["validate", "--problem", "nope"], "invalid choice: 'nope'"),
        (["validate", "--device", "nope"], "argument --device: expected a torch device"),
        (["bench", "--reps", "0"], "argument --reps: expected a positive integer"),
        (["bench", "--threads", "-1"], "argument --threads: expected a non-negative integer"),
        (["bench", "--what", "gpu"], "argument --what: invalid choice: 'gpu'"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train", "--data-root", str(tmp_path), "--quick", "--no-progress"])
    text = str(err.value.code)
    assert text.startswith("manifold-langevin train: error: Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in text and str(tmp_path) in text


def test_bad_combination_is_a_message_not_a_traceback():
    with pytest.raises(SystemExit) as err:
        main(["train", "--optimizer", "adam", "--constraint", "circle", "--dataset", "spiral"])
    assert "takes no constraint" in str(err.value.code)


def test_lr_reaches_the_optimizer(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "spiral", "--quick", "--epochs", "1", "--lr", "0.05"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    meta = json.loads((out / "history.json").read_text())["meta"]
    assert meta["hyperparameters"]["lr"] == 0.05
