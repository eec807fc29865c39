"""The E2 temperature study (``validation/exp_e2_temperature.py``) for ``docs/experiments.md``.

Reads ``validation/results/e2_temperature/exp_e2_temperature.json``; the numbers, tables and the
choice of reading are computed here, the sentences are in
``validation/templates/experiments/e2_temperature*.md``. Differences between methods are paired
by seed (``validation.report_e2.paired_difference``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from validation.exp_e2_temperature import point_scores
from validation.report import RESULTS, fill
from validation.report_e2 import _pm, paired_difference

__all__ = ["e2_temperature_section"]

DIR = RESULTS / "e2_temperature"


def _direction(d: dict | None) -> str:
    """ "lower", "higher" (by more than two standard errors) or "level" (within them; a single
    seed is never more than level)."""
    if d is None or d.get("n", 0) < 2 or math.isnan(d["mean"]):
        return "level"
    if d["mean"] + 2 * d["sem"] < 0:
        return "lower"
    if d["mean"] - 2 * d["sem"] > 0:
        return "higher"
    return "level"


def _point_runs(result: dict, key: str, score: str, averaged: bool) -> list[dict]:
    """Per-seed records ``{"seed", score}`` of one method's point or averaged score, in the
    form ``paired_difference`` reads."""
    out = []
    for r in result["runs"].get(key, []):
        if "diverged_at" in r or not r.get("epochs"):
            continue
        scores = r.get("average") if averaged else point_scores(r)
        if scores:
            out.append({"seed": r["seed"], score: scores[score]})
    return out


def _paired(result: dict, a: str, b: str, score: str, averaged: bool = False) -> dict | None:
    ra, rb = (_point_runs(result, k, score, averaged) for k in (a, b))
    if not ra or not rb:
        return None
    return paired_difference(ra, rb, key=score)


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
    pairs = {
        "ud_nll": ("ud_t1e-4", "ud_t0", "nll", False),
        "ud_ece": ("ud_t1e-4", "ud_t0", "ece", False),
        "ud_avg_nll": ("ud_t1e-4", "ud_t0", "nll", True),
        "ud_avg_ece": ("ud_t1e-4", "ud_t0", "ece", True),
        "ud5_nll": ("ud_t1e-5", "ud_t0", "nll", False),
        "ud6_nll": ("ud_t1e-6", "ud_t0", "nll", False),
        "ud6_acc": ("ud_t1e-6", "ud_t0", "acc", False),
        "ud6_avg_nll": ("ud_t1e-6", "ud_t0", "nll", True),
        "ud6_avg_ece": ("ud_t1e-6", "ud_t0", "ece", True),
        "ud6_avg_acc": ("ud_t1e-6", "ud_t0", "acc", True),
        "ud6_vs_od0_avg_nll": ("ud_t1e-6", "od_t0", "nll", True),
        "od_vs_sgld_nll": ("od_t1e-4", "sgld_t1e-4", "nll", False),
        "od_vs_sgld_acc": ("od_t1e-4", "sgld_t1e-4", "acc", False),
        "od_vs_sgld_ece": ("od_t1e-4", "sgld_t1e-4", "ece", False),
        "od_vs_sgd_nll": ("od_t1e-4", "sgd", "nll", False),
    }
    diffs = {k: _paired(result, *v) for k, v in pairs.items()}
    gains = {k: _avg_gain(result, m) for k, m in
             (("ud_avg_vs_point_nll", "ud_t1e-4"), ("od_avg_vs_point_nll", "od_t1e-4"),
              ("sgld_avg_vs_point_nll", "sgld_t1e-4"))}  # fmt: skip
    text = {k: _pm(d) if d else "not measured" for k, d in {**diffs, **gains}.items()}
    direction = {f"{k}_dir": _direction(d) for k, d in {**diffs, **gains}.items()}
    return fill(
        "experiments/e2_temperature",
        epochs=meta["epochs"],
        seeds=meta["seeds"],
        last=meta["last"],
        n_bins=meta["n_bins"],
        h_od=f"{meta['h_od']:g}",
        n_runs=sum(len(v) for v in result["runs"].values()),
        table=result["table"],
        reading=fill("experiments/e2_temperature_reading", last=meta["last"], **direction),
        **text,
    )


def _avg_gain(result: dict, key: str) -> dict | None:
    """Averaged-prediction NLL minus the point estimate's, paired by seed."""
    point = {r["seed"]: r["nll"] for r in _point_runs(result, key, "nll", False)}
    avg = [r for r in _point_runs(result, key, "nll", True) if r["seed"] in point]
    if not avg:
        return None
    base = [{"seed": r["seed"], "nll": point[r["seed"]]} for r in avg]
    return paired_difference(avg, base, key="nll")
