"""Optimizer-step benchmark: CoLA against its peers on the same tensors, as ratios in one process.

Every case builds each method on its own copy of the same tensors (same start values, same fixed
gradients), warms them up, then times one step of each method in turn, ``reps`` times, rotating the
order every repetition so that slow drifts of the machine (other processes, thermal state) hit all
methods alike. The statistic is the median over repetitions (with the quartiles); ratios are
ratios of medians measured in the same run. On CPU a step is timed with ``time.perf_counter``; on
CUDA with a pair of CUDA events around the step and a synchronisation after it.

Cases (``CASES``):

* ``circle_1e6``: the circle constraint on 10^6 weights (one flat tensor, radius 0.1). Baseline
  ``torch.optim.SGD(momentum=0.9)``; peers ``geoopt.optim.RiemannianSGD`` on the same weights
  as ``(N, 2)`` points of ``geoopt.Sphere`` (momentum 0.9); CoLA eager (``cola``: the default,
  with its one finiteness sync; ``cola_mask``: sync-free, ``on_nonfinite="mask"``, which on
  CPU reads one sum per chunk of angles and selects entry by entry only where one is not finite;
  ``cola_mask_everywhere``: the same selecting in every chunk, the path of an accelerator;
  ``cola_torch_trig``: the default with torch's ``sin`` and ``cos`` where float32 on CPU takes
  NumPy's, ``manifolds.elementary.cos_sin``), eager at
  temperature 1e-4 (``cola_noisy``: the default ``fuse=True``, one rotation per step with one
  normal per weight; ``cola_noisy_unfused``: rotate, O, rotate) and ``CoLA(compile=True)`` with
  and without the sync; ``normal_draws``: the one normal per weight of the noisy step alone.
* ``circle_mlp``: the same on the 784-1000-10 MLP of the paper's E2 (both weight matrices circle
  constrained with the paper's radii, biases free).
* ``ortho_1024x1024``, ``ortho_512x4608`` (a wide conv-like kernel ``(out, in*kh*kw)``: CoLA keeps
  its rows orthonormal and works on the ``4608 x 512`` transpose), ``ortho_512x128``: one
  orthogonal weight. CoLA (``lr = 0.1``, ``friction = 1``, ``tau = 0``); ``paper``: the same CoLA
  step with the released scripts' SHAKE (``validation.baselines.PaperStiefel``: 10 fixed
  iterations ``Y <- Y - T (Y^T Y - I)/2`` on the ``N x p`` matrices); ``paper_released``: the
  released o-CoLA step's own sequence of operations (momentum projection after the O step and
  after the B step, 10 SHAKE iterations, RATTLE projection: 29 ``N x p x p`` products), written
  here from that description; geoopt's ``RiemannianSGD`` (momentum 0.9) on ``EuclideanStiefel`` (QR
  retraction) and ``CanonicalStiefel`` (Cayley retraction) with the tall form as the parameter.
  Each time is also given in *matmul-equivalents*: the step's time divided by the time of one
  ``(N x p) @ (p x p)`` product of the same dtype (``N x p`` the tall form), timed in the same
  rotation.
  Each orthogonal case also times both at temperature 1e-4 (``cola_noisy``, ``paper_noisy``:
  two RATTLE steps and a projected Gaussian per step); ``ortho_512x512`` is the square case.
* ``train_ortho_1024``: a whole training iteration (zero_grad, forward, backward, step) of
  ``Linear(1024, 1024, bias=False) -> tanh -> Linear(1024, 10)`` on a batch of 128 with a
  cross-entropy loss, the first weight orthogonal: CoLA; ``torch.nn.utils.parametrizations
  .orthogonal`` (``"cayley"`` and the default map, ``matrix_exp`` for a square weight) with
  ``SGD(momentum=0.9)``; geoopt ``RiemannianSGD`` with the weight a ``ManifoldParameter`` on
  ``EuclideanStiefel``; plain unconstrained SGD for reference.

The performance targets set for CoLA (``TARGETS``: the circle step within 3x SGD's; on the E2
network the default step within 4x SGD's at zero temperature and 6x at 1e-4, the sync-free mode
no slower than the default; the orthogonal
step within 12 matmul-equivalents, 3x faster than the paper's SHAKE and no slower than geoopt's,
the training iteration 2x faster than the Cayley parametrization) are evaluated on the measured
ratios and reported as met or not; nothing here asserts a timing.

Run ``python -m validation.bench_optim [--quick] [--case NAME ...] [--device D]``; writes
``bench_optim.json`` and ``bench_optim.png`` to ``--out`` (default ``validation/results``, or
``validation/results/quick`` with ``--quick``). ``--quick`` shrinks every size and repetition
count and leaves out the compiled variants (their compilation takes seconds) so that the whole
run takes a few seconds (its numbers are not meaningful).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import geoopt
import torch
from tqdm.auto import tqdm

from manifold_langevin import _host_reads
from manifold_langevin.manifolds import elementary
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_
from validation.baselines import PaperStiefel

__all__ = [
    "CASES",
    "TARGETS",
    "Case",
    "host_reads_off",
    "main",
    "median_ms",
    "run",
    "time_methods",
    "torch_trig",
]

SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its duration in seconds.

    CPU: ``time.perf_counter`` around the call. CUDA: two CUDA events recorded around the call on
    the current stream, then a synchronisation, so the time is the device time of the work the
    call enqueued (host overhead included where it stalls the stream).
    """
    if device.type == "cuda":

        def run_cuda(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return run_cuda

    def run_cpu(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run_cpu


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls of ``fn`` on the CPU, in milliseconds (the caller
    warms up; for the micro-benchmarks that time one function on its own)."""
    run = timer(torch.device("cpu"))
    return 1e3 * statistics.median(run(fn) for _ in range(reps))


def median_us_each(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 10) -> dict:
    """Name -> median microseconds of ``reps`` calls of each of ``fns`` (one after the other,
    each after ``warmup`` calls of its own): the micro-benchmarks' table of kernels."""
    out = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        out[name] = 1e3 * median_ms(fn, reps)
    return out


def time_methods(
    methods: dict[str, Callable[[], object]],
    reps: int,
    warmup: int,
    device: torch.device,
    budget_s: float | None = None,
    label: str | None = None,
) -> dict[str, list[float]]:
    """Time one call of each method per repetition, rotating the order; seconds per call.

    Args:
        methods: name -> zero-argument callable (one optimizer step, one training iteration...).
        reps: repetitions (each method is called once per repetition).
        warmup: untimed calls of each method first.
        device: where the work runs (selects the timer).
        budget_s: stop early (after at least 5 repetitions) once this much time has passed.
        label: show a progress bar over the repetitions (on stderr) with this description.
    """
    clock = timer(device)
    names = list(methods)
    for name in names:
        for _ in range(warmup):
            methods[name]()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    bar = tqdm(total=reps, desc=label, unit="rep", leave=False, disable=label is None)
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(clock(methods[name]))
        bar.update()
        if budget_s is not None and r >= 4 and time.perf_counter() - start > budget_s:
            break
    bar.close()
    return times


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(ordered),
        "q1_ms": 1e3 * q[0],
        "q3_ms": 1e3 * q[2],
        "min_ms": 1e3 * ordered[0],
        "n": len(ordered),
    }


# ---------------------------------------------------------------------------- cases
@dataclass
class Case:
    """A benchmark case: methods to time against a baseline.

    Attributes:
        name: case name.
        description: one line.
        baseline: the method ratios are taken against.
        methods: name -> callable (built by the case's builder).
        unit: name of a reference method (``"matmul"``) whose time defines matmul-equivalents,
            or ``None``.
        info: sizes and settings, copied into the JSON.
    """

    name: str
    description: str
    baseline: str
    methods: dict[str, Callable[[], object]]
    unit: str | None = None
    info: dict = field(default_factory=dict)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _param(t: torch.Tensor, device, dtype) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.to(device=device, dtype=dtype).clone())


def _circle_weights(n: int, radius: float, seed: int) -> torch.Tensor:
    return (2.0 * torch.rand(n, generator=_seeded(seed), dtype=torch.float64) - 1.0) * radius


def _sphere_points(w: torch.Tensor, radius: float) -> torch.Tensor:
    """``(w, sqrt(r^2 - w^2)) / r``: the circle points of the weights on the unit circle."""
    xi = torch.sqrt((radius * radius - w * w).clamp_min(0.0))
    return torch.stack([w, xi], dim=-1) / radius


#: the temperature of the noisy circle variants (the paper's c-CoLA-ud range)
NOISY_TAU = 1e-4


def _cola_variants(make: Callable[..., CoLA], compiled: bool) -> dict[str, Callable[[], object]]:
    """The steps of eager CoLA (the default, and the same with torch's ``sin`` and ``cos``;
    sync-free ``on_nonfinite="mask"``, and the same with the device-generic selection in every
    chunk), at temperature :data:`NOISY_TAU` (the default ``fuse=True``: one rotation per step;
    and ``fuse=False``: rotate, O, rotate), and (``compiled``) ``compile=True`` with and without
    the finiteness sync."""
    out = {
        "cola": make().step,
        "cola_torch_trig": torch_trig(make().step),
        "cola_mask": make(on_nonfinite="mask").step,
        "cola_mask_everywhere": _selecting_everywhere(make(on_nonfinite="mask").step),
        "cola_noisy": make(temperature=NOISY_TAU).step,
        "cola_noisy_unfused": make(temperature=NOISY_TAU, fuse=False).step,
    }
    if compiled:
        out["cola_compiled"] = make(compile=True).step
        out["cola_compiled_nosync"] = make(compile=True, on_nonfinite="mask").step
    return out


def _patched(step: Callable[..., object], module, name: str, value) -> Callable[..., object]:
    """``step`` run with ``module.name`` set to ``value`` (restored after each call; the
    arguments are passed on)."""

    def run(*args, **kwargs):
        with mock.patch.object(module, name, value):
            return step(*args, **kwargs)

    return run


def host_reads_off(step: Callable[..., object]) -> Callable[..., object]:
    """``step`` on the device-generic paths of an accelerator, which read no value on the host
    where on CPU a read is free (``manifold_langevin._host_reads``)."""
    return _patched(step, _host_reads, "HOST_READABLE_DEVICES", ())


def _selecting_everywhere(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` with the sync-free circle update of an accelerator, which selects entry by
    entry in every chunk, where on CPU it selects only in a chunk with a non-finite angle."""
    return host_reads_off(step)


def torch_trig(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` with torch's ``cos`` and ``sin`` for every angle, where on CPU float32 angles
    take NumPy's (the same step on an accelerator or in float64)."""
    return _patched(step, elementary, "numpy_trig_applies", lambda theta: False)


def _normal_draws(n: int, device, dtype) -> Callable[[], object]:
    """One standard normal per circle weight from a seeded generator: what the noisy circle step
    draws, timed alone (the floor of ``cola_noisy`` above the zero-temperature step)."""
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda: torch.randn(n, generator=gen, device=device, dtype=dtype)


def case_circle_flat(
    n: int, device, dtype, radius: float = 0.1, lr: float = 0.1, compiled: bool = True
) -> Case:
    """Circle constraint on ``n`` weights in one flat tensor."""
    w0 = _circle_weights(n, radius, seed=0)
    g0 = 1e-3 * torch.randn(n, generator=_seeded(1), dtype=torch.float64)
    methods: dict[str, Callable[[], object]] = {}

    p = _param(w0, device, dtype)
    p.grad = g0.to(device=device, dtype=dtype)
    methods["sgd_momentum"] = torch.optim.SGD([p], lr=lr, momentum=0.9).step

    q = geoopt.ManifoldParameter(
        _sphere_points(w0, radius).to(device=device, dtype=dtype), manifold=geoopt.Sphere()
    )
    q.grad = torch.stack([g0, torch.zeros_like(g0)], dim=-1).to(device=device, dtype=dtype)
    methods["geoopt_sphere"] = geoopt.optim.RiemannianSGD([q], lr=lr, momentum=0.9).step

    def make(**kw):
        c = _param(w0, device, dtype)
        c.grad = g0.to(device=device, dtype=dtype)
        return CoLA([c], lr=lr, friction=1.0, constraint="circle", radius=radius, **kw)

    methods.update(_cola_variants(make, compiled))
    methods["normal_draws"] = _normal_draws(n, device, dtype)
    return Case(
        name="circle_1e6" if n == 10**6 else f"circle_{n}",
        description=f"circle constraint on {n} weights (one tensor)",
        baseline="sgd_momentum",
        methods=methods,
        info={"n_weights": n, "radius": radius, "lr": lr},
    )


def _mlp(sizes, seed, device, dtype) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def case_circle_mlp(sizes, device, dtype, lr: float = 0.1, compiled: bool = True) -> Case:
    """Circle constraint on an MLP's weights (the paper's radii), biases free."""
    base = _mlp(sizes, 0, device, dtype)
    grads = {
        name: 1e-3 * torch.randn(p.shape, generator=_seeded(i), dtype=torch.float64)
        for i, (name, p) in enumerate(base.named_parameters())
    }

    def clone_model():
        m = _mlp(sizes, 0, device, dtype)
        constrained_groups(m, "circle")  # the same clipping of the weights into their radii
        for name, p in m.named_parameters():
            p.grad = grads[name].to(device=device, dtype=dtype)
        return m

    methods: dict[str, Callable[[], object]] = {}
    m_sgd = clone_model()
    methods["sgd_momentum"] = torch.optim.SGD(m_sgd.parameters(), lr=lr, momentum=0.9).step

    m_geo = clone_model()
    groups = constrained_groups(m_geo, "circle")
    geo_params = []
    for group in groups:
        for name, p in zip(group.get("param_names", []), group["params"]):
            if group.get("constraint") == "circle":
                r = float(group["radius"])
                mp = geoopt.ManifoldParameter(
                    _sphere_points(p.detach().double().reshape(-1), r).to(device, dtype),
                    manifold=geoopt.Sphere(),
                )
                g = grads[name].reshape(-1)
                mp.grad = torch.stack([g, torch.zeros_like(g)], dim=-1).to(device, dtype)
                geo_params.append(mp)
            else:
                geo_params.append(p)
    methods["geoopt_sphere"] = geoopt.optim.RiemannianSGD(geo_params, lr=lr, momentum=0.9).step

    def make(**kw):
        m = clone_model()
        return CoLA(constrained_groups(m, "circle"), lr=lr, friction=1.0, **kw)

    methods.update(_cola_variants(make, compiled))
    n_weights = sum(p.numel() for p in base.parameters() if p.dim() >= 2)
    methods["normal_draws"] = _normal_draws(n_weights, device, dtype)
    return Case(
        name="circle_mlp",
        description=f"circle constraint on the {'-'.join(map(str, sizes))} MLP",
        baseline="sgd_momentum",
        methods=methods,
        info={"sizes": list(sizes), "n_weights": n_weights, "lr": lr, "radii": [0.05, 0.1]},
    )


def _released_step_factory(w: torch.Tensor, grad: torch.Tensor, lr: float, c1: float):
    """The released o-CoLA step's sequence of operations (tall ``N x p`` weight), 29 products.

    O step ``b <- c1 b`` and projection ``b <- b - W (b^T W + W^T b)/2``; B step ``b <- b - g``
    and projection; A step ``W <- W + lr b`` followed by 10 iterations
    ``W <- W - W_old (W^T W - I)/2``; RATTLE ``b <- b + (W - W_first)/lr`` and projection. (No
    noise, no tolerance check: the cost structure of the scripts, for timing.)
    """
    buf = torch.zeros_like(w)
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)

    def project(b, x):
        b.sub_(0.5 * (x @ (b.mT @ x + x.mT @ b)))

    def step():
        old = w.detach().clone()
        buf.mul_(c1)
        project(buf, old)
        buf.sub_(grad)
        project(buf, old)
        w.add_(buf, alpha=lr)
        first = w.detach().clone()
        for _ in range(10):
            w.sub_(0.5 * (old @ (w.mT @ w - eye)))
        buf.add_((w - first) / lr)
        project(buf, w)

    return step


def _compiled_step(
    opt: CoLA, before: Callable[[], object] | None = None, mode: str | None = None
) -> Callable[[], None]:
    """``torch.compile(opt.step, mode=mode)`` (inductor), warmed up: one eager step (the first
    step of a parameter reads its residual on the host, by design), then compiled steps until
    the step counter has turned dynamic (one recompilation). ``before`` runs ahead of each warm-up
    step (a training iteration's forward and backward)."""
    torch._dynamo.reset()  # compiled variants of earlier cases are done with
    compiled = torch.compile(opt.step, mode=mode)
    for i in range(5):
        if before is not None:
            before()
        (opt.step if i == 0 else compiled)()
    return compiled


def _compiled_variants(make: Callable[[], tuple], device) -> dict[str, Callable[[], None]]:
    """The whole step compiled, in the sync-free mode: inductor's default mode, and on CUDA
    ``mode="reduce-overhead"`` (CUDA graphs). ``make()`` builds ``(opt, before)``: such a CoLA
    and what runs ahead of each step (``None``, or a training iteration's forward and
    backward). A variant that fails to build is left out with a message (the benchmark records
    what works)."""
    modes = {"cola_compiled_step": None}
    if torch.device(device).type == "cuda":
        modes["cola_cudagraph_step"] = "reduce-overhead"
    out = {}
    for name, mode in modes.items():
        opt, before = make()
        try:
            step = _compiled_step(opt, before, mode)
        except Exception as exc:  # report, do not lose the rest of the run
            print(f"{name}: left out ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        if before is None:
            out[name] = step
        else:
            out[name] = lambda before=before, step=step: (before(), step())
    return out


def case_orthogonal(
    n: int, k: int, device, dtype, lr: float = 0.1, grad_scale: float = 0.03, compiled: bool = True
):
    """One orthogonal ``n x k`` weight: CoLA vs the paper's SHAKE and geoopt's Stiefel."""
    big, small = max(n, k), min(n, k)
    w0 = torch.randn(n, k, generator=_seeded(0), dtype=torch.float64)
    orthogonal_init_(w0)
    g0 = grad_scale * torch.randn(n, k, generator=_seeded(1), dtype=torch.float64)
    tall = (lambda t: t.mT) if n < k else (lambda t: t)
    methods: dict[str, Callable[[], object]] = {}

    a = torch.randn(big, small, generator=_seeded(2), dtype=torch.float64).to(device, dtype)
    b = torch.randn(small, small, generator=_seeded(3), dtype=torch.float64).to(device, dtype)
    methods["matmul"] = lambda: a @ b

    def cola(constraint, temperature=0.0):
        w = _param(w0, device, dtype)
        w.grad = g0.to(device=device, dtype=dtype)
        return CoLA([w], lr=lr, friction=1.0, constraint=constraint, temperature=temperature).step

    methods["cola"] = cola("orthogonal")
    methods["cola_noisy"] = cola("orthogonal", NOISY_TAU)
    if compiled:

        def make():
            w = _param(w0, device, dtype)
            w.grad = g0.to(device=device, dtype=dtype)
            opt = CoLA([w], lr=lr, friction=1.0, constraint="orthogonal", on_nonfinite="mask")
            return opt, None

        methods.update(_compiled_variants(make, device))
    methods["paper"] = cola(PaperStiefel())
    methods["paper_noisy"] = cola(PaperStiefel(), NOISY_TAU)

    with torch.no_grad():
        wr = tall(w0).contiguous().to(device=device, dtype=dtype)
        gr = tall(g0).contiguous().to(device=device, dtype=dtype)
    methods["paper_released"] = _released_step_factory(wr, gr, lr, math.exp(-lr))

    for label, manifold in (
        ("geoopt_euclidean_stiefel", geoopt.EuclideanStiefel()),
        ("geoopt_canonical_stiefel", geoopt.CanonicalStiefel()),
    ):
        mp = geoopt.ManifoldParameter(tall(w0).contiguous().to(device, dtype), manifold=manifold)
        mp.grad = tall(g0).contiguous().to(device=device, dtype=dtype)
        methods[label] = geoopt.optim.RiemannianSGD([mp], lr=lr, momentum=0.9).step

    return Case(
        name=f"ortho_{n}x{k}",
        description=f"orthogonal {n} x {k} weight"
        + (f" (wide: rows orthonormal, tall form {big} x {small})" if n < k else ""),
        baseline="cola",
        methods=methods,
        unit="matmul",
        info={
            "shape": [n, k],
            "tall_form": [big, small],
            "orientation": "rows orthonormal (M M^T = I)" if n < k else "columns orthonormal",
            "lr": lr,
            "grad_scale": grad_scale,
            "matmul": f"({big} x {small}) @ ({small} x {small})",
        },
    )


def case_training(
    size: int, batch: int, device, dtype, lr: float = 0.1, compiled: bool = True
) -> Case:
    """A training iteration with an orthogonal ``size x size`` linear layer."""
    x = torch.randn(batch, size, generator=_seeded(5), dtype=torch.float64).to(device, dtype)
    y = torch.randint(0, 10, (batch,), generator=_seeded(6)).to(device)

    def model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Linear(size, size, bias=False), torch.nn.Tanh(), torch.nn.Linear(size, 10)
        ).to(device=device, dtype=dtype)
        orthogonal_init_(m[0].weight)
        return m

    def iteration(m, opt):
        def run():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

        return run

    methods: dict[str, Callable[[], object]] = {}
    m = model()
    groups = [
        {"params": [m[0].weight], "constraint": "orthogonal"},
        {"params": [m[2].weight, m[2].bias]},
    ]
    methods["cola"] = iteration(m, CoLA(groups, lr=lr, friction=1.0))
    if compiled:

        def make():
            m = model()
            groups = [
                {"params": [m[0].weight], "constraint": "orthogonal"},
                {"params": [m[2].weight, m[2].bias]},
            ]
            opt = CoLA(groups, lr=lr, friction=1.0, on_nonfinite="mask")

            def forward_backward():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()

            return opt, forward_backward

        methods.update(_compiled_variants(make, device))

    for label, kw in (("param_cayley", {"orthogonal_map": "cayley"}), ("param_default", {})):
        m = model()
        torch.nn.utils.parametrizations.orthogonal(m[0], **kw)
        methods[label] = iteration(m, torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9))

    m = model()
    m[0].weight = geoopt.ManifoldParameter(
        m[0].weight.detach().clone(), manifold=geoopt.EuclideanStiefel()
    )
    methods["geoopt_euclidean_stiefel"] = iteration(
        m, geoopt.optim.RiemannianSGD(m.parameters(), lr=lr, momentum=0.9)
    )

    m = model()
    methods["sgd_unconstrained"] = iteration(
        m, torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    )
    return Case(
        name=f"train_ortho_{size}",
        description=f"training iteration, orthogonal {size} x {size} linear layer, batch {batch}",
        baseline="cola",
        methods=methods,
        info={"size": size, "batch": batch, "lr": lr, "default_map": "matrix_exp (square)"},
    )


#: name -> (builder of the full case, builder of the --quick case)
CASES: dict[str, tuple[Callable[..., Case], Callable[..., Case]]] = {
    "circle_1e6": (
        lambda d, t: case_circle_flat(10**6, d, t),
        lambda d, t: case_circle_flat(4096, d, t, compiled=False),
    ),
    "circle_mlp": (
        lambda d, t: case_circle_mlp((784, 1000, 10), d, t),
        lambda d, t: case_circle_mlp((20, 16, 3), d, t, compiled=False),
    ),
    "ortho_1024x1024": (
        lambda d, t: case_orthogonal(1024, 1024, d, t),
        lambda d, t: case_orthogonal(32, 32, d, t, compiled=False),
    ),
    "ortho_512x4608": (
        lambda d, t: case_orthogonal(512, 4608, d, t),
        lambda d, t: case_orthogonal(16, 72, d, t, compiled=False),
    ),
    "ortho_512x512": (
        lambda d, t: case_orthogonal(512, 512, d, t, compiled=False),
        lambda d, t: case_orthogonal(16, 16, d, t, compiled=False),
    ),
    "ortho_512x128": (
        lambda d, t: case_orthogonal(512, 128, d, t),
        lambda d, t: case_orthogonal(32, 8, d, t, compiled=False),
    ),
    "train_ortho_1024": (
        lambda d, t: case_training(1024, 128, d, t),
        lambda d, t: case_training(32, 8, d, t, compiled=False),
    ),
}

#: repetitions (full, quick) and per-case time budget in seconds (full runs)
REPS = {"full": 41, "quick": 3}
WARMUP = {"full": 3, "quick": 1}
BUDGET_S = 150.0


@dataclass(frozen=True)
class Target:
    """A performance target: ``numerator / denominator`` (medians) compared with ``bound``."""

    name: str
    case: str
    numerator: str
    denominator: str
    op: str  # "<=" or ">="
    bound: float
    description: str


TARGETS = (
    Target(
        "circle_vs_sgd", "circle_1e6", "cola_compiled", "sgd_momentum", "<=", 3.0,
        "circle step (CoLA(compile=True)) <= 3x the SGD-momentum step on the same 10^6 weights",
    ),
    Target(
        "circle_vs_sgd_eager", "circle_1e6", "cola", "sgd_momentum", "<=", 3.0,
        "the same with the default eager CoLA",
    ),
    Target(
        "e2_vs_sgd", "circle_mlp", "cola", "sgd_momentum", "<=", 4.0,
        "E2 network (784-1000-10, circle weights): default CoLA at T = 0 <= 4x SGD-momentum",
    ),
    Target(
        "e2_noisy_vs_sgd", "circle_mlp", "cola_noisy", "sgd_momentum", "<=", 6.0,
        "the same at temperature 1e-4 <= 6x SGD-momentum",
    ),
    Target(
        "e2_mask_vs_default", "circle_mlp", "cola_mask", "cola", "<=", 1.0,
        "the sync-free mode (on_nonfinite='mask') no slower than the default",
    ),
    Target(
        "ortho_matmul_equivalents", "ortho_1024x1024", "cola", "matmul", "<=", 12.0,
        "orthogonal 1024 x 1024 step <= 12 matmul-equivalents",
    ),
    Target(
        "ortho_vs_paper", "ortho_1024x1024", "paper", "cola", ">=", 3.0,
        "orthogonal 1024 x 1024 step at least 3x faster than CoLA with the paper's SHAKE",
    ),
    Target(
        "ortho_vs_paper_released", "ortho_1024x1024", "paper_released", "cola", ">=", 3.0,
        "the same against the released step's own operation sequence",
    ),
    Target(
        "ortho_noisy_vs_paper", "ortho_512x512", "paper_noisy", "cola_noisy", ">=", 2.5,
        "orthogonal 512 x 512 step at temperature 1e-4 at least 2.5x faster than CoLA with "
        "the paper's SHAKE",
    ),
    Target(
        "ortho_vs_geoopt", "ortho_1024x1024", "geoopt_euclidean_stiefel", "cola", ">=", 1.0,
        "orthogonal 1024 x 1024 step no slower than geoopt's EuclideanStiefel step",
    ),
    Target(
        "train_vs_cayley", "train_ortho_1024", "param_cayley", "cola", ">=", 2.0,
        "training iteration at least 2x faster than the cayley parametrization",
    ),
)  # fmt: skip


def cpu_bench_cli(
    argv: list[str] | None, doc: str, stem: str, run: Callable[[bool], dict], quick_help: str
) -> dict:
    """The command line of a CPU micro-benchmark: ``--quick``, ``--threads`` (default 1; 0
    leaves torch's count) and ``--out`` (default ``validation/results``). Runs ``run(quick)``,
    writes ``<out>/<stem>.json`` (``<out>/quick/`` with ``--quick``) and returns the result."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.quick)
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def environment(device: torch.device) -> dict:
    """Versions, device, threads and load average: the context a timing needs (also used by
    ``bench_sampler``)."""
    env = {
        "torch": torch.__version__,
        "geoopt": getattr(geoopt, "__version__", "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        env["load_average"] = list(os.getloadavg())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def run(
    cases: list[str] | None = None,
    *,
    quick: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    reps: int | None = None,
    log: Callable[[str], None] | None = print,
    on_case: Callable[[dict], None] | None = None,
) -> dict:
    """Run the benchmark; returns the JSON-ready record (see the module docstring).

    ``on_case`` is called after every case with the record so far (the finished cases and the
    targets they settle), so that a run stopped part-way keeps what it measured.
    """
    dev = torch.device(device)
    mode = "quick" if quick else "full"
    reps = REPS[mode] if reps is None else reps
    records = []
    for name in cases or list(CASES):
        full, small = CASES[name]
        case = (small if quick else full)(dev, dtype)
        t0 = time.perf_counter()
        times = time_methods(
            case.methods, reps, WARMUP[mode], dev, budget_s=None if quick else BUDGET_S,
            label=None if quick or log is None else name,
        )  # fmt: skip
        stats = {m: _summary(ts) for m, ts in times.items()}
        base = stats[case.baseline]["median_ms"]
        for st in stats.values():
            st["ratio_to_baseline"] = st["median_ms"] / base
            if case.unit is not None:
                st["matmul_equivalents"] = st["median_ms"] / stats[case.unit]["median_ms"]
        records.append(
            {
                "key": name,
                "case": case.name,
                "description": case.description,
                "baseline": case.baseline,
                "unit": case.unit,
                "info": case.info,
                "methods": stats,
                "wall_s": time.perf_counter() - t0,
                "load_average_at_end": list(os.getloadavg()),
            }
        )
        if log is not None:
            log(_format_case(records[-1]))
        if on_case is not None:
            on_case(_record(records, quick, dtype, reps, dev))
    return _record(records, quick, dtype, reps, dev)


def _record(records: list[dict], quick: bool, dtype, reps: int, dev: torch.device) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_optim",
        "quick": quick,
        "dtype": str(dtype).replace("torch.", ""),
        "reps": reps,
        "environment": environment(dev),
        "cases": list(records),
        "targets": evaluate_targets(records),
    }


def evaluate_targets(records: list[dict]) -> list[dict]:
    """The targets whose case was run: measured ratio, bound, met (cases matched by their key in
    :data:`CASES`, so that a ``--quick`` run, whose sizes differ, is evaluated too)."""
    by_case = {r.get("key", r["case"]): r for r in records}
    out = []
    for t in TARGETS:
        rec = by_case.get(t.case)
        if rec is None or t.numerator not in rec["methods"] or t.denominator not in rec["methods"]:
            continue
        value = (
            rec["methods"][t.numerator]["median_ms"] / rec["methods"][t.denominator]["median_ms"]
        )
        met = value <= t.bound if t.op == "<=" else value >= t.bound
        out.append(
            {
                "name": t.name,
                "case": t.case,
                "ratio": f"{t.numerator} / {t.denominator}",
                "measured": value,
                "target": f"{t.op} {t.bound:g}",
                "met": bool(met),
                "description": t.description,
            }
        )
    return out


def _format_case(rec: dict) -> str:
    lines = [f"\n{rec['case']}: {rec['description']} (baseline {rec['baseline']})"]
    for m, st in rec["methods"].items():
        extra = f"  {st['matmul_equivalents']:6.2f} matmul-eq" if "matmul_equivalents" in st else ""
        lines.append(
            f"  {m:28s} {st['median_ms']:10.3f} ms  [{st['q1_ms']:.3f}, {st['q3_ms']:.3f}]"
            f"  x{st['ratio_to_baseline']:7.3f}{extra}"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Bar chart: per case, each method's median time relative to the case's baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    cols = min(3, len(cases))
    rows = (len(cases) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax, rec in zip(axes.flat, cases):
        names = [m for m in rec["methods"] if m != rec.get("unit")]
        ratios = [rec["methods"][m]["ratio_to_baseline"] for m in names]
        colors = ["tab:blue" if m.startswith("cola") else "tab:gray" for m in names]
        bars = ax.bar(range(len(names)), ratios, color=colors)
        for bar, r in zip(bars, ratios):
            ax.annotate(
                f"{r:.2g}", (bar.get_x() + bar.get_width() / 2, r), ha="center", va="bottom",
                fontsize=7,
            )  # fmt: skip
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
        ax.set_title(rec["case"], fontsize=9)
        ax.set_ylabel(f"time / {rec['baseline']}", fontsize=8)
    env = result["environment"]
    fig.suptitle(
        f"optimizer step time relative to the baseline ({env['device']}, {env['threads']} "
        f"threads, torch {env['torch']}; lower is faster)",
        fontsize=9,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_targets(targets: list[dict]) -> str:
    lines = ["\ntargets:"]
    for t in targets:
        mark = "met" if t["met"] else "NOT met"
        lines.append(
            f"  {t['name']:26s} {t['ratio']:44s} = {t['measured']:7.3f} (target {t['target']})"
            f"  {mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--reps", type=int, default=None, help="repetitions per method")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other cases of the existing JSON (the rerun ones are replaced)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out or Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "bench_optim.json"
    earlier = json.loads(json_path.read_text()) if args.merge and json_path.exists() else None
    result = run(
        args.case,
        quick=args.quick,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        reps=args.reps,
        on_case=lambda partial: json_path.write_text(json.dumps(partial, indent=2)),
    )
    if args.merge and earlier is not None:
        rerun = {r["key"] for r in result["cases"]}
        kept = [r for r in earlier["cases"] if r.get("key", r["case"]) not in rerun]
        result["cases"] = kept + result["cases"]
        result["targets"] = evaluate_targets(result["cases"])
        result["merged_from"] = earlier.get("environment")
    print(format_targets(result["targets"]))
    json_path.write_text(json.dumps(result, indent=2))
    plot(result, out_dir / "bench_optim.png")
    print(f"\nwrote {out_dir / 'bench_optim.json'} and {out_dir / 'bench_optim.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
