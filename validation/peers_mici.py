r"""``ml.HMC`` side by side with mici, a peer implementation of exact constrained HMC.

mici (Graham and Storkey, Electron. J. Stat. 11, 2017; Graham, Thiery and Beskos, J. R. Stat.
Soc. B 84, 2022) is the constrained Hamiltonian Monte Carlo that scientists use from NumPy, one
chain at a time. Both samplers here run the same algorithm on the same problems from
[`manifold_langevin.testing`][manifold_langevin.testing], in one process:

* the target: $\exp(-U/\tau)$ times the surface (Hausdorff) measure of $\{g = 0\}$. mici:
  ``DenseConstrainedEuclideanMetricSystem`` with ``dens_wrt_hausdorff=True``, ``neg_log_dens`` $=
  U/\tau$ and the metric $M = I/\tau$ (its Hausdorff measure is a constant multiple of the
  Euclidean one, and its momenta $p \sim N(0, M)$ move the positions with the velocity
  $M^{-1} p \sim N(0, \tau P)$ of ``ml.HMC``'s momenta, so one step of size $h$ is the same map);
* the proposal: ``n_leapfrog`` constrained leapfrog (RATTLE) steps, kick $h/2$, drift $h$ with
  Newton's method on the multipliers, kick $h/2$ (mici: ``ConstrainedLeapfrogIntegrator`` with one
  inner step), the same $h$ and number of steps, a full momentum refresh before every proposal and
  the Metropolis test on $\Delta H$ (mici: ``StaticMetropolisHMC``);
* the reversibility check (Zappa, Holmes-Cerfon and Goodman, Comm. Pure Appl. Math. 71, 2018):
  mici integrates every drift back and rejects the proposal unless it returns within
  ``reverse_check_tol`` (2e-8, its default); ``ml.HMC`` integrates the whole proposal back, to
  within 100 times its SHAKE tolerance. A solve that does not converge is a rejection in both.

The two differ in the solvers' stopping rules (mici: Newton until $|g| < 10^{-9}$ and the step
below $10^{-8}$, at most 50 iterations; ``ml.HMC``: at most 6 iterations, each chain stopping
at the first iterate with $|g| \le 2.5 \cdot 10^{-13}$ and the solve ending once every chain has,
converged where $|g| \le 10^{-12}$), so their rejection rates differ a little; neither changes the
target.

mici gets hand-written NumPy constraints, Jacobians and gradients (checked against the torch
problems at start), its fastest set-up without an autodiff backend. Both samplers record the
positions at every step; the observables are evaluated afterwards on the traces, the same way for
both. For each sampler and number of chains the script reports, per observable, the estimate, its
Monte Carlo standard error and bulk ESS (arviz's ``mcse``/``ess`` on the traces, chains as
chains), the z-score against the exact value, the acceptance rate, the wall time of the main phase
(``time.perf_counter``, after an untimed burn-in that is also the warm-up; the process CPU time
as well, less sensitive to other jobs on the machine) and the ESS per second (the smallest bulk
ESS over the observables, divided by that time). mici runs one chain, then four
chains one after the other in this process; ``ml.HMC`` runs 1 to 10^4 chains in one batch, in
float64 on one CPU thread.

Run ``python -m validation.peers_mici [--quick]`` (about five minutes of CPU time, ten of wall
time on a loaded two-core machine; ``--quick``: seconds, numbers not meaningful); writes
``peers_mici.json`` (after every measurement) and ``peers_mici.png`` to ``--out`` (default
``validation/results``, or ``validation/results/quick`` with ``--quick``).
mici and arviz are needed only here (``pip install mici arviz threadpoolctl``; threadpoolctl holds
NumPy's and SciPy's BLAS to one thread, without which mici's tiny dense solves can be many times
slower on a machine with busy cores).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import manifold_langevin as ml
from manifold_langevin.manifolds.base import STOP_FRACTION
from manifold_langevin.testing import get_problem

__all__ = ["CONFIG", "NUMPY_PROBLEMS", "main", "run_mici", "run_ml"]

SCHEMA_VERSION = 1
RESULTS = Path(__file__).parent / "results"
STEP_SIZE = 0.3
N_LEAPFROG = 5
#: mode -> problems, ml.HMC's (n_chains, n_steps) pairs, burn-in steps, mici's (chains, steps)
CONFIG = {
    "full": {
        "problems": ["ellipse", "sphere_plane", "torus_quartic"],
        "ml": [(1, 1000), (10, 600), (100, 400), (1000, 300), (10_000, 80)],
        "ml_burn_in": 30,
        "mici": [(1, 3000), (4, 1500)],
        "mici_burn_in": 200,
    },
    "quick": {
        "problems": ["ellipse", "sphere_plane"],
        "ml": [(1, 40), (10, 40)],
        "ml_burn_in": 5,
        "mici": [(1, 100), (4, 30)],
        "mici_burn_in": 10,
    },
}
#: the number of chains of ml.HMC whose ESS/s is compared with mici's
REFERENCE_CHAINS = 1000


# ------------------------------------------------------------------ the problems in NumPy, for mici
@dataclass(frozen=True)
class NumpyProblem:
    """One point ``q`` (shape ``(d,)``): ``constr(q)`` (``(m,)``), ``jacob(q)`` (``(m, d)``),
    ``potential(q)`` and ``grad(q)`` (the gradient of $U$)."""

    constr: object
    jacob: object
    potential: object
    grad: object


def _ellipse():
    return NumpyProblem(
        constr=lambda q: np.array([q[0] ** 2 / 4 + q[1] ** 2 - 1]),
        jacob=lambda q: np.array([[q[0] / 2, 2 * q[1]]]),
        potential=lambda q: q[1],
        grad=lambda q: np.array([0.0, 1.0]),
    )


def _sphere_plane(c=0.6):
    return NumpyProblem(
        constr=lambda q: np.array([q @ q - 1, q[2] - c]),
        jacob=lambda q: np.array([2 * q, [0.0, 0.0, 1.0]]),
        potential=lambda q: -2 * q[0] + 2 * q[0] * q[1],
        grad=lambda q: np.array([-2 + 2 * q[1], 2 * q[0], 0.0]),
    )


def _torus_quartic(big=2.0, small=1.0):
    scale = 1 / (8 * big**2 * small)

    def constr(q):
        s = q @ q + big**2 - small**2
        return np.array([scale * (s**2 - 4 * big**2 * (q[0] ** 2 + q[1] ** 2))])

    def jacob(q):
        s = q @ q + big**2 - small**2
        return scale * (4 * s * q - 8 * big**2 * np.array([q[0], q[1], 0.0]))[None]

    return NumpyProblem(
        constr=constr, jacob=jacob, potential=lambda q: 0.0, grad=lambda q: np.zeros(3)
    )


#: problem name -> its NumPy functions
NUMPY_PROBLEMS = {
    "ellipse": _ellipse,
    "sphere_plane": _sphere_plane,
    "torus_quartic": _torus_quartic,
}


def check_numpy_problem(name: str, n_points: int = 8) -> float:
    """The largest difference between the NumPy functions and the torch problem (its constraint,
    the constraint's autograd Jacobian, its potential and the potential's gradient) at points
    near the set; raises ``AssertionError`` above 1e-12."""
    problem, npp = get_problem(name), NUMPY_PROBLEMS[name]()
    gen = torch.Generator().manual_seed(1)
    x = problem.initial(n_points, generator=gen)
    x = x + 0.1 * torch.randn(x.shape, dtype=x.dtype, generator=gen)  # off the set as well
    worst = 0.0
    for q in x:
        qn = q.numpy()
        jac = torch.autograd.functional.jacobian(problem.constraint, q)
        grad = torch.autograd.functional.jacobian(problem.potential, q)
        pairs = [
            (npp.constr(qn), problem.constraint(q)),
            (npp.jacob(qn), jac),
            (np.asarray(npp.potential(qn)), problem.potential(q)),
            (npp.grad(qn), grad),
        ]
        for a, b in pairs:
            worst = max(worst, float(np.abs(np.asarray(a) - b.numpy()).max()))
    assert worst < 1e-12, f"{name}: NumPy and torch problems differ by {worst:.3g}"
    return worst


# ------------------------------------------------------------------------------------ statistics
def summarise(problem, positions: torch.Tensor) -> dict:
    """Per observable of ``problem``: estimate, standard error, bulk ESS and z-score from the
    traces ``positions`` ``(n_chains, n_draws, *event)`` (arviz, chains as chains)."""
    import arviz as az

    out = {}
    for name, fn in problem.observables.items():
        values = fn(positions).numpy()  # (n_chains, n_draws)
        mcse = float(az.mcse(values, method="mean"))
        exact = float(problem.exact[name])
        estimate = float(values.mean())
        out[name] = {
            "estimate": estimate,
            "mcse": mcse,
            "ess_bulk": float(az.ess(values, method="bulk")),
            "ess_mean": float(az.ess(values, method="mean")),
            "exact": exact,
            "z": (estimate - exact) / mcse if mcse > 0 else math.nan,
        }
    return out


def _with_rates(row: dict, stats: dict, wall: float, cpu: float) -> dict:
    min_ess = min(o["ess_bulk"] for o in stats.values())
    row.update(
        wall_s=wall,
        cpu_s=cpu,
        ess_per_cpu_s=min_ess / cpu,
        observables=stats,
        min_ess_bulk=min_ess,
        ess_per_s=min_ess / wall,
        max_abs_z=max(abs(o["z"]) for o in stats.values()),
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )
    return row


# ---------------------------------------------------------------------------------------- ml.HMC
def run_ml(name: str, n_chains: int, n_steps: int, burn_in: int, seed: int = 0) -> dict:
    """``ml.HMC`` on ``n_chains`` chains in one batch: ``burn_in`` untimed steps, then
    ``n_steps`` timed steps whose positions are recorded."""
    problem = get_problem(name)
    hmc = ml.HMC(
        problem.make_manifold(),
        potential=problem.potential,
        step_size=STEP_SIZE,
        n_leapfrog=N_LEAPFROG,
        temperature=problem.temperature,
    )
    gen = torch.Generator().manual_seed(seed)
    x0 = problem.initial(n_chains, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        state = hmc.init(x0, generator=gen)
        for _ in range(burn_in):
            state = hmc.step(state, gen)[0]
        trace = torch.empty(n_steps, *x0.shape, dtype=x0.dtype)
        counts = torch.zeros(3, dtype=torch.int64)  # accepted, shake failed, reverse failed
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n_steps):
            state = hmc.step(state, gen)[0]
            trace[i] = state.x
            info = state.info
            counts += torch.stack(
                [info["accepted"].sum(), info["shake_failed"].sum(), info["reverse_failed"].sum()]
            )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    total = n_chains * n_steps
    acc, shake, rev = (int(c) for c in counts)
    row = {
        "problem": name,
        "sampler": "ml.HMC",
        "n_chains": n_chains,
        "n_steps": n_steps,
        "burn_in": burn_in,
        "acceptance_rate": acc / total,
        "solve_failure_rate": shake / total,
        "reverse_failure_rate": rev / total,
        "max_residual": float(hmc.manifold.residual_norm(state.x).max()),
    }
    return _with_rates(row, summarise(problem, trace.transpose(0, 1)), wall, cpu)


# ------------------------------------------------------------------------------------------ mici
def mici_sampler(name: str, seed: int = 0):
    """mici's static-length Metropolis HMC for problem ``name``, set up as ``ml.HMC``."""
    from mici.integrators import ConstrainedLeapfrogIntegrator
    from mici.samplers import StaticMetropolisHMC
    from mici.systems import DenseConstrainedEuclideanMetricSystem

    problem, npp = get_problem(name), NUMPY_PROBLEMS[name]()
    tau = problem.temperature
    dim = math.prod(problem.event_shape)
    system = DenseConstrainedEuclideanMetricSystem(
        neg_log_dens=lambda q: npp.potential(q) / tau,
        constr=npp.constr,
        metric=np.full(dim, 1 / tau),
        dens_wrt_hausdorff=True,
        grad_neg_log_dens=lambda q: npp.grad(q) / tau,
        jacob_constr=npp.jacob,
    )
    integrator = ConstrainedLeapfrogIntegrator(system, step_size=STEP_SIZE)
    rng = np.random.default_rng(seed)
    return StaticMetropolisHMC(system, integrator, rng, n_step=N_LEAPFROG), system


def run_mici(name: str, n_chains: int, n_steps: int, burn_in: int, seed: int = 0) -> dict:
    """mici on ``n_chains`` chains one after the other (``n_worker=1``): ``burn_in`` untimed
    iterations, then ``n_steps`` timed ones whose positions are recorded."""
    problem = get_problem(name)
    sampler, system = mici_sampler(name, seed)
    gen = torch.Generator().manual_seed(seed)
    init = [q.numpy().copy() for q in problem.initial(n_chains, generator=gen)]
    kw = {"adapters": [], "display_progress": False, "n_worker": 1}

    def pos(state):
        return {"pos": state.pos.copy()}

    states, _, _ = sampler.sample_chains(0, burn_in, init, trace_funcs=[pos], **kw)
    before = np.stack([s.pos for s in states])[:, None]  # where the timed phase starts
    start, cpu = time.perf_counter(), time.process_time()
    states, traces, stats = sampler.sample_chains(0, n_steps, states, trace_funcs=[pos], **kw)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    trace = np.stack(traces["pos"])  # (n_chains, n_steps, d)
    prev = np.concatenate([before, trace[:, :-1]], axis=1)
    moved = np.any(trace != prev, axis=-1)  # an accepted proposal moves the chain
    row = {
        "problem": name,
        "sampler": "mici",
        "n_chains": n_chains,
        "n_steps": n_steps,
        "burn_in": burn_in,
        "acceptance_rate": float(np.mean(moved)),
        "mean_accept_prob": float(np.mean(stats["metrop_accept_prob"])),
        "solve_failure_rate": float(np.mean(stats["convergence_error"])),
        "reverse_failure_rate": float(np.mean(stats["non_reversible_step"])),
        "max_residual": float(max(np.abs(system.constr(s)).max() for s in states)),
    }
    positions = torch.from_numpy(trace)
    return _with_rates(row, summarise(problem, positions), wall, cpu)


# ------------------------------------------------------------------------------------- reporting
def environment() -> dict:
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "mici": version("mici"),
        "arviz": version("arviz"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "dtype": "float64",
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def comparisons(rows: list[dict]) -> list[dict]:
    """Per problem: ml.HMC's ESS/s at ``REFERENCE_CHAINS`` chains (or its most chains, if fewer
    were run) over mici's, for mici's one-chain and four-chain runs."""
    out = []
    for name in dict.fromkeys(r["problem"] for r in rows):
        ml_rows = [r for r in rows if r["problem"] == name and r["sampler"] == "ml.HMC"]
        mici_rows = [r for r in rows if r["problem"] == name and r["sampler"] == "mici"]
        if not ml_rows or not mici_rows:
            continue
        at = [r for r in ml_rows if r["n_chains"] == REFERENCE_CHAINS]
        ref = at[0] if at else max(ml_rows, key=lambda r: r["n_chains"])
        for m in mici_rows:
            out.append(
                {
                    "problem": name,
                    "ml_chains": ref["n_chains"],
                    "mici_chains": m["n_chains"],
                    "ml_ess_per_s": ref["ess_per_s"],
                    "mici_ess_per_s": m["ess_per_s"],
                    "ratio": ref["ess_per_s"] / m["ess_per_s"],
                    "ratio_cpu": ref["ess_per_cpu_s"] / m["ess_per_cpu_s"],
                }
            )
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["problem"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in result["rows"] if r["problem"] == name]
        mlr = sorted((r for r in rows if r["sampler"] == "ml.HMC"), key=lambda r: r["n_chains"])
        ax.loglog([r["n_chains"] for r in mlr], [r["ess_per_s"] for r in mlr], "o-", label="ml.HMC")
        for r, style in zip((r for r in rows if r["sampler"] == "mici"), ("--", ":")):
            ax.axhline(
                r["ess_per_s"],
                color="C1",
                linestyle=style,
                label=f"mici, {r['n_chains']} chain{'s' if r['n_chains'] > 1 else ''}",
            )
        ax.set_xlabel("chains (ml.HMC, one batch)")
        ax.set_ylabel("min bulk ESS / s")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"constrained HMC, h = {STEP_SIZE}, {N_LEAPFROG} leapfrog steps, one CPU thread",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs: seconds")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    cfg = CONFIG[mode]
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "peers_mici.json", out_dir / "peers_mici.png"
    result = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "peers_mici",
        "quick": args.quick,
        "description": (
            "ml.HMC and mici's StaticMetropolisHMC (ConstrainedLeapfrogIntegrator, "
            "dens_wrt_hausdorff=True) on the same targets, same step size and leapfrog steps"
        ),
        "settings": {
            "step_size": STEP_SIZE,
            "n_leapfrog": N_LEAPFROG,
            "seed": args.seed,
            "mici_tolerances": {
                "reverse_check_tol": 2e-8,
                "constraint_tol": 1e-9,
                "position_tol": 1e-8,
                "max_iters": 50,
            },
            "ml_tolerances": {
                "shake_tol": 1e-12,
                "stop_tol": STOP_FRACTION * 1e-12,
                "reverse_tol": 1e-10,
                "newton_iters": 6,
            },
            **cfg,
        },
        "environment": environment(),
        "numpy_check": {},
        "rows": [],
        "comparisons": [],
    }
    start = time.perf_counter()
    try:  # one BLAS thread too (mici's small dense solves; two threads are far slower here)
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        limits = contextlib.nullcontext()
        result["environment"]["blas_threads"] = None
    else:
        limits = threadpool_limits(limits=1)
        result["environment"]["blas_threads"] = []

    def save():
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["comparisons"] = comparisons(result["rows"])
        rows = result["rows"]
        result["max_abs_z"] = max((r["max_abs_z"] for r in rows), default=None)
        json_path.write_text(json.dumps(result, indent=1) + "\n")

    with limits:
        if result["environment"]["blas_threads"] is not None:
            result["environment"]["blas_threads"] = [
                {k: i.get(k) for k in ("internal_api", "version", "num_threads")}
                for i in threadpool_info()
            ]
        for name in cfg["problems"]:
            result["numpy_check"][name] = check_numpy_problem(name)
            runs = [(run_mici, c, s, cfg["mici_burn_in"]) for c, s in cfg["mici"]]
            runs += [(run_ml, c, s, cfg["ml_burn_in"]) for c, s in cfg["ml"]]
            for fn, n_chains, n_steps, burn_in in runs:
                row = fn(name, n_chains, n_steps, burn_in, seed=args.seed)
                result["rows"].append(row)
                save()
                print(
                    f"{name:14s} {row['sampler']:7s} {n_chains:6d} chains x {n_steps:5d}: "
                    f"{row['wall_s']:7.2f} s, acc {row['acceptance_rate']:.3f}, "
                    f"min ESS {row['min_ess_bulk']:9.1f}, ESS/s {row['ess_per_s']:9.1f}, "
                    f"max |z| {row['max_abs_z']:.2f}",
                    flush=True,
                )
    result["environment"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    save()
    plot(result, png_path)
    for c in result["comparisons"]:
        print(
            f"{c['problem']:14s} ml.HMC@{c['ml_chains']} / mici@{c['mici_chains']}: "
            f"{c['ratio']:.3g}x ESS/s"
        )
    return result


if __name__ == "__main__":
    main()
