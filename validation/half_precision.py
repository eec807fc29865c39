"""Half-precision orthogonal weights: the residual CoLA keeps, against the default tolerance.

For bfloat16 and float16 Stiefel weights of several shapes (tall form ``N x p``), runs ``steps``
noisy CoLA steps (``lr = 0.1``, ``friction = 1``, ``temperature = 1e-4``, gradients
``0.03 N(0, 1)``) with an explicit tolerance, the recipe of docs/gotchas.md (``0.03`` for
bfloat16, ``0.004`` for float16), and records per case:

* ``default_tolerance``: what :func:`manifold_langevin.manifolds.base.default_tolerance` would
  give that weight (it grows like ``8 eps sqrt(N)``, which assumes sums rounded in the working
  precision);
* ``residual_max`` and ``residual_final``: ``max |W^T W - I|`` of the weights, measured in float32
  (the weights themselves, not the half-precision check), the largest over the steps and the last;
* ``rejected``: the steps CoLA refused (a failed solve against the explicit tolerance).

The residual the dynamics actually keeps is the floor a tighter default tolerance would have to
sit above, with a margin. On GPUs the answer depends on the GEMM settings (float16 products may
reduce in float16, ``torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction``), which
is why the run records them.

Run ``python -m validation.half_precision [--device D] [--quick]``; writes ``half_precision.json``
to ``--out`` (default ``validation/results``, or ``validation/results/quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import manifold_langevin as ml
from manifold_langevin.manifolds.base import default_tolerance
from manifold_langevin.optim import CoLA, orthogonal_init_
from validation.bench_optim import environment

__all__ = ["EXPLICIT_TOL", "SHAPES", "main", "measure", "run"]

SCHEMA_VERSION = 1
#: the explicit tolerances docs/gotchas.md recommends
EXPLICIT_TOL = {torch.bfloat16: 0.03, torch.float16: 0.004}
#: tall forms ``(N, p)``: full runs, quick runs
SHAPES = {
    "full": [(256, 256), (512, 128), (1024, 1024), (4608, 512)],
    "quick": [(64, 16)],
}
STEPS = {"full": 60, "quick": 5}


def measure(n: int, p: int, dtype: torch.dtype, steps: int, device: str) -> dict:
    """One weight: ``steps`` noisy CoLA steps; the record described in the module docstring."""
    gen = torch.Generator().manual_seed(0)
    w0 = orthogonal_init_(torch.randn(n, p, dtype=torch.float64, generator=gen))
    w = torch.nn.Parameter(w0.to(device=device, dtype=dtype))
    tol = EXPLICIT_TOL[dtype]
    opt = CoLA([{"params": [w], "constraint": ml.Stiefel(tol=tol)}], lr=0.1, temperature=1e-4)
    check = ml.Stiefel()
    residuals = []
    t0 = time.perf_counter()
    for _ in range(steps):
        w.grad = (0.03 * torch.randn(n, p, generator=gen)).to(device=device, dtype=dtype)
        opt.step()
        residuals.append(float(check.residual_norm(w.detach().float())))
    return {
        "shape": [n, p],
        "dtype": str(dtype).replace("torch.", ""),
        "explicit_tolerance": tol,
        "default_tolerance": default_tolerance(dtype, n),
        "residual_max": max(residuals),
        "residual_final": residuals[-1],
        "rejected": int(opt.n_rejected()),
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
    }


def run(*, quick: bool = False, device: str = "cpu", log=print) -> dict:
    mode = "quick" if quick else "full"
    rows = []
    for dtype in EXPLICIT_TOL:
        for n, p in SHAPES[mode]:
            r = measure(n, p, dtype, STEPS[mode], device)
            rows.append(r)
            if log:
                log(
                    f"{r['dtype']:9s} {n:5d} x {p:4d}: residual max {r['residual_max']:.2e} "
                    f"final {r['residual_final']:.2e} (explicit tol {r['explicit_tolerance']:g}, "
                    f"default {r['default_tolerance']:.3g}), {r['rejected']} rejected"
                )
    env = environment(torch.device(device))
    if device.startswith("cuda"):
        env["fp16_reduced_precision_reduction"] = (
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        )
        env["bf16_reduced_precision_reduction"] = (
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "half_precision",
        "quick": quick,
        "environment": env,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape, a few steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out_dir = args.out or Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(quick=args.quick, device=args.device)
    (out_dir / "half_precision.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'half_precision.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
