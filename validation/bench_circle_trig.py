"""What bounds the compiled circle step: the cost of ``sin`` and ``cos`` in the fused loop.

``CoLA(compile=True)`` turns a circle update into one inductor loop over the weights. This
script compiles the same loop (the library's ``circle_kick_rotate``: kick, angular velocity,
rotation of point and momentum, renormalisation; then the bound on ``|w|``) with three ways of
getting ``cos(theta)`` and ``sin(theta)``:

* ``exact``: ``torch.cos`` / ``torch.sin`` (what CoLA uses);
* ``reduced_poly``: a float32-accurate replacement, branch-free so that it vectorises: the
  quadrant ``k = round(2 theta / pi)``, the remainder by a three-part Cody-Waite split of
  ``pi/2``, the minimax polynomials of Cephes' ``sinf`` / ``cosf`` on ``|r| <= pi/4``, and the
  quadrant's signs and swap in arithmetic;
* ``cheap_poly``: ``cos ~ 1 - theta^2/2``, ``sin ~ theta (1 - theta^2/6)``, NOT accurate (wrong
  for all but small angles): the loop's cost with almost free trigonometry, for reference;

and ``sgd``: ``torch.optim.SGD(momentum=0.9)`` on the same number of weights. Times are medians of
warm repeated calls on one thread (caches warm, unlike ``bench_optim``'s rotation). It also
reports the largest error of ``reduced_poly`` against float64 ``sin``/``cos`` over several angle
ranges. Run ``python -m validation.bench_circle_trig [--quick]``; writes
``bench_circle_trig.json`` to ``--out`` (default ``validation/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from manifold_langevin.integrators.circle_substeps import circle_kick_rotate
from validation.bench_optim import environment

__all__ = ["main", "reduced_cos_sin", "run"]

SCHEMA_VERSION = 1
#: pi/2 = P1 + P2 + P3, each part exactly representable with few mantissa bits (so k * P1 and
#: k * P2 are exact for |k| < 2^16)
_P1, _P2, _P3 = 1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8


def reduced_cos_sin(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` by quadrant reduction and Cephes' float32 polynomials, without branches."""
    k = torch.round(theta * (2.0 / math.pi))
    r = theta - k * _P1 - k * _P2 - k * _P3
    z = r * r
    s = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1)
    c4 = (2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2
    c = 1.0 - 0.5 * z + z * z * c4
    half = torch.floor(k * 0.5)
    odd = k - 2.0 * half  # k mod 2
    sign = 1.0 - 2.0 * (half - 2.0 * torch.floor(half * 0.5))  # (-1)^floor(k/2)
    return sign * (c - odd * (c + s)), sign * (s + odd * (c - s))


def _cheap_cos_sin(theta):
    z = theta * theta
    return 1.0 - 0.5 * z, theta * (1.0 - z / 6.0)


TRIG = {
    "exact": lambda t: (torch.cos(t), torch.sin(t)),
    "reduced_poly": reduced_cos_sin,
    "cheap_poly": _cheap_cos_sin,
}


def _loop(cos_sin):
    """The update ``CoLA(compile=True)`` compiles for a circle tensor at zero temperature (the
    library's :func:`circle_kick_rotate`, then the bound on ``|w|``), written into the state,
    with ``cos_sin`` in place of torch's ``cos`` and ``sin``."""

    def update(w, xi, pw, pxi, g, kick, t, radius, c1):
        new = circle_kick_rotate(w, xi, pw, pxi, g, kick, t, radius, c1, cos_sin=cos_sin)
        new = (torch.clamp(new[0], -radius, radius), *new[1:])
        for target, value in zip((w, xi, pw, pxi), new):
            target.copy_(value)

    return update


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def accuracy() -> list[dict]:
    """Largest absolute error of :func:`reduced_cos_sin` (float32) against float64."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bound in (1.0, 10.0, 1e3, 1e4):
        theta = (2 * torch.rand(10**6, generator=gen) - 1) * bound
        c, s = reduced_cos_sin(theta)
        t64 = theta.double()
        rows.append(
            {
                "range": bound,
                "cos_error": float((c.double() - torch.cos(t64)).abs().max()),
                "sin_error": float((s.double() - torch.sin(t64)).abs().max()),
                "torch_sin_error": float((torch.sin(theta).double() - torch.sin(t64)).abs().max()),
            }
        )
    return rows


def run(*, quick: bool = False, log=print) -> dict:
    n, reps = (10**4, 5) if quick else (10**6, 201)
    gen = torch.Generator().manual_seed(0)
    radius = 0.1
    w0 = (2 * torch.rand(n, generator=gen) - 1) * radius
    g = 1e-3 * torch.randn(n, generator=gen)
    # the numbers as 0-d tensors, as CoLA passes them (kick -h, rotation time (1 + c1) h / 2)
    h, c1 = 0.1, math.exp(-0.1)
    numbers = [torch.tensor(v) for v in (-h, 0.5 * (1.0 + c1) * h, radius, c1)]
    times = {}
    for name, cos_sin in TRIG.items():
        state = [w0.clone(), torch.sqrt(radius**2 - w0 * w0), 1e-3 * torch.ones(n), torch.zeros(n)]
        fn = torch.compile(_loop(cos_sin), dynamic=True)
        for _ in range(3):
            fn(*state, g, *numbers)
        times[name] = _median_ms(lambda fn=fn, state=state: fn(*state, g, *numbers), reps)
    p = torch.nn.Parameter(w0.clone())
    p.grad = g
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    for _ in range(3):
        sgd.step()
    times["sgd"] = _median_ms(sgd.step, reps)
    if log:
        for name, ms in times.items():
            log(f"{name:13s} {ms:8.3f} ms  ({ms / times['sgd']:.2f}x SGD)")
    acc = accuracy()
    if log:
        for a in acc:
            log(
                f"|theta| <= {a['range']:g}: reduced_poly errors cos {a['cos_error']:.2e} "
                f"sin {a['sin_error']:.2e} (torch.sin {a['torch_sin_error']:.2e})"
            )
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_circle_trig",
        "quick": quick,
        "n_weights": n,
        "reps": reps,
        "environment": environment(torch.device("cpu")),
        "median_ms": times,
        "accuracy": acc,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^4 weights, a few repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = args.out or Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(quick=args.quick)
    (out_dir / "bench_circle_trig.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out_dir / 'bench_circle_trig.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
