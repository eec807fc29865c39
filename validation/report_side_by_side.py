"""The side-by-side section of ``docs/performance.md``: the sampler against the hand-written
NumPy loop, the closed-form manifolds and OpenMM, with the reading of what bounds each ratio.

Reads ``bench_sampler_side.json`` (or the side-by-side part of ``bench_sampler.json``) and the
JSON of the benchmarks that explain the ratios (``bench_shake_iterations``,
``bench_stiefel_geodesic``, ``bench_constraint_algebra``, ``bench_molecule_floor``,
``weak_order``). As in ``validation/report.py``, this module only computes the numbers and
tables; the sentences live in ``validation/templates/performance/side_by_side*.md``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from validation.report import RESULTS, _environment_line, _ms, fill

#: side-by-side targets: (label, dtype, chains, reference text, needed ratio)
SIDE_TARGETS = (
    ("ml_s2", "float64", 10_000, "the NumPy BAOAB loop on S^2", 3.0),
    ("ml_s2_implicit", "float64", 10_000, "`Sphere()` (ratio within 2x)", 0.5),
    ("ml_s2_implicit_newton3", "float64", 10_000, "`Sphere()` (ratio within 2x)", 0.5),
    ("ml_s2_implicit_jac", "float64", 10_000, "`Sphere()` (ratio within 2x)", 0.5),
    ("ml_s2_implicit_compiled", "float64", 10_000, "compiled `Sphere()` (within 2x)", 0.5),
    ("ml_s2_compiled", "float64", 10_000, "the NumPy BAOAB loop on S^2", 3.0),
    ("ml_so3", "float64", 10_000, "the general-formula geodesic on SO(3)", 5.0),
    ("ml_stiefel_10x3", "float64", 10_000, "the general-formula geodesic on V(10, 3)", 5.0),
    ("ml_trimer", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_trimer_compiled", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_chain10", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_trimer_frozen", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_trimer_frozen_compiled", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_chain10_compiled", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_chain10_frozen", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_chain10_frozen_compiled", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_trimer_newton3", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_chain10_newton3", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_trimer_jac", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_trimer_frozen_jac", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_chain10_jac", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_chain10_frozen_jac", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_trimer_obabo", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_trimer_frozen_jac_obabo", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_trimer_frozen_obabo_compiled", "float64", 4_000, "OpenMM Reference, rigid trimer", 1.0),
    ("ml_chain10_obabo", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_chain10_frozen_jac_obabo", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
    ("ml_chain10_frozen_obabo_compiled", "float64", 4_000, "OpenMM Reference, 10-bead chain", 1.0),
)


def _side_table(side: dict) -> str:
    ratio = {(q["label"], q["dtype"], q["n_chains"]): q for q in side["ratios"]}
    out = [
        "| family | contender | dtype | chains | steps | chain-steps / s | torch kernels per step "
        "| ratio | reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in side["rows"]:
        q = ratio.get((r["label"], r["dtype"], r["n_chains"]))
        against = (f"{q['ratio']:.3g}", q["reference"]) if q else ("", "")
        k = r.get("torch_kernels_per_step")
        out.append(
            f"| {r['family']} | {r['label']} | {r['dtype']} | {r['n_chains']:,} | "
            f"{r['n_steps']} | {r['chain_steps_per_s']:,.0f} | {'' if k is None else f'{k:.0f}'} "
            f"| {against[0]} | {against[1]} |"
        )
    return "\n".join(out)


def _side_targets(side: dict) -> str:
    ratio = {(q["label"], q["dtype"], q["n_chains"]): q["ratio"] for q in side["ratios"]}
    out = ["| contender | against | chains | ratio | target | met |", "|---|---|---|---|---|---|"]
    for label, dtype, n, against, need in SIDE_TARGETS:
        got = ratio.get((label, dtype, n))
        if got is None:
            out.append(f"| {label} ({dtype}) | {against} | {n:,} | not measured | >= {need:g} | |")
            continue
        out.append(
            f"| {label} ({dtype}) | {against} | {n:,} | {got:.3g} | >= {need:g} | "
            f"{'yes' if got >= need else 'no'} |"
        )
    return "\n".join(out)


def side_by_side_section(img: Path) -> str:
    """The side-by-side part of ``docs/performance.md`` (empty if that run is missing)."""
    for name in ("bench_sampler_side", "bench_sampler"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            result = json.loads(path.read_text())
            if result.get("side_by_side", {}).get("rows"):
                break
    else:
        return ""
    side = result["side_by_side"]
    png = RESULTS / f"{name}.png"
    if png.exists():
        shutil.copy(png, img / "bench_sampler_side.png")
    skipped = "".join(f" Skipped: {k} ({v})." for k, v in side.get("skipped", {}).items())
    return fill(
        "performance/side_by_side",
        environment=_environment_line(result["environment"], "float64 and float32"),
        source=f"validation/results/{name}.json",
        skipped=skipped,
        table=_side_table(side),
        targets=_side_targets(side),
        reading=_side_reading(side),
    )


def _side_reading(side: dict) -> str:
    ratio = {(q["label"], q["n_chains"]): q["ratio"] for q in side["ratios"]
             if q["dtype"] == "float64"}  # fmt: skip
    rows = {(r["label"], r["n_chains"]): r for r in side["rows"] if r["dtype"] == "float64"}

    def q(label, n):
        v = ratio.get((label, n))
        return "not measured" if v is None else f"{v:.2g}"

    def kernels(label, n):
        r = rows.get((label, n))
        k = None if r is None else r.get("torch_kernels_per_step")
        return "?" if k is None else f"{k:.0f}"

    alternated = _shake_iterations()
    normals = side.get("normals", {})
    numpy_row = rows.get(("numpy_s2", 10_000))
    budget = "?"
    if numpy_row is not None:
        budget = f"{1e6 * 10_000 / (3 * numpy_row['chain_steps_per_s']):.0f}"
    return fill(
        "performance/side_by_side_reading",
        s2_eager=q("ml_s2", 10_000),
        s2_compiled=q("ml_s2_compiled", 10_000),
        s2_kernels=kernels("ml_s2", 10_000),
        randn_us=f"{normals.get('torch_randn_us', float('nan')):.0f}",
        numpy_normal_us=f"{normals.get('numpy_standard_normal_us', float('nan')):.0f}",
        budget_us=budget,
        so3=q("ml_so3", 10_000),
        so3_compiled=q("ml_so3_compiled", 10_000),
        st10=q("ml_stiefel_10x3", 10_000),
        st10_compiled=q("ml_stiefel_10x3_compiled", 10_000),
        implicit_s2=q("ml_s2_implicit", 10_000),
        implicit_quasi=q("ml_s2_implicit_quasi", 10_000),
        implicit_newton3=q("ml_s2_implicit_newton3", 10_000),
        implicit_compiled=q("ml_s2_implicit_compiled", 10_000),
        implicit_jac=q("ml_s2_implicit_jac", 10_000),
        trimer_newton3=q("ml_trimer_newton3", 4_000),
        chain_newton3=q("ml_chain10_newton3", 4_000),
        trimer=q("ml_trimer", 4_000),
        trimer_compiled=q("ml_trimer_compiled", 4_000),
        chain=q("ml_chain10", 4_000),
        chain_compiled=q("ml_chain10_compiled", 4_000),
        trimer_quasi=q("ml_trimer_quasi", 4_000),
        trimer_frozen=q("ml_trimer_frozen", 4_000),
        trimer_frozen_compiled=q("ml_trimer_frozen_compiled", 4_000),
        chain_quasi=q("ml_chain10_quasi", 4_000),
        chain_frozen=q("ml_chain10_frozen", 4_000),
        chain_frozen_compiled=q("ml_chain10_frozen_compiled", 4_000),
        trimer_kernels=kernels("ml_trimer", 4_000),
        trimer_frozen_kernels=kernels("ml_trimer_frozen", 4_000),
        trimer_jac=q("ml_trimer_jac", 4_000),
        trimer_frozen_jac=q("ml_trimer_frozen_jac", 4_000),
        chain_jac=q("ml_chain10_jac", 4_000),
        chain_frozen_jac=q("ml_chain10_frozen_jac", 4_000),
        **_obabo_molecules(ratio),
        **alternated,
        **_stiefel_parts(),
        **_sphere_geodesic(),
        **_constraint_algebra(),
        **_molecule_floor(),
    )


def _obabo_molecules(ratio: dict) -> dict:
    """Placeholders of the OBABO molecule contenders: each one's ratio to OpenMM Reference at
    4,000 molecules (``<molecule>_<variant>_obabo``), its speed over the same BAOAB contender
    (``..._gain``), and OBABO's weak-order error constant over BAOAB's from ``weak_order.json``
    with the step factor it implies at equal bias (its square root)."""
    out = {}
    for molecule, key in (("trimer", "trimer"), ("chain10", "chain")):
        for variant, suffix in (("", ""), ("_frozen_jac", ""), ("_frozen", "_compiled")):
            obabo, baoab = (ratio.get((f"ml_{molecule}{variant}{s}", 4_000))
                            for s in (f"_obabo{suffix}", suffix))  # fmt: skip
            name = f"{key}{variant}_obabo{suffix}"
            out[name] = "not measured" if obabo is None else f"{obabo:.2g}"
            out[f"{name}_gain"] = "?" if obabo is None or not baoab else f"{obabo / baoab:.2f}"
    out["obabo_constant"], out["obabo_step_factor"] = "?", "?"
    path = RESULTS / "weak_order.json"
    if path.exists():
        constant = json.loads(path.read_text()).get("obabo_over_baoab_constant")
        if constant:
            out["obabo_constant"] = f"{constant:.1f}"
            out["obabo_step_factor"] = f"{abs(constant) ** 0.5:.1f}"
    return out


def _constraint_algebra() -> dict:
    """Placeholders from ``bench_constraint_algebra.json``: the 10-bead chain's step at 4,000
    molecules before and after the kept LU factor and the column sums (``ca_<newton>_before``,
    ``ca_<newton>_now`` in ms, ``ca_<newton>_gain`` their ratio), and the share of a ``9 x 9``
    solve that the factorisation takes."""
    path = RESULTS / "bench_constraint_algebra.json"
    out = {f"ca_{k}_{w}": "?" for k in ("newton", "frozen") for w in ("before", "now", "gain")}
    out["ca_factor_share"] = "?"
    if not path.exists():
        return out
    result = json.loads(path.read_text())
    for r in result["steps"]:
        if r["molecule"] == "chain10" and r["molecules"] == 4_000:
            k = "newton" if r["newton"] is True else str(r["newton"])
            out[f"ca_{k}_before"] = _ms(r["before_ms"])
            out[f"ca_{k}_now"] = _ms(r["now_ms"])
            out[f"ca_{k}_gain"] = f"{r['before_over_now']:.2f}"
    for r in result["solves"]:
        if r["m"] == 9 and r["systems"] == 4_000:
            out["ca_factor_share"] = f"{100 * r['lu_factor_ex_ms'] / r['solve_ex_ms']:.0f}"
    return out


def _molecule_floor() -> dict:
    """Placeholders from ``bench_molecule_floor.json`` (``mf_*``): OpenMM's Reference step, the
    frozen and Newton steps' floors (the user's constraint and the normal draws alone) in ms and
    as multiples of OpenMM's step, the evaluation counts, and one constraint evaluation as
    written and in memory order."""
    keys = (
        "trimer_openmm chain_openmm frozen_g frozen_jac newton_jac draws trimer_draws "
        "trimer_frozen_floor trimer_frozen_floor_x chain_frozen_floor chain_frozen_floor_x "
        "trimer_newton_floor chain_newton_floor trimer_g trimer_g_mo chain_g chain_g_mo "
        "trimer_frozen_floor_mo trimer_frozen_floor_mo_x chain_frozen_floor_mo "
        "chain_frozen_floor_mo_x"
    ).split()
    out = {f"mf_{k}": "?" for k in keys}
    path = RESULTS / "bench_molecule_floor.json"
    if not path.exists():
        return out
    for r in json.loads(path.read_text())["molecules"]:
        name = "trimer" if r["molecule"] == "trimer" else "chain"
        frozen, newton = r["per_step"]["frozen"], r["per_step"]["True"]
        omm = r["openmm_reference_step_ms"]
        out[f"mf_{name}_openmm"] = "not measured" if omm is None else _ms(omm)
        out[f"mf_{name}_frozen_floor"] = _ms(frozen["floor_ms"])
        out[f"mf_{name}_newton_floor"] = _ms(newton["floor_ms"])
        out[f"mf_{name}_frozen_floor_mo"] = _ms(frozen["floor_memory_order_ms"])
        for key, v in (
            ("floor", frozen["floor_ms"]),
            ("floor_mo", frozen["floor_memory_order_ms"]),
        ):
            out[f"mf_{name}_frozen_{key}_x"] = "?" if omm is None else f"{v / omm:.1f}"
        out[f"mf_{name}_g"] = _ms(r["constraint_ms"])
        out[f"mf_{name}_g_mo"] = _ms(r["constraint_memory_order_ms"])
        if name == "trimer":
            out["mf_trimer_draws"] = _ms(frozen["normal_draws"] * r["normals_ms"])
        out["mf_frozen_g"] = str(frozen["constraint_evaluations"])
        out["mf_frozen_jac"] = str(frozen["jacobian_evaluations"])
        out["mf_newton_jac"] = str(newton["jacobian_evaluations"])
        out["mf_draws"] = str(frozen["normal_draws"])
    return out


def _stiefel_parts() -> dict:
    """Placeholders from ``bench_stiefel_geodesic.json``: the parts of the V(10, 3) step in
    milliseconds, and the stacked step's time against the batched one's at 1 and 10^4 chains."""
    path = RESULTS / "bench_stiefel_geodesic.json"
    keys = {
        "step_stacked": "step_stacked_ms", "step_batched": "step_batched_ms",
        "step_general": "step_general_ms", "geo_stacked": "geodesic_stacked_ms",
        "geo_batched": "geodesic_batched_ms", "expm_stacked": "expm_stacked_ms",
        "expm_matrix_exp": "expm_matrix_exp_ms", "product_stacked": "product_stacked_ms",
        "product_bmm": "product_bmm_ms",
    }  # fmt: skip
    if not path.exists():
        out = dict.fromkeys(keys, "?")
        more = (
            "parts_chains",
            "st10_budget",
            "cross_one",
            "cross_many",
            "expm_share",
            "operand_mb",
        )
        return {**out, **dict.fromkeys(more, "?")}
    result = json.loads(path.read_text())
    parts = result["parts"]
    out = {k: f"{parts[v]:.3g}" for k, v in keys.items()}
    cross = {r["chains"]: r["stacked_over_batched"] for r in result["crossover"]
             if r["frame"] == "10x3"}  # fmt: skip
    return {
        **out,
        "parts_chains": f"{parts['chains']:,}",
        "st10_budget": f"{parts['step_general_ms'] / 5:.3g}",
        "expm_share": f"{100 * parts['expm_stacked_ms'] / parts['geodesic_stacked_ms']:.0f}",
        "operand_mb": f"{36 * 8 * parts['chains'] / 1e6:.2g}",
        "cross_one": f"{cross[1]:.2g}" if 1 in cross else "?",
        "cross_many": f"{cross[10_000]:.2g}" if 10_000 in cross else "?",
    }


def _sphere_geodesic() -> dict:
    """Placeholders from ``bench_sphere_geodesic.json``: ``torch.sinc``, ``torch.sin`` and
    ``sine_ratio`` on one angle per chain in microseconds (``sg_sinc``, ``sg_sin``,
    ``sg_ratio``), the S^2 step with each form (``sg_step_sinc``, ``sg_step``) and the gain."""
    keys = ("sg_sinc", "sg_sin", "sg_ratio", "sg_step_sinc", "sg_step", "sg_gain", "sg_chains")
    path = RESULTS / "bench_sphere_geodesic.json"
    if not path.exists():
        return dict.fromkeys(keys, "?")
    result = json.loads(path.read_text())
    kernels, steps = result["kernels_us"], result["step_us"]
    return {
        "sg_sinc": f"{kernels['sinc']:.0f}",
        "sg_sin": f"{kernels['sin']:.0f}",
        "sg_ratio": f"{kernels['sine_ratio']:.0f}",
        "sg_step_sinc": f"{steps['sinc']:.0f}",
        "sg_step": f"{steps['sine_ratio']:.0f}",
        "sg_gain": f"{result['step_gain']:.2f}",
        "sg_chains": f"{result['n_chains']:,}",
    }


def _shake_iterations() -> dict:
    """Placeholders from ``bench_shake_iterations.json`` (the SHAKE iterations timed in
    alternation): ``alt_<problem>_<method>`` the speed against Newton's, ``alt_s2_<method>_cf``
    against ``Sphere()``, ``alt_<problem>_<method>_stop`` the time of the whole budget's step
    over the default's."""
    path = RESULTS / "bench_shake_iterations.json"
    cases = (
        {c["problem"]: c for c in json.loads(path.read_text())["cases"]} if path.exists() else {}
    )

    def ratio(problem, method, key):
        v = cases.get(problem, {}).get(method, {}).get(key)
        return "not measured" if v is None else f"{v:.2f}"

    out = {"alt_s2_newton_cf": ratio("s2", "newton", "speed_vs_closed_form")}
    for problem in ("s2", "trimer", "chain10"):
        for method in ("newton_3", "quasi_newton", "frozen"):
            out[f"alt_{problem}_{method}"] = ratio(problem, method, "speed_vs_newton")
    for method in ("newton_3", "quasi_newton", "frozen"):
        out[f"alt_s2_{method}_cf"] = ratio("s2", method, "speed_vs_closed_form")
    for problem in ("s2", "trimer", "chain10"):
        for method in ("newton", "frozen"):
            out[f"alt_{problem}_{method}_stop"] = ratio(problem, method, "stop_gain")
    out["alt_hmc_ellipse_newton_stop"] = ratio("hmc_ellipse", "newton", "stop_gain")
    return out
