"""What a user's ``.sum(-1)`` over a short last dimension costs on CPU, against explicit additions.

A potential or constraint written for many chains at once sums over short rows: the three
coordinates of a point on S^2, the nine of a rigid trimer. torch's CPU reduction handles a short
contiguous last dimension row by row, and for 10^4 rows of three it is several times slower
than the two elementwise additions ``t[..., 0] + t[..., 1] + t[..., 2]`` (what the library's
own closed forms use, ``manifold_langevin.manifolds.base.row_sum``). This script times both,
on one CPU thread, for a few shapes and dtypes, and checks that they agree.

Run ``python -m validation.bench_short_sums [--quick]``; writes ``bench_short_sums.json`` to
``--out`` (default ``validation/results``; ``--quick``: ``<out>/quick``, a run of a second whose
numbers are not meaningful).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from validation.bench_optim import environment, median_ms

SHAPES = {"full": [(10_000, 3), (100_000, 3), (10_000, 9)], "quick": [(1_000, 3)]}
REPS = {"full": 301, "quick": 11}


def explicit_sum(t: torch.Tensor) -> torch.Tensor:
    """``t[..., 0] + t[..., 1] + ...``: the additions a user can write for a short row."""
    out = t[..., 0]
    for i in range(1, t.shape[-1]):
        out = out + t[..., i]
    return out


def _median_us(fn, reps: int) -> float:
    for _ in range(5):
        fn()
    return 1e3 * median_ms(fn, reps)


def run(quick: bool = False) -> dict:
    mode = "quick" if quick else "full"
    rows = []
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        for n_rows, n in SHAPES[mode]:
            t = torch.randn(n_rows, n, generator=gen, dtype=dtype)
            a, b = t.sum(-1), explicit_sum(t)
            scale = float(t.abs().sum(-1).max())
            agree = float((a - b).abs().max()) <= n * torch.finfo(dtype).eps * scale
            sum_us = _median_us(lambda t=t: t.sum(-1), REPS[mode])
            add_us = _median_us(lambda t=t: explicit_sum(t), REPS[mode])
            rows.append({
                "dtype": str(dtype).removeprefix("torch."), "rows": n_rows, "n": n,
                "sum_us": sum_us, "additions_us": add_us, "ratio": sum_us / add_us,
                "agree": agree,
            })  # fmt: skip
    return {
        "benchmark": "bench_short_sums",
        "quick": quick,
        "threads": torch.get_num_threads(),
        "environment": environment(torch.device("cpu")),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape, a few repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.quick)
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_short_sums.json").write_text(json.dumps(result, indent=1) + "\n")
    for r in result["rows"]:
        print(
            f"{r['dtype']:8s} {r['rows']:7d} x {r['n']}: sum(-1) {r['sum_us']:8.1f} us, "
            f"additions {r['additions_us']:7.1f} us ({r['ratio']:.1f}x), agree {r['agree']}"
        )
    if not all(r["agree"] for r in result["rows"]):
        raise RuntimeError("the explicit additions differ from sum(-1) beyond rounding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
