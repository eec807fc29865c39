"""How large a step :meth:`manifold_langevin.Stiefel.shake` solves with its default budget.

SHAKE runs a fixed number of Newton iterations (``_DEFAULT_ITERS``: no host sync to test
convergence). For random tangent steps of spectral size ``s`` from Haar points (the set-up of
``tests/manifolds/test_stiefel.py``), this script finds the largest ``s`` on a grid at which every
trial lands within the tolerance, per dtype and shape: exact Newton for ``p <= 8``, the
Neumann-series Newton above (where near-square frames are the slowest).

Run: ``python -m validation.shake_reach`` (seconds on one CPU core); writes
``validation/results/shake_reach.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from manifold_langevin import Stiefel

RESULTS = Path(__file__).parent / "results"
# p <= 8 (exact Newton), then tall, near-square and square frames with p > 8
SHAPES = [(6, 3), (8, 8), (20, 10), (64, 16), (10, 9), (20, 19), (66, 64), (16, 16)]
STEPS = [0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def tangent_steps(n, k, dtype, trials, seed):
    """Haar points and tangent directions of spectral norm 1, one per trial."""
    m = Stiefel()
    gen = torch.Generator().manual_seed(seed)
    x = m.random(trials, n, k, dtype=dtype, generator=gen)
    v = m.proju(x, torch.randn(x.shape, dtype=dtype, generator=gen))
    return x, v / torch.linalg.matrix_norm(v, ord=2)[..., None, None]


def reach(n, k, dtype, trials, seed) -> float | None:
    """The largest grid step at which all trials converge (``None``: not even the smallest)."""
    m = Stiefel()
    x, v = tangent_steps(n, k, dtype, trials, seed)
    best = None
    for s in STEPS:
        _, ok = m.shake(x, x + s * v)
        if not bool(ok.all()):
            break
        best = s
    return best


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
    out = {
        "description": "largest spectral step at which Stiefel.shake converges on every trial",
        "steps_tried": STEPS,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
