"""What bounds the compiled circle step: the cost of ``sin`` and ``cos`` in the fused loop.

``CoLA(compile=True)`` turns a circle update into one inductor loop over the weights. This
script compiles the same loop (the library's ``baoa_step_circles`` at zero temperature: kick of
the angular velocity, one rotation with the renormalisation onto the radius, the bound on
``|w|``, the damping) with three ways of getting ``cos(theta)`` and ``sin(theta)``:

* ``exact``: the library's ``cos_sin``, which in a compiled loop is ``torch.cos`` /
  ``torch.sin`` (inductor's vectorised code);
* ``reduced_poly``: a float32-accurate replacement, branch-free so that it vectorises: the
  quadrant ``k = round(2 theta / pi)``, the remainder by a three-part Cody-Waite split of
  ``pi/2``, the minimax polynomials of Cephes' ``sinf`` / ``cosf`` on ``|r| <= pi/4``, and the
  quadrant's signs and swap in arithmetic;
* ``cheap_poly``: ``cos ~ 1 - theta^2/2``, ``sin ~ theta (1 - theta^2/6)``, NOT accurate (wrong
  for all but small angles): the loop's cost with almost free trigonometry, for reference;

and ``sgd``: ``torch.optim.SGD(momentum=0.9)`` on the same number of weights. Times are medians of
warm repeated calls on one thread (caches warm, unlike ``bench_optim``'s rotation). It also
reports the largest error of ``reduced_poly`` against float64 ``sin``/``cos`` over several angle
ranges.

The library function is compiled as it is, not copied: for a replacement, the rotation's
``cos_sin`` is patched (``unittest.mock.patch``, :func:`trig`) while ``torch.compile`` traces
it and while the compiled loop runs, so that dynamo inlines the replacement into the loop. After
timing each variant, :func:`check_replacement` verifies on large angles that the compiled loop
computes what the eager loop computes with the same ``sin`` and ``cos``, and that a
replacement's loop differs from the exact one by the polynomial's error; :func:`run` raises if
not.

It also times the eager step (``eager``, what the default ``CoLA`` runs) on one chunk of
``CHUNK`` weights, the unit its eager update works in, as the library runs it (NumPy's SIMD
float32 ``cos`` and ``sin``, see ``manifolds.elementary.cos_sin``) and with torch's ``sin`` and
``cos`` in their place, against those functions and an ``add`` on the same chunk: the share of
the trigonometry in the eager step, and what taking NumPy's saves.

Run ``python -m validation.bench_circle_trig [--quick]``; writes ``bench_circle_trig.json`` to
``--out`` (default ``validation/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from unittest import mock

import torch

from manifold_langevin.integrators.circle_substeps import baoa_step_circles
from manifold_langevin.manifolds.elementary import cos_sin as library_cos_sin
from manifold_langevin.optim.buckets import CHUNK
from validation.bench_optim import environment, median_ms, median_us_each, torch_trig

__all__ = ["TRIG", "check_replacement", "main", "reduced_cos_sin", "run", "trig"]

SCHEMA_VERSION = 1
#: circle radius of the benchmark
RADIUS = 0.1
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


#: ``name -> theta -> (cos theta, sin theta)`` in place of torch's (``None``: torch's own)
TRIG = {
    "exact": None,
    "reduced_poly": reduced_cos_sin,
    "cheap_poly": _cheap_cos_sin,
}


#: where the circle rotation takes its cosine and sine (patched by :func:`trig`)
_COS_SIN = "manifold_langevin.integrators.circle_substeps.cos_sin"


@contextlib.contextmanager
def trig(name: str):
    """The circle rotation's ``cos_sin`` replaced by ``TRIG[name]`` while active, in the eager
    loop and in what ``torch.compile`` traces (unchanged for ``"exact"``: the library's own,
    NumPy's functions eagerly on float32 CPU tensors, torch's in a compiled loop)."""
    cos_sin = TRIG[name]
    if cos_sin is None:
        yield
        return
    with mock.patch(_COS_SIN, lambda theta, sin_out=None: cos_sin(theta)):
        yield


def update(w, xi, omega, g, kick_h, h, c1, radius):
    """The update ``CoLA(compile=True)`` compiles for a circle tensor at zero temperature (the
    library's :func:`baoa_step_circles`, fused), written into the state."""
    new = baoa_step_circles(w, xi, omega, g, kick_h, h, c1, 0.0, radius, None, True)
    for target, value in zip((w, xi, omega), new):
        target.copy_(value)


def _numbers(dtype=torch.float32) -> list[torch.Tensor]:
    """The step's numbers as 0-d tensors, as CoLA passes them: the kick time ``h``, the step
    ``h``, ``c1 = exp(-h)`` and the radius (``h = 0.1``, radius 0.1)."""
    h, c1 = 0.1, math.exp(-0.1)
    return [torch.tensor(v, dtype=dtype) for v in (h, h, c1, RADIUS)]


def _large_angles(n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """A state on the circles with angular velocities whose rotation angles reach +-2.9 (the
    benchmark's own angles are about 1e-3, where even the inexact polynomial is exact)."""
    gen = torch.Generator().manual_seed(1)
    phi = (2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype)
    omega = (60 * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)).to(dtype)
    w, xi = RADIUS * torch.cos(phi), RADIUS * torch.sin(phi)
    return [w, xi, omega]


def _apply(fn, state, numbers) -> list[torch.Tensor]:
    out = [v.clone() for v in state]
    fn(*out, torch.zeros_like(out[0]), *numbers)
    return out


def _max_diff(a, b) -> float:
    """Largest difference of the tensors of ``a`` to those of ``b``, relative to each of ``b``'s
    largest entry."""
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def check_replacement(name: str, fn, n: int) -> dict:
    """Verify that the compiled loop ``fn`` of variant ``name`` used that variant's sin and cos.

    Call it right after timing ``fn``, before anything resets dynamo's caches, so that the
    float32 check runs the very kernel that was timed. On a state with large angles
    (:func:`_large_angles`), in float32 and in float64 (a second compilation under the same
    patch), the compiled loop must agree with the eager loop run with the same functions
    (relative differences, float32: 1e-5, float64: 1e-12), and a replacement's compiled loop
    must differ from the exact eager loop by more than ten times that: by its polynomial's
    error, of order 1 for ``cheap_poly`` and 1e-9 for ``reduced_poly`` (visible in float64 only:
    in float32 it is as accurate as torch's own ``sin`` and ``cos``).

    Returns:
        ``{dtype: [difference to the eager loop with the same functions, difference to the
        exact eager loop]}`` (largest differences in the new state, relative to its largest
        entries).

    Raises:
        RuntimeError: the compiled loop did not compute what its functions compute.
    """
    out = {}
    for dtype, agree in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        state, numbers = _large_angles(n, dtype), _numbers(dtype)
        exact = _apply(update, state, numbers)
        with trig(name):
            got = _apply(fn, state, numbers)
            same = _apply(update, state, numbers)
        d_same, d_exact = _max_diff(got, same), _max_diff(got, exact)
        out[str(dtype).removeprefix("torch.")] = [d_same, d_exact]
        visible = TRIG[name] is not None and (name == "cheap_poly" or dtype == torch.float64)
        if d_same > agree or (visible and d_exact <= 10 * agree):
            raise RuntimeError(
                f"the compiled loop {name!r} ({dtype}) does not compute its sin and cos: "
                f"{d_same:.2e} from the eager loop with the same functions, {d_exact:.2e} from "
                "the exact one"
            )
    return out


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


def eager_chunk(reps: int) -> dict:
    """Microseconds on one chunk of ``CHUNK`` float32 weights: the eager in-place circle step
    at zero temperature (CoLA's default path, Python numbers) as the library runs it (``step``)
    and with torch's ``sin`` and ``cos`` in place of NumPy's (``step_torch_trig``), the
    library's ``cos_sin``, ``torch.sin`` and ``torch.cos`` into a buffer, and an in-place
    ``add``, all in one rotation; ``trig_share`` is ``cos_sin / step`` and
    ``torch_trig_share`` ``(sin + cos) / step_torch_trig``."""
    gen = torch.Generator().manual_seed(1)
    w = (2 * torch.rand(CHUNK, generator=gen) - 1) * RADIUS
    state = [w, torch.sqrt(RADIUS**2 - w * w), 1e-2 * torch.ones(CHUNK)]
    g = 1e-3 * torch.randn(CHUNK, generator=gen)
    h = 0.1
    theta, out = 1e-3 * torch.randn(CHUNK, generator=gen), torch.empty(CHUNK)

    def step():
        baoa_step_circles(*state, g, h, h, math.exp(-h), 0.0, RADIUS, None, True, inplace=True)

    fns = {
        "step": step,
        "step_torch_trig": torch_trig(step),
        "cos_sin": lambda: library_cos_sin(theta, sin_out=out),
        "sin": lambda: torch.sin(theta, out=out),
        "cos": lambda: torch.cos(theta, out=out),
        "add": lambda: out.add_(theta),
    }
    us = median_us_each(fns, reps)
    return {
        "chunk": CHUNK,
        "us": us,
        "trig_share": us["cos_sin"] / us["step"],
        "torch_trig_share": (us["sin"] + us["cos"]) / us["step_torch_trig"],
    }


def run(*, quick: bool = False, log=print) -> dict:
    n, reps = (10**4, 5) if quick else (10**6, 201)
    gen = torch.Generator().manual_seed(0)
    radius = RADIUS
    w0 = (2 * torch.rand(n, generator=gen) - 1) * radius
    g = 1e-3 * torch.randn(n, generator=gen)
    numbers = _numbers()
    times, checks = {}, {}
    for name in TRIG:
        state = [w0.clone(), torch.sqrt(radius**2 - w0 * w0), 1e-2 * torch.ones(n)]
        torch._dynamo.reset()  # every variant from a fresh trace of the same function
        fn = torch.compile(update, dynamic=True)
        with trig(name):
            for _ in range(3):
                fn(*state, g, *numbers)
            times[name] = median_ms(lambda fn=fn, state=state: fn(*state, g, *numbers), reps)
        checks[name] = check_replacement(name, fn, n)
    p = torch.nn.Parameter(w0.clone())
    p.grad = g
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    for _ in range(3):
        sgd.step()
    times["sgd"] = median_ms(sgd.step, reps)
    if log:
        for name, ms in times.items():
            log(f"{name:13s} {ms:8.3f} ms  ({ms / times['sgd']:.2f}x SGD)")
        for name, by_dtype in checks.items():
            log(
                f"{name:13s} compiled loop on large angles, largest difference to the eager loop "
                "with the same sin/cos / to the exact loop: "
                + "; ".join(f"{k} {a:.1e} / {b:.1e}" for k, (a, b) in by_dtype.items())
            )
    eager = eager_chunk(reps)
    if log:
        u = eager["us"]
        log(
            f"eager step on a chunk of {CHUNK} weights {u['step']:.1f} us, its cos_sin "
            f"{u['cos_sin']:.1f} ({100 * eager['trig_share']:.0f}% of it); with torch's sin "
            f"{u['sin']:.1f} and cos {u['cos']:.1f} {u['step_torch_trig']:.1f} us "
            f"({100 * eager['torch_trig_share']:.0f}%); add {u['add']:.1f}"
        )
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
        "eager_chunk": eager,
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
