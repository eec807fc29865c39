"""The sphere rotation's ``sin(wt) / w``: ``torch.sinc`` against the sine the rotation holds.

``Sphere.geodesic`` needs ``sin(wt) / w``, finite as ``w -> 0``. It can come from
``t * torch.sinc(wt / pi)`` or, since the rotation computes ``sin(wt)`` anyway, from
``t * sine_ratio(sin(wt), wt)`` (a comparison, a division and two selections). In one process, one
thread, float64, ``N_CHAINS`` angles (one per chain of the side-by-side S^2 run):

* ``kernels_us``: ``torch.sinc``, ``torch.sin`` and ``sine_ratio`` (given the sine) alone;
* ``step_us``: the library's eager BAOAB step on S^2 (``validation.sampler_peers.make_ml_s2``,
  the side-by-side contender ``ml_s2``) with ``sine_ratio`` (what ``Sphere`` runs) and with
  ``torch.sinc`` patched in (the earlier form), timed alternately; ``step_gain`` is the earlier
  step's time over the current one's.

Both forms give the same rotation to rounding (``tests/manifolds/test_sine_ratio.py``). Medians
of 400 timings of each kernel and of 15 alternating runs of 50 steps with each form.

Run ``python -m validation.bench_sphere_geodesic [--quick]``; writes
``bench_sphere_geodesic.json`` to ``--out`` (default ``validation/results``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from unittest import mock

import torch

from manifold_langevin.manifolds import sphere
from manifold_langevin.manifolds.elementary import sine_ratio
from validation import sampler_peers as peers
from validation.bench_optim import cpu_bench_cli, environment, median_us_each

__all__ = ["N_CHAINS", "main", "run"]

SCHEMA_VERSION = 1
#: chains of the S^2 run (the side-by-side reading's 10^4)
N_CHAINS = 10_000


def _sinc_ratio(sin: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The earlier form: ``sin(theta) / theta`` as ``torch.sinc(theta / pi)`` (``sin`` unused)."""
    return torch.sinc(theta / math.pi)


def kernels_us(n: int, reps: int) -> dict:
    """Microseconds of ``torch.sinc``, ``torch.sin`` and ``sine_ratio`` on ``n`` float64 angles."""
    gen = torch.Generator().manual_seed(0)
    theta = 0.05 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    sin = torch.sin(theta)
    fns = {
        "sinc": lambda: torch.sinc(theta / math.pi),
        "sin": lambda: torch.sin(theta),
        "sine_ratio": lambda: sine_ratio(sin, theta),
    }
    return median_us_each(fns, reps)


def step_us(n: int, steps: int, repeats: int) -> dict:
    """Microseconds per eager S^2 BAOAB step with each form, timed alternately (each form's
    calls counted, so that a patch that did not take raises)."""
    runs = {"sine_ratio": peers.make_ml_s2(n), "sinc": peers.make_ml_s2(n)}
    calls = dict.fromkeys(runs, 0)

    def counted(name, fn):
        def form(sin, theta):
            calls[name] += 1
            return fn(sin, theta)

        return form

    forms = {"sine_ratio": counted("sine_ratio", sine_ratio), "sinc": counted("sinc", _sinc_ratio)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats + 1):
        for name in runs:
            with mock.patch.object(sphere, "sine_ratio", forms[name]):
                start = time.perf_counter()
                runs[name](steps)
                seconds = time.perf_counter() - start
            if r:  # the first round warms up
                times[name].append(1e6 * seconds / steps)
    # each form ran in its own timings: two rotations per step
    assert all(c == 2 * steps * (repeats + 1) for c in calls.values()), calls
    return {name: statistics.median(t) for name, t in times.items()}


def run(quick: bool = False) -> dict:
    n = 100 if quick else N_CHAINS
    kernels = kernels_us(n, 20 if quick else 400)
    steps = step_us(n, 5 if quick else 50, 2 if quick else 15)
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_sphere_geodesic",
        "quick": quick,
        "n_chains": n,
        "environment": environment(torch.device("cpu")),
        "kernels_us": kernels,
        "step_us": steps,
        "step_gain": steps["sinc"] / steps["sine_ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    result = cpu_bench_cli(argv, __doc__, "bench_sphere_geodesic", run, "100 chains, few repeats")
    k, st = result["kernels_us"], result["step_us"]
    print(
        f"{result['n_chains']} angles, us: sinc {k['sinc']:.1f}, sin {k['sin']:.1f}, sine_ratio "
        f"{k['sine_ratio']:.1f}; S^2 step {st['sine_ratio']:.0f} (sinc: {st['sinc']:.0f}, "
        f"{result['step_gain']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
