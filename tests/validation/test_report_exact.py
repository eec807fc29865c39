"""``validation/report_exact.py``: the sentences that read the numbers follow the JSON, so a
changed result changes the page rather than leaving a stale claim."""

from __future__ import annotations

import json
import shutil

import pytest

from validation import report, report_exact

NAMES = ("hmc_exactness", "hmc_reversibility", "hmc_acceptance", "peers_mici")


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A copy of the committed JSON that a test may edit; returns ``(load, save, page)``."""
    src = tmp_path / "results"
    src.mkdir()
    for name in NAMES:
        shutil.copy(report.RESULTS / f"{name}.json", src / f"{name}.json")
    monkeypatch.setattr(report_exact, "RESULTS", src)
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)

    def load(name):
        return json.loads((src / f"{name}.json").read_text())

    def save(name, doc):
        (src / f"{name}.json").write_text(json.dumps(doc))

    def page():
        report_exact.exact_sampling(docs / "img", docs)
        return (docs / "exact-sampling-evidence.md").read_text()

    return load, save, page


def test_a_biased_hmc_run_is_named(results):
    load, save, page = results
    doc = load("hmc_exactness")
    run = doc["problems"]["so3"]["runs"]["HMC"]
    run["max_abs_z"], run["within"] = 6.5, False
    save("hmc_exactness", doc)
    text = page()
    assert "HMC on `so3` (6.5)" in text
    assert "exact-sampler runs are more than 4 standard errors off" in text
    assert "**6.5**" in text  # bold in the table


def test_the_peer_target_verdict_follows_the_ratios(results):
    load, save, page = results
    doc = load("peers_mici")
    for c in doc["comparisons"]:
        c["ratio"] = c["ratio_cpu"] = 150.0
    save("peers_mici", doc)
    text = page()
    assert "On wall time the target is met on every problem (least ratio 150x)" in text
    assert "On CPU time the target is met on every problem" in text
    for c in doc["comparisons"]:
        c["ratio"] = c["ratio_cpu"] = 50.0
    save("peers_mici", doc)
    text = page()
    assert "On wall time the target is missed on every problem" in text
    assert "target met (wall) | target met (CPU) |" in text
    assert "| yes |" not in text.split("target met (CPU) |")[1].split("\n\n")[0]


def test_a_biased_peer_run_misses_the_target(results):
    load, save, page = results
    doc = load("peers_mici")
    for c in doc["comparisons"]:
        c["ratio"] = c["ratio_cpu"] = 150.0
    row = next(r for r in doc["rows"] if r["problem"] == "ellipse" and r["sampler"] == "mici")
    row["max_abs_z"] = 7.0
    save("peers_mici", doc)
    text = page()
    assert "missed on `ellipse` (|z| = 7.0)" in text
    assert "Runs more than 4 standard errors off the exact values: mici" in text


def test_reversibility_and_acceptance_readings(results):
    load, save, page = results
    doc = load("hmc_reversibility")
    first = next(iter(doc["cases"].values()))["runs"][0]
    first["no_check"]["biased"] = False
    first["check"]["max_abs_z"], first["check"]["exact"] = 4.5, False
    save("hmc_reversibility", doc)
    acc = load("hmc_acceptance")
    acc["ess"] = {"skipped": "arviz is not installed"}
    save("hmc_acceptance", acc)
    text = page()
    assert "runs are biased (more than 5 standard" in text
    assert "With it not every run is within 4 standard errors" in text
    assert "The ESS-per-second part was not run: arviz is not installed." in text
    assert "img/hmc_acceptance_ess.png" not in text
