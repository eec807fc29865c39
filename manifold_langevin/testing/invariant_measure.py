"""Invariant-measure checks: long runs of every scheme on every problem against exact values.

For each problem of [`problems`][manifold_langevin.testing.problems] and each scheme we run many
batched chains from a fixed-seed start (``Problem.initial``, not the target), discard a burn-in, and
compare the time-and-chain averages of the observables with their exact values under ``exp(-U/tau) x
surface measure``: estimate +- batch-means standard error, the z-score ``(estimate - exact) /
stderr`` and, where the problem has one, the z-score against the *conditional* measure's value
(which a correct sampler must miss). For problems with a 1-D marginal we also histogram it during
the run (bin indicators are just more observables, so the histogram comes with batch-means errors),
compute a chi-square statistic of the histogram against the exact bin probabilities (with the
covariance of the batch means, so bins that sum to one are handled), a Kolmogorov-Smirnov test of
the chains' final points, and plot histogram vs density (and the conditional density where it
differs).

Schemes (``SCHEMES``): ``BAOAB``, ``ABOBA``, ``OBABO`` (exact geodesic A-steps where the manifold
has them, one RATTLE step otherwise), ``g-BAOAB`` (BAOAB with ``K = 4`` RATTLE sub-steps per A-step,
geodesics off), and the overdamped ``euler`` (projected Euler-Maruyama, weak order 1) and ``lm``
(the constrained BAOAB limit).

Pass criterion (``consistent``): ``|estimate - exact| <= 4 stderr + allowance`` for every
observable, where the allowance bounds the step-size bias: ``C h^p`` with the scheme's order ``p``
and a constant ``C`` per scheme (``BIAS_CONSTANT``). Z-scores are reported raw, without it.
The constants are measured bounds (4000 chains, T = 100, BAOAB at h = 0.2 on every problem):
the largest BAOAB biases are on the high-dimensional spheres, vMF on S^9 (E[mu.x]: -0.0084 at
h = 0.2, -0.0015 at 0.1, -0.0003 at 0.05, all +-0.0003) and the first Stiefel column (-0.0073 at
0.2), so ``|bias| <= 0.21 h^2``; every other problem's BAOAB bias at h = 0.2 is below 0.0069
(ellipse x^2) or within 2 stderr of zero. On S^9 ABOBA gives +0.0028 (h = 0.2) and +0.0008
(0.1), g-BAOAB (K = 4) the same as BAOAB (-0.0086, -0.0022), and OBABO the largest, -0.0168 and
-0.0040 (``0.42 h^2``). Hence ``C = 0.25`` for BAOAB, ABOBA and g-BAOAB, ``0.5`` for OBABO. The
overdamped constants come from the weak-order study (vMF on S^2, kappa = 4): projected
Euler-Maruyama ``|err| ~ 0.9 dt`` (C = 1), the BAOAB limit ``|err| <= 0.04 dt`` (C = 0.1).
A check of the error bars: 12 independent 1000-chain runs on the ellipsoid gave an empirical spread
of the estimates within 0.8-1.3x the mean reported batch-means stderr.

Run ``manifold-langevin validate`` or ``python -m manifold_langevin.testing.invariant_measure
[--quick] [--problem NAME ...] [--scheme S ...] [--out DIR]``; writes ``invariant_measure.json``
and ``invariant_measure_<problem>.png`` to ``--out`` (``DIR/quick`` with ``--quick``).
[`check_invariant_measure`][] runs one sampler of your own on one problem.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UntrustedRunWarning
from ..integrators.schemes import SCHEMES as REGISTRY
from ..sampling.loop import sample
from ..sampling.samplers import Langevin, OverdampedLangevin
from .histograms import bin_edges, histogram_observable, marginal_record
from .output import DEFAULT_OUT, write_json
from .problem import Problem
from .problems import PROBLEMS, get_problem
from .workers import map_runs

__all__ = [
    "BIAS_CONSTANT",
    "SCHEMES",
    "SETTINGS",
    "Setting",
    "assess",
    "check_invariant_measure",
    "main",
    "run",
]

#: all schemes of the registry; ``run(schemes=None)`` uses these (quick mode: ``QUICK_SCHEMES``)
SCHEMES = tuple(REGISTRY)
UNDERDAMPED = tuple(n for n, s in REGISTRY.items() if s.dynamics == "underdamped")
OVERDAMPED = tuple(n for n, s in REGISTRY.items() if s.dynamics == "overdamped")
G_BAOAB_SUBSTEPS = 4

#: weak order used for the bias allowance ``C h^p``: the registry's declared orders
ORDER = {n: s.order for n, s in REGISTRY.items()}
#: bias constants ``C`` (measured bounds, see the module docstring) for ``bias_allowance``
BIAS_CONSTANT = {
    "BAOAB": 0.25, "ABOBA": 0.25, "OBABO": 0.5, "g-BAOAB": 0.25, "euler": 1.0, "lm": 0.1,
}  # fmt: skip

N_SIGMA = 4.0


@dataclass(frozen=True)
class Setting:
    """Run lengths for one problem (physical times; steps follow from the step sizes).

    Attributes:
        h: underdamped step size.
        dt: overdamped step size (``lm`` is BAOAB with ``h = sqrt(2 dt)``, infinite friction).
        friction: ``gamma``.
        time: physical time per chain (burn-in included), underdamped.
        burn: burn-in time, underdamped.
        od_time, od_burn: the same for the overdamped schemes.
        n_chains: batched chains.
        n_batches: batches per chain for the batch-means standard errors.
        extra_h: further BAOAB runs at these step sizes (e.g. the harmonic problem, where BAOAB
            is exact at every stable step size).
    """

    h: float = 0.1
    dt: float = 0.01
    friction: float = 1.0
    time: float = 100.0
    burn: float = 20.0
    od_time: float = 40.0
    od_burn: float = 10.0
    n_chains: int = 1000
    n_batches: int = 10
    extra_h: tuple[float, ...] = ()


SETTINGS: dict[str, Setting] = {
    "von_mises_s1": Setting(),
    "vmf_s2": Setting(),
    "vmf_s9": Setting(),
    "torus": Setting(),
    "torus_quartic": Setting(),
    "harmonic_plane": Setting(extra_h=(0.5,)),
    "sphere_plane": Setting(),
    "stiefel_10_3": Setting(),
    "so3": Setting(),
    "ellipse": Setting(),
    "ellipsoid": Setting(h=0.05, dt=0.005),
}

#: quick mode: fewer chains, shorter runs (burn-in kept long enough for the start to relax)
QUICK = {"n_chains": 400, "time": 40.0, "burn": 12.0, "od_time": 20.0, "od_burn": 6.0,
         "n_batches": 5}  # fmt: skip
#: quick mode runs BAOAB everywhere, and every scheme on these problems
QUICK_SCHEMES = {"vmf_s2": SCHEMES}


def setting_for(name: str, quick: bool) -> Setting:
    """The run lengths for problem ``name`` (full or quick)."""
    s = SETTINGS.get(name, Setting())
    if quick:
        s = replace(s, **QUICK)
    return s


def bias_allowance(scheme: str, step: float) -> float:
    """Allowed step-size bias ``C h^p`` for ``scheme`` at step size ``step``."""
    return BIAS_CONSTANT[scheme] * step ** ORDER[scheme]


def make_sampler(problem: Problem, scheme: str, setting: Setting, manifold=None):
    """The sampler for registry scheme ``scheme`` on ``problem``."""
    if scheme not in REGISTRY:
        raise ValueError(f"unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    m = problem.make_manifold() if manifold is None else manifold
    common = {"potential": problem.potential, "temperature": problem.temperature}
    entry = REGISTRY[scheme]
    if entry.dynamics == "overdamped":
        return OverdampedLangevin(m, step_size=setting.dt, scheme=scheme, **common)
    options = dict(entry.options)
    if not options.get("geodesic", True):
        options["substeps"] = G_BAOAB_SUBSTEPS
    return Langevin(m, step_size=setting.h, friction=setting.friction, scheme=entry.word,
                    **options, **common)  # fmt: skip


def _seed(seed: int, *parts: str) -> int:
    return (seed * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**63)


def run_one(
    problem: Problem,
    scheme: str,
    setting: Setting,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict:
    """One problem x scheme run; returns the JSON record (histogram arrays included)."""
    sampler = make_sampler(problem, scheme, setting)
    overdamped = scheme in OVERDAMPED
    step = setting.dt if overdamped else setting.h
    total, burn = (setting.od_time, setting.od_burn) if overdamped else (setting.time, setting.burn)
    rec = {
        "problem": problem.name,
        "scheme": scheme,
        "step_size": step,
        "friction": None if overdamped else setting.friction,
        "substeps": G_BAOAB_SUBSTEPS if scheme == "g-BAOAB" else 1,
        "bias_allowance": bias_allowance(scheme, step),
    }
    seeds = (_seed(seed, problem.name, "init"), _seed(seed, problem.name, scheme))
    n_steps, burn_in = round(total / step), round(burn / step)
    return _measure(
        sampler,
        problem,
        rec,
        n_steps,
        burn_in,
        setting.n_chains,
        setting.n_batches,
        device,
        dtype,
        seeds,
    )


def check_invariant_measure(
    sampler,
    problem: Problem | str,
    *,
    n_steps: int,
    burn_in: int,
    n_chains: int = 1000,
    n_batches: int = 10,
    bias_allowance: float = 0.0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict:
    """Check a sampler of your own against a problem's exact values.

    Runs ``sampler`` (an object with ``.sample``, such as [`Langevin`][manifold_langevin.Langevin],
    or any integrator with ``init`` and ``step``) from the problem's start points for ``n_steps``
    steps and compares the averages of the problem's observables with their exact values under
    ``exp(-U/tau)`` times the surface measure, with batch-means standard errors; where the
    problem's conditional measure differs, it also says whether the run misses that measure's
    values. Build the sampler on ``problem.make_manifold()`` with ``problem.potential`` and
    ``problem.temperature``.

    Args:
        sampler: the sampler (or integrator) to check.
        problem: a [`Problem`][manifold_langevin.testing.problem.Problem] or its name in
            [`PROBLEMS`][manifold_langevin.testing.problems.PROBLEMS].
        n_steps: steps per chain.
        burn_in: steps discarded before the averages start.
        n_chains: batched chains.
        n_batches: batches per chain for the standard errors.
        bias_allowance: the step-size bias you allow (e.g. ``C h^p`` for a scheme of order
            ``p``); ``0`` asks for agreement within the statistical error alone.
        device: where the chains run.
        dtype: their floating dtype.
        seed: seed of the start points and of the noise.

    Returns:
        The run record: per observable ``estimate``, ``stderr``, ``exact``, ``z``
        (and ``conditional``, ``z_conditional``); ``consistent`` (every observable within
        ``4 stderr + bias_allowance``), ``rejects_conditional``, ``max_residual``,
        ``n_failures``, and the histogram checks of the problem's marginal (``marginal``:
        chi-square and Kolmogorov-Smirnov statistics).

    Examples:
        >>> import manifold_langevin as ml
        >>> from manifold_langevin.testing import PROBLEMS, check_invariant_measure
        >>> p = PROBLEMS["von_mises_s1"]
        >>> sampler = ml.Langevin(p.make_manifold(), p.potential, step_size=0.1)
        >>> rec = check_invariant_measure(sampler, p, n_steps=300, burn_in=100, n_chains=200,
        ...                               bias_allowance=0.25 * 0.1**2)
        >>> rec["consistent"], rec["n_failures"]
        (True, 0)
    """
    if isinstance(problem, str):
        problem = get_problem(problem)
    if not hasattr(sampler, "sample"):
        sampler = _Driven(sampler)
    rec = {
        "problem": problem.name,
        "scheme": getattr(sampler, "scheme", type(sampler).__name__),
        "step_size": getattr(sampler, "step_size", math.nan),
        "friction": getattr(sampler, "friction", None),
        "substeps": getattr(sampler, "substeps", 1),
        "bias_allowance": float(bias_allowance),
    }
    seeds = (_seed(seed, problem.name, "init"), _seed(seed, problem.name, "check"))
    return _measure(
        sampler, problem, rec, n_steps, burn_in, n_chains, n_batches, device, dtype, seeds
    )


class _Driven:
    """An integrator (``init`` and ``step``) with the sampling loop as its ``sample``."""

    def __init__(self, integrator):
        self.integrator = integrator

    def __getattr__(self, name):
        return getattr(self.integrator, name)

    def sample(self, x0, n_steps, **kwargs):
        return sample(self.integrator, x0, n_steps, **kwargs)


def _measure(sampler, problem, rec, n_steps, burn_in, n_chains, n_batches, device, dtype, seeds):
    """Run ``sampler`` on ``problem`` and fill the record ``rec`` (see [`run_one`][])."""
    init_gen = torch.Generator(device=device).manual_seed(seeds[0])
    x0 = problem.initial(n_chains, dtype=dtype, device=device, generator=init_gen)
    observables = dict(problem.observables)
    edges = None
    if problem.marginal is not None:
        edges = bin_edges(problem)
        observables["_hist"] = histogram_observable(problem, edges)

    gen = torch.Generator(device=device).manual_seed(seeds[1])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # this check judges a run by the exact values (and records R-hat and the ESS-based
        # errors beside them); many short chains from spread starts have an R-hat above 1.01
        # while their ensemble averages are what is checked
        warnings.simplefilter("ignore", UntrustedRunWarning)
        out = sampler.sample(
            x0,
            n_steps=n_steps,
            burn_in=burn_in,
            observables=observables,
            generator=gen,
            n_batches=n_batches,
        )
    seconds = time.perf_counter() - t0

    rec.update({
        "temperature": problem.temperature,
        "n_chains": n_chains,
        "n_steps": n_steps,
        "burn_in": burn_in,
        "seconds": seconds,
        "chain_steps_per_second": n_chains * n_steps / seconds,
        "max_residual": float(out.max_residual),
        "n_failures": int(out.n_failures),
        "failure_rate": float(getattr(out, "failure_rate", math.nan)),
        "observables": {},
    })  # fmt: skip
    for key in problem.observables:
        est, se = float(out.means[key]), float(out.stderrs[key])
        exact = problem.exact[key]
        entry = {
            "estimate": est,
            "stderr": se,
            "exact": exact,
            "error": est - exact,
            "z": (est - exact) / se if se > 0 else math.inf,
        }
        if key in out.rhat:  # the ESS-based error and the mixing diagnostics, beside
            entry["mcse"] = float(out.mcse[key])
            entry["ess_bulk"] = float(out.ess_bulk[key])
            entry["rhat"] = float(out.rhat[key])
        if problem.conditional is not None:
            cond = problem.conditional[key]
            entry["conditional"] = cond
            entry["z_conditional"] = (est - cond) / se if se > 0 else math.inf
        rec["observables"][key] = entry
    assess(rec)

    if edges is not None:
        rec["marginal"] = marginal_record(problem, out, edges, rec)
    return rec


def assess(rec: dict) -> dict:
    """Set ``bias_allowance``, ``consistent`` and ``rejects_conditional`` of a run record in place.

    ``consistent``: every observable within ``4 stderr + allowance`` of its exact value.
    ``rejects_conditional``: ``None`` without conditional values; else whether every observable
    that separates the two measures at this precision (``|exact - conditional| > 2 (4 stderr +
    allowance)``) misses the conditional value by more than ``4 stderr + allowance``.
    """
    allowance = rec.get("bias_allowance")
    if allowance is None:
        allowance = bias_allowance(rec["scheme"], rec["step_size"])
    consistent, rejects = True, None
    for o in rec["observables"].values():
        tol = N_SIGMA * o["stderr"] + allowance
        consistent &= abs(o["error"]) <= tol
        if "conditional" in o and abs(o["conditional"] - o["exact"]) > 2 * tol:
            sep = abs(o["estimate"] - o["conditional"]) > tol
            rejects = sep if rejects is None else rejects and sep
    rec["bias_allowance"] = allowance
    rec["consistent"] = bool(consistent)
    rec["rejects_conditional"] = rejects
    return rec


def _plan(problems, schemes, quick: bool) -> list[tuple[str, str, Setting]]:
    names = list(PROBLEMS) if problems is None else list(problems)
    for n in names:
        if n not in PROBLEMS:
            raise KeyError(f"unknown problem {n!r}; valid names: {', '.join(sorted(PROBLEMS))}")
    if schemes is not None:
        for s in schemes:
            if s not in SCHEMES:
                raise ValueError(f"unknown scheme {s!r}; valid: {', '.join(SCHEMES)}")
    plan = []
    for n in names:
        if schemes is not None:
            chosen = list(schemes)
        elif quick:
            chosen = list(QUICK_SCHEMES.get(n, ("BAOAB",)))
        else:
            chosen = list(SCHEMES)
        setting = setting_for(n, quick)
        plan.extend((n, s, setting) for s in chosen)
        if "BAOAB" in chosen:
            plan.extend((n, "BAOAB", replace(setting, h=h)) for h in setting.extra_h)
    return plan


def run(
    problems=None,
    schemes=None,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    threads: int | None = 1,
    verbose: bool = False,
    jobs: int = 1,
) -> list[dict]:
    """Run the checks; one record per (problem, scheme[, extra step size]).

    Args:
        problems: problem names (default: all of ``PROBLEMS``).
        schemes: scheme names (default: all of ``SCHEMES``; in quick mode BAOAB, plus more schemes
            on ``QUICK_SCHEMES``' problems).
        quick: fewer chains and shorter runs.
        device: torch device of the chains.
        seed: base seed (each run derives its own generator from it and its names).
        dtype: floating dtype of the chains.
        threads: torch intra-op threads for the duration of the run on CPU (``None``: leave as is).
            The chains are small batched tensors, for which threading only adds overhead: on a
            loaded 2-core machine one thread was 8x faster than two.
        verbose: print a line per run, numbered ``[k/total]``.
        jobs: worker processes (one torch thread each); the runs are independent, so on a CPU
            with ``jobs`` free cores the wall time drops about ``jobs`` times. The records are
            the same for any ``jobs``.
    """
    plan = _plan(problems, schemes, quick)
    old_threads = torch.get_num_threads()
    if threads is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        records = []
        tasks = [(name, scheme, setting, device, dtype, seed) for name, scheme, setting in plan]
        for k, rec in enumerate(map_runs(_run_task, tasks, jobs), 1):
            records.append(rec)
            if verbose:  # the counter is the progress indicator of long runs
                print(f"[{k:>{len(str(len(plan)))}}/{len(plan)}] {_line(rec)}", flush=True)
    finally:
        torch.set_num_threads(old_threads)
    return records


def _run_task(task: tuple) -> dict:
    name, scheme, setting, device, dtype, seed = task
    return run_one(PROBLEMS[name], scheme, setting, device=device, dtype=dtype, seed=seed)


# ------------------------------------------------------------------------------------ output
def _line(rec: dict) -> str:
    parts = [
        f"{k}: {o['estimate']:.4f}+-{o['stderr']:.1e} (exact {o['exact']:.4f}, z {o['z']:+.1f}"
        + (f", z_cond {o['z_conditional']:+.1f}" if "z_conditional" in o else "")
        + ")"
        for k, o in rec["observables"].items()
    ]
    head = (
        f"{rec['problem']:>15s} {rec['scheme']:>7s} h={rec['step_size']:<6g} "
        f"{'ok ' if rec['consistent'] else 'BAD'} {rec['seconds']:5.1f}s fail={rec['n_failures']}"
    )
    if "marginal" in rec:
        m = rec["marginal"]
        head += f" chi2={m['chi2']:.1f}/{m['chi2_dof']} ks_p={m['ks_p_value']:.2f}"
    return head + " | " + "; ".join(parts)


def table(records: list[dict]) -> str:
    """A markdown table: one row per observable."""
    rows = [
        "| problem | scheme | h | observable | estimate | stderr | exact | z | conditional | "
        "z_cond |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for k, o in r["observables"].items():
            cond = f"{o['conditional']:.5f}" if "conditional" in o else ""
            zc = f"{o['z_conditional']:+.1f}" if "z_conditional" in o else ""
            rows.append(
                f"| {r['problem']} | {r['scheme']} | {r['step_size']:g} | {k} | "
                f"{o['estimate']:.5f} | {o['stderr']:.1e} | {o['exact']:.5f} | {o['z']:+.2f} | "
                f"{cond} | {zc} |"
            )
    return "\n".join(rows)


def plot(records: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per problem with a marginal: histograms of every scheme run vs the density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_problem: dict[str, list[dict]] = {}
    for r in records:
        if "marginal" in r:
            by_problem.setdefault(r["problem"], []).append(r)
    for name, recs in by_problem.items():
        problem = PROBLEMS[name]
        obs, density, (a, b) = problem.marginal
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        grid = np.linspace(a, b, 400)
        ax.plot(grid, density(grid), "k-", lw=2, label="exact (surface measure)")
        if problem.conditional_density is not None:
            ax.plot(grid, problem.conditional_density(grid), "k--", lw=1.5,
                    label="conditional measure")  # fmt: skip
        for r in recs:
            m = r["marginal"]
            edges = np.array(m["edges"])
            width = np.diff(edges)
            centers = 0.5 * (edges[1:] + edges[:-1])
            h = np.array(m["histogram"]) / width
            e = np.array(m["histogram_stderr"]) / width
            ax.errorbar(centers, h, yerr=2 * e, fmt="o", ms=3, capsize=2,
                        label=f"{r['scheme']} h={r['step_size']:g}: chi2 {m['chi2']:.0f}/"
                        f"{m['chi2_dof']}, KS p {m['ks_p_value']:.2f}")  # fmt: skip
        ax.set_xlabel(obs)
        ax.set_ylabel("density")
        ax.set_title(f"{name}: {problem.description}", fontsize=7, wrap=True)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"invariant_measure_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (about a minute on 2 cores)")
    ap.add_argument("--problem", action="append", choices=sorted(PROBLEMS),
                    help="problem name (repeatable; default: all)")  # fmt: skip
    ap.add_argument("--scheme", action="append", choices=SCHEMES,
                    help="scheme (repeatable; default: all, or the quick selection)")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output folder (default: {DEFAULT_OUT})")  # fmt: skip
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    records = run(
        problems=args.problem,
        schemes=args.scheme,
        quick=args.quick,
        device=args.device,
        seed=args.seed,
        dtype=getattr(torch, args.dtype),
        threads=args.threads or None,
        verbose=True,
        jobs=args.jobs,
    )
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(records, out)
    meta = {
        "quick": args.quick,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "torch": torch.__version__,
        "n_sigma": N_SIGMA,
        "bias_constant": BIAS_CONSTANT,
        "order": ORDER,
        "seconds": time.perf_counter() - t0,
        "all_consistent": all(r["consistent"] for r in records),
    }
    path = write_json(out / "invariant_measure.json", {"meta": meta, "runs": records})
    print(table(records))
    print(f"wrote {path} and {len(pngs)} PNG(s); {meta['seconds']:.0f} s")
    return 0 if meta["all_consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
