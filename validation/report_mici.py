"""The section of ``docs/exact-sampling-evidence.md`` on ``ml.HMC`` beside mici, from
``validation/results/peers_mici.json`` (``validation/peers_mici.py``); the helpers and the page
are those of ``validation/report_exact.py``."""

from __future__ import annotations

from validation.report_exact import (
    _load,
    _names,
    _num,
    _pct,
    _quick,
    _rate,
    _ratio,
    _read,
    _t,
    _z,
)

#: the peer comparison's target: ml.HMC's ESS per second at ``TARGET_CHAINS`` chains at least
#: ``TARGET_RATIO`` times mici's, both samplers unbiased (every ``|z| <= UNBIASED_Z``)
TARGET_RATIO = 100.0
TARGET_CHAINS = 1000
UNBIASED_Z = 4.0


# ---------------------------------------------------------------------------- peers_mici


def _columns(rows: list[dict]) -> list[tuple[str, int]]:
    return list(dict.fromkeys((r["sampler"], r["n_chains"]) for r in rows))


def _mici_ess_table(rows: list[dict], problems: list[str]) -> str:
    cols = _columns(rows)
    out = [
        "| problem | " + " | ".join(f"{s}, {n:,} chain{'s' * (n != 1)}" for s, n in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for p in problems:
        by = {(r["sampler"], r["n_chains"]): r for r in rows if r["problem"] == p}
        out.append(
            f"| `{p}` | "
            + " | ".join(_rate(by[c]["ess_per_s"]) if c in by else "" for c in cols)
            + " |"
        )
    return "\n".join(out)


def _mici_runs_table(rows: list[dict]) -> str:
    out = [
        "| problem | sampler | chains | steps | acceptance | solve failures | reverse failures | "
        "min bulk ESS | wall s | CPU s | ESS / wall s | ESS / CPU s | max abs z | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = r.get("load_average")
        out.append(
            f"| `{r['problem']}` | {r['sampler']} | {r['n_chains']:,} | {r['n_steps']} | "
            f"{r['acceptance_rate']:.3f} | {_pct(r['solve_failure_rate'])} | "
            f"{_pct(r['reverse_failure_rate'])} | {r['min_ess_bulk']:,.0f} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {_rate(r['ess_per_s'])} | {_rate(r['ess_per_cpu_s'])} | "
            f"{_z(r['max_abs_z'], UNBIASED_Z)} | {_num(load[0] if load else None)} |"
        )
    return "\n".join(out)


def _mici_verdicts(doc: dict) -> list[dict]:
    """Per problem: the least ratio over mici's runs (wall and CPU), the largest ``|z|`` of the
    compared runs, and whether the target is met on each clock."""
    rows, out = doc["rows"], []
    for p in dict.fromkeys(c["problem"] for c in doc["comparisons"]):
        comps = [c for c in doc["comparisons"] if c["problem"] == p]
        ml_chains = comps[0]["ml_chains"]
        mici = [r for r in rows if r["problem"] == p and r["sampler"] == "mici"]
        ml = [r for r in rows if r["problem"] == p and r["sampler"] != "mici"]
        ref = [r for r in ml if r["n_chains"] == ml_chains]
        worst_z = max(r["max_abs_z"] for r in mici + ref)
        ok = worst_z <= UNBIASED_Z and ml_chains == TARGET_CHAINS
        wall, cpu = min(c["ratio"] for c in comps), min(c["ratio_cpu"] for c in comps)
        best_mici = max(r["ess_per_s"] for r in mici)
        cross = next(
            (
                r["n_chains"]
                for r in sorted(ml, key=lambda r: r["n_chains"])
                if r["ess_per_s"] > best_mici
            ),
            None,
        )
        one_ml = [r for r in ml if r["n_chains"] == 1]
        one_mici = [r for r in mici if r["n_chains"] == 1]
        single = one_ml[0]["ess_per_s"] / one_mici[0]["ess_per_s"] if one_ml and one_mici else None
        out.append(
            {
                "problem": p,
                "ml_chains": ml_chains,
                "wall": wall,
                "cpu": cpu,
                "worst_z": worst_z,
                "met_wall": ok and wall >= TARGET_RATIO,
                "met_cpu": ok and cpu >= TARGET_RATIO,
                "cross": cross,
                "single": single,
            }
        )
    return out


def _mici_verdict_table(verdicts: list[dict]) -> str:
    out = [
        "| problem | ml.HMC chains | least ratio, wall | least ratio, CPU | largest abs z | one "
        "chain: ml.HMC / mici | ml.HMC passes mici's faster run from | target met (wall) | "
        "target met (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        cross = f"{v['cross']:,} chains" if v["cross"] else "never"
        out.append(
            f"| `{v['problem']}` | {v['ml_chains']:,} | {_ratio(v['wall'])} | {_ratio(v['cpu'])} | "
            f"{_z(v['worst_z'], UNBIASED_Z)} | {_num(v['single'], '.2f')} | {cross} | "
            f"{'yes' if v['met_wall'] else '**no**'} | {'yes' if v['met_cpu'] else '**no**'} |"
        )
    return "\n".join(out)


def _mici_comparison_table(comps: list[dict]) -> str:
    out = [
        "| problem | ml.HMC chains | mici chains | ml.HMC ESS / s | mici ESS / s | ratio (wall) | "
        "ratio (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| `{c['problem']}` | {c['ml_chains']:,} | {c['mici_chains']} | "
        f"{_rate(c['ml_ess_per_s'])} | {_rate(c['mici_ess_per_s'])} | {_ratio(c['ratio'])} | "
        f"{_ratio(c['ratio_cpu'])} |"
        for c in comps
    ]
    return "\n".join(out)


def _why(v: dict, clock: str) -> str:
    """Why a problem misses the target on ``clock``: the ratio, the bias or the chain count."""
    reasons = []
    if v[clock] < TARGET_RATIO:
        reasons.append(_ratio(v[clock]))
    if v["worst_z"] > UNBIASED_Z:
        reasons.append(f"|z| = {v['worst_z']:.1f}")
    if v["ml_chains"] != TARGET_CHAINS:
        reasons.append(f"{v['ml_chains']:,} chains")
    return ", ".join(reasons)


def _mici_reading(doc: dict, verdicts: list[dict]) -> str:
    parts = []
    for clock, key in (("wall", "wall time"), ("cpu", "CPU time")):
        met = [v["problem"] for v in verdicts if v[f"met_{clock}"]]
        missed = [f"`{v['problem']}` ({_why(v, clock)})" for v in verdicts if not v[f"met_{clock}"]]
        name = f"mici_met_{'all' if not missed else 'none' if not met else 'some'}"
        parts.append(
            _t(
                name,
                clock=key,
                met=_names(met),
                missed=", ".join(missed),
                low=_ratio(min(v[clock] for v in verdicts)),
            )
        )
    bad = [r for r in doc["rows"] if r["max_abs_z"] > UNBIASED_Z]
    if not bad:
        worst = max(doc["rows"], key=lambda r: r["max_abs_z"])
        parts.append(
            _t(
                "mici_unbiased_all",
                z=f"{UNBIASED_Z:g}",
                worst=f"{worst['max_abs_z']:.1f}",
                run=f"{worst['sampler']} with {worst['n_chains']:,} chain(s) on "
                f"`{worst['problem']}`",
            )
        )
    else:
        listed = ", ".join(
            f"{r['sampler']} with {r['n_chains']:,} chain(s) on `{r['problem']}` "
            f"({r['max_abs_z']:.1f})"
            for r in bad
        )
        parts.append(_t("mici_unbiased_some", z=f"{UNBIASED_Z:g}", runs=listed))
    singles = [v["single"] for v in verdicts if v["single"] is not None]
    if singles:
        name = "mici_single_behind" if max(singles) < 1 else "mici_single"
        parts.append(_t(name, low=f"{min(singles):.2f}", high=f"{max(singles):.2f}"))
    return " ".join(parts)


def mici_section() -> str:
    doc = _read("peers_mici")
    if doc is None:
        return ""
    st, env = doc["settings"], doc["environment"]
    problems = st["problems"]
    verdicts = _mici_verdicts(doc)
    loads = [r["load_average"][0] for r in doc["rows"] if r.get("load_average")]
    blas = env.get("blas_threads")
    blas_text = (
        ", ".join(f"{b['internal_api']} {b['num_threads']}" for b in blas)
        if blas
        else _t("threads_unrecorded")
    )
    mt, ml_tol = st["mici_tolerances"], st["ml_tolerances"]
    return _quick(doc) + _t(
        "mici",
        step_size=f"{st['step_size']:g}",
        n_leapfrog=st["n_leapfrog"],
        problems=_names(problems),
        ml_plan=", ".join(f"{n:,} x {s}" for n, s in st["ml"]),
        ml_burn_in=st["ml_burn_in"],
        mici_plan=", ".join(f"{n} x {s}" for n, s in st["mici"]),
        mici_burn_in=st["mici_burn_in"],
        reverse_check_tol=f"{mt['reverse_check_tol']:g}",
        constraint_tol=f"{mt['constraint_tol']:g}",
        position_tol=f"{mt['position_tol']:g}",
        max_iters=mt["max_iters"],
        shake_tol=f"{ml_tol['shake_tol']:g}",
        stop_tol=f"{ml_tol['stop_tol']:g}",
        reverse_tol=f"{ml_tol['reverse_tol']:g}",
        newton_iters=ml_tol["newton_iters"],
        numpy_check=f"{max(doc.get('numpy_check', {}).values(), default=float('nan')):.1e}",
        target_ratio=f"{TARGET_RATIO:g}",
        target_chains=f"{TARGET_CHAINS:,}",
        z=f"{UNBIASED_Z:g}",
        ess_table=_mici_ess_table(doc["rows"], problems),
        comparison_table=_mici_comparison_table(doc["comparisons"]),
        verdict_table=_mici_verdict_table(verdicts),
        reading=_mici_reading(doc, verdicts),
        runs_table=_mici_runs_table(doc["rows"]),
        load_low=_num(min(loads) if loads else None),
        load_high=_num(max(loads) if loads else None),
        machine=_t(
            "mici_machine",
            versions=f"torch {env['torch']}, mici {env['mici']}, arviz {env['arviz']}, numpy "
            f"{env['numpy']}, Python {env['python']}",
            threads=env.get("torch_threads"),
            blas=blas_text,
            cpu_count=env.get("cpu_count", "?"),
            load_start=_load(env.get("load_average_start")),
            load_end=_load(env.get("load_average_end")),
            minutes=_num(doc["seconds"] / 60 if "seconds" in doc else None),
            platform=env["platform"],
        ),
    )
