"""The E2 temperature study: a quick run writes its JSON and plot, scores every evaluation and
the prediction average, resumes from its progress file, and its report section is generated.
Fashion-MNIST as in ``test_experiments.py`` (a missing dataset fails under CI, skips
elsewhere)."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.validation import fashion_mnist
from validation import exp_e2_temperature as exp

MISSING = fashion_mnist.require()


@pytest.fixture(autouse=True)
def _dataset():
    fashion_mnist.fail_if_missing(MISSING)


def test_quick_run_scores_points_and_averages_and_resumes(tmp_path, monkeypatch):
    argv = ["--quick", "--out", str(tmp_path), "--resume",
            "--method", "od_t1e-4", "--method", "sgld_t1e-4"]  # fmt: skip
    assert exp.main(argv) == 0
    out = tmp_path / "quick"
    result = json.loads((out / "exp_e2_temperature.json").read_text())
    assert (out / "exp_e2_temperature.png").stat().st_size > 0
    for key in ("od_t1e-4", "sgld_t1e-4"):
        (rec,) = result["runs"][key]
        assert len(rec["ece"]) == len(rec["epochs"]) == 2  # quick: 2 epochs, both evaluated
        assert all(0.0 <= e <= 1.0 for e in rec["ece"])
        # the prediction average of the (two) last epochs is scored once
        assert rec["average"]["n_samples"] == 2
        assert 0.0 < rec["average"]["nll"] < math.log(10) * 2
        summary = result["summary"][key]
        assert summary["n_seeds"] == 1 and summary["point"]["nll"]["mean"] > 0
    # the constrained run stays on its circles
    assert result["runs"]["od_t1e-4"][0]["max_residual"] < 1e-5
    assert "| c-CoLA-od, T=1e-4 (constrained SGLD) | 1 |" in result["table"]
    # started again: nothing is trained
    monkeypatch.setattr(exp, "run_one", lambda *a: pytest.fail("a finished run was rerun"))
    assert exp.main(argv) == 0
    again = json.loads((out / "exp_e2_temperature.json").read_text())
    assert again["runs"] == result["runs"]


def test_the_report_section_fills_every_value(tmp_path, monkeypatch):
    from validation import report_e2_temperature as rep

    argv = ["--quick", "--out", str(tmp_path), "--seeds", "2",
            "--method", "ud_t0", "--method", "ud_t1e-4"]  # fmt: skip
    assert exp.main(argv) == 0
    monkeypatch.setattr(rep, "DIR", tmp_path / "quick")
    img = tmp_path / "img"
    img.mkdir()
    text = rep.e2_temperature_section(img)
    assert "${" not in text
    assert (img / "e2_temperature.png").exists()
    # the measured pair is reported with its paired standard error; the others say so
    pair = r"c-CoLA-ud at `tau = 1e-4` against `tau = 0`: NLL [+-]\d\.\d{4} ± \d\.\d{4}, ECE"
    assert re.search(pair, text)
    assert "not measured" in text  # the overdamped runs were not run here
