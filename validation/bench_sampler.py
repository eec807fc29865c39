"""Sampler throughput: chain-steps per second against the number of chains and the dimension.

Each configuration runs ``ml.Langevin(...).sample(x0, n_steps, observables=...)`` (BAOAB,
``h = 0.05``, ``gamma = 1``, ``tau = 1``, one observable averaged on the device, no thinning, no
traces for the diagnostics: ``trace_draws=0``, whose one-off cost at the end of a run is a fixed
cost per traced value, not a cost per step) and
reports ``n_chains * n_steps / wall time`` (median of ``repeats`` runs timed with
``time.perf_counter``; on CUDA the run ends with the sampler's own final host read, which waits for
the device). The number of steps is chosen so that one run does about ``work`` chain-steps times
the event size (at least ``min_steps``, at most ``max_steps``).

Sweeps (``SWEEPS``):

* ``chains``: the number of chains from 10 to 10^5 on the sphere S^2 (von Mises-Fisher potential
  ``-kappa mu.x``) and on the Stiefel manifold V(10, 3) (potential ``-tr(F^T X)``), the latter
  with its exact geodesic (the sampler's default, a ``6 x 6`` and a ``3 x 3`` matrix exponential
  per chain and step) and with RATTLE (``geodesic=False``: SHAKE plus projection);
* ``dimension``: 1000 chains on S^{d-1} for ``d`` from 3 to 1000, and on V(n, 3) for ``n`` from
  10 to 300.

The potential's gradient comes from autograd, as for a user's potential.

Side by side (sweep ``side_by_side``, contenders in ``validation.sampler_peers``, one process,
each timed as ``run(n_steps)`` of its own loop; float64 and float32, chain counts in
``SIDE_CHAINS``): on S^2 a hand-written NumPy BAOAB (the floor to beat), ``Sphere()`` and the
same sphere through ``ImplicitManifold``; SO(3) and V(10, 3) through ``Stiefel()``; the rigid
trimer and the 10-bead chain through ``ImplicitManifold`` (Newton's SHAKE, its quasi-Newton
and frozen old-point iterations, three Newton iterates with a kept matrix after them,
Newton's and the frozen iteration with the bonds' Jacobian supplied in closed form, and
``*_obabo``: the registered OBABO scheme instead of BAOAB, whose one A step per step is one
SHAKE solve, as in OpenMM's integrator, against BAOAB's two) against
OpenMM's Reference and CPU platforms (skipped, and said so in the JSON, when openmm is not
installed; its rows are labelled float64, OpenMM's own precision on those platforms).
``ratios`` in the JSON divide each contender's chain-steps/s by the reference's at the same
chain count and dtype (NumPy on S^2, ``Sphere()`` for the implicit sphere, compiled or not as
the contender is, the general-formula geodesic for SO(3) and V(10, 3), OpenMM Reference for the
molecules). With ``--side-by-side-only`` the outputs are
``bench_sampler_side.json`` and ``bench_sampler_side.png``.

Run ``python -m validation.bench_sampler [--quick] [--device D] [--side-by-side-only]
[--threads N]`` (one torch thread unless ``--threads`` says otherwise; ``0`` leaves torch's
own count); writes ``bench_sampler.json`` and ``bench_sampler.png`` to ``--out`` (default
``validation/results``, or ``validation/results/quick`` with ``--quick``, a run of a few
seconds whose numbers are not meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import manifold_langevin as ml
from validation import sampler_peers as peers
from validation.bench_optim import environment, timer

__all__ = ["SIDE_CHAINS", "SWEEPS", "main", "measure", "run", "side_by_side"]

SCHEMA_VERSION = 2

#: sweep name -> list of (manifold label, parameter values); see the module docstring
SWEEPS = {
    "full": {
        "chains": {
            "sphere_s2": [10, 100, 1_000, 10_000, 100_000],
            "stiefel_10x3": [10, 100, 1_000, 10_000, 100_000],
            "stiefel_10x3_rattle": [10, 100, 1_000, 10_000, 100_000],
        },
        "dimension": {
            "sphere": [3, 10, 30, 100, 300, 1000],
            "stiefel_nx3": [10, 30, 100, 300],
        },
    },
    "quick": {
        "chains": {"sphere_s2": [10, 100], "stiefel_10x3": [10, 100], "stiefel_10x3_rattle": [10]},
        "dimension": {"sphere": [3, 10], "stiefel_nx3": [10]},
    },
}
DIMENSION_CHAINS = {"full": 1000, "quick": 50}
#: (chain-steps x event size per run, min steps, max steps, repeats)
EFFORT = {"full": (2e7, 20, 400, 3), "quick": (2e4, 3, 10, 1)}


def _sampler(kind: str, dim: int, dtype, device) -> tuple[ml.Langevin, Callable]:
    """``(sampler, make_x0(n_chains))`` for a sphere S^{dim-1} or V(dim, 3)."""
    gen = torch.Generator().manual_seed(0)
    if kind == "sphere":
        mu = torch.zeros(dim, dtype=dtype)
        mu[0] = 1.0
        mu = mu.to(device)
        kappa = 2.0
        sampler = ml.Langevin(
            ml.Sphere(),
            potential=lambda x: -kappa * (x * mu).sum(-1),
            step_size=0.05,
            friction=1.0,
            temperature=1.0,
        )

        def x0(n):
            z = torch.randn(n, dim, generator=gen, dtype=dtype)
            return torch.nn.functional.normalize(z, dim=-1).to(device)

        return sampler, x0
    geodesic = None if kind == "stiefel" else False
    f = torch.randn(dim, 3, generator=gen, dtype=dtype).to(device)
    m = ml.Stiefel()
    sampler = ml.Langevin(
        m,
        potential=lambda x: -(x * f).sum((-2, -1)),
        step_size=0.05,
        friction=1.0,
        temperature=1.0,
        geodesic=geodesic,
    )

    def x0_st(n):
        return m.random(n, dim, 3, dtype=dtype, generator=gen).to(device)

    return sampler, x0_st


def measure(
    kind: str,
    dim: int,
    n_chains: int,
    *,
    mode: str = "full",
    dtype=torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Throughput of one configuration (see the module docstring)."""
    dev = torch.device(device)
    work, lo, hi, repeats = EFFORT[mode]
    event = dim if kind == "sphere" else dim * 3
    n_steps = int(min(hi, max(lo, work / (n_chains * event))))
    sampler, make_x0 = _sampler(kind, dim, dtype, dev)
    x0 = make_x0(n_chains)
    obs = {"x0": lambda x: x[..., 0] if kind == "sphere" else x[..., 0, 0]}
    gen = torch.Generator(device=dev).manual_seed(seed)
    # the step's throughput: without the diagnostics' one-off cost at the end of a run (a
    # fixed cost per traced value, see manifold_langevin.sampling.traces)
    kwargs = {"observables": obs, "generator": gen, "trace_draws": 0}
    sampler.sample(x0, 2, **kwargs)  # warm-up (allocations, autograd)
    # (CUDA events on a GPU, perf_counter on CPU: the same clock as bench_optim)
    clock, times, outs = timer(dev), [], []
    for _ in range(repeats):
        times.append(clock(lambda: outs.append(sampler.sample(x0, n_steps, **kwargs))))
    failures = sum(out.n_failures for out in outs)
    t = statistics.median(times)
    return {
        "manifold": kind,
        "dim": dim,
        "event_shape": [dim] if kind == "sphere" else [dim, 3],
        "n_chains": n_chains,
        "n_steps": n_steps,
        "seconds": t,
        "chain_steps_per_s": n_chains * n_steps / t,
        "us_per_step": 1e6 * t / n_steps,
        "n_failures": failures,
    }


#: side-by-side chain counts: (S^2 and Stiefel, molecules)
SIDE_CHAINS = {
    "full": ([1, 100, 10_000, 100_000], [1, 100, 4_000]),
    "quick": ([10], [4]),
}
#: (chain-steps per run, min steps, max steps, repeats) of the side-by-side timings
SIDE_EFFORT = {"full": (1e6, 5, 400, 3), "quick": (200, 2, 3, 1)}
#: label -> (family, reference label for the ratios)
SIDE_CONTENDERS = {
    "numpy_s2": ("s2", "numpy_s2"),
    "ml_s2": ("s2", "numpy_s2"),
    "ml_s2_implicit": ("s2", "ml_s2"),
    "ml_s2_implicit_quasi": ("s2", "ml_s2"),
    "ml_s2_implicit_newton3": ("s2", "ml_s2"),
    "ml_s2_implicit_jac": ("s2", "ml_s2"),
    "ml_so3": ("stiefel", "ml_so3_general"),
    "ml_so3_general": ("stiefel", "ml_so3_general"),
    "ml_stiefel_10x3": ("stiefel", "ml_stiefel_10x3_general"),
    "ml_stiefel_10x3_general": ("stiefel", "ml_stiefel_10x3_general"),
    "ml_s2_compiled": ("s2", "numpy_s2"),
    "ml_so3_compiled": ("stiefel", "ml_so3_general"),
    "ml_stiefel_10x3_compiled": ("stiefel", "ml_stiefel_10x3_general"),
    "ml_s2_implicit_compiled": ("s2", "ml_s2_compiled"),
    "ml_trimer": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_compiled": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_quasi": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_frozen": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_frozen_compiled": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_newton3": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_jac": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_frozen_jac": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_obabo": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_frozen_jac_obabo": ("trimer", "openmm_reference_trimer"),
    "ml_trimer_frozen_obabo_compiled": ("trimer", "openmm_reference_trimer"),
    "openmm_reference_trimer": ("trimer", "openmm_reference_trimer"),
    "openmm_cpu_trimer": ("trimer", "openmm_reference_trimer"),
    "ml_chain10": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_compiled": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_quasi": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_frozen": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_frozen_compiled": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_newton3": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_jac": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_frozen_jac": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_obabo": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_frozen_jac_obabo": ("chain10", "openmm_reference_chain10"),
    "ml_chain10_frozen_obabo_compiled": ("chain10", "openmm_reference_chain10"),
    "openmm_reference_chain10": ("chain10", "openmm_reference_chain10"),
    "openmm_cpu_chain10": ("chain10", "openmm_reference_chain10"),
}


#: the compiled contenders run at these chain counts only (each count and dtype is one
#: compilation, seconds to a minute): (S^2 and Stiefel, molecules), float64
COMPILED_CHAINS = {"full": (10_000, 4_000), "quick": (10, 4)}
#: in quick mode only this compiled contender runs (each compilation takes seconds)
QUICK_COMPILED = ("ml_s2_compiled",)


def _side_maker(label: str, n: int, dtype: torch.dtype, device: str):
    np_dtype = {torch.float64: "float64", torch.float32: "float32"}[dtype]
    compile = label.endswith("_compiled")
    label = label.removesuffix("_compiled")
    scheme = "OBABO" if label.endswith("_obabo") else "BAOAB"
    label = label.removesuffix("_obabo")
    user_jacobian = label.endswith("_jac")
    label = label.removesuffix("_jac")
    beads = 3 if "trimer" in label else 10
    if label == "numpy_s2":
        return peers.make_numpy_s2(n, dtype=np_dtype)
    if label == "ml_s2":
        return peers.make_ml_s2(n, dtype, device=device, compile=compile)
    newton = {"quasi": False, "frozen": "frozen", "newton3": 3}.get(label.rsplit("_", 1)[-1], True)
    if label.startswith("ml_s2_implicit"):
        return peers.make_ml_s2(
            n, dtype, implicit=True, device=device, compile=compile, newton=newton,
            user_jacobian=user_jacobian,
        )  # fmt: skip
    if label.startswith(("ml_so3", "ml_stiefel")):
        rows = 3 if label.startswith("ml_so3") else 10
        general = label.endswith("_general")
        return peers.make_ml_stiefel(
            n, rows, dtype=dtype, device=device, general=general, compile=compile
        )
    if label.startswith("ml_"):
        return peers.make_ml_molecule(
            n, beads, dtype, device=device, compile=compile, newton=newton,
            user_jacobian=user_jacobian, scheme=scheme,
        )  # fmt: skip
    platform = "Reference" if "reference" in label else "CPU"
    return peers.make_openmm_molecule(n, beads, platform)


#: profiler events that launch no computation (views, allocations, metadata)
_NOT_KERNELS = frozenset(
    "aten::" + n
    for n in (
        "empty empty_strided empty_like as_strided view expand select slice unsqueeze squeeze t "
        "transpose permute reshape alias detach lift_fresh _reshape_alias resolve_conj "
        "resolve_neg result_type unbind split chunk diagonal unflatten flatten _unsafe_view "
        "set_ item _local_scalar_dense is_nonzero"
    ).split()
)


def kernels_per_step(run_steps: Callable[[int], object], n_steps: int = 2) -> float:
    """Computing torch operations per step of ``run_steps`` (leaf ``aten::`` events of the
    profiler, views and allocations left out): the eager step's launch count, which bounds its
    speed where each launch costs more than its arithmetic."""
    from torch.profiler import profile

    with profile() as prof:
        run_steps(n_steps)
    leaves = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and not e.cpu_children and e.name not in _NOT_KERNELS
    ]
    return len(leaves) / n_steps


def side_by_side(
    mode: str = "full", device: str = "cpu", log: Callable[[str], None] | None = print
) -> dict:
    """The side-by-side sweep (module docstring): rows, ratios and the peers skipped."""
    skipped = {}
    missing = peers.openmm_available()
    rows = []
    work, lo, hi, repeats = SIDE_EFFORT[mode]
    chains, molecules = SIDE_CHAINS[mode]
    for dtype in (torch.float64, torch.float32):
        for label, (family, _) in SIDE_CONTENDERS.items():
            is_openmm = label.startswith("openmm")
            if is_openmm and (missing or dtype != torch.float64):
                if missing:
                    skipped[label] = missing
                continue  # OpenMM's precision is its own: measured once
            if label == "numpy_s2" and device != "cpu":
                continue
            counts = molecules if family in ("trimer", "chain10") else chains
            if label.endswith("_compiled"):
                if dtype != torch.float64 or (mode == "quick" and label not in QUICK_COMPILED):
                    continue
                counts = [COMPILED_CHAINS[mode][family in ("trimer", "chain10")]]
            for n in counts:
                n_steps = int(min(hi, max(lo, work / n)))
                run_steps = _side_maker(label, n, dtype, device)
                run_steps(2)  # warm-up
                clock, times = timer(torch.device(device)), []
                for _ in range(repeats):
                    times.append(clock(lambda f=run_steps, k=n_steps: f(k)))
                t = statistics.median(times)
                eager = label.startswith("ml_") and not label.endswith("_compiled")
                kernels = kernels_per_step(run_steps) if eager else None
                row = {
                    "sweep": "side_by_side",
                    "label": label,
                    "family": family,
                    "dtype": "float64" if is_openmm else str(dtype).replace("torch.", ""),
                    "n_chains": n,
                    "n_steps": n_steps,
                    "seconds": t,
                    "chain_steps_per_s": n * n_steps / t,
                    "torch_kernels_per_step": kernels,
                }
                rows.append(row)
                if log:
                    log(
                        f"side     {label:26s} {row['dtype']:8s} chains {n:7d} steps "
                        f"{n_steps:4d}: {row['chain_steps_per_s']:12.4g} chain-steps/s"
                    )
    return {
        "rows": rows,
        "ratios": _side_ratios(rows),
        "skipped": skipped,
        "normals": _normal_draw_times(chains[-2] if len(chains) > 1 else chains[0], repeats),
    }


def _normal_draw_times(n_chains: int, repeats: int) -> dict:
    """Microseconds to draw the ``n_chains x 3`` standard normals of one S^2 step (float64):
    ``torch.randn`` with a ``torch.Generator`` (what the library draws) against NumPy's
    ``Generator.standard_normal`` (what the NumPy loop draws), medians of 20 draws."""
    import numpy as np

    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    out = {"n_chains": n_chains}
    for name, draw in (
        ("torch_randn_us", lambda: torch.randn(n_chains, 3, dtype=torch.float64, generator=gen)),
        ("numpy_standard_normal_us", lambda: rng.standard_normal((n_chains, 3))),
    ):
        draw()
        times = []
        for _ in range(20 * repeats):
            t0 = time.perf_counter()
            draw()
            times.append(time.perf_counter() - t0)
        out[name] = 1e6 * statistics.median(times)
    return out


def _side_ratios(rows: list[dict]) -> list[dict]:
    """Each contender's chain-steps/s over its reference's at the same chains and dtype (OpenMM
    references are float64 only and serve both dtypes)."""
    speed = {(r["label"], r["dtype"], r["n_chains"]): r["chain_steps_per_s"] for r in rows}
    out = []
    for r in rows:
        ref = SIDE_CONTENDERS[r["label"]][1]
        if ref is None or ref == r["label"]:
            continue
        dtype = "float64" if ref.startswith("openmm") else r["dtype"]
        base = speed.get((ref, dtype, r["n_chains"]))
        if base:
            out.append(
                {
                    "label": r["label"],
                    "reference": ref,
                    "dtype": r["dtype"],
                    "n_chains": r["n_chains"],
                    "ratio": r["chain_steps_per_s"] / base,
                }
            )
    return out


def _kind(label: str) -> tuple[str, int | None]:
    return {
        "sphere_s2": ("sphere", 3),
        "stiefel_10x3": ("stiefel", 10),
        "stiefel_10x3_rattle": ("stiefel_rattle", 10),
        "sphere": ("sphere", None),
        "stiefel_nx3": ("stiefel", None),
    }[label]


def run(
    *,
    quick: bool = False,
    device: str = "cpu",
    dtype=torch.float32,
    log: Callable[[str], None] | None = print,
    side_only: bool = False,
) -> dict:
    """The sweeps (``side_only``: the side-by-side one alone); returns the JSON-ready record."""
    mode = "quick" if quick else "full"
    rows = []
    side = side_by_side(mode, device, log)
    for label, values in ({} if side_only else SWEEPS[mode]["chains"]).items():
        kind, dim = _kind(label)
        for n in values:
            r = measure(kind, dim, n, mode=mode, dtype=dtype, device=device)
            r.update(sweep="chains", label=label)
            rows.append(r)
            if log:
                log(_fmt(r))
    for label, values in ({} if side_only else SWEEPS[mode]["dimension"]).items():
        kind, _ = _kind(label)
        for d in values:
            r = measure(kind, d, DIMENSION_CHAINS[mode], mode=mode, dtype=dtype, device=device)
            r.update(sweep="dimension", label=label)
            rows.append(r)
            if log:
                log(_fmt(r))
    env = environment(torch.device(device))
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_sampler",
        "quick": quick,
        "dtype": str(dtype).replace("torch.", ""),
        "settings": {
            "scheme": "BAOAB",
            "step_size": 0.05,
            "friction": 1.0,
            "temperature": 1.0,
        },
        "environment": env,
        "load_average_at_end": list(os.getloadavg()),
        "rows": rows,
        "side_by_side": side,
    }


def _fmt(r: dict) -> str:
    shape = "x".join(map(str, r["event_shape"]))
    return (
        f"{r['sweep']:9s} {r['label']:20s} event {shape:7s} chains {r['n_chains']:7d} "
        f"steps {r['n_steps']:4d}: {r['chain_steps_per_s']:12.4g} chain-steps/s "
        f"({r['us_per_step']:9.1f} us/step, {r['n_failures']} failures)"
    )


def plot(result: dict, path: Path) -> None:
    """Log-log panels: throughput against chains, against the dimension, and the side-by-side
    contenders against chains (solid float64, dashed float32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    side = result.get("side_by_side", {}).get("rows", [])
    ax = axes[2]
    for i, label in enumerate(SIDE_CONTENDERS):
        for dtype, style in (("float64", "o-"), ("float32", "s--")):
            rows = [r for r in side if r["label"] == label and r["dtype"] == dtype]
            if rows:
                ax.plot(
                    [r["n_chains"] for r in rows],
                    [r["chain_steps_per_s"] for r in rows],
                    style,
                    color=f"C{i % 10}",
                    label=label if dtype == "float64" else None,
                )
    ax.set(xscale="log", yscale="log", xlabel="chains (molecules)", ylabel="chain-steps per s")
    ax.set_title("side by side (solid float64, dashed float32)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if side:
        ax.legend(fontsize=6)
    for ax, sweep, key, xlabel in (
        (axes[0], "chains", "n_chains", "number of chains"),
        (axes[1], "dimension", "dim", "ambient dimension d (S^{d-1}) or n (V(n, 3))"),
    ):
        labels = sorted({r["label"] for r in result["rows"] if r["sweep"] == sweep})
        for label in labels:
            rows = [r for r in result["rows"] if r["sweep"] == sweep and r["label"] == label]
            ax.plot(
                [r[key] for r in rows], [r["chain_steps_per_s"] for r in rows], "o-", label=label
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("chain-steps per second")
        ax.grid(True, which="both", alpha=0.3)
        if labels:
            ax.legend(fontsize=8)
    env = result["environment"]
    fig.suptitle(
        f"Langevin.sample throughput (BAOAB, {result['dtype']}, {env['device']}, "
        f"{env['threads']} threads)",
        fontsize=9,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sweeps, a few seconds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, as the documented numbers; 0: leave torch's own)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--side-by-side-only", action="store_true", help="only the side-by-side comparison"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out or Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(
        quick=args.quick,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        side_only=args.side_by_side_only,
    )
    stem = "bench_sampler_side" if args.side_by_side_only else "bench_sampler"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result, out_dir / f"{stem}.png")
    print(f"wrote {out_dir / f'{stem}.json'} and {out_dir / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
