"""Per-step cost of ``ImplicitManifold``'s SHAKE iterations, timed in alternation.

The side-by-side run (``validation.bench_sampler --side-by-side-only``) times each contender
in one block of a few repeats, so a spell of load from elsewhere on the machine can fall on
one contender and not on the next. Here the iterations take turns instead: BAOAB steps
(``Langevin``, eager) with each of ``newton=True`` (Newton, the default), ``newton=3`` (three
Newton iterates, then the third one's matrix kept), ``newton=False`` (quasi-Newton) and
``newton="frozen"`` (classic SHAKE, the old point's Gram matrix), a few steps each in turn,
many rounds, on one CPU thread, float64 (and ``ml.HMC`` on the ellipse with Newton, at the
exact-sampling comparison's large steps); medians and quartiles of the time per step, and each
median's ratio to Newton's. Each iteration is also timed with its solves run to the end of the
budget (``<method>_whole_budget``: the path of an accelerator, where no value is read), whose
time over the default's, ``stop_gain``, is what ending a solve once every chain has stopped
saves (the two give the same numbers). The problems are the side-by-side run's: the sphere
``|x|^2 = 1`` at 10^4 chains (also ``Sphere()``, the closed form, for the "within 2x" ratio)
and the rigid trimer and the 10-bead chain at 4,000 molecules (``validation.sampler_peers``).

Run: ``python -m validation.bench_shake_iterations`` (about a minute; ``--quick``: small
sizes, seconds, numbers not meaningful). Writes
``validation/results/bench_shake_iterations.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import manifold_langevin as ml
from manifold_langevin.testing import get_problem
from validation import sampler_peers as peers
from validation.bench_optim import environment, host_reads_off

RESULTS = Path(__file__).parent / "results"
METHODS = {"newton": True, "newton_3": 3, "quasi_newton": False, "frozen": "frozen"}
#: the suffix of a method's label run to the end of every solve's budget
WHOLE = "_whole_budget"
#: problem -> (chains, rounds, steps per turn) in full and quick mode
SIZES = {
    "full": {
        "s2": (10_000, 40, 5),
        "trimer": (4_000, 20, 5),
        "chain10": (4_000, 10, 2),
        "hmc_ellipse": (1_000, 20, 3),
    },
    "quick": {
        "s2": (100, 3, 1),
        "trimer": (10, 3, 1),
        "chain10": (10, 2, 1),
        "hmc_ellipse": (10, 2, 1),
    },
}
#: HMC on the ellipse at the exact-sampling comparison's settings (step 0.3, 5 leapfrog steps,
#: ``validation.peers_mici``): large steps, where some chain of a batch needs every iterate of
#: a solve; Newton only (the cheaper iterations do not reach such steps)
HMC_STEP, HMC_LEAPFROG = 0.3, 5


def _methods(problem: str) -> tuple[str, ...]:
    return ("newton",) if problem == "hmc_ellipse" else tuple(METHODS)


def whole_budget(run: Callable[[int], object]) -> Callable[[int], object]:
    """``run`` with every SHAKE solve run to the end of its budget, as on an accelerator (on
    CPU a solve ends once every chain has stopped)."""
    return host_reads_off(run)


def _makers(problem: str, n: int) -> dict:
    """Label -> ``run(n_steps)`` for every iteration, ending early and (``WHOLE``) not (and the
    closed form on the sphere)."""
    if problem == "s2":
        out = {"sphere_closed_form": peers.make_ml_s2(n)}

        def make(newton):
            return peers.make_ml_s2(n, implicit=True, newton=newton)
    elif problem == "hmc_ellipse":
        out = {}

        def make(newton):
            return _hmc_ellipse(n, newton)
    else:
        out = {}
        beads = 3 if problem == "trimer" else 10

        def make(newton):
            return peers.make_ml_molecule(n, beads, torch.float64, newton=newton)

    for label in _methods(problem):
        out[label] = make(METHODS[label])
        out[label + WHOLE] = whole_budget(make(METHODS[label]))
    return out


def _hmc_ellipse(n: int, newton) -> Callable[[int], object]:
    """``run(n_steps)``: ``ml.HMC`` steps on the ``ellipse`` problem, ``n`` chains."""
    p = get_problem("ellipse")
    hmc = ml.HMC(
        ml.ImplicitManifold(p.make_manifold().g, newton=newton),
        potential=p.potential,
        step_size=HMC_STEP,
        n_leapfrog=HMC_LEAPFROG,
        temperature=p.temperature,
    )
    gen = torch.Generator().manual_seed(0)
    state = {"s": hmc.init(p.initial(n, dtype=torch.float64, generator=gen), generator=gen)}

    def run(n_steps: int):
        with torch.no_grad():
            for _ in range(n_steps):
                state["s"] = hmc.step(state["s"], gen)[0]

    return run


def measure(problem: str, n: int, rounds: int, steps: int) -> dict:
    runs = _makers(problem, n)
    for run in runs.values():
        run(2)  # warm-up
    times = {label: [] for label in runs}
    load_before = os.getloadavg()
    for _ in range(rounds):
        for label, run in runs.items():
            t0 = time.perf_counter()
            run(steps)
            times[label].append((time.perf_counter() - t0) / steps)
    out = {
        "problem": problem,
        "chains": n,
        "rounds": rounds,
        "steps_per_turn": steps,
        "load_before": load_before,
    }
    newton = statistics.median(times["newton"])
    for label, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        out[label] = {
            "median_ms": 1e3 * med,
            "quartiles_ms": [1e3 * q1, 1e3 * q3],
            "speed_vs_newton": newton / med,
        }
    for label in _methods(problem):
        out[label]["stop_gain"] = out[label + WHOLE]["median_ms"] / out[label]["median_ms"]
    if "sphere_closed_form" in times:
        closed = statistics.median(times["sphere_closed_form"])
        for label in METHODS:
            out[label]["speed_vs_closed_form"] = closed / statistics.median(times[label])
    out["load_after"] = os.getloadavg()
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_shake_iterations.json")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    result = {
        "benchmark": "bench_shake_iterations",
        "quick": args.quick,
        "environment": environment(torch.device("cpu")),
        "cases": [],
    }
    out = args.out.parent / "quick" / args.out.name if args.quick else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for problem, (n, rounds, steps) in SIZES[mode].items():
        case = measure(problem, n, rounds, steps)
        result["cases"].append(case)
        out.write_text(json.dumps(result, indent=1) + "\n")  # as it goes
        speeds = ", ".join(
            f"{label} {case[label]['median_ms']:.2f} ms ({case[label]['speed_vs_newton']:.2f}x;"
            f" stop {case[label]['stop_gain']:.2f}x)"
            for label in _methods(problem)
        )
        print(f"{problem:8s} {n:6d}: {speeds}")
        if "sphere_closed_form" in case:
            print(f"         Sphere() {case['sphere_closed_form']['median_ms']:.2f} ms")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
