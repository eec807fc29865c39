"""How large a step :class:`manifold_langevin.ImplicitManifold`'s SHAKE solves with its default
budget: Newton, three Newton iterates then a kept matrix, quasi-Newton and the frozen old-point
matrix.

SHAKE runs a fixed number of iterations (``max_iter = 6``: no host sync to test convergence).
Newton (the default) forms the Jacobian at every iterate, one autograd pass each; ``newton=3``
forms it at the first three iterates and keeps the third one's matrix for the rest (Newton
converges to rounding within about three iterates where it converges fast at all); quasi-Newton
(``newton=False``) forms it once, at the first iterate, and then evaluates only the constraint;
``newton="frozen"`` (classic SHAKE) iterates with the old point's Gram matrix, which the
projections have factorised already, and forms no Jacobian in the solve. Cheaper iterations
(measured in ``validation/results/bench_sampler_side.json``), but linear convergence, with a
rate that grows with the step (faster for quasi-Newton, whose matrix is taken nearer the
solution), so within the same budget they reach shorter steps. For every validation
problem with a one-dimensional implicit constraint, and for the rigid trimer and the 10-bead
chain of ``validation.sampler_peers`` (steps in units of the bond length), the script draws
start points on the set and random unit tangent directions, and finds the largest step ``s`` on
a grid at which every trial lands within the tolerance, per dtype and method.

Run: ``python -m validation.implicit_reach`` (about a minute on one CPU core; ``--quick``: two
problems, 50 trials); writes ``validation/results/implicit_reach.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import manifold_langevin as ml
from manifold_langevin.testing.problems import PROBLEMS
from validation.bench_optim import environment
from validation.sampler_peers import BOND, _chain_positions, chain_constraint
from validation.shake_reach import largest_solved

RESULTS = Path(__file__).parent / "results"
STEPS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
DTYPES = {"float64": torch.float64, "float32": torch.float32}
METHODS = {"newton": True, "newton_3": 3, "quasi_newton": False, "frozen": "frozen"}


def cases(trials: int, quick: bool, seed: int):
    """``(name, g, start points (float64), length scale)`` for each constraint."""
    gen = torch.Generator().manual_seed(seed)
    names = [
        name
        for name, p in PROBLEMS.items()
        if p.constraint is not None and p.event_shape is not None and len(p.event_shape) == 1
    ]
    if quick:
        names = names[:1]
    for name in names:
        p = PROBLEMS[name]
        yield name, p.constraint, p.initial(trials, torch.float64, "cpu", gen), 1.0
    for beads in (3,) if quick else (3, 10):
        pos = _chain_positions(trials, beads, np.random.default_rng(seed))
        x = torch.tensor(pos.reshape(trials, 3 * beads), dtype=torch.float64)
        yield f"chain{beads}", chain_constraint(beads), x, BOND


def reach(g, x, v, scale: float, newton: bool | str) -> tuple[float | None, list[float]]:
    """The largest grid step at which every trial converges (``None``: not even the smallest),
    and the converged fraction at every grid step."""
    m = ml.ImplicitManifold(g, newton=newton)
    flags = {s: m.shake(x, x + (s * scale) * v)[1] for s in STEPS}
    fractions = [float(flags[s].double().mean()) for s in STEPS]
    return largest_solved(STEPS, flags.__getitem__), fractions


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "implicit_reach.json")
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two problems, 50 trials")
    args = parser.parse_args(argv)
    trials = 50 if args.quick else args.trials
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    gen = torch.Generator().manual_seed(args.seed + 1)
    for name, g, x, scale in cases(trials, args.quick, args.seed):
        m = ml.ImplicitManifold(g)
        v = m.proju(x, torch.randn(x.shape, dtype=x.dtype, generator=gen))
        v = v / v.norm(dim=-1, keepdim=True)
        for dname, dtype in DTYPES.items():
            row = {"problem": name, "dtype": dname, "length_scale": scale}
            for method, newton in METHODS.items():
                best, fractions = reach(g, x.to(dtype), v.to(dtype), scale, newton)
                row[f"{method}_reach"] = best
                row[f"{method}_converged"] = fractions
            rows.append(row)
            print(
                f"{name:16s} {dname:8s} reach: Newton {row['newton_reach']}, three Newton "
                f"iterates {row['newton_3_reach']}, quasi-Newton {row['quasi_newton_reach']}, "
                f"frozen {row['frozen_reach']}"
            )
    result = {
        "benchmark": "implicit_reach",
        "quick": args.quick,
        "trials": trials,
        "max_iter": ml.ImplicitManifold(lambda x: x[..., 0]).max_iter,
        "steps": STEPS,
        "seconds": time.perf_counter() - start,
        "environment": environment(torch.device("cpu")),
        "rows": rows,
    }
    out = args.out.parent / "quick" / args.out.name if args.quick else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
