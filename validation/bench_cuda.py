"""GPU sampling throughput: eager steps against CUDA graphs, 10^3 to 10^7 chains.

Two problems, the side-by-side run's (``validation.sampler_peers``): BAOAB on the sphere S^2
with the von Mises-Fisher potential (``Sphere()``, gradient by autograd) and the rigid trimer
(two bond constraints through ``ImplicitManifold``, Newton's SHAKE, an angle potential). Each runs
``sampler.sample(x0, n, observables={one}, trace_draws=0, generator=...)`` (what a user runs,
recording every step), in the modes

* ``eager``: one launch per kernel;
* ``graph``: ``cuda_graph=True`` (the loop's body captured per setting, one launch per step);
* ``compiled``: ``compile={"dynamic": True}`` (inductor's fused kernels, the noise drawn eagerly;
  one compilation serves every chain count);
* ``compiled_graph``: both.

The time per step is the marginal one, ``(T(3n) - T(n)) / 2n`` for two runs of ``n`` and ``3n``
steps (medians of ``repeats`` pairs), so that the start-up (initial projection, captures,
compilation) drops out; ``n`` is sized from a probe run to make ``T(n)`` about
``TARGET_S`` seconds. ``chain_steps_per_s = n_chains / time per step``.

The bandwidth fraction puts each measurement against the device's copy bandwidth, measured in the
same process (a ``copy_`` of ``COPY_BYTES`` bytes, counting bytes read and written): a step that
only read and wrote the state once (``x``, ``p`` and the force: ``2 * 3 * event * itemsize``
bytes per chain) at that bandwidth is the floor; ``bandwidth_fraction`` is that floor's time
divided by the measured one.

Run ``python -m validation.bench_cuda [--quick] [--device cuda] [--budget-s S] [--out DIR]``;
writes ``bench_cuda.json`` after every measurement (a run stopped by its budget keeps what it
measured, and the JSON says which cases it left out) and ``bench_cuda.png``. Without CUDA the
graph modes are skipped and said so (``--quick`` on CPU checks the script, not the speed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import manifold_langevin as ml
from validation import sampler_peers as peers
from validation.bench_optim import environment

__all__ = ["CASES", "main", "measure", "run"]

SCHEMA_VERSION = 1
#: (problem, dtype, mode, chain counts), in the order they run (the budget cuts the tail)
CHAINS = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
CASES = [
    ("s2", "float32", "eager", CHAINS),
    ("s2", "float32", "graph", CHAINS),
    ("trimer", "float32", "eager", CHAINS),
    ("trimer", "float32", "graph", CHAINS),
    ("s2", "float32", "compiled_graph", CHAINS),
    ("s2", "float64", "eager", CHAINS),
    ("s2", "float64", "graph", CHAINS),
    ("trimer", "float64", "eager", CHAINS),
    ("trimer", "float64", "graph", CHAINS),
    ("s2", "float32", "compiled", CHAINS),
    ("trimer", "float32", "compiled_graph", CHAINS),
]
QUICK_CASES = [
    ("s2", "float64", "eager", [100]),
    ("s2", "float64", "graph", [100]),
    ("trimer", "float64", "eager", [100]),
]
#: seconds the first of the two timed runs should take; steps at least / at most
TARGET_S, MIN_STEPS, MAX_STEPS = 0.15, 4, 400
QUICK_STEPS = 3
#: the copy that measures the bandwidth (bytes of the source)
COPY_BYTES = 2 * 2**30
#: molecules whose start positions are built (larger counts repeat them: molecules do not
#: interact, so the repeats only share their starting point)
DISTINCT_MOLECULES = 100_000


#: (problem, dtype, device) -> sampler: one sampler per problem, so that its compiled step (kept
#: on the sampler) serves every chain count
_SAMPLERS: dict[tuple, ml.Langevin] = {}


def _problem(problem: str, n_chains: int, dtype: torch.dtype, device: torch.device):
    """``(sampler, x0, observables, event size)``."""
    key = (problem, dtype, str(device))
    if problem == "s2":
        if key not in _SAMPLERS:
            _SAMPLERS[key] = peers.ml_s2_sampler(dtype, device)
        gen = torch.Generator(device=device).manual_seed(0)
        z = torch.randn(n_chains, 3, generator=gen, dtype=dtype, device=device)
        x0 = torch.nn.functional.normalize(z, dim=-1)
        return _SAMPLERS[key], x0, {"z": lambda x: x[..., 2]}, 3
    if problem == "trimer":
        sampler, x0 = peers.ml_molecule_sampler(
            min(n_chains, DISTINCT_MOLECULES), 3, dtype=dtype, device=device
        )
        sampler = _SAMPLERS.setdefault(key, sampler)
        if n_chains > x0.shape[0]:
            x0 = x0.repeat(-(-n_chains // x0.shape[0]), 1)[:n_chains]
        return sampler, x0, {"angle": lambda x: peers.chain_angles(x, 3)[..., 0]}, 9
    raise ValueError(f"unknown problem {problem!r}")


def _sample_fn(sampler, x0, observables, device, mode):
    compile_opts = {"dynamic": True} if mode.startswith("compiled") else False
    graph = mode in ("graph", "compiled_graph")

    def run(n_steps: int) -> float:
        gen = torch.Generator(device=device).manual_seed(1)
        t0 = time.perf_counter()
        out = sampler.sample(
            x0,
            n_steps,
            observables=observables,
            generator=gen,
            trace_draws=0,
            compile=compile_opts,
            cuda_graph=graph,
        )
        elapsed = time.perf_counter() - t0  # the run ends with host reads of its totals
        if out.n_failures:
            raise RuntimeError(f"{out.n_failures} failed chain-steps: not a throughput run")
        return elapsed

    return run


def measure(
    problem: str,
    dtype: str,
    mode: str,
    n_chains: int,
    *,
    device: torch.device,
    repeats: int = 3,
    quick: bool = False,
    bandwidth: float | None = None,
) -> dict:
    """One row: the marginal time per step and what follows from it."""
    dt = getattr(torch, dtype)
    sampler, x0, observables, event = _problem(problem, n_chains, dt, device)
    run = _sample_fn(sampler, x0, observables, device, mode)
    t_probe0 = time.perf_counter()
    probe = run(QUICK_STEPS if quick else 4)  # compiles / captures, and sizes the runs
    startup = time.perf_counter() - t_probe0
    if quick:
        n = QUICK_STEPS
    else:
        per_step = run(8) / 8
        n = int(min(MAX_STEPS, max(MIN_STEPS, TARGET_S / max(per_step, 1e-9))))
    pairs = []
    for _ in range(1 if quick else repeats):
        t1, t3 = run(n), run(3 * n)
        pairs.append((t1, t3))
    marginal = statistics.median((t3 - t1) / (2 * n) for t1, t3 in pairs)
    whole = statistics.median(t3 / (3 * n) for _, t3 in pairs)
    per_step = marginal if marginal > 0 else whole
    itemsize = torch.empty((), dtype=dt).element_size()
    floor_bytes = 2 * 3 * event * itemsize * n_chains
    row = {
        "problem": problem,
        "dtype": dtype,
        "mode": mode,
        "n_chains": n_chains,
        "n_steps": [n, 3 * n],
        "repeats": len(pairs),
        "seconds_per_step": per_step,
        "seconds_per_step_whole_run": whole,
        "chain_steps_per_s": n_chains / per_step,
        "first_run_s": probe,
        "startup_s": startup,
        "state_bytes_read_and_written": floor_bytes,
    }
    if bandwidth:
        row["bandwidth_fraction"] = floor_bytes / bandwidth / per_step
    return row


def copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES) -> float | None:
    """Bytes read plus written per second by ``dst.copy_(src)`` (median of 10), CUDA only."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times[3:])


def _ratios(rows: list[dict]) -> dict:
    """Each mode's speed against eager at the same problem, dtype and chain count."""
    eager = {(r["problem"], r["dtype"], r["n_chains"]): r for r in rows if r["mode"] == "eager"}
    out = {}
    for r in rows:
        base = eager.get((r["problem"], r["dtype"], r["n_chains"]))
        if r["mode"] != "eager" and base is not None:
            key = f"{r['problem']}_{r['dtype']}_{r['mode']}_vs_eager"
            out.setdefault(key, {})[str(r["n_chains"])] = (
                r["chain_steps_per_s"] / base["chain_steps_per_s"]
            )
    return out


def run(
    *,
    device: str = "cuda",
    quick: bool = False,
    budget_s: float | None = None,
    out: Path | None = None,
    log=print,
) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    started = time.perf_counter()
    result = {
        "benchmark": "bench_cuda",
        "schema_version": SCHEMA_VERSION,
        "quick": quick,
        "environment": environment(dev),
        "method": {
            "timing": "marginal seconds per step from runs of n and 3n steps of sample()",
            "target_s": TARGET_S,
            "observables": "one per problem, every step recorded, trace_draws=0",
        },
        "copy_bandwidth_bytes_per_s": copy_bandwidth(dev),
        "rows": [],
        "skipped": [],
    }
    bandwidth = result["copy_bandwidth_bytes_per_s"]
    if bandwidth:
        log(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + written)")

    def save():
        result["ratios"] = _ratios(result["rows"])
        result["elapsed_s"] = time.perf_counter() - started
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench_cuda.json").write_text(json.dumps(result, indent=1) + "\n")

    for problem, dtype, mode, counts in QUICK_CASES if quick else CASES:
        for n in counts:
            label = f"{problem:7s} {dtype:8s} {mode:15s} {n:>9d} chains"
            if "graph" in mode and dev.type != "cuda":
                result["skipped"].append([problem, dtype, mode, n, "needs a CUDA device"])
                continue
            if budget_s is not None and time.perf_counter() - started > budget_s:
                result["skipped"].append([problem, dtype, mode, n, "out of the time budget"])
                continue
            try:
                row = measure(problem, dtype, mode, n, device=dev, quick=quick, bandwidth=bandwidth)
            except Exception as exc:  # a failed case is recorded, the run goes on
                first = str(exc).splitlines()[0][:300] if str(exc) else ""
                reason = f"{type(exc).__name__}: {first}"
                result["skipped"].append([problem, dtype, mode, n, reason])
                log(f"{label}: failed ({reason})")
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                save()
                continue
            result["rows"].append(row)
            frac = row.get("bandwidth_fraction")
            log(
                f"{label}: {row['chain_steps_per_s']:10.3e} chain-steps/s "
                f"({1e6 * row['seconds_per_step']:9.1f} us/step"
                + (f", {100 * frac:5.1f}% of copy bandwidth" if frac else "")
                + f", start-up {row['startup_s']:.1f} s)"
            )
            save()
    save()
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, problem in zip(axes, ("s2", "trimer")):
        rows = [r for r in result["rows"] if r["problem"] == problem]
        for key in sorted({(r["dtype"], r["mode"]) for r in rows}):
            pts = sorted((r["n_chains"], r["chain_steps_per_s"]) for r in rows
                         if (r["dtype"], r["mode"]) == key)  # fmt: skip
            ax.loglog(*zip(*pts), marker="o", label=f"{key[1]} {key[0]}")
        ax.set_title({"s2": "S^2, von Mises-Fisher (Sphere)", "trimer": "rigid trimer"}[problem])
        ax.set_xlabel("chains")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("chain-steps / s")
    gpu = result["environment"].get("gpu", result["environment"]["device"])
    fig.suptitle(f"sample() throughput on {gpu}: eager, CUDA graphs, compiled")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path("validation/results") / ("quick" if args.quick else "cuda")
    torch.set_num_threads(1)
    result = run(device=args.device, quick=args.quick, budget_s=args.budget_s, out=out)
    if result["rows"]:
        plot(result, out / "bench_cuda.png")
    print(f"wrote {out / 'bench_cuda.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
