"""Where the time of a Stiefel geodesic goes, in its two layouts, and where one overtakes the
other.

The exact geodesic of frames with at most three columns (SO(3), V(10, 3), ...) runs in the
entries-first layout of ``manifold_langevin.manifolds.stacked`` from
``stiefel_geodesic._STACKED_MIN_MATRICES`` matrices on (``_STACKED_MIN_SQUARE`` square ones;
CPU), in torch's batched layout with ``torch.linalg.matrix_exp`` below. This script times, on
one CPU thread, in one process:

- ``parts``: at ``--chains`` V(10, 3) frames, one ``6 x 6`` product of the stacked layout against
  ``torch.bmm``, the ``6 x 6`` exponential (``stacked.expm`` against ``torch.linalg.matrix_exp``,
  of blocks of the size a BAOAB step meets), the whole geodesic in each layout, and the BAOAB
  step (two geodesics) in each layout and with the general-formula geodesic of the benchmarks;
  also SO(3)'s step in both layouts;
- ``crossover``: the V(10, 3) and SO(3) BAOAB steps in both layouts against the number of
  chains (the measurement behind those two thresholds);
- ``pieces``: the stacked geodesic of many frames in one piece and in pieces of a few sizes
  (the measurement behind ``stiefel_geodesic._STACKED_CHUNK``).

Every timing rotates the contenders within each repetition and reports the median. The
layouts are chosen by setting those thresholds (the library's own switches).

Run ``python -m validation.bench_stiefel_geodesic [--quick]``; writes
``bench_stiefel_geodesic.json`` to ``--out`` (default ``validation/results``; ``--quick``:
``<out>/quick``, a few seconds, numbers not meaningful).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

from manifold_langevin.manifolds import stacked
from manifold_langevin.manifolds import stiefel_geodesic as geodesic_module
from manifold_langevin.manifolds.stiefel import Stiefel
from validation import sampler_peers as peers
from validation.bench_optim import cpu_bench_cli, environment

SETTINGS = {
    "full": {
        "chains": 10_000,
        "reps": 9,
        "crossover": [1, 30, 100, 150, 250, 400, 1_000, 10_000],
        "pieces": (100_000, [2048, 4096, 8192, None]),
    },
    "quick": {"chains": 300, "reps": 2, "crossover": [1, 300], "pieces": (600, [256, None])},
}


def _steps(chains: int) -> int:
    """BAOAB steps per timed call at a chain count (fewer for many chains)."""
    return 200 if chains <= 100 else 50 if chains <= 1_000 else 10


def layout(name: str):
    """Force the geodesic's layout (a context manager): ``"stacked"`` (any count) or
    ``"batched"``."""
    count = 1 if name == "stacked" else 10**12
    return mock.patch.multiple(
        geodesic_module, _STACKED_MIN_MATRICES=count, _STACKED_MIN_SQUARE=count
    )


def rotate(contenders: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each contender, one call of each per repetition in turn
    (after one warm-up call each)."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _in_layout(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        with layout(name):
            return fn()

    return call


def _frames(chains: int, n: int, p: int, step: float, seed: int = 0):
    m = Stiefel()
    gen = torch.Generator().manual_seed(seed)
    x = m.random(chains, n, p, dtype=torch.float64, generator=gen)
    v = m.proju(x, torch.randn(x.shape, dtype=torch.float64, generator=gen))
    return m, x, v * (step / torch.linalg.matrix_norm(v)[..., None, None])


def parts(chains: int, reps: int) -> dict:
    """Milliseconds of each part at ``chains`` V(10, 3) frames (and SO(3)'s step)."""
    # a BAOAB half step at the benchmarks' settings: t = h/2 = 0.025, |V| about sqrt(21)
    m, x, v = _frames(chains, 10, 3, step=21**0.5)
    a = torch.randn(chains, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block = a / a.abs().sum(-2).amax(-1)[..., None, None] * 0.35  # the 1-norm such a step meets
    sa, sb = stacked.to_stacked(a), stacked.to_stacked(block)
    out = {
        "product_stacked_ms": lambda: stacked.mm(sa, sa),
        "product_bmm_ms": lambda: torch.bmm(a, a),
        "expm_stacked_ms": lambda: stacked.expm(sb),
        "expm_matrix_exp_ms": lambda: torch.linalg.matrix_exp(block),
        "geodesic_stacked_ms": _in_layout("stacked", lambda: m.geodesic(x, v, 0.025)),
        "geodesic_batched_ms": _in_layout("batched", lambda: m.geodesic(x, v, 0.025)),
    }
    steps = _steps(chains)
    runs = {
        "step_stacked_ms": ("stacked", peers.make_ml_stiefel(chains, 10, 3)),
        "step_batched_ms": ("batched", peers.make_ml_stiefel(chains, 10, 3)),
        "step_general_ms": ("batched", peers.make_ml_stiefel(chains, 10, 3, general=True)),
        "so3_step_stacked_ms": ("stacked", peers.make_ml_stiefel(chains, 3, 3)),
        "so3_step_batched_ms": ("batched", peers.make_ml_stiefel(chains, 3, 3)),
        "so3_step_general_ms": ("batched", peers.make_ml_stiefel(chains, 3, 3, general=True)),
    }
    for name, (lay, run) in runs.items():
        out[name] = _in_layout(lay, lambda run=run: run(steps))
    ms = {k: 1e3 * s for k, s in rotate(out, reps).items()}
    for name in runs:
        ms[name] /= steps
    return {"chains": chains, **ms}


def crossover(counts: list[int], reps: int) -> list[dict]:
    """The BAOAB step on V(10, 3) and on SO(3) in both layouts at each chain count
    (milliseconds per step)."""
    rows = []
    for (n, p), chains in itertools.product([(10, 3), (3, 3)], counts):
        steps = _steps(chains)
        runs = {lay: peers.make_ml_stiefel(chains, n, p) for lay in ("stacked", "batched")}
        ms = rotate({k: _in_layout(k, lambda r=r, n=steps: r(n)) for k, r in runs.items()}, reps)
        rows.append({
            "frame": f"{n}x{p}",
            "chains": chains,
            "stacked_ms": 1e3 * ms["stacked"] / steps,
            "batched_ms": 1e3 * ms["batched"] / steps,
            "stacked_over_batched": ms["stacked"] / ms["batched"],
        })  # fmt: skip
    return rows


def pieces(count: int, sizes: list[int | None], reps: int) -> list[dict]:
    """The stacked geodesic of ``count`` V(10, 3) and SO(3) frames with ``_STACKED_CHUNK`` set
    to each size (``None``: one piece); milliseconds per call."""
    rows = []
    for n, p in [(10, 3), (3, 3)]:
        m, x, v = _frames(count, n, p, step=21**0.5)

        def call(size, m=m, x=x, v=v):
            piece = count if size is None else size
            with layout("stacked"), mock.patch.object(geodesic_module, "_STACKED_CHUNK", piece):
                return m.geodesic(x, v, 0.025)

        ms = rotate({str(k): (lambda k=k: call(k)) for k in sizes}, reps)
        for k in sizes:
            rows.append({"frame": f"{n}x{p}", "matrices": count, "piece": k or count,
                         "geodesic_ms": 1e3 * ms[str(k)]})  # fmt: skip
    return rows


def run(quick: bool = False) -> dict:
    mode = "quick" if quick else "full"
    s = SETTINGS[mode]
    return {
        "benchmark": "bench_stiefel_geodesic",
        "quick": quick,
        "environment": environment(torch.device("cpu")),
        "stacked_min_matrices": geodesic_module._STACKED_MIN_MATRICES,
        "stacked_min_square": geodesic_module._STACKED_MIN_SQUARE,
        "parts": parts(s["chains"], s["reps"]),
        "crossover": crossover(s["crossover"], s["reps"]),
        "pieces": pieces(*s["pieces"], reps=max(2, s["reps"] // 2)),
    }


def main(argv: list[str] | None = None) -> int:
    result = cpu_bench_cli(
        argv, __doc__, "bench_stiefel_geodesic", run, "small sizes, two repetitions"
    )
    p = result["parts"]
    print(
        f"{p['chains']} V(10, 3) frames, ms: 6x6 product {p['product_stacked_ms']:.2f} stacked / "
        f"{p['product_bmm_ms']:.2f} bmm; exponential {p['expm_stacked_ms']:.2f} / "
        f"{p['expm_matrix_exp_ms']:.2f} matrix_exp; geodesic {p['geodesic_stacked_ms']:.2f} / "
        f"{p['geodesic_batched_ms']:.2f}; BAOAB step {p['step_stacked_ms']:.2f} / "
        f"{p['step_batched_ms']:.2f} / general {p['step_general_ms']:.2f}; SO(3) step "
        f"{p['so3_step_stacked_ms']:.2f} / {p['so3_step_batched_ms']:.2f} / general "
        f"{p['so3_step_general_ms']:.2f}"
    )
    for r in result["crossover"]:
        print(
            f"{r['frame']:5s} {r['chains']:6d} chains: stacked {r['stacked_ms']:8.3f} ms, batched "
            f"{r['batched_ms']:8.3f} ms per step ({r['stacked_over_batched']:.2f}x)"
        )
    for r in result["pieces"]:
        print(
            f"{r['frame']:5s} {r['matrices']} frames in pieces of {r['piece']:6d}: geodesic "
            f"{r['geodesic_ms']:8.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
