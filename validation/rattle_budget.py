"""Iterations the fused Stiefel RATTLE step needs, by dtype, shape and step size.

:meth:`manifold_langevin.Stiefel.rattle` runs a fixed number of multiplier iterations (no host
sync to test convergence), chosen per dtype and frame size in ``_RATTLE_ITERS``. This script
measures what those budgets cover: for random steps ``dt U`` of spectral size ``s`` (a random
tangent direction plus a normal part ``T Sigma`` of spectral size ``normal * s``, as CoLA's
unprojected kick leaves), the smallest ``max_iter`` at which every trial lands within the
tolerance, and whether the default budget does.

Run: ``python -m validation.rattle_budget`` (about seven minutes on one CPU core); writes
``validation/results/rattle_budget.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from manifold_langevin import Stiefel

RESULTS = Path(__file__).parent / "results"
# square, near-square (the slowest to converge) and tall frames
SHAPES = [
    (1024, 1024), (1030, 1024), (4608, 512), (256, 256), (260, 256), (512, 128), (130, 128),
    (66, 64), (64, 16), (12, 10), (20, 10),
]  # fmt: skip
STEPS = [0.05, 0.1, 0.2, 0.3, 0.5]
NORMALS = [0.0, 1.0]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_ITER = 30


def random_step(n, k, s, normal, dtype, gen, trials):
    """``(x, u)``: Haar points and steps with ``|P u|_2 = s`` and ``|u - P u|_2 = normal * s``."""
    m = Stiefel()
    x = m.random(trials, n, k, dtype=torch.float64, generator=gen)
    z = torch.randn(trials, n, k, dtype=torch.float64, generator=gen)
    u = m.proju(x, z)
    u = u * (s / torch.linalg.matrix_norm(u, ord=2))[..., None, None]
    sym = torch.randn(trials, k, k, dtype=torch.float64, generator=gen)
    sym = sym + sym.mT
    sym = sym * (normal * s / torch.linalg.matrix_norm(sym, ord=2))[..., None, None]
    u = u + x @ sym
    return x.to(dtype), u.to(dtype)


def write_results(path: Path, description: str, start: float, rows: list, **extra) -> dict:
    """Write the rows with their context (seconds since ``start``, torch version) as JSON."""
    out = {
        "description": description,
        **extra,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def needed(m, x, u) -> int | None:
    """Smallest budget at which every trial converges (``None``: not within ``MAX_ITER``).

    Doubling, then bisection: more iterations of a converging contraction keep it converged."""

    def ok(iters):
        return bool(m.rattle(x, u, 1.0, max_iter=iters)[2].all())

    lo, hi = -1, 0  # ok(lo) is taken to fail
    while not ok(hi):
        if hi >= MAX_ITER:
            return None
        lo, hi = hi, min(2 * hi + 1, MAX_ITER)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "rattle_budget.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two small shapes: seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    m = Stiefel()
    rows = []
    start = time.perf_counter()
    shapes = [(20, 10), (66, 64)] if args.quick else SHAPES
    for dname, dtype in DTYPES.items():
        for n, k in shapes:
            if dtype == torch.float64 and (n, k) == (1030, 1024):
                continue  # 260 x 256 stands for near-square frames (float64 is slow here)
            trials = 4 if n * k > 100_000 else 16
            probe = torch.empty(1, n, k, dtype=dtype)
            budget = m._rattle_iters(probe, None)
            for normal in NORMALS:
                for s in STEPS:
                    gen = torch.Generator().manual_seed(args.seed)
                    x, u = random_step(n, k, s, normal, dtype, gen, trials)
                    need = needed(m, x, u)
                    rows.append(
                        {
                            "dtype": dname,
                            "shape": [n, k],
                            "step": s,
                            "normal": normal,
                            "trials": trials,
                            "needed": need,
                            "budget": budget,
                            "covered": need is not None and need <= budget,
                        }
                    )
                print(
                    f"{dname:8s} {n:5d}x{k:<5d} normal {normal:3.1f} budget {budget:2d}: "
                    + "  ".join(
                        f"s={r['step']}: {r['needed'] if r['needed'] is not None else '-'}"
                        for r in rows[-len(STEPS) :]
                    ),
                    flush=True,
                )
    description = "smallest max_iter of Stiefel.rattle at which all trials converge"
    return write_results(args.out, description, start, rows, max_iter_tried=MAX_ITER)


if __name__ == "__main__":
    main()
