"""Write ``docs/exact-sampling-evidence.md`` from the committed JSON of the exact-sampling scripts.

The scripts are ``validation/hmc_exactness.py`` (HMC exact where BAOAB is biased),
``validation/hmc_reversibility.py`` (the reversibility check ablated),
``validation/hmc_acceptance.py`` (acceptance against step size and dimension, ESS per second
against chains) and ``validation/peers_mici.py`` (``ml.HMC`` beside mici). As in
``validation/report.py``, this module only computes numbers, tables and which reading applies;
every sentence lives in the templates of ``validation/templates/exact_sampling/`` and is filled
by ``validation.report.fill``. The plots are copied to ``docs/img/``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from validation.report import RESULTS, _write, fill

#: the ESS per second "saturates" from the chain count where it stays within this fraction of
#: its largest value
SATURATION = 0.9
#: the exponent of the step size at fixed acceptance in the limit of Beskos et al. (2013)
THEORY_EXPONENT = -0.25

PNGS = (
    "hmc_exactness.png",
    "hmc_reversibility.png",
    "hmc_acceptance.png",
    "hmc_acceptance_ess.png",
    "peers_mici.png",
)


def _t(name: str, **values) -> str:
    return fill(f"exact_sampling/{name}", **values)


def _num(v, fmt: str = ".1f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _z(v: float, limit: float | None = None) -> str:
    """``|v|`` to one decimal, bold where it exceeds ``limit``."""
    s = f"{abs(v):.1f}"
    return f"**{s}**" if limit is not None and abs(v) > limit else s


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2g}%"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _ratio(v: float) -> str:
    return f"{v:.0f}x" if v >= 10 else f"{v:.2g}x"


def _load(values) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if values else "not recorded"


def _names(items) -> str:
    return ", ".join(f"`{n}`" for n in items)


def _machine(torch: str, threads, load_start, load_end, seconds) -> str:
    return _t(
        "machine",
        torch=torch,
        threads=str(threads) if threads is not None else _t("threads_unrecorded"),
        load_start=_load(load_start),
        load_end=_load(load_end),
        minutes=_num(seconds / 60 if seconds is not None else None, ".1f"),
    )


def _read(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _quick(doc: dict) -> str:
    quick = doc.get("quick", doc.get("meta", {}).get("quick", doc.get("settings", {}).get("quick")))
    return _t("quick_note") + "\n\n" if quick else ""


# ------------------------------------------------------------------------- hmc_exactness


def _exactness_table(problems: dict, n_sigma: float) -> str:
    rows = [
        "| problem | h | BAOAB: h tried (max abs z) | BAOAB max abs z | HMC L | HMC acceptance | "
        "HMC failed | HMC max abs z | GHMC acceptance | GHMC max abs z | conditional max abs "
        "z_cond | conditional misses surface on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in problems.items():
        runs = e["runs"]
        baoab, hmc, ghmc = runs["BAOAB"], runs.get("HMC"), runs.get("GHMC")
        cond = runs.get("HMC-conditional")
        tried = ", ".join(f"{g['step_size']:g} ({g['max_abs_z']:.1f})" for g in e["grid"])
        cells = [f"`{name}`", f"{e['step_size']:g}", tried, f"{baoab['max_abs_z']:.1f}"]
        cells += (
            [
                str(hmc["n_leapfrog"]),
                f"{hmc['acceptance_rate']:.3f}",
                _pct(hmc["failure_rate"]),
                _z(hmc["max_abs_z"], n_sigma),
            ]
            if hmc
            else [""] * 4
        )
        cells += (
            [f"{ghmc['acceptance_rate']:.3f}", _z(ghmc["max_abs_z"], n_sigma)] if ghmc else ["", ""]
        )
        if cond:
            sep = cond.get("misses_surface_on", {})
            missed = [k for k, v in sep.items() if v]
            cells += [
                _z(cond["max_abs_z"], n_sigma),
                f"{len(missed)} of {len(sep)}: {_names(missed)}",
            ]
        else:
            cells += ["", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _exactness_reading(meta: dict, problems: dict) -> str:
    n_sigma, bias = meta["n_sigma"], meta["bias_sigma"]
    parts = []
    biased = {n: e["runs"]["BAOAB"]["max_abs_z"] for n, e in problems.items() if e["baoab_biased"]}
    unbiased = {
        n: e["runs"]["BAOAB"]["max_abs_z"] for n, e in problems.items() if not e["baoab_biased"]
    }
    if not biased:
        parts.append(
            _t(
                "ex_baoab_none",
                bias=f"{bias:g}",
                unbiased=", ".join(f"`{n}` ({z:.1f})" for n, z in unbiased.items()),
            )
        )
    elif not unbiased:
        zs = biased.values()
        parts.append(
            _t("ex_baoab_all", bias=f"{bias:g}", low=f"{min(zs):.1f}", high=f"{max(zs):.1f}")
        )
    else:
        parts.append(
            _t(
                "ex_baoab_some",
                bias=f"{bias:g}",
                biased=_names(biased),
                unbiased=", ".join(f"`{n}` ({z:.1f})" for n, z in unbiased.items()),
            )
        )
    exact = [(n, k, r) for n, e in problems.items() for k, r in e["runs"].items() if k != "BAOAB"]
    misses = [(n, k, r) for n, k, r in exact if not r["within"]]
    if not misses:
        n, k, r = max(exact, key=lambda t: t[2]["max_abs_z"])
        parts.append(
            _t(
                "ex_exact_all",
                n_sigma=f"{n_sigma:g}",
                count=len(exact),
                worst=f"{r['max_abs_z']:.1f}",
                run=f"{k} on `{n}`",
            )
        )
    else:
        listed = "; ".join(f"{k} on `{n}` ({r['max_abs_z']:.1f})" for n, k, r in misses)
        parts.append(
            _t(
                "ex_exact_some",
                n_sigma=f"{n_sigma:g}",
                count=len(exact),
                n_missed=len(misses),
                misses=listed,
            )
        )
    cond = {
        n: e["runs"]["HMC-conditional"]
        for n, e in problems.items()
        if "HMC-conditional" in e["runs"]
    }
    if cond:
        yes = [n for n, r in cond.items() if r.get("misses_surface")]
        no = [n for n in cond if n not in yes]
        if not no:
            parts.append(_t("ex_cond_all", n_sigma=f"{n_sigma:g}", problems=_names(yes)))
        else:
            parts.append(
                _t("ex_cond_some", n_sigma=f"{n_sigma:g}", yes=_names(yes) or "none", no=_names(no))
            )
    n, k, r = max(exact, key=lambda t: t[2]["failure_rate"])
    parts.append(
        _t(
            "ex_failures",
            rate=_pct(r["failure_rate"]),
            run=f"{k} on `{n}`",
            h=f"{r['step_size']:g}",
            n_leapfrog=r["n_leapfrog"],
            z=f"{r['max_abs_z']:.1f}",
        )
    )
    return " ".join(parts)


def _settings_line(problems: dict) -> str:
    groups: dict[tuple, list[str]] = {}
    for n, e in problems.items():
        s = e["setting"]
        groups.setdefault((s["n_chains"], s["n_steps"], s["burn_in"], s["n_batches"]), []).append(n)
    return "; ".join(
        _t(
            "ex_setting",
            n_chains=f"{c:,}",
            n_steps=st,
            burn_in=b,
            n_batches=nb,
            problems=_names(ns),
        )
        for (c, st, b, nb), ns in groups.items()
    )


def _exactness() -> str:
    doc = _read("hmc_exactness")
    if doc is None:
        return ""
    meta = doc["meta"]
    problems = {n: e for n, e in doc["problems"].items() if "runs" in e}
    return _quick(doc) + _t(
        "exactness",
        n_sigma=f"{meta['n_sigma']:g}",
        bias=f"{meta['bias_sigma']:g}",
        friction=f"{meta['friction']:g}",
        trajectory=f"{meta['trajectory']:g}",
        settings=_settings_line(problems),
        table=_exactness_table(problems, meta["n_sigma"]),
        reading=_exactness_reading(meta, problems),
        machine=_machine(
            meta["torch"],
            meta.get("threads"),
            meta.get("loadavg_start"),
            meta.get("loadavg_end"),
            meta.get("seconds"),
        ),
    )


# --------------------------------------------------------------------- hmc_reversibility


def _reversibility_table(cases: dict, exact_z: float) -> str:
    rows = [
        "| case | problem | Newton iterations | h | forward failed | backward failed | other root "
        "(median distance) | max abs z, no check | max abs z, check | acceptance, no check | "
        "acceptance, check | rejected by the check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        for r in c["runs"]:
            cl, no, ck = r["classification"], r["no_check"], r["check"]
            dist = cl["other_root_median_distance"]
            other = _pct(cl["other_root"]) + (f" ({dist:.2f})" if dist is not None else "")
            rows.append(
                f"| `{name}` | `{c['problem']}` | {c['max_iter']} | {r['h']:g} | "
                f"{_pct(cl['forward_failed'])} | {_pct(cl['backward_failed'])} | {other} | "
                f"{no['max_abs_z']:.1f} | {_z(ck['max_abs_z'], exact_z)} | "
                f"{no['acceptance_rate']:.3f} | {ck['acceptance_rate']:.3f} | "
                f"{_pct(ck['reverse_failed_rate'])} |"
            )
    return "\n".join(rows)


def _reversibility_reading(cases: dict, st: dict) -> str:
    runs = [(n, r) for n, c in cases.items() for r in c["runs"]]
    label = [f"`{n}` at h = {r['h']:g}" for n, r in runs]
    parts = []
    no = [r["no_check"]["max_abs_z"] for _, r in runs]
    biased = [r["no_check"]["biased"] for _, r in runs]
    if not any(biased):
        parts.append(_t("rev_biased_none", biased_z=f"{st['biased_z']:g}", high=f"{max(no):.1f}"))
    elif all(biased):
        parts.append(
            _t(
                "rev_biased_all",
                biased_z=f"{st['biased_z']:g}",
                low=f"{min(no):.1f}",
                high=f"{max(no):.1f}",
            )
        )
    else:
        others = ", ".join(f"{lb} ({z:.1f})" for lb, z, b in zip(label, no, biased) if not b)
        parts.append(
            _t(
                "rev_biased_some",
                biased_z=f"{st['biased_z']:g}",
                n_biased=sum(biased),
                n_runs=len(runs),
                others=others,
            )
        )
    ck = [r["check"]["max_abs_z"] for _, r in runs]
    exact = [r["check"]["exact"] for _, r in runs]
    if all(exact):
        parts.append(_t("rev_exact_all", exact_z=f"{st['exact_z']:g}", high=f"{max(ck):.1f}"))
    else:
        listed = ", ".join(f"{lb} ({z:.1f})" for lb, z, e in zip(label, ck, exact) if not e)
        parts.append(_t("rev_exact_some", exact_z=f"{st['exact_z']:g}", misses=listed))
    other = max(range(len(runs)), key=lambda i: runs[i][1]["classification"]["other_root"])
    back = max(range(len(runs)), key=lambda i: runs[i][1]["classification"]["backward_failed"])
    cl_o, cl_b = runs[other][1]["classification"], runs[back][1]["classification"]
    if cl_o["other_root"] > 0:
        parts.append(
            _t(
                "rev_roots",
                other=_pct(cl_o["other_root"]),
                other_run=label[other],
                distance=f"{cl_o['other_root_median_distance']:.2f}",
                back=_pct(cl_b["backward_failed"]),
                back_run=label[back],
            )
        )
    else:
        parts.append(_t("rev_roots_none", back=_pct(cl_b["backward_failed"]), back_run=label[back]))
    drops = [r["no_check"]["acceptance_rate"] - r["check"]["acceptance_rate"] for _, r in runs]
    i = max(range(len(runs)), key=lambda j: drops[j])
    parts.append(
        _t(
            "rev_cost",
            drop=f"{drops[i]:.3f}",
            run=label[i],
            before=f"{runs[i][1]['no_check']['acceptance_rate']:.3f}",
            after=f"{runs[i][1]['check']['acceptance_rate']:.3f}",
        )
    )
    return " ".join(parts)


def _reversibility() -> str:
    doc = _read("hmc_reversibility")
    if doc is None:
        return ""
    st = doc["settings"]
    cases = doc["cases"]
    return _quick(doc) + _t(
        "reversibility",
        n_chains=f"{st['n_chains']:,}",
        n_steps=st["n_steps"],
        burn_in=st["burn_in"],
        n_batches=st["n_batches"],
        n_classify=f"{st['n_classify']:,}",
        n_leapfrog=st["n_leapfrog"],
        dtype=st["dtype"],
        biased_z=f"{st['biased_z']:g}",
        exact_z=f"{st['exact_z']:g}",
        table=_reversibility_table(cases, st["exact_z"]),
        reading=_reversibility_reading(cases, st),
        machine=_machine(
            doc["torch"],
            doc.get("threads"),
            doc.get("load_start"),
            doc.get("load_end"),
            doc.get("seconds"),
        ),
    )


# ------------------------------------------------------------------------ hmc_acceptance


def _contains(ci, value: float) -> bool | None:
    return None if ci is None else ci[0] <= value <= ci[1]


def _scaling_table(scaling: dict, dims: list, min_d) -> str:
    rows = [
        "| A step | target acceptance | "
        + " | ".join(f"h* (d = {d})" for d in dims)
        + f" | exponent, d >= {min_d} [95% interval] | exponent, all d | interval holds -1/4 |",
        "|---|---|" + "---|" * (len(dims) + 3),
    ]
    for a_step, s in scaling.items():
        for target, t in s["targets"].items():
            ci = t["exponent_ci95"]
            ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            holds = {True: "yes", False: "no", None: "n/a"}[_contains(ci, THEORY_EXPONENT)]
            rows.append(
                f"| {a_step} | {target} | "
                + " | ".join(_num(t["h_star"].get(str(d)), ".3f") for d in dims)
                + f" | {_num(t['exponent'], '.3f')}{ci_text} | "
                f"{_num(t['exponent_all_d'], '.3f')} | {holds} |"
            )
    return "\n".join(rows)


def _energy_table(scaling: dict) -> str:
    rows = [
        "| A step | points | beta (log d) | gamma (log h) | exponent -beta/gamma | "
        "distance from -1/4 (standard errors) |",
        "|---|---|---|---|---|---|",
    ]
    for a_step, s in scaling.items():
        e = s.get("energy_error_fit")
        if not e:
            continue
        dist = abs(e["exponent"] - THEORY_EXPONENT) / e["exponent_stderr"]
        rows.append(
            f"| {a_step} | {e['n_points']} | {e['beta_log_d']:.3f} +- {e['beta_stderr']:.3f} | "
            f"{e['gamma_log_h']:.2f} +- {e['gamma_stderr']:.2f} | {e['exponent']:.3f} +- "
            f"{e['exponent_stderr']:.3f} | {dist:.1f} |"
        )
    return "\n".join(rows)


def _scaling_reading(scaling: dict) -> str:
    labels, inside, exps = [], [], []
    for a_step, s in scaling.items():
        for target, t in s["targets"].items():
            holds = _contains(t["exponent_ci95"], THEORY_EXPONENT)
            if holds is None or t["exponent"] is None or math.isnan(t["exponent"]):
                continue
            labels.append(f"{a_step} at {target}")
            inside.append(holds)
            exps.append(t["exponent"])
    if not labels:
        return ""
    yes = [lb for lb, h in zip(labels, inside) if h]
    no = [lb for lb, h in zip(labels, inside) if not h]
    name = "acc_ci_all" if not no else "acc_ci_none" if not yes else "acc_ci_some"
    parts = [
        _t(
            name,
            low=f"{min(exps):.3f}",
            high=f"{max(exps):.3f}",
            count=len(labels),
            inside=", ".join(yes),
            outside=", ".join(no),
        )
    ]
    if {"geodesic", "rattle"} <= set(scaling):
        ratios = [
            r / g
            for target, t in scaling["geodesic"]["targets"].items()
            for d, g in t["h_star"].items()
            if g and (r := scaling["rattle"]["targets"].get(target, {}).get("h_star", {}).get(d))
        ]
        if ratios:
            parts.append(_t("acc_rattle", low=f"{min(ratios):.2f}", high=f"{max(ratios):.2f}"))
    return " ".join(parts)


def _ess(ess: dict) -> str:
    if "skipped" in ess:
        return _t("ess_skipped", why=ess["skipped"])
    rows = [
        "| chains | repeats | ESS / s (median) | ESS per chain-step (median) | seconds (median) | "
        "acceptance (median) |",
        "|---|---|---|---|---|---|",
    ]
    for r in ess["rows"]:
        accs = sorted(x["acceptance"] for x in r["repeats"])
        rows.append(
            f"| {r['n_chains']:,} | {len(r['repeats'])} | {_rate(r['ess_per_second_median'])} | "
            f"{r['ess_per_chain_step_median']:.4f} | {r['seconds_median']:.2f} | "
            f"{accs[len(accs) // 2]:.3f} |"
        )
    values = [r["ess_per_second_median"] for r in ess["rows"]]
    top = max(range(len(values)), key=lambda i: values[i])
    sat = next(
        i for i in range(len(values)) if all(v >= SATURATION * values[top] for v in values[i:])
    )
    chains = [r["n_chains"] for r in ess["rows"]]
    saturation = (
        _t("ess_growing")
        if sat == len(values) - 1 and len(values) > 1 and values[-2] < SATURATION * values[-1]
        else _t("ess_saturated", chains=f"{chains[sat]:,}", percent=f"{100 * SATURATION:.0f}")
    )
    return _t(
        "ess",
        problem=ess["problem"],
        step_size=f"{ess['step_size']:g}",
        n_leapfrog=ess["n_leapfrog"],
        observable=ess["observable"],
        table="\n".join(rows),
        first=_rate(values[0]),
        first_chains=f"{chains[0]:,}",
        top=_rate(values[top]),
        top_chains=f"{chains[top]:,}",
        saturation=saturation,
        load_start=_load(ess.get("load_start")),
        load_end=_load(ess.get("load_end")),
    )


def _acceptance() -> str:
    doc = _read("hmc_acceptance")
    if doc is None:
        return ""
    st = doc["settings"]
    scaling = doc.get("scaling", {})
    ess = doc.get("ess", {"skipped": "the run did not reach it"})
    return _quick(doc) + _t(
        "acceptance",
        dims=", ".join(str(d) for d in st["dims"]),
        c_low=f"{min(st['c_grid']):g}",
        c_high=f"{max(st['c_grid']):g}",
        n_c=len(st["c_grid"]),
        n_chains=st["n_chains"],
        burn_in=st["burn_in"],
        n_measure=st["n_measure"],
        n_leapfrog=st["n_leapfrog"],
        n_boot=st["n_boot"],
        targets=", ".join(f"{t:g}" for t in st["targets"]),
        min_d=st["fit_min_d"],
        dh_min_acceptance=f"{st['fit_min_acceptance']:g}",
        scaling_table=_scaling_table(scaling, st["dims"], st["fit_min_d"]),
        energy_table=_energy_table(scaling),
        reading=_scaling_reading(scaling),
        ess=_ess(ess),
        machine=_machine(
            doc["torch"],
            doc.get("threads"),
            doc.get("load_start"),
            doc.get("load_end"),
            doc.get("seconds"),
        ),
    )


# -------------------------------------------------------------------------------- page


def exact_sampling(img: Path, docs: Path) -> None:
    """``docs/exact-sampling-evidence.md`` from the four scripts' JSON (a section whose JSON is
    missing is left out), their plots copied to ``img``."""
    from validation import report_mici  # (it imports this module's helpers)

    for png in PNGS:
        if (RESULTS / png).exists():
            shutil.copy(RESULTS / png, img / png)
    text = _t(
        "page",
        exactness=_exactness(),
        reversibility=_reversibility(),
        acceptance=_acceptance(),
        mici=report_mici.mici_section(),
    )
    _write(docs / "exact-sampling-evidence.md", text)
