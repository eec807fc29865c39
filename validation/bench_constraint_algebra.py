"""The small linear algebra of the generic constraint path (``ImplicitManifold`` and SHAKE),
piece by piece, and what each choice of ``manifold_langevin.manifolds.base`` buys a molecule.

Times, on one CPU thread, in one process, contenders rotated within each repetition (medians):

- ``combination``: SHAKE's correction ``J^T lam`` (``J^T`` of shape ``(chains, N, m)``) by
  the two branches of ``small_systems.normal_combination``, one batched matmul and the sum of the
  ``m`` columns' broadcast products (each branch forced through the two thresholds), over a
  grid of chain counts, ``N`` and ``m``: the measurement behind ``COMBINATION_MIN_ENTRIES``
  and ``COMBINATION_MAX_COLUMNS``; both give the same bits;
- ``solves``: a batch of ``m x m`` systems by ``torch.linalg.solve_ex``, against its two halves,
  LAPACK's LU factorisation (``lu_factor_ex``) and the solve with it (``lu_solve``): what a
  matrix solved several times saves by keeping its factor (``small_factor``);
- ``steps``: the BAOAB step of the benchmarks' rigid trimer and 10-bead chain (two and nine
  bond constraints through ``ImplicitManifold``, float64) with Newton's and the frozen SHAKE,
  at a few molecule counts, in four variants: ``before`` (a batched matmul for ``J^T lam``
  past four columns, columns' sums up to four at any size, and ``solve_ex`` at every solve,
  the code before these choices), ``combination`` (the size rule only), ``factor`` (the kept
  LU factor only) and ``now`` (both, the library as it is). The variants are the library's
  functions with those two pieces swapped for the old ones while a step runs.

Run ``python -m validation.bench_constraint_algebra [--quick]``; writes
``bench_constraint_algebra.json`` to ``--out`` (default ``validation/results``; ``--quick``:
``<out>/quick``, a few seconds, numbers not meaningful).
"""

from __future__ import annotations

import contextlib
import itertools
from unittest import mock

import torch

from manifold_langevin.manifolds import base as mbase
from manifold_langevin.manifolds import small_systems as small
from validation import sampler_peers as peers
from validation.bench_optim import cpu_bench_cli, environment
from validation.bench_stiefel_geodesic import rotate

SETTINGS = {
    "full": {
        "reps": 9,
        "combination": ([1, 10, 30, 100, 300, 1_000, 4_000], [9, 30, 90], [2, 3, 4, 6, 9, 16, 24]),
        "solves": ([2, 3, 9], [10, 4_000]),
        "steps": [(3, 10), (3, 4_000), (10, 10), (10, 4_000)],
    },
    "quick": {
        "reps": 2,
        "combination": ([10, 300], [9], [2, 6]),
        "solves": ([3], [10]),
        "steps": [(3, 10)],
    },
}


def _columns(jac_t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The old code's column sums: a fresh tensor per product and per sum."""
    out = jac_t[..., 0:1] * lam[..., 0:1, :]
    for i in range(1, jac_t.shape[-1]):
        out = out + jac_t[..., i : i + 1] * lam[..., i : i + 1, :]
    return out


def combination_branch(branch: str):
    """Make ``small_systems.normal_combination`` take one branch at any size (``"matmul"`` or
    ``"columns"``), through its two thresholds (a context manager)."""
    entries, columns = (10**18, 0) if branch == "matmul" else (0, 10**9)
    return mock.patch.multiple(
        small, COMBINATION_MIN_ENTRIES=entries, COMBINATION_MAX_COLUMNS=columns
    )


def combination(chains: list[int], ns: list[int], ms: list[int], reps: int) -> list[dict]:
    """``J^T lam`` by the library's two branches, one batched matmul and the columns' sums
    (milliseconds per call), and the branch the library takes at that size."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b, n, m in itertools.product(chains, ns, ms):
        if m >= n:
            continue
        jac_t = torch.randn(b, m, n, dtype=torch.float64, generator=gen).transpose(-1, -2)
        lam = torch.randn(b, m, 1, dtype=torch.float64, generator=gen)
        calls = 1 + 20_000 // (b * n)  # calls per timing, for a measurable duration

        def library(branch, jac_t=jac_t, lam=lam, calls=calls):
            with combination_branch(branch):
                return [small.normal_combination(jac_t, lam) for _ in range(calls)]

        ms_ = rotate({k: (lambda k=k: library(k)) for k in ("matmul", "columns")}, reps)
        picks = m <= small.COMBINATION_MAX_COLUMNS and b * n >= small.COMBINATION_MIN_ENTRIES * m
        rows.append({
            "chains": b, "N": n, "m": m,
            "matmul_ms": 1e3 * ms_["matmul"] / calls,
            "columns_ms": 1e3 * ms_["columns"] / calls,
            "matmul_over_columns": ms_["matmul"] / ms_["columns"],
            "library_picks": "columns" if picks else "matmul",
        })  # fmt: skip
    return rows


def _solve_times(m: int, b: int, gen: torch.Generator, reps: int) -> dict:
    jac = torch.randn(b, m, 3 * m + 3, dtype=torch.float64, generator=gen)
    mat = jac @ jac.transpose(-1, -2)
    rhs = torch.randn(b, m, 1, dtype=torch.float64, generator=gen)
    lu, piv, _ = torch.linalg.lu_factor_ex(mat)
    calls = 1 + 20_000 // (b * m * m)
    contenders = {
        "solve_ex": lambda: torch.linalg.solve_ex(mat, rhs),
        "lu_factor_ex": lambda: torch.linalg.lu_factor_ex(mat),
        "lu_solve": lambda: torch.linalg.lu_solve(lu, piv, rhs),
    }
    t = rotate({k: (lambda f=f: [f() for _ in range(calls)]) for k, f in contenders.items()}, reps)
    return {"m": m, "systems": b, **{f"{k}_ms": 1e3 * v / calls for k, v in t.items()}}


def solves(ms: list[int], batches: list[int], reps: int) -> list[dict]:
    """``solve_ex`` against ``lu_factor_ex`` and ``lu_solve`` of Gram-like systems, ms."""
    gen = torch.Generator().manual_seed(1)
    return [_solve_times(m, b, gen, reps) for m, b in itertools.product(ms, batches)]


# ------------------------------------------------------------------ the code before
def _combination_before(jac_t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    m = jac_t.shape[-1]
    if m == 1:
        return jac_t * lam
    return jac_t @ lam if m > small.SHORT_ROW_MAX else _columns(jac_t, lam)


_factor_solve = small.factor_solve


def _factor_before(mat: torch.Tensor):
    m = mat.shape[-1]
    if m == 1:
        return torch.reciprocal(mat)
    if m == 2 and mat.numel() >= 4 * small.LU2_MIN_BATCH:
        return small._lu_2(mat)
    return ("solve_ex", mat)


def _solve_before(factor, rhs: torch.Tensor) -> torch.Tensor:
    if isinstance(factor, tuple) and factor[0] == "solve_ex":
        return torch.linalg.solve_ex(factor[1], rhs)[0]
    return _factor_solve(factor, rhs)


def variant(name: str):
    """Run the library with ``before``'s pieces swapped in, as the names the generic SHAKE and
    projection of ``manifolds.base`` call (a context manager): ``"before"`` both,
    ``"combination"`` the old solves, ``"factor"`` the old ``J^T lam``, ``"now"`` none."""
    swaps = {}
    if name in ("before", "factor"):
        swaps["normal_combination"] = _combination_before
    if name in ("before", "combination"):
        swaps.update(small_factor=_factor_before, factor_solve=_solve_before)
    return mock.patch.multiple(mbase, **swaps) if swaps else contextlib.nullcontext()


VARIANTS = ("before", "combination", "factor", "now")


def steps(cases: list[tuple[int, int]], reps: int) -> list[dict]:
    """The molecules' BAOAB step in the four variants (milliseconds per step); each variant
    runs its own sampler state, so that no point cache is shared."""
    rows = []
    for (beads, n), newton in itertools.product(cases, (True, "frozen")):
        k = 20 if n <= 100 else 2
        runs = {}
        for name in VARIANTS:
            with variant(name):
                run = peers.make_ml_molecule(n, beads, newton=newton)

            def call(run=run, name=name, k=k):
                with variant(name):
                    return run(k)

            runs[name] = call
        t = rotate(runs, reps)
        rows.append({
            "molecule": "trimer" if beads == 3 else f"chain{beads}",
            "molecules": n, "newton": newton,
            **{f"{v}_ms": 1e3 * t[v] / k for v in VARIANTS},
            "before_over_now": t["before"] / t["now"],
        })  # fmt: skip
    return rows


def run(quick: bool = False) -> dict:
    s = SETTINGS["quick" if quick else "full"]
    return {
        "benchmark": "bench_constraint_algebra",
        "quick": quick,
        "environment": environment(torch.device("cpu")),
        "combination_min_entries": small.COMBINATION_MIN_ENTRIES,
        "combination_max_columns": small.COMBINATION_MAX_COLUMNS,
        "combination": combination(*s["combination"], reps=s["reps"]),
        "solves": solves(*s["solves"], reps=s["reps"]),
        "steps": steps(s["steps"], s["reps"]),
    }


def _print(result: dict) -> None:
    for r in result["combination"]:
        print(
            f"J^T lam, {r['chains']:5d} chains, N {r['N']:3d}, m {r['m']:2d}: matmul / columns "
            f"{r['matmul_over_columns']:5.2f} (library: {r['library_picks']})"
        )
    for r in result["solves"]:
        print(
            f"{r['systems']:5d} systems {r['m']} x {r['m']}, ms: solve_ex {r['solve_ex_ms']:.3f}"
            f", lu_factor_ex {r['lu_factor_ex_ms']:.3f}, lu_solve {r['lu_solve_ms']:.3f}"
        )
    for r in result["steps"]:
        parts = ", ".join(f"{v} {r[f'{v}_ms']:.2f}" for v in VARIANTS)
        print(
            f"{r['molecule']} x {r['molecules']}, newton={r['newton']}: ms per step {parts} "
            f"(before / now {r['before_over_now']:.2f})"
        )


def main(argv: list[str] | None = None) -> int:
    result = cpu_bench_cli(
        argv, __doc__, "bench_constraint_algebra", run, "small sizes, two repetitions"
    )
    _print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
