"""What a user's ``.sum(-1)`` over a short last dimension costs on CPU, against explicit additions
and in the samplers' chain-minor layout.

A potential or constraint written for many chains at once sums over short rows: the three
coordinates of a point on S^2, the nine of a rigid trimer. torch's CPU reduction handles a short
contiguous last dimension row by row, and for 10^4 rows of three it is several times slower
than the two elementwise additions ``t[..., 0] + t[..., 1] + t[..., 2]`` (what the library's
own closed forms use, ``manifold_langevin.manifolds.small_systems.row_sum``). The samplers
store such points with the chains as the fastest-varying dimension
(``manifold_langevin.integrators.base.chain_minor``), where the same ``sum(-1)`` adds whole
rows of chains. This script times the three, and a constraint ``(t * t).sum(-1)`` with its
autograd gradient in both layouts, on one CPU thread, for a few shapes and dtypes, and checks
that they agree.

The layout does not help a sum over a short dimension *inside* the event: a molecule's points
``(chains, 3 k)`` seen as ``(chains, k, 3)`` (``unflatten``) and summed over the three
coordinates of each atom or bond. The result ``(chains, k)`` is allocated row-major whatever
the input's layout, so torch's reduction runs a poor loop order in both; ``bond_rows`` times it
against the explicit additions.

Run ``python -m validation.bench_short_sums [--quick]``; writes ``bench_short_sums.json`` to
``--out`` (default ``validation/results``; ``--quick``: ``<out>/quick``, a run of a second whose
numbers are not meaningful).
"""

from __future__ import annotations

import torch

from manifold_langevin.integrators.base import chain_minor
from validation.bench_optim import cpu_bench_cli, environment, median_ms

SHAPES = {"full": [(10_000, 3), (100_000, 3), (10_000, 9)], "quick": [(1_000, 3)]}
#: (chains, atoms) of the sums over each atom's three coordinates
BOND_SHAPES = {"full": [(4_000, 3), (4_000, 10)], "quick": [(400, 3)]}
REPS = {"full": 301, "quick": 11}


def explicit_sum(t: torch.Tensor) -> torch.Tensor:
    """``t[..., 0] + t[..., 1] + ...``: the additions a user can write for a short row."""
    out = t[..., 0]
    for i in range(1, t.shape[-1]):
        out = out + t[..., i]
    return out


def _constraint_and_gradient(t: torch.Tensor, shape=None, total=None) -> torch.Tensor:
    """The gradient by autograd of the squared lengths ``total(a * a)`` of ``a = t`` (or
    ``t.unflatten(-1, shape)``, the atoms' vectors of a molecule: the pattern of a bond
    constraint's Jacobian row); ``total`` defaults to ``sum(-1)``, which makes it the sphere's
    constraint ``(t * t).sum(-1)`` that an ``ImplicitManifold`` Newton iterate differentiates."""
    x = t.detach().requires_grad_(True)
    a = x if shape is None else x.unflatten(-1, shape)
    out = (a * a).sum(-1) if total is None else total(a * a)
    return torch.autograd.grad(out, x, torch.ones_like(out))[0]


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
            minor = chain_minor(t, 1)
            agree = agree and bool(
                (minor.sum(-1) - a).abs().max() <= n * torch.finfo(dtype).eps * scale
            )
            sum_us = _median_us(lambda t=t: t.sum(-1), REPS[mode])
            add_us = _median_us(lambda t=t: explicit_sum(t), REPS[mode])
            minor_us = _median_us(lambda t=minor: t.sum(-1), REPS[mode])
            grad_us = _median_us(lambda t=t: _constraint_and_gradient(t), REPS[mode])
            grad_minor_us = _median_us(lambda t=minor: _constraint_and_gradient(t), REPS[mode])
            rows.append({
                "dtype": str(dtype).removeprefix("torch."), "rows": n_rows, "n": n,
                "sum_us": sum_us, "additions_us": add_us, "ratio": sum_us / add_us,
                "sum_chain_minor_us": minor_us, "chain_minor_ratio": sum_us / minor_us,
                "constraint_grad_us": grad_us, "constraint_grad_chain_minor_us": grad_minor_us,
                "agree": agree,
            })  # fmt: skip
    return {
        "benchmark": "bench_short_sums",
        "quick": quick,
        "threads": torch.get_num_threads(),
        "environment": environment(torch.device("cpu")),
        "rows": rows,
        "bond_rows": bond_rows(mode),
    }


def bond_rows(mode: str) -> list[dict]:
    """``x.unflatten(-1, (k, 3)).sum(-1)`` for points ``(chains, 3 k)``, row-major and
    chain-minor, against the explicit additions over the last dimension, alone and with the
    autograd gradient of the squared lengths (``*_grad_us``; microseconds)."""
    rows = []
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float64, torch.float32):
        for n_rows, atoms in BOND_SHAPES[mode]:
            x = torch.randn(n_rows, 3 * atoms, generator=gen, dtype=dtype)
            layouts = {"": x, "_chain_minor": chain_minor(x, 1)}
            shape = (atoms, 3)
            reference = x.unflatten(-1, shape).sum(-1)
            tol = 9 * torch.finfo(dtype).eps * float(x.abs().max())
            row = {"dtype": str(dtype).removeprefix("torch."), "rows": n_rows, "atoms": atoms}
            agree = True
            for suffix, t in layouts.items():
                points = t.unflatten(-1, shape)
                agree = agree and float((explicit_sum(points) - reference).abs().max()) <= tol
                row[f"sum{suffix}_us"] = _median_us(lambda p=points: p.sum(-1), REPS[mode])
                row[f"additions{suffix}_us"] = _median_us(
                    lambda p=points: explicit_sum(p), REPS[mode]
                )
                for name, total in (("sum", lambda p: p.sum(-1)), ("additions", explicit_sum)):
                    row[f"{name}{suffix}_grad_us"] = _median_us(
                        lambda t=t, f=total, s=shape: _constraint_and_gradient(t, s, f), REPS[mode]
                    )
            row["agree"] = agree
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    result = cpu_bench_cli(
        argv, __doc__, "bench_short_sums", run, "one small shape, a few repetitions"
    )
    for r in result["rows"]:
        print(
            f"{r['dtype']:8s} {r['rows']:7d} x {r['n']}: sum(-1) {r['sum_us']:8.1f} us, "
            f"additions {r['additions_us']:7.1f} us ({r['ratio']:.1f}x), chain-minor sum(-1) "
            f"{r['sum_chain_minor_us']:7.1f} us ({r['chain_minor_ratio']:.1f}x); constraint and "
            f"gradient {r['constraint_grad_us']:7.1f} us, chain-minor "
            f"{r['constraint_grad_chain_minor_us']:7.1f} us; agree {r['agree']}"
        )
    for r in result["bond_rows"]:
        print(
            f"{r['dtype']:8s} {r['rows']:7d} x {r['atoms']} x 3: sum(-1) {r['sum_us']:7.1f} us, "
            f"chain-minor {r['sum_chain_minor_us']:7.1f} us; additions "
            f"{r['additions_us']:7.1f} us, chain-minor {r['additions_chain_minor_us']:7.1f} us; "
            f"with the gradient: sum {r['sum_grad_us']:7.1f} / {r['sum_chain_minor_grad_us']:7.1f} "
            f"us, additions {r['additions_grad_us']:7.1f} / "
            f"{r['additions_chain_minor_grad_us']:7.1f} us; agree {r['agree']}"
        )
    if not all(r["agree"] for r in result["rows"] + result["bond_rows"]):
        raise RuntimeError("the sums differ beyond rounding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
