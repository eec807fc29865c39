"""The blocked Gram product of the fused Stiefel step against one plain product.

``manifold_langevin.manifolds.frames.gram`` forms ``x^T x`` from the upper triangle of
column blocks (``_GRAM_BLOCKS`` picks the number of blocks by frame width). This script times 1
(the plain product), 2 and 4 blocks on the same stack, in turn, with and without the exact
symmetrisation, and prints each median against one block: the numbers behind ``_GRAM_BLOCKS``.

Run: ``python -m validation.bench_gram`` (about a minute on one CPU thread); ``--quick`` for a
smoke run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from manifold_langevin.manifolds.frames import gram as _gram
from validation.bench_optim import environment, timer

SHAPES = [(1024, 1024), (4608, 512), (512, 512), (256, 256), (512, 128), (128, 128)]
BLOCKS = (1, 2, 4)


def measure(n: int, p: int, reps: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One row per block count (1: the plain product) and per use: ``C``, symmetrised exactly
    (``tmp``), and the residual, not symmetrised."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, p, generator=gen, dtype=dtype).to(device)
    out = torch.empty(1, p, p, dtype=dtype, device=device)
    tmp = torch.empty_like(out)
    time_it = timer(device)
    rows = []
    for use, buf in (("C (symmetric)", tmp), ("residual", None)):
        times: dict[int, list[float]] = {b: [] for b in BLOCKS}
        for _ in range(reps):
            for b in BLOCKS:
                times[b].append(time_it(lambda b=b, t=buf: _gram(x, out, t, blocks=b)))
        plain = statistics.median(times[1]) * 1e3
        for b in BLOCKS:
            ms = statistics.median(times[b]) * 1e3
            rows.append({"shape": [n, p], "use": use, "blocks": b, "ms": ms, "ratio": ms / plain})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: leave as is)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = [(300, 260), (64, 64)] if args.quick else SHAPES
    reps = 3 if args.quick else 21
    rows = [r for n, p in shapes for r in measure(n, p, reps, device, torch.float32)]
    for r in rows:
        n, p = r["shape"]
        print(
            f"{n:5d} x {p:<5d} {r['use']:14s} {r['blocks']} block(s): {r['ms']:8.3f} ms, "
            f"{r['ratio']:.2f} of one block"
        )
    result = {"environment": environment(device), "dtype": "float32", "rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
