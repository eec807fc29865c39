"""HMC is exact where the unadjusted Langevin scheme is biased: z-scores at one step size.

For each problem (``PROBLEMS``: the ellipse, the ellipsoid, the quartic torus, the circle cut
from a sphere by a plane, SO(3) and the rigid triatomic molecule of
[`problems_molecule`][manifold_langevin.testing.problems_molecule]) the script

1. searches a small ascending grid of step sizes (``Setting.grid``) for the first ``h`` at which
   BAOAB (``ml.Langevin``, friction 1, exact geodesic A steps where the set has them, one RATTLE
   step otherwise) misses the exact value of at least one observable by more than
   ``BIAS_SIGMA = 10`` standard errors (every grid point tried is in the JSON);
2. at that ``h`` runs ``ml.HMC`` with ``n_leapfrog = clamp(round(1.2 / h), 1, 5)`` leapfrog steps
   (trajectories of length about 1.2) and generalised HMC (``friction=1``, ``n_leapfrog=1``), and
   compares every observable with its exact value under ``exp(-U/tau)`` times the surface
   measure: a sampler passes when every ``|z| <= N_SIGMA = 4``;
3. for the problems whose conditional measure ``exp(-U/tau) dx | g = 0`` differs (ellipse,
   ellipsoid, quartic torus) runs ``ml.HMC(measure="conditional")`` at the same ``h`` and
   ``n_leapfrog``: it passes when every observable is within 4 standard errors of the
   conditional value, and the record says which observables it misses the surface value by
   more than 4 standard errors on (those where the two values differ by more than 10).

Standard errors are the larger of two estimates of the same error: the samplers' batch-means
errors (``SampleResult.stderrs``, over ``n_chains x n_batches`` batch means: 1000 chains, 500
recorded steps after 200 burn-in steps, 5 batches of 100 steps) and the ESS-based Monte Carlo
errors (``SampleResult.mcse``); batch means of 100 steps underestimate the error of chains that
stick (many rejections), the ESS sees it. Both are in the JSON, with R-hat. Each run's seed is
derived from the base seed and the names of the problem and the run. The chains start from
``Problem.initial`` (exact points on the set, not the target), the same start for every run of
a problem.

Run ``python -m validation.hmc_exactness [--quick] [--problem NAME ...] [--out DIR]``; writes
``hmc_exactness.json`` (rewritten after every run) and ``hmc_exactness.png`` (z-scores per problem
and sampler, symmetric-log axis) to ``--out`` (default ``validation/results``, or
``validation/results/quick`` with ``--quick``). ``--quick`` runs the ellipse and the circle with
200 chains and 250 steps at one step size each (seconds; the tests use it). The full run takes
about ten minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import manifold_langevin as ml
from manifold_langevin.testing import get_problem

RESULTS = Path(__file__).parent / "results"
N_SIGMA = 4.0
BIAS_SIGMA = 10.0
#: the conditional run "misses" the surface value on observables whose two values differ by
#: more than this many standard errors
SEPARATION_SIGMA = 10.0
FRICTION = 1.0
TRAJECTORY = 1.2


@dataclass(frozen=True)
class Setting:
    """One problem's runs.

    Attributes:
        grid: ascending BAOAB step sizes to search.
        n_chains: batched chains.
        n_steps: steps per chain, burn-in included.
        burn_in: steps discarded before recording.
        n_batches: batches per chain for the batch-means errors.
    """

    grid: tuple[float, ...]
    n_chains: int = 1000
    n_steps: int = 700
    burn_in: int = 200
    n_batches: int = 5


SETTINGS: dict[str, Setting] = {
    "ellipse": Setting(grid=(0.8, 1.0, 1.2)),
    "ellipsoid": Setting(grid=(0.2, 0.3, 0.4)),
    "torus_quartic": Setting(grid=(0.8, 1.0, 1.2, 1.5)),
    "sphere_plane": Setting(grid=(0.5, 0.8, 1.0)),
    "so3": Setting(grid=(0.8, 1.0, 1.2, 1.5)),
    "rigid_triatomic": Setting(grid=(0.2, 0.35, 0.5)),
}
PROBLEMS = tuple(SETTINGS)
#: ``--quick``: two problems, one step size each, short runs
QUICK_PROBLEMS = {"ellipse": (1.0,), "sphere_plane": (0.8,)}
QUICK = {"n_chains": 200, "n_steps": 250, "burn_in": 50, "n_batches": 4}


def n_leapfrog_for(h: float) -> int:
    """Leapfrog steps for HMC at step ``h``: trajectories of length about ``TRAJECTORY``."""
    return min(5, max(1, round(TRAJECTORY / h)))


def _seed(seed: int, *parts: str) -> int:
    return (seed * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**63)


def run_one(problem, sampler, label: str, setting: Setting, seed: int, conditional: bool = False):
    """Run ``sampler`` on ``problem`` and return the JSON record of the averages."""
    x0 = problem.initial(
        setting.n_chains,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(_seed(seed, problem.name, "init")),
    )
    gen = torch.Generator().manual_seed(_seed(seed, problem.name, label, str(sampler.step_size)))
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the failure rates are in the record
        warnings.simplefilter("ignore", ml.UntrustedRunWarning)
        out = sampler.sample(
            x0,
            setting.n_steps,
            burn_in=setting.burn_in,
            observables=dict(problem.observables),
            generator=gen,
            n_batches=setting.n_batches,
        )
    rec = {
        "sampler": label,
        "step_size": sampler.step_size,
        "n_leapfrog": getattr(sampler, "n_leapfrog", None),
        "friction": getattr(sampler, "friction", None),
        "measure": sampler.measure,
        "n_chains": setting.n_chains,
        "n_steps": setting.n_steps,
        "burn_in": setting.burn_in,
        "n_batches": setting.n_batches,
        "seconds": round(time.perf_counter() - t0, 2),
        "acceptance_rate": out.acceptance_rate,
        "n_reverse_failed": out.n_reverse_failed,
        "failure_rate": out.failure_rate,
        "max_residual": out.max_residual,
        "observables": {},
    }
    for key in problem.observables:
        est, bm, mcse = float(out.means[key]), float(out.stderrs[key]), float(out.mcse[key])
        se = max(bm, mcse)  # the larger of the two estimates of the same error
        o = {"estimate": est, "stderr": se, "stderr_batch_means": bm, "mcse": mcse,
             "rhat": float(out.rhat[key]), "exact": problem.exact[key]}  # fmt: skip
        o["z"] = (est - o["exact"]) / se
        if problem.conditional is not None:
            o["conditional"] = problem.conditional[key]
            o["z_conditional"] = (est - o["conditional"]) / se
        rec["observables"][key] = o
    zs = [o["z_conditional" if conditional else "z"] for o in rec["observables"].values()]
    rec["max_abs_z"] = max(abs(z) for z in zs)
    rec["within"] = bool(rec["max_abs_z"] <= N_SIGMA)
    if conditional:
        separated = {
            k: abs(o["z"]) > N_SIGMA
            for k, o in rec["observables"].items()
            if abs(o["exact"] - o["conditional"]) > SEPARATION_SIGMA * o["stderr"]
        }
        rec["misses_surface_on"] = separated
        rec["misses_surface"] = bool(separated) and all(separated.values())
    return rec


def run_problem(name: str, setting: Setting, seed: int, save) -> dict:
    """The grid search, then HMC, generalised HMC and (where it differs) the conditional HMC run
    at the chosen step size; ``save()`` is called after every run."""
    problem = get_problem(name)
    m = problem.make_manifold()
    common = {"potential": problem.potential, "temperature": problem.temperature}
    entry = {"description": problem.description, "setting": asdict(setting), "grid": []}
    chosen = None
    for h in setting.grid:
        baoab = ml.Langevin(m, step_size=h, friction=FRICTION, scheme="BAOAB", **common)
        rec = run_one(problem, baoab, "BAOAB", setting, seed)
        rec["biased"] = bool(rec["max_abs_z"] > BIAS_SIGMA)
        entry["grid"].append(rec)
        save(name, entry)
        print(_line(name, rec), flush=True)
        if rec["biased"]:
            chosen = rec
            break
    chosen = chosen or entry["grid"][-1]
    h = chosen["step_size"]
    entry["step_size"] = h
    entry["baoab_biased"] = chosen["biased"]
    entry["runs"] = {"BAOAB": chosen}
    n_lf = n_leapfrog_for(h)
    plan = [
        ("HMC", ml.HMC(m, step_size=h, n_leapfrog=n_lf, **common), False),
        ("GHMC", ml.HMC(m, step_size=h, n_leapfrog=1, friction=FRICTION, **common), False),
    ]
    if problem.conditional is not None:
        cond = ml.HMC(m, step_size=h, n_leapfrog=n_lf, measure="conditional", **common)
        plan.append(("HMC-conditional", cond, True))
    for label, sampler, conditional in plan:
        rec = run_one(problem, sampler, label, setting, seed, conditional=conditional)
        entry["runs"][label] = rec
        save(name, entry)
        print(_line(name, rec), flush=True)
    entry["exact_runs_within"] = all(r["within"] for k, r in entry["runs"].items() if k != "BAOAB")
    save(name, entry)
    return entry


def _line(name: str, rec: dict) -> str:
    key = "z_conditional" if rec["measure"] == "conditional" else "z"
    zs = " ".join(f"{k}={o[key]:+.1f}" for k, o in rec["observables"].items())
    acc = rec["acceptance_rate"]
    acc = "" if acc is None else f" acc={acc:.3f}"
    return (
        f"{name:>15s} {rec['sampler']:>15s} h={rec['step_size']:<5g} L={rec['n_leapfrog']}"
        f"{acc} fail={rec['failure_rate']:.2g} {rec['seconds']:5.1f}s | {zs}"
    )


# -------------------------------------------------------------------------------------- plot
COLOURS = {"BAOAB": "tab:red", "HMC": "tab:blue", "GHMC": "tab:green",
           "HMC-conditional": "tab:purple"}  # fmt: skip


def plot(doc: dict, path: Path) -> Path:
    """z-scores per problem: BAOAB at the chosen step, HMC, generalised HMC and the conditional
    HMC run (against the conditional values; hollow: against the surface values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["problems"])
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(names)), 4.8))
    width = 0.8 / len(COLOURS)
    seen = set()
    for i, name in enumerate(names):
        runs = doc["problems"][name].get("runs", {})
        for j, (label, colour) in enumerate(COLOURS.items()):
            if label not in runs:
                continue
            rec = runs[label]
            xpos = i - 0.4 + (j + 0.5) * width
            key = "z_conditional" if label == "HMC-conditional" else "z"
            zs = [o[key] for o in rec["observables"].values()]
            tag = label if label != "BAOAB" else "BAOAB (unadjusted)"
            ax.scatter([xpos] * len(zs), zs, color=colour, s=18, zorder=3,
                       label=None if label in seen else tag)  # fmt: skip
            if label == "HMC-conditional":
                zs_surf = [o["z"] for o in rec["observables"].values()]
                tag = None if "surf" in seen else "HMC-conditional vs surface"
                ax.scatter([xpos] * len(zs_surf), zs_surf, facecolors="none", edgecolors=colour,
                           s=18, zorder=3, label=tag)  # fmt: skip
                seen.add("surf")
            seen.add(label)
    for level, style in ((N_SIGMA, "--"), (BIAS_SIGMA, ":")):
        for s in (1, -1):
            ax.axhline(s * level, color="k", ls=style, lw=0.8)
    ax.set_yscale("symlog", linthresh=N_SIGMA)
    top = max([abs(v) for c in ax.collections for v in c.get_offsets()[:, 1]] + [BIAS_SIGMA])
    ax.set_ylim(-1.5 * top, 1.5 * top)
    ticks = []
    for name in names:
        e = doc["problems"][name]
        lf = e.get("runs", {}).get("HMC", {}).get("n_leapfrog")
        ticks.append(f"{name}\nh={e.get('step_size', float('nan')):g}, L={lf}")
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_ylabel("z = (estimate - exact) / stderr")
    ax.set_title("BAOAB biased (|z| > 10, dotted) where HMC is exact (|z| <= 4, dashed), "
                 "same step size", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Command line; returns 0 when every exact-sampler run is within ``N_SIGMA``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two problems, short runs (seconds)")
    ap.add_argument("--problem", action="append", choices=PROBLEMS,
                    help="problem (repeatable; default: all, or the quick pair)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.problem or (list(QUICK_PROBLEMS) if args.quick else list(PROBLEMS))
    settings = {}
    for n in names:
        s = SETTINGS[n]
        if args.quick:
            s = replace(s, grid=QUICK_PROBLEMS.get(n, s.grid[-1:]), **QUICK)
        settings[n] = s
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hmc_exactness.json"
    t0 = time.perf_counter()
    doc = {
        "meta": {
            "description": __doc__.splitlines()[0],
            "quick": args.quick,
            "seed": args.seed,
            "n_sigma": N_SIGMA,
            "bias_sigma": BIAS_SIGMA,
            "friction": FRICTION,
            "trajectory": TRAJECTORY,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "loadavg_start": list(os.getloadavg()),
        },
        "problems": {},
    }

    def save(name, entry):
        doc["problems"][name] = entry
        doc["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(doc, indent=1) + "\n")

    for n in names:
        run_problem(n, settings[n], args.seed, save)
    entries = doc["problems"].values()
    doc["meta"]["loadavg_end"] = list(os.getloadavg())
    doc["meta"]["all_exact_runs_within"] = all(e["exact_runs_within"] for e in entries)
    doc["meta"]["baoab_biased_everywhere"] = all(e["baoab_biased"] for e in entries)
    save(names[-1], doc["problems"][names[-1]])
    png = plot(doc, out / "hmc_exactness.png")
    print(f"wrote {path} and {png}; {doc['meta']['seconds']:.0f} s")
    return 0 if doc["meta"]["all_exact_runs_within"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
