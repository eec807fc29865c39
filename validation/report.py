"""Write ``docs/validation.md``, ``docs/experiments.md`` and ``docs/performance.md`` from the
committed results.

Reads the JSON of the full runs in ``validation/results/`` (invariant measure, weak order, the
paper's experiments, the optimizer and sampler benchmarks), copies their plots to ``docs/img/``
and writes the pages. This module only computes the numbers and the tables; the text around
them, including the paragraphs that interpret the numbers, lives in the Markdown templates of
``validation/templates/`` (one folder per page), whose ``${name}`` placeholders it fills
(:func:`fill`). Run ``python -m validation.report`` after a full run of the scripts.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Callable
from pathlib import Path

from manifold_langevin.testing.problems import PROBLEMS
from manifold_langevin.testing.weak_order import table as order_table

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "docs"
TEMPLATES = Path(__file__).parent / "templates"


def fill(name: str, **values) -> str:
    """The template ``validation/templates/<name>.md`` with its ``${placeholder}`` s replaced by
    ``values``.

    A template's final newline is not part of its text, so a paragraph can be put inside
    another. Every placeholder must be given (``KeyError`` otherwise); a literal ``$`` is
    written ``$$``.
    """
    text = (TEMPLATES / f"{name}.md").read_text().removesuffix("\n")
    return string.Template(text).substitute(values)


def _write(path: Path, text: str) -> None:
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- validation.md


def _measure_table(runs: list[dict]) -> str:
    rows = [
        "| problem | scheme | h | max abs z (exact) | max abs z (conditional) | chi2 / dof | "
        "KS p | within allowance | residual | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        obs = r["observables"].values()
        z = max(abs(o["z"]) for o in obs)
        zc = [abs(o["z_conditional"]) for o in obs if "z_conditional" in o]
        m = r.get("marginal")
        chi = f"{m['chi2']:.0f} / {m['chi2_dof']}" if m else ""
        ks = f"{m['ks_p_value']:.2f}" if m else ""
        rows.append(
            f"| {r['problem']} | {r['scheme']} | {r['step_size']:g} | {z:.1f} | "
            f"{max(zc):.0f} | {chi} | {ks} | {'yes' if r['consistent'] else '**no**'} | "
            f"{r['max_residual']:.0e} | {r['seconds']:.0f} |"
            if zc
            else f"| {r['problem']} | {r['scheme']} | {r['step_size']:g} | {z:.1f} |  | {chi} | "
            f"{ks} | {'yes' if r['consistent'] else '**no**'} | {r['max_residual']:.0e} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(rows)


def _extras(wo: dict) -> str:
    lines = []
    if "obabo_over_baoab_constant" in wo:
        constant = f"{wo['obabo_over_baoab_constant']:.1f}"
        lines.append(fill("validation/obabo_constant", constant=constant) + "\n")
    fr = wo.get("friction_sweep")
    if fr:
        lines += ["| friction gamma | BAOAB constant C (h = 0.2) | stderr |", "|---|---|---|"]
        lines += [f"| {p['friction']:g} | {p['constant']:+.4f} | {p['constant_stderr']:.4f} |"
                  for p in fr]  # fmt: skip
        lines.append("")
    studies = {st["scheme"]: st for st in wo["studies"]}
    if fr and "lm" in studies:
        lm = studies["lm"]["points"][-1]
        top = fr[-1]
        a, sa = lm["difference"]["estimate"] / lm["h"], lm["difference"]["stderr"] / lm["h"]
        z = abs(a - top["constant"]) / (sa**2 + top["constant_stderr"] ** 2) ** 0.5
        paragraph = fill(
            "validation/limit_method",
            slope=f"{a:+.4f}",
            slope_se=f"{sa:.4f}",
            dt=f"{lm['h']:g}",
            constant=f"{top['constant']:+.4f}",
            constant_se=f"{top['constant_stderr']:.4f}",
            friction=f"{top['friction']:g}",
            z=f"{z:.1f}",
        )
        lines.append(paragraph + "\n")
    sg = wo.get("stochastic_gradient")
    if sg:
        lines += [
            f"| h | error with noisy force (sigma = {sg[0]['sigma']:g}) | stderr | "
            "heating prediction |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['h']:g} | {p['coarse']['error']:+.4f} | {p['coarse']['stderr']:.4f} | "
                  f"{p['predicted_error']:+.4f} |" for p in sg]  # fmt: skip
        lines.append("\n" + fill("validation/stochastic_gradients", sigma=f"{sg[0]['sigma']:g}"))
    return "\n".join(lines)


def _long_runs() -> str:
    """The long float32 CoLA runs of ``validation/long_runs.py`` (section of validation.md)."""
    path = RESULTS / "long_runs.json"
    if not path.exists():
        return ""
    lr = json.loads(path.read_text())
    meta, st = lr["meta"], lr["meta"]["settings"]
    rows = [
        "| case | max residual | tolerance | log10 slope per 10^5 steps (se) | "
        "last / first decile | rejected | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in lr["summary"].items():
        rows.append(
            f"| {name} | {c['max_residual']:.2g} | {c['tolerance']:.2g} | "
            f"{c['log10_slope_per_1e5_steps']:+.3f} ({c['log10_slope_stderr']:.3f}) | "
            f"{c['last_over_first']:.2f} | {c['n_rejected']} | {c['seconds']:.0f} |"
        )
    return fill(
        "validation/long_runs",
        minutes=f"{meta['seconds'] / 60:.0f}",
        dtype=st["dtype"],
        steps=f"{meta['steps']:,}",
        lr=f"{st['lr']:g}",
        friction=f"{st['friction']:g}",
        temperature=f"{st['temperature']:g}",
        gradient_noise=f"{st['gradient_noise']:g}",
        rows=st["orthogonal_shape"][0],
        cols=st["orthogonal_shape"][1],
        n_circle_weights=f"{st['n_circle_weights']:,}",
        radius=f"{st['radius']:g}",
        every=meta["every"],
        growth_limit=f"{meta['growth_limit_decades']:g}",
        table="\n".join(rows),
    )


def validation(img: Path, docs: Path) -> None:
    """``docs/validation.md``: invariant measure, weak order and long runs, from their JSON."""
    im = json.loads((RESULTS / "invariant_measure.json").read_text())
    wo = json.loads((RESULTS / "weak_order.json").read_text())
    pngs = ["weak_order.png", "long_runs.png", *(f"invariant_measure_{n}.png" for n in PROBLEMS)]
    for png in pngs:
        if (RESULTS / png).exists():
            shutil.copy(RESULTS / png, img / png)
    text = fill(
        "validation/page",
        minutes=f"{im['meta']['seconds'] / 60:.0f}",
        problems="\n".join(f"- `{n}`: {p.description}" for n, p in PROBLEMS.items()),
        measure_table=_measure_table(im["runs"]),
        weak_order_minutes=f"{wo['seconds'] / 60:.0f}",
        kappa=f"{wo['kappa']:g}",
        order_table=order_table(wo),
        extras=_extras(wo),
        long_runs=_long_runs(),
    )
    _write(docs / "validation.md", text)


# ---------------------------------------------------------------------------- experiments.md


def _spiral_table(rows: list[dict]) -> str:
    out = ["| method | train acc | test acc | test - SGD (paired, +- se) | max residual |",
           "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        out.append(
            f"| {r['label']} | {r['train_acc_mean']:.3f} +- {r['train_acc_std']:.3f} | "
            f"{r['test_acc_mean']:.3f} +- {r['test_acc_std']:.3f} | "
            f"{r['test_minus_sgd_mean']:+.4f} +- {r['test_minus_sgd_stderr']:.4f} | "
            f"{r['max_residual']:.0e} |"
        )
    return "\n".join(out)


def experiments(img: Path, docs: Path) -> None:
    """``docs/experiments.md``: the paper's experiments, tables from their JSON."""
    e2 = json.loads((RESULTS / "exp_e2.json").read_text())
    orth = json.loads((RESULTS / "exp_orthogonal.json").read_text())
    spiral = json.loads((RESULTS / "spiral.json").read_text())
    for png in ("exp_e2.png", "exp_orthogonal_cnn.png", "exp_orthogonal_deep.png", "spiral.png"):
        shutil.copy(RESULTS / png, img / png)
    st = spiral["meta"]["settings"]
    # they import this module
    from validation.report_e2 import e2_released_section
    from validation.report_e2_temperature import e2_temperature_section

    text = fill(
        "experiments/page",
        e2_released=e2_released_section(img),
        e2_temperature=e2_temperature_section(img),
        e2_n_train=f"{e2['meta']['n_train']:,}",
        e2_n_eval=f"{e2['meta']['n_eval']:,}",
        e2_table=e2["table"],
        orthogonal_table=orth["table"],
        deep_layers=orth["meta"]["deep_depth"] + 2,
        orthogonal_epochs=orth["meta"]["epochs"],
        spiral_n_train=f"{st['n_train']:,}",
        spiral_n_test=f"{st['n_test']:,}",
        spiral_widths="-".join(str(w) for w in (2, *st["hidden"], 2)),
        spiral_seeds=len(st["seeds"]),
        spiral_radii=", ".join(f"{r:g}" for r in st["radius"]),
        spiral_table=_spiral_table(spiral["table"]),
    )
    _write(docs / "experiments.md", text)


# ---------------------------------------------------------------------------- performance.md


#: what each benchmarked method is (keys of ``bench_optim.json``'s ``methods``)
METHODS = {
    "sgd_momentum": "`torch.optim.SGD(momentum=0.9)` on the same weights",
    "geoopt_sphere": "geoopt `RiemannianSGD` (momentum 0.9), weights as `(N, 2)` points of "
    "`geoopt.Sphere`",
    "cola": "CoLA, eager (the default)",
    "cola_torch_trig": "the same with torch's `sin` and `cos` (the default takes NumPy's SIMD "
    "float32 functions on CPU)",
    "cola_mask": '`CoLA(on_nonfinite="mask")`, eager: no host sync (on CPU one read of a sum '
    "per chunk of angles, to select entry by entry only where one is not finite)",
    "cola_mask_everywhere": "the same selecting entry by entry in every chunk (the path of an "
    "accelerator, where no value is read)",
    "cola_noisy": "CoLA, eager, temperature 1e-4 (circles: the default `fuse=True`, one rotation "
    "per step; orthogonal: two RATTLE steps and a projected Gaussian)",
    "cola_noisy_unfused": "the same with `fuse=False`: rotate, O, rotate",
    "normal_draws": "`torch.randn` of one normal per circle weight alone (what the noisy step "
    "draws)",
    "cola_compiled": "`CoLA(compile=True)`",
    "cola_compiled_nosync": '`CoLA(compile=True, on_nonfinite="mask")`: no host sync',
    "cola_compiled_step": '`torch.compile(opt.step)` of a `CoLA(on_nonfinite="mask")`: the '
    "whole step compiled (inductor)",
    "cola_cudagraph_step": 'the same with `mode="reduce-overhead"` (CUDA graphs)',
    "matmul": "one `(N x p) @ (p x p)` product: the unit of matmul-equivalents",
    "paper": "CoLA with the released scripts' SHAKE (`validation.baselines.PaperStiefel`: 10 fixed "
    "iterations)",
    "paper_released": "the released o-CoLA step's own operation sequence (29 products)",
    "paper_noisy": "CoLA with the paper's SHAKE at temperature 1e-4",
    "geoopt_euclidean_stiefel": "geoopt `RiemannianSGD` (momentum 0.9) on `EuclideanStiefel` "
    "(QR retraction)",
    "geoopt_canonical_stiefel": "geoopt `RiemannianSGD` (momentum 0.9) on `CanonicalStiefel` "
    "(Cayley retraction)",
    "param_cayley": '`parametrizations.orthogonal(orthogonal_map="cayley")` + SGD(momentum=0.9)',
    "param_default": "`parametrizations.orthogonal()` (`matrix_exp`) + SGD(momentum=0.9)",
    "sgd_unconstrained": "no constraint, SGD(momentum=0.9): the cost of forward and backward",
}


def _environment_line(env: dict, dtype: str) -> str:
    load = env.get("load_average")
    load_text = f", load average {' / '.join(f'{v:.1f}' for v in load)}" if load else ""
    extra = f", geoopt {env['geoopt']}" if "geoopt" in env else ""
    return (
        f"torch {env['torch']}{extra}, Python {env['python']}, {env['device']}, "
        f"{env['threads']} thread(s) of {env.get('cpu_count', '?')} cores{load_text}, {dtype}; "
        f"`{env['platform']}`"
    )


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _load_note(env: dict) -> str:
    """Whether the machine ran other jobs during the benchmark, read from its load average."""
    load = env.get("load_average")
    shared = bool(load) and max(load) > env["threads"] + 0.5
    return fill("performance/load_shared" if shared else "performance/load_idle")


def _optim_case_table(rec: dict) -> str:
    unit = rec.get("unit")
    head = "| method | median ms | quartiles ms | time / " + rec["baseline"]
    head += " | matmul-equivalents |" if unit else " |"
    rows = [head, "|---|---|---|---|---|" if unit else "|---|---|---|---|"]
    for name, st in rec["methods"].items():
        cells = [
            f"`{name}`: {METHODS.get(name, '')}",
            _ms(st["median_ms"]),
            f"[{_ms(st['q1_ms'])}, {_ms(st['q3_ms'])}]",
            f"{st['ratio_to_baseline']:.3g}",
        ]
        if unit:
            cells.append(f"{st['matmul_equivalents']:.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _targets_table(targets: list[dict]) -> str:
    rows = ["| target | ratio of medians | measured | wanted | met |", "|---|---|---|---|---|"]
    for t in targets:
        rows.append(
            f"| {t['description']} | `{t['ratio']}` | {t['measured']:.2f} | {t['target']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(rows)


def _sampler_tables(rows: list[dict]) -> str:
    out = []
    for sweep, what in (("chains", "number of chains"), ("dimension", "dimension")):
        sel = [r for r in rows if r["sweep"] == sweep]
        if not sel:
            continue
        out += [
            f"Sweep over the {what}:\n",
            "| manifold | event shape | chains | steps | chain-steps / s | ms per step "
            "| failures |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['label']} | {' x '.join(map(str, r['event_shape']))} | {r['n_chains']} | "
            f"{r['n_steps']} | {r['chain_steps_per_s']:,.0f} | {_ms(r['us_per_step'] / 1e3)} | "
            f"{r['n_failures']} |"
            for r in sel
        ]
        out.append("")
    return "\n".join(out)


def _case(opt: dict, case: str) -> dict:
    return next(r for r in opt["cases"] if r.get("key", r["case"]) == case)


def _ratio(opt: dict, case: str, num: str, den: str) -> float:
    methods = _case(opt, case)["methods"]
    return methods[num]["median_ms"] / methods[den]["median_ms"]


def _ratio_text(opt: dict, case: str, num: str, den: str) -> str:
    """``_ratio`` to two decimals, or ``"(not measured)"`` when a method is missing."""
    try:
        return f"{_ratio(opt, case, num, den):.2f}"
    except (KeyError, StopIteration):
        return "(not measured)"


def _spread(opt: dict, case: str, num: str, den: str) -> str:
    """The numerator's quartiles over the denominator's median, as a ratio range."""
    methods = _case(opt, case)["methods"]
    base = methods[den]["median_ms"]
    return f"quartiles {methods[num]['q1_ms'] / base:.1f}x to {methods[num]['q3_ms'] / base:.1f}x"


def _meq(opt: dict, case: str, method: str) -> float:
    return _case(opt, case)["methods"][method]["matmul_equivalents"]


def _trig_reading() -> str:
    """What ``validation/bench_circle_trig.py`` measured (empty if it was not run)."""
    path = RESULTS / "bench_circle_trig.json"
    if not path.exists():
        return ""
    t = json.loads(path.read_text())
    ms = t["median_ms"]
    err = max(max(a["cos_error"], a["sin_error"]) for a in t["accuracy"])
    return fill(
        "performance/trig_reading",
        exact=f"{ms['exact'] / ms['sgd']:.1f}",
        cheap=f"{ms['cheap_poly'] / ms['sgd']:.1f}",
        reduced=f"{ms['reduced_poly'] / ms['sgd']:.1f}",
        error=f"{err:.1e}",
    )


def _eager_trig() -> dict:
    """The eager circle step on one chunk against its cosine and sine, NumPy's and torch's,
    from ``bench_circle_trig.json`` (``"?"`` where it was not measured)."""
    keys = ("chunk", "step_us", "cos_sin_us", "trig_share", "torch_step_us", "torch_trig_us",
            "torch_trig_share", "add_us", "rest_us", "rest_adds")  # fmt: skip
    out = dict.fromkeys(keys, "?")
    path = RESULTS / "bench_circle_trig.json"
    eager = json.loads(path.read_text()).get("eager_chunk") if path.exists() else None
    if eager and "cos_sin" in eager["us"]:
        us = eager["us"]
        out.update(
            chunk=f"{eager['chunk']:,}",
            step_us=f"{us['step']:.0f}",
            cos_sin_us=f"{us['cos_sin']:.0f}",
            trig_share=f"{100 * eager['trig_share']:.0f}",
            torch_step_us=f"{us['step_torch_trig']:.0f}",
            torch_trig_us=f"{us['sin'] + us['cos']:.0f}",
            torch_trig_share=f"{100 * eager['torch_trig_share']:.0f}",
            add_us=f"{us['add']:.1f}",
            rest_us=f"{us['step'] - us['cos_sin']:.0f}",
            rest_adds=f"{(us['step'] - us['cos_sin']) / us['add']:.0f}",
        )
    return out


def _rest_over_sgd(opt: dict) -> str:
    """The eager circle step's passes other than its cosine and sine (one chunk's time from
    ``bench_circle_trig.json``, scaled to the E2 network's circle weights) over SGD-momentum's
    step on that network."""
    path = RESULTS / "bench_circle_trig.json"
    eager = json.loads(path.read_text()).get("eager_chunk") if path.exists() else None
    if not eager or "cos_sin" not in eager["us"]:
        return "?"
    case = _case(opt, "circle_mlp")
    rest_ms = 1e-3 * (eager["us"]["step"] - eager["us"]["cos_sin"])
    rest_ms *= case["info"]["n_weights"] / eager["chunk"]
    return f"{rest_ms / case['methods']['sgd_momentum']['median_ms']:.1f}"


def _train_vs_cayley(o: dict) -> dict:
    compiled = ""
    if "cola_compiled_step" in _case(o, "train_ortho_1024")["methods"]:
        ratio = _ratio(o, "train_ortho_1024", "cola_compiled_step", "cola")
        compiled = " " + fill("performance/miss_train_vs_cayley_compiled", ratio=f"{ratio:.2f}")
    unconstrained = _ratio(o, "train_ortho_1024", "sgd_unconstrained", "cola")
    return {
        "unconstrained_percent": f"{100 * unconstrained:.0f}",
        "cayley_ratio": f"{_ratio(o, 'train_ortho_1024', 'param_cayley', 'cola'):.2f}",
        "cola_meq": f"{_meq(o, 'ortho_1024x1024', 'cola'):.1f}",
        "default_ratio": f"{_ratio(o, 'train_ortho_1024', 'param_default', 'cola'):.1f}",
        "compiled": compiled,
    }


def _circle_vs_sgd(o: dict) -> dict:
    trig = _trig_reading()
    return {
        "ratio": f"{_ratio(o, 'circle_1e6', 'cola_compiled', 'sgd_momentum'):.2f}",
        "trig": trig + " " if trig else "",
    }


#: why a target of ``bench_optim.TARGETS`` is missed, by target name: the values of its
#: template ``performance/miss_<name>.md`` (a hand-written reading of the measured numbers),
#: shown only for the targets not met
MISSES: dict[str, Callable[[dict], dict]] = {
    "circle_vs_sgd": _circle_vs_sgd,
    "circle_vs_sgd_eager": lambda o: {
        "eager": f"{_ratio(o, 'circle_1e6', 'cola', 'sgd_momentum'):.1f}",
        "spread": _spread(o, "circle_1e6", "cola", "sgd_momentum"),
        "compiled": f"{_ratio(o, 'circle_1e6', 'cola_compiled', 'sgd_momentum'):.1f}",
    },
    "ortho_vs_paper": lambda o: {
        "paper_meq": f"{_meq(o, 'ortho_1024x1024', 'paper'):.1f}",
        "cola_meq": f"{_meq(o, 'ortho_1024x1024', 'cola'):.1f}",
        "ratio": f"{_ratio(o, 'ortho_1024x1024', 'paper', 'cola'):.2f}",
        "released_ratio": f"{_ratio(o, 'ortho_1024x1024', 'paper_released', 'cola'):.2f}",
    },
    "ortho_vs_paper_released": lambda o: {
        "ratio": f"{_ratio(o, 'ortho_1024x1024', 'paper_released', 'cola'):.2f}",
    },
    "ortho_vs_geoopt": lambda o: {
        "geoopt_meq": f"{_meq(o, 'ortho_1024x1024', 'geoopt_euclidean_stiefel'):.1f}",
        "cola_meq": f"{_meq(o, 'ortho_1024x1024', 'cola'):.1f}",
        "ratio_1024": f"{_ratio(o, 'ortho_1024x1024', 'geoopt_euclidean_stiefel', 'cola'):.2f}",
        "ratio_512x128": f"{_ratio(o, 'ortho_512x128', 'geoopt_euclidean_stiefel', 'cola'):.2f}",
        "ratio_512x4608": f"{_ratio(o, 'ortho_512x4608', 'geoopt_euclidean_stiefel', 'cola'):.2f}",
    },
    "train_vs_cayley": _train_vs_cayley,
    "e2_vs_sgd": lambda o: {
        **_eager_trig(),
        "rest_sgd": _rest_over_sgd(o),
        "ratio": f"{_ratio(o, 'circle_mlp', 'cola', 'sgd_momentum'):.1f}",
        "torch_trig": _ratio_text(o, "circle_mlp", "cola_torch_trig", "sgd_momentum"),
        "torch_trig_over": _ratio_text(o, "circle_mlp", "cola_torch_trig", "cola"),
        "spread": _spread(o, "circle_mlp", "cola", "sgd_momentum"),
        "compiled": f"{_ratio(o, 'circle_mlp', 'cola_compiled', 'sgd_momentum'):.1f}",
    },
    "e2_noisy_vs_sgd": lambda o: {
        "ratio": f"{_ratio(o, 'circle_mlp', 'cola_noisy', 'sgd_momentum'):.1f}",
        "over_t0": f"{_ratio(o, 'circle_mlp', 'cola_noisy', 'cola'):.2f}",
        "unfused": f"{_ratio(o, 'circle_mlp', 'cola_noisy_unfused', 'sgd_momentum'):.1f}",
        "speedup": f"{_ratio(o, 'circle_mlp', 'cola_noisy_unfused', 'cola_noisy'):.2f}",
        "normals": f"{_ratio(o, 'circle_mlp', 'normal_draws', 'sgd_momentum'):.1f}",
        "t0": f"{_ratio(o, 'circle_mlp', 'cola', 'sgd_momentum'):.1f}",
    },
    "e2_mask_vs_default": lambda o: {
        "ratio": f"{_ratio(o, 'circle_mlp', 'cola_mask', 'cola'):.2f}",
        "everywhere": _ratio_text(o, "circle_mlp", "cola_mask_everywhere", "cola"),
        "compiled_ratio": f"{_ratio(o, 'circle_mlp', 'cola_compiled_nosync', 'cola_compiled'):.2f}",
    },
}


def _misses(opt: dict) -> str:
    missed = [t for t in opt["targets"] if not t["met"]]
    if not missed:
        return fill("performance/all_met")
    return "\n".join(
        "- "
        + (
            fill(f"performance/miss_{t['name']}", **MISSES[t["name"]](opt))
            if t["name"] in MISSES
            else fill("performance/miss_other", description=t["description"])
        )
        for t in missed
    )


def _sampler_reading(rows: list[dict]) -> str:
    def top(label: str) -> str:
        return f"{max(r['chain_steps_per_s'] for r in rows if r['label'] == label):,.0f}"

    return fill(
        "performance/sampler_reading",
        sphere_s2=top("sphere_s2"),
        stiefel=top("stiefel_10x3"),
        stiefel_rattle=top("stiefel_10x3_rattle"),
    )


def _gpu_optim_table(opt: dict) -> str:
    """One table for every case of a GPU run (the per-case tables of the CPU run, condensed)."""
    rows = [
        "| case | method | median ms | quartiles ms | time / baseline | matmul-equivalents |",
        "|---|---|---|---|---|---|",
    ]
    for rec in opt["cases"]:
        for name, st in rec["methods"].items():
            meq = f"{st['matmul_equivalents']:.1f}" if "matmul_equivalents" in st else ""
            rows.append(
                f"| `{rec['case']}` | `{name}` | {_ms(st['median_ms'])} | "
                f"[{_ms(st['q1_ms'])}, {_ms(st['q3_ms'])}] | {st['ratio_to_baseline']:.3g} "
                f"({rec['baseline']}) | {meq} |"
            )
    return "\n".join(rows)


def _gpu_optim_reading(o: dict, cpu: dict) -> str:
    def r(case, num, den):
        return _ratio(o, case, num, den)

    ortho = _case(o, "ortho_1024x1024")["methods"]
    compiled = ""
    if "cola_compiled_step" in ortho:
        train_failed = ""
        if "cola_compiled_step" not in _case(o, "train_ortho_1024")["methods"]:
            train_failed = " " + fill(
                "performance/gpu_compiled_train_failed", torch=o["environment"]["torch"]
            )
        compiled = "\n" + fill(
            "performance/gpu_compiled_step",
            ratio_1024=f"{r('ortho_1024x1024', 'cola_compiled_step', 'cola'):.2f}",
            ratio_512x128=f"{r('ortho_512x128', 'cola_compiled_step', 'cola'):.2f}",
            cpu_ratio_1024=f"{_ratio(cpu, 'ortho_1024x1024', 'cola_compiled_step', 'cola'):.2f}",
            cpu_ratio_512x128=f"{_ratio(cpu, 'ortho_512x128', 'cola_compiled_step', 'cola'):.2f}",
            train_failed=train_failed,
        )
    return fill(
        "performance/gpu_optim_reading",
        matmul_ms=_ms(ortho["matmul"]["median_ms"]),
        cola_ms=_ms(ortho["cola"]["median_ms"]),
        geoopt_speedup=f"{r('ortho_1024x1024', 'geoopt_euclidean_stiefel', 'cola'):.1f}",
        paper_speedup=f"{r('ortho_1024x1024', 'paper', 'cola'):.1f}",
        released_speedup=f"{r('ortho_1024x1024', 'paper_released', 'cola'):.1f}",
        geoopt_512x128=f"{r('ortho_512x128', 'geoopt_euclidean_stiefel', 'cola'):.2f}",
        cayley_speedup=f"{r('train_ortho_1024', 'param_cayley', 'cola'):.2f}",
        default_speedup=f"{r('train_ortho_1024', 'param_default', 'cola'):.2f}",
        geoopt_train_speedup=f"{r('train_ortho_1024', 'geoopt_euclidean_stiefel', 'cola'):.2f}",
        unconstrained_percent=f"{100 * r('train_ortho_1024', 'sgd_unconstrained', 'cola'):.0f}",
        eager=f"{r('circle_1e6', 'cola', 'sgd_momentum'):.1f}",
        compiled=f"{r('circle_1e6', 'cola_compiled', 'sgd_momentum'):.1f}",
        nosync=f"{r('circle_1e6', 'cola_compiled_nosync', 'sgd_momentum'):.1f}",
        geoopt_sphere=f"{r('circle_1e6', 'geoopt_sphere', 'sgd_momentum'):.1f}",
        compiled_step=compiled,
    )


def _gpu_sampler_reading(gpu: list[dict], cpu: list[dict]) -> str:
    sphere = [r for r in gpu if r["label"] == "sphere_s2"]
    ms = [r["us_per_step"] / 1e3 for r in sphere]

    def top(rows, label):
        return max(r["chain_steps_per_s"] for r in rows if r["label"] == label)

    def at(rows, label, n):
        return next(
            r["chain_steps_per_s"] for r in rows if r["label"] == label and r["n_chains"] == n
        )

    cross = min(
        (
            r["n_chains"]
            for r in sphere
            if r["chain_steps_per_s"] > at(cpu, "sphere_s2", r["n_chains"])
        ),
        default=None,
    )
    return fill(
        "performance/gpu_sampler_reading",
        min_ms=f"{min(ms):.2g}",
        max_ms=f"{max(ms):.2g}",
        sphere_s2=f"{top(gpu, 'sphere_s2'):,.0f}",
        cpu_factor=f"{top(gpu, 'sphere_s2') / top(cpu, 'sphere_s2'):.0f}",
        stiefel=f"{top(gpu, 'stiefel_10x3'):,.0f}",
        stiefel_rattle=f"{top(gpu, 'stiefel_10x3_rattle'):,.0f}",
        crossover=fill("performance/gpu_sampler_crossover", chains=f"{cross:,}") if cross else "",
    )


def _half_table(rows: list[dict]) -> str:
    out = [
        "| dtype | weight (tall form) | residual, largest over the steps | final | tolerance "
        "used | rejected |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['dtype']} | {r['shape'][0]} x {r['shape'][1]} | {r['residual_max']:.2g} | "
        f"{r['residual_final']:.2g} | {r.get('tolerance', r.get('explicit_tolerance')):.2g} | "
        f"{r['rejected']} |"
        for r in rows
    ]
    return "\n".join(out)


def _half_margin(rows: list[dict]) -> tuple[float, float]:
    """``(largest residual in eps, smallest 4 eps / residual)`` over the rows."""
    import torch

    eps = {r["dtype"]: torch.finfo(getattr(torch, r["dtype"])).eps for r in rows}
    worst = max(r["residual_max"] / eps[r["dtype"]] for r in rows)
    return worst, 4.0 / worst


def _gpu_line(env: dict) -> str:
    return (
        f"{env.get('gpu', '?')} (CUDA {env.get('cuda', '?')}, TF32 matmul "
        f"{'on' if env.get('tf32_matmul') else 'off'}), torch {env['torch']}, geoopt "
        f"{env.get('geoopt', '?')}, Python {env['python']}, {env.get('cpu_count', '?')} host cores"
    )


def gpu_section(img: Path, cpu_optim: dict, cpu_sampler: dict) -> str:
    """The GPU part of ``docs/performance.md``, from ``validation/results/cuda/`` (empty if that
    run is missing)."""
    cuda = RESULTS / "cuda"
    if not (cuda / "bench_optim.json").exists():
        return cuda_graph_section(img)
    opt = json.loads((cuda / "bench_optim.json").read_text())
    smp = json.loads((cuda / "bench_sampler.json").read_text())
    half = json.loads((cuda / "half_precision.json").read_text())
    for png in ("bench_optim.png", "bench_sampler.png"):
        shutil.copy(cuda / png, img / png.replace(".png", "_cuda.png"))
    worst, margin = _half_margin(half["rows"])
    return fill(
        "performance/gpu",
        environment=_gpu_line(opt["environment"]),
        optim_reading=_gpu_optim_reading(opt, cpu_optim),
        optim_table=_gpu_optim_table(opt),
        targets_table=_targets_table(opt["targets"]),
        sampler_tables=_sampler_tables(smp["rows"]),
        sampler_reading=_gpu_sampler_reading(smp["rows"], cpu_sampler["rows"]),
        fp16_reduction=half["environment"].get("fp16_reduced_precision_reduction"),
        bf16_reduction=half["environment"].get("bf16_reduced_precision_reduction"),
        largest_residual_eps=f"{worst:.2f}",
        margin=f"{margin:.1f}",
        half_table=_half_table(half["rows"]),
        cuda_graphs=cuda_graph_section(img),
    )


def cuda_graph_section(img: Path, cuda: Path | None = None) -> str:
    """The CUDA-graph part of ``docs/performance.md``, from
    ``validation/results/cuda/bench_cuda.json`` (``gpu_graphs_pending`` until that run
    exists)."""
    cuda = cuda or RESULTS / "cuda"
    path = cuda / "bench_cuda.json"
    if not path.exists():
        return fill("performance/gpu_graphs_pending")
    res = json.loads(path.read_text())
    if (cuda / "bench_cuda.png").exists():
        shutil.copy(cuda / "bench_cuda.png", img / "bench_cuda.png")
    rows = res["rows"]
    counts = sorted({r["n_chains"] for r in rows})
    head = "| problem | dtype | mode | " + " | ".join(f"{n:,} chains" for n in counts)
    lines = [head + " | of copy, most chains |", "|---" * (len(counts) + 4) + "|"]
    keys = []
    for r in rows:
        key = (r["problem"], r["dtype"], r["mode"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        sel = {r["n_chains"]: r for r in rows if (r["problem"], r["dtype"], r["mode"]) == key}
        cells = [f"{sel[n]['chain_steps_per_s']:.3g}" if n in sel else "-" for n in counts]
        top = sel[max(sel)]
        frac = top.get("bandwidth_fraction")
        lines.append(
            f"| {' | '.join(key)} | " + " | ".join(cells)
            + (f" | {100 * frac:.1f}% |" if frac is not None else " | - |")
        )  # fmt: skip
    skipped = res.get("skipped", [])
    note = (
        "Left out of this run: "
        + "; ".join(f"{p} {d} {m} at {n:,} chains ({why})" for p, d, m, n, why in skipped)
        + "."
        if skipped
        else ""
    )
    bandwidth = res.get("copy_bandwidth_bytes_per_s")
    return fill(
        "performance/gpu_graphs",
        bandwidth=f"{bandwidth / 1e12:.2f}" if bandwidth else "?",
        environment=_gpu_line(res["environment"])
        if "gpu" in res["environment"]
        else res["environment"]["device"],
        table="\n".join(lines),
        skipped=note,
    )


def performance(img: Path, docs: Path) -> None:
    """``docs/performance.md``: the optimizer-step and sampler benchmarks, from their JSON."""
    from validation.report_side_by_side import side_by_side_section  # it imports this module

    opt = json.loads((RESULTS / "bench_optim.json").read_text())
    smp = json.loads((RESULTS / "bench_sampler.json").read_text())
    for png in ("bench_optim.png", "bench_sampler.png"):
        shutil.copy(RESULTS / png, img / png)
    cases = "\n\n".join(
        f"### `{rec['case']}`: {rec['description']}\n\n{_optim_case_table(rec)}"
        for rec in opt["cases"]
    )
    st = smp["settings"]
    text = fill(
        "performance/page",
        optim_environment=_environment_line(opt["environment"], opt["dtype"]),
        reps=opt["reps"],
        load_note=_load_note(opt["environment"]),
        cases=cases,
        targets_table=_targets_table(opt["targets"]),
        misses=_misses(opt),
        mask_cpu=_ratio_text(opt, "circle_mlp", "cola_mask", "cola"),
        mask_everywhere=_ratio_text(opt, "circle_mlp", "cola_mask_everywhere", "cola"),
        compiled_e2=_ratio_text(opt, "circle_mlp", "cola", "cola_compiled"),
        compiled_flat=_ratio_text(opt, "circle_1e6", "cola", "cola_compiled"),
        sampler_environment=_environment_line(smp["environment"], smp["dtype"]),
        scheme=st["scheme"],
        step_size=f"{st['step_size']:g}",
        friction=f"{st['friction']:g}",
        temperature=f"{st['temperature']:g}",
        sampler_tables=_sampler_tables(smp["rows"]),
        sampler_reading=_sampler_reading(smp["rows"]),
        side_by_side=side_by_side_section(img),
        gpu_section=gpu_section(img, opt, smp),
    )
    _write(docs / "performance.md", text)


# ---------------------------------------------------------------------------- driver


def main(docs: Path = DOCS) -> int:
    """Write the pages into ``docs`` (and their figures into ``docs/img``)."""
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    validation(img, docs)
    experiments(img, docs)
    performance(img, docs)
    from validation.report_exact import exact_sampling  # it imports this module

    exact_sampling(img, docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
