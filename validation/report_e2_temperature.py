"""The E2 temperature study (``validation/exp_e2_temperature.py``) for ``docs/experiments.md``.

Reads ``validation/results/e2_temperature/exp_e2_temperature.json``; the numbers, tables and the
choice of reading are computed here, the sentences are in
``validation/templates/experiments/e2_temperature*.md``. Differences between methods are paired
by seed (``validation.report_e2.paired_difference``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from validation.exp_e2 import LAST
from validation.report import RESULTS, fill
from validation.report_e2 import paired_difference

__all__ = ["e2_temperature_section"]

DIR = RESULTS / "e2_temperature"


def _pm(d: dict) -> str:
    if d.get("n", 0) < 2:
        return f"{d['mean']:+.4f} (one seed)"
    return f"{d['mean']:+.4f} ± {d['sem']:.4f}"


def _point_runs(result: dict, key: str, score: str, averaged: bool) -> list[dict]:
    """Per-seed records ``{"seed", score}`` of one method's point or averaged score, in the
    form ``paired_difference`` reads."""
    out = []
    for r in result["runs"].get(key, []):
        if "diverged_at" in r or not r.get("epochs"):
            continue
        if averaged:
            if "average" in r:
                out.append({"seed": r["seed"], score: r["average"][score]})
            continue
        n = sum(1 for e in r["epochs"] if e > r["epochs"][-1] - LAST)
        field = {"nll": "test_loss", "acc": "test_acc", "ece": "ece"}[score]
        out.append({"seed": r["seed"], score: sum(r[field][-n:]) / n})
    return out


def _diff(result: dict, a: str, b: str, score: str, averaged: bool = False) -> str:
    ra, rb = (_point_runs(result, k, score, averaged) for k in (a, b))
    if not ra or not rb:
        return "not measured"
    return _pm(paired_difference(ra, rb, key=score))


def e2_temperature_section(img: Path) -> str:
    """The section (empty if the study has not been run)."""
    path = DIR / "exp_e2_temperature.json"
    if not path.exists():
        return ""
    result = json.loads(path.read_text())
    png = DIR / "exp_e2_temperature.png"
    if png.exists():
        shutil.copy(png, img / "e2_temperature.png")
    meta = result["meta"]
    d = {
        "ud_nll": _diff(result, "ud_t1e-4", "ud_t0", "nll"),
        "ud_ece": _diff(result, "ud_t1e-4", "ud_t0", "ece"),
        "ud_avg_nll": _diff(result, "ud_t1e-4", "ud_t0", "nll", averaged=True),
        "ud_avg_ece": _diff(result, "ud_t1e-4", "ud_t0", "ece", averaged=True),
        "ud5_nll": _diff(result, "ud_t1e-5", "ud_t0", "nll"),
        "od_vs_sgld_nll": _diff(result, "od_t1e-4", "sgld_t1e-4", "nll"),
        "od_vs_sgld_acc": _diff(result, "od_t1e-4", "sgld_t1e-4", "acc"),
        "od_vs_sgld_ece": _diff(result, "od_t1e-4", "sgld_t1e-4", "ece"),
        "od_vs_sgd_nll": _diff(result, "od_t1e-4", "sgd", "nll"),
        "od_avg_vs_point_nll": _avg_gain(result, "od_t1e-4"),
        "sgld_avg_vs_point_nll": _avg_gain(result, "sgld_t1e-4"),
        "ud_avg_vs_point_nll": _avg_gain(result, "ud_t1e-4"),
    }
    return fill(
        "experiments/e2_temperature",
        epochs=meta["epochs"],
        seeds=meta["seeds"],
        last=meta["last"],
        n_bins=meta["n_bins"],
        h_od=f"{meta['h_od']:g}",
        table=result["table"],
        **d,
    )


def _avg_gain(result: dict, key: str) -> str:
    """Averaged-prediction NLL minus the point estimate's, paired by seed."""
    point = {r["seed"]: r["nll"] for r in _point_runs(result, key, "nll", False)}
    avg = [r for r in _point_runs(result, key, "nll", True) if r["seed"] in point]
    if not avg:
        return "not measured"
    base = [{"seed": r["seed"], "nll": point[r["seed"]]} for r in avg]
    return _pm(paired_difference(avg, base, key="nll"))
