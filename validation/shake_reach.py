"""How large a step :meth:`manifold_langevin.Stiefel.shake` solves with its default budget.

SHAKE runs a fixed number of Newton iterations (``_DEFAULT_ITERS``: no host sync to test
convergence). For random tangent steps of spectral size ``s`` from Haar points (drawn as in
``validation/rattle_budget.py``, without a normal part), this script finds the largest ``s`` on
a grid at which every trial lands within the tolerance, per dtype and shape: exact Newton for
``p <= 8``, the Neumann-series Newton above (where near-square frames are the slowest).

Run: ``python -m validation.shake_reach`` (seconds on one CPU core); writes
``validation/results/shake_reach.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from manifold_langevin import Stiefel
from validation.rattle_budget import random_step, write_results

RESULTS = Path(__file__).parent / "results"
# p <= 8 (exact Newton), then tall, near-square and square frames with p > 8
SHAPES = [(6, 3), (8, 8), (20, 10), (64, 16), (10, 9), (20, 19), (66, 64), (16, 16)]
STEPS = [0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def largest_solved(steps, converged) -> float | None:
    """The largest of the increasing grid ``steps`` below which every trial converged:
    ``converged(s)`` gives the per-trial flags at step ``s``, and the walk stops at the first
    step with a failure (``None``: not even the smallest step)."""
    best = None
    for s in steps:
        if not bool(converged(s).all()):
            break
        best = s
    return best


def reach(n, k, dtype, trials, seed) -> float | None:
    """The largest grid step at which all trials converge (``None``: not even the smallest)."""
    m = Stiefel()
    gen = torch.Generator().manual_seed(seed)
    x, v = random_step(n, k, 1.0, 0.0, dtype, gen, trials)  # tangent, spectral norm 1
    return largest_solved(STEPS, lambda s: m.shake(x, x + s * v)[1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "shake_reach.json")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two shapes, 20 trials")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shapes = [(6, 3), (10, 9)] if args.quick else SHAPES
    trials = 20 if args.quick else args.trials
    start = time.perf_counter()
    rows = []
    for dname, dtype in DTYPES.items():
        for n, k in shapes:
            s = reach(n, k, dtype, trials, args.seed)
            rows.append({"dtype": dname, "shape": [n, k], "trials": trials, "reach": s})
            print(f"{dname:8s} {n:3d} x {k:<3d}: every trial converges up to s = {s}", flush=True)
    description = "largest spectral step at which Stiefel.shake converges on every trial"
    return write_results(args.out, description, start, rows, steps_tried=STEPS)


if __name__ == "__main__":
    main()
