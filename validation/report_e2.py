"""The E2 comparison with the released c-CoLA-ud scheme, for ``docs/experiments.md``.

Reads the JSON of three runs of ``validation/exp_e2.py`` (the commands are in the template):
``validation/results/e2_150`` (five methods, 150 epochs, three seeds), ``e2_ablation`` (the
released scheme, its two ablations, the library's CoLA, CoLA with constrained biases and with
radii chosen on validation; 150 epochs, three seeds, every one of the last 10 epochs
evaluated) and ``e2_400`` (one seed to the paper's 400 epochs). As in ``validation/report.py``,
this module computes numbers and tables and picks the reading that applies; the sentences are
in ``validation/templates/experiments/``. Differences between two methods are paired by seed
(the same initialisation, data order and noise seed): mean over seeds of the per-seed
difference, with its standard error.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from validation.exp_e2 import LAST, analyze
from validation.report import RESULTS, fill

__all__ = ["e2_released_section", "paired_difference"]

RUNS = {"side": "e2_150", "ablation": "e2_ablation", "long": "e2_400"}
#: the layers of the E2 network, as the runs name them
LAYERS = ("1.weight", "3.weight")


def _t(name: str, **values) -> str:
    return fill(f"experiments/{name}", **values)


def _load(name: str) -> dict | None:
    path = RESULTS / name / "exp_e2.json"
    return analyze(json.loads(path.read_text())) if path.exists() else None


def paired_difference(a: list[dict], b: list[dict], key: str = "last_test_loss") -> dict:
    """``key`` of ``a`` minus that of ``b``, paired by seed over the seeds both finished:
    ``{"mean", "sem", "n", "seeds"}`` (``sem`` is NaN for one seed)."""
    fa = {r["seed"]: r[key] for r in a if "diverged_at" not in r and key in r}
    fb = {r["seed"]: r[key] for r in b if "diverged_at" not in r and key in r}
    seeds = sorted(fa.keys() & fb.keys())
    d = np.asarray([fa[s] - fb[s] for s in seeds], dtype=float)
    sem = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    return {"mean": float(d.mean()) if d.size else math.nan, "sem": sem, "n": int(d.size),
            "seeds": seeds}  # fmt: skip


def _pm(d: dict, fmt: str = ".4f") -> str:
    if math.isnan(d["sem"]):
        return f"{d['mean']:+{fmt}} (one seed)"
    return f"{d['mean']:+{fmt}} ± {d['sem']:{fmt}}"


def _bound_rows(result: dict) -> str:
    """Per method and layer, at the last epoch, averaged over the finished seeds: the share of
    weights at the nominal bound, and for the released scheme the effective radius."""
    out = [
        "| method | layer | at the bound (epoch 150) | rho / r: median | 10% quantile | "
        "1% quantile | smallest | at its own bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {k: m["label"] for k, m in result["methods"].items()}
    for key, runs in result["runs"].items():
        done = [r for r in runs if r.get("bounds") and "diverged_at" not in r]
        if not done:
            continue
        for layer in LAYERS:
            last = [r["bounds"][-1][layer] for r in done if layer in r["bounds"][-1]]
            if not last:
                continue
            at = np.mean([b["at_bound"] for b in last])
            if "rho_quantiles" in last[0]:
                q = np.mean([b["rho_quantiles"] for b in last], axis=0)
                rho = (
                    f"{q[2]:.3f} | {q[1]:.3f} | {q[0]:.3f} | "
                    f"{min(b['rho_min'] for b in last):.2f} | "
                    f"{np.mean([b['at_own_bound'] for b in last]):.3f}"
                )
            else:
                rho = "1 (held) | 1 | 1 | 1 | same"
            out.append(f"| {labels[key]} | `{layer}` | {at:.3f} | {rho} |")
    return "\n".join(out)


def _diverged(result: dict) -> str:
    notes = []
    for key, runs in result["runs"].items():
        for r in runs:
            if "diverged_at" in r:
                notes.append(
                    _t(
                        "e2_released_diverged",
                        method=result["methods"][key]["label"],
                        seed=r["seed"],
                        epoch=r["diverged_at"],
                        residual=f"{r['max_residual']:.2f}",
                    )
                )
    return "\n\n".join(notes)


def e2_released_section(img: Path) -> str:
    """The section (empty if the ablation run is missing)."""
    side, abl, long = (_load(RUNS[k]) for k in ("side", "ablation", "long"))
    if abl is None:
        return ""
    for name, png in (("e2_ablation", "exp_e2.png"), ("e2_ablation", "exp_e2_bounds.png"),
                      ("e2_400", "exp_e2.png")):  # fmt: skip
        src = RESULTS / name / png
        if src.exists():
            shutil.copy(src, img / f"{name}_{png}")
    runs = abl["runs"]
    diff = {
        k: paired_difference(runs[k], runs["released"])
        for k in runs
        if k != "released" and "released" in runs
    }
    gap = diff.get("cola_t0")
    chosen = _chosen(abl, "cola_radius", "radius")
    friction = _chosen(abl, "cola_friction", "friction")
    verdict = _verdict(diff.get("cola_radius"), "the radii chosen on validation")
    friction_verdict = _verdict(diff.get("cola_friction"), "the friction chosen on validation")
    diffs = "\n".join(
        f"| {abl['methods'][k]['label']} | {_pm(d)} | {d['n']} |" for k, d in diff.items()
    )
    long_table = long["table"] if long else _t("e2_released_no_long")
    return _t(
        "e2_released",
        last=LAST,
        ablation_table=abl["table"],
        side_table=side["table"] if side else "",
        long_table=long_table,
        bounds_table=_bound_rows(abl),
        diffs_table=diffs,
        diverged=_diverged(abl),
        gap=_pm(gap) if gap else "not measured",
        radius=f"{chosen}" if chosen else "not chosen",
        verdict=verdict,
        friction=f"{friction}" if friction is not None else "not chosen",
        friction_verdict=friction_verdict,
        reading=_reading(abl, long, diff),
    )


def _chosen(result: dict, method: str, parameter: str):
    """The value the tuning chose for ``method`` (``None`` if it was not run)."""
    return result["methods"].get(method, {}).get("chosen", {}).get(parameter)


def _verdict(beat: dict | None, setting: str) -> str:
    """Whether a setting's paired difference from the released scheme beats it (by two
    standard errors), is level with it, or not."""
    if beat is None:
        return _t("e2_released_not_run", setting=setting)
    if beat["mean"] + 2 * (0 if math.isnan(beat["sem"]) else beat["sem"]) <= 0:
        return _t("e2_released_beaten", diff=_pm(beat), setting=setting)
    if beat["mean"] <= 0:
        return _t("e2_released_level", diff=_pm(beat), setting=setting)
    return _t("e2_released_not_beaten", diff=_pm(beat), setting=setting)


def _mean_of(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if "diverged_at" not in r and key in r]
    return float(np.mean(vals)) if vals else math.nan


def _reading(abl: dict, long: dict | None, diff: dict) -> str:
    runs, methods = abl["runs"], abl["methods"]
    none = {"mean": math.nan, "sem": math.nan}

    def pm(key):
        return _pm(diff[key]) if key in diff else "not measured"

    # the released scheme's effective radius of the output layer at the end
    bounds = [r["bounds"][-1][LAYERS[-1]] for r in runs.get("released", [])
              if r.get("bounds") and "diverged_at" not in r]  # fmt: skip
    q = np.mean([b["rho_quantiles"] for b in bounds], axis=0) if bounds else None
    rho_min = min((b["rho_min"] for b in bounds), default=math.nan)
    matched = abl["matched_train_loss"]
    grid = abl["tuning"].get("cola_radius", {}).get("runs", [])
    radius_grid = ", ".join(
        f"{tuple(r['value'])}: {r['last_val_loss']:.4f}" for r in grid if "last_val_loss" in r
    )
    gain = (
        paired_difference(runs["cola_radius"], runs["cola_t0"])
        if "cola_radius" in runs and "cola_t0" in runs
        else none
    )
    if long:
        long_line = "; ".join(
            f"{long['methods'][k]['label']} {s['last_test_loss']['mean']:.4f}"
            for k, s in long["summary"].items()
        )
    else:
        long_line = "not run"
    long_runs = long["runs"] if long else {}
    if "cola_friction_fixed" in long_runs and "released" in long_runs:
        long_diff = paired_difference(long_runs["cola_friction_fixed"], long_runs["released"])
        long_friction = fill(
            "experiments/e2_released_long_friction",
            friction=f"{long['methods']['cola_friction_fixed']['chosen']['friction']:g}",
            diff=_pm(long_diff),
            verdict="lower: the win holds at the paper's horizon"
            if long_diff["mean"] < 0
            else "not lower: the win does not hold at the paper's horizon",
            rise=f"{_mean_of(long_runs['cola_friction_fixed'], 'test_loss_rise'):.4f}",
            released_rise=f"{_mean_of(long_runs['released'], 'test_loss_rise'):.4f}",
            train=f"{_mean_of(long_runs['cola_friction_fixed'], 'final_train_loss'):.3f}",
        )
    else:
        long_friction = ""
    chosen = methods.get("cola_radius", {}).get("chosen", {}).get("radius")
    friction_grid = ", ".join(
        f"{r['value']:g}: {r['last_val_loss']:.4f}"
        for r in abl["tuning"].get("cola_friction", {}).get("runs", [])
        if "last_val_loss" in r
    )
    friction_gain = (
        paired_difference(runs["cola_friction"], runs["cola_t0"])
        if "cola_friction" in runs and "cola_t0" in runs
        else none
    )
    friction = _chosen(abl, "cola_friction", "friction")
    values = [r["value"] for r in abl["tuning"].get("cola_friction", {}).get("runs", [])]
    if friction is not None and values and friction == min(values):
        edge = " (the smallest value of the grid)"
    elif friction is not None and values and friction == max(values):
        edge = " (the largest value of the grid)"
    else:
        edge = ""
    return _t(
        "e2_released_reading",
        exact_diff=pm("released_exact"),
        current_diff=pm("released_current"),
        gap=pm("cola_t0"),
        rho_median=f"{q[2]:.3f}" if q is not None else "?",
        rho_q01=f"{q[0]:.3f}" if q is not None else "?",
        rho_min=f"{rho_min:.2f}",
        released_train=f"{_mean_of(runs.get('released', []), 'final_train_loss'):.3f}",
        cola_train=f"{_mean_of(runs.get('cola_t0', []), 'final_train_loss'):.3f}",
        lag_line=_lag_line(matched),
        bias_diff=_pm(paired_difference(runs["cola_biases"], runs["cola_t0"]))
        + " against CoLA with free biases"
        if "cola_biases" in runs and "cola_t0" in runs
        else "not measured (not run)",
        last=LAST,
        radius=f"{tuple(chosen)}" if chosen else "not chosen",
        radius_grid=radius_grid or "none",
        radius_gain=_pm(gain) if not math.isnan(gain["mean"]) else "not measured",
        radius_verdict=pm("cola_radius"),
        friction=f"{friction:g}{edge}" if friction is not None else "not chosen",
        friction_grid=friction_grid or "none",
        friction_gain=(
            _pm(friction_gain) if not math.isnan(friction_gain["mean"]) else "not measured"
        ),
        friction_verdict=pm("cola_friction"),
        friction_acc=(
            _pm(paired_difference(runs["cola_friction"], runs["released"], "last_test_acc"))
            if "cola_friction" in runs and "released" in runs
            else "not measured"
        ),
        friction_train=f"{_mean_of(runs.get('cola_friction', []), 'final_train_loss'):.3f}",
        friction_rise=f"{_mean_of(runs.get('cola_friction', []), 'test_loss_rise'):.4f}",
        cola_rise=f"{_mean_of(runs.get('cola_t0', []), 'test_loss_rise'):.4f}",
        long_line=long_line,
        long_friction=long_friction,
    )


def _lag_line(matched: dict) -> str:
    """Whether the released scheme still has the lower test loss at a matched training loss:
    lower by more than two standard errors of the two seeds' means (combined), or level."""
    mm = matched["methods"]
    a, b = mm.get("released", {}).get("test_loss"), mm.get("cola_t0", {}).get("test_loss")
    if not a or not b:
        return ""
    se = math.hypot(a["std"] / math.sqrt(max(a["n"], 1)), b["std"] / math.sqrt(max(b["n"], 1)))
    name = "e2_released_lag_more" if a["mean"] < b["mean"] - 2 * se else "e2_released_lag_slower"
    return _t(name, level=f"{matched['level']:.3f}", released=_stat_text(a), cola=_stat_text(b))


def _stat_text(stat: dict | None) -> str:
    if not stat:
        return "not measured"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f} (sd over seeds)"
