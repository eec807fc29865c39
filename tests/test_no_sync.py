"""No host synchronisation inside ``CoLA.step`` (sync-free mode) or the sampler's step loop.

On CPU every way a tensor value reaches Python (``item``, ``tolist``, ``cpu``, ``numpy``,
``bool``/``float``/``int``/``index`` conversions, hence any ``if tensor:``) is patched on
``torch.Tensor`` to record the call while a guarded region runs; the tests fail if one occurs.
(Reads inside torch's C++ kernels are invisible here; the CUDA tests cover them with
``torch.cuda.set_sync_debug_mode("error")`` and skip without a GPU.)

What is guarded:

* ``CoLA.step`` with ``on_nonfinite="mask"`` (and the default ``on_failure="reject"``): circle,
  orthogonal (square, tall, wide, ``p <= 8`` and ``p > 8``, RATTLE and geodesic), sphere, a
  manifold object (the released o-CoLA SHAKE of ``validation.baselines``) and unconstrained
  parameters, at zero and positive temperature, ``"ud"`` and ``"od"``. The first step of a
  parameter reads its constraint residual once (the documented off-manifold check), so each
  optimizer takes one unguarded step first. These tests run the device-generic step, the one
  CUDA takes: on CPU, where a read costs no synchronisation, the eager circle update reads one
  sum of each chunk's angles (counted below, not forbidden).
* the default ``on_nonfinite="raise"`` costs exactly one read per step (checked, not forbidden).
* ``Langevin.sample`` / ``OverdampedLangevin.sample``: from the first integrator step to the end
  of the loop (start-up checks and the final totals are host reads by design), on the
  device-generic path too: on CPU the generic SHAKE solve reads its largest residual once per
  iterate, to end once every chain has stopped (counted below, not forbidden).

One ``numpy`` call is not a read: the cosine and sine of float32 CPU angles
(``manifolds.elementary.cos_sin``) hand the tensors' memory to NumPy's ``cos`` and ``sin``,
kernels that write the results into torch's memory without a value reaching Python. The guard
lets exactly that caller through (an accelerator's tensors never take it).
"""

from __future__ import annotations

import sys
import traceback

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin import _host_reads
from manifold_langevin.manifolds.elementary import cos_sin
from manifold_langevin.optim import CoLA, orthogonal_init_, updates
from manifold_langevin.sampling import loop as sampling
from validation.baselines import PaperStiefel

_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


#: the one caller whose ``Tensor.numpy`` is a kernel on the same memory, not a read
_NUMPY_KERNELS = cos_sin.__code__


class HostSync(AssertionError):
    """A tensor value was read on the host inside a guarded region."""


class SyncGuard:
    """Records (and by default raises on) host reads of tensor values while ``active``."""

    def __init__(self, monkeypatch, *, strict: bool = True):
        self.active = False
        self.strict = strict
        self.calls: list[tuple[str, str]] = []
        for name in _SYNCS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, original):
        guard = self

        def wrapper(tensor, *args, **kwargs):
            if guard.active and not (name == "numpy" and sys._getframe(1).f_code is _NUMPY_KERNELS):
                where = "".join(traceback.format_stack(limit=6)[:-1])
                guard.calls.append((name, where))
                if guard.strict:
                    guard.active = False
                    raise HostSync(f"Tensor.{name} called inside a guarded region:\n{where}")
            return original(tensor, *args, **kwargs)

        return wrapper

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False
        return False


@pytest.fixture
def guard(monkeypatch):
    return SyncGuard(monkeypatch)


def test_the_guard_catches_host_reads(guard):
    t = torch.tensor([1.0, 2.0])
    for read in (
        lambda: t.sum().item(),
        lambda: bool(t.sum() > 0),
        lambda: float(t.sum()),
        lambda: int(t[0]),
        lambda: t.tolist(),
        lambda: t.cpu(),
        lambda: t.numpy(),
    ):
        with pytest.raises(HostSync), guard:
            read()
    # outside the guarded region everything works as usual
    assert t.sum().item() == 3.0 and bool(t[0] > 0)


# ---------------------------------------------------------------------------- CoLA
def _orthonormal(*shape):
    return orthogonal_init_(torch.randn(*shape))


def _param_sets():
    torch.manual_seed(0)
    n = torch.nn.functional.normalize
    return {
        "circle": [
            {"params": [torch.nn.Parameter(0.05 * torch.rand(30, 7))], "constraint": "circle",
             "radius": 0.1},
            {"params": [torch.nn.Parameter(0.02 * torch.rand(5))], "constraint": "circle",
             "radius": 0.05},
        ],
        "orthogonal": [
            {"params": [torch.nn.Parameter(_orthonormal(12, 12)),
                        torch.nn.Parameter(_orthonormal(12, 12)),
                        torch.nn.Parameter(_orthonormal(20, 10)),
                        torch.nn.Parameter(_orthonormal(3, 8)),
                        torch.nn.Parameter(_orthonormal(6, 2, 2, 2))],
             "constraint": "orthogonal"},
        ],
        "orthogonal_geodesic": [
            {"params": [torch.nn.Parameter(_orthonormal(9, 4))], "constraint": "orthogonal",
             "geodesic": True},
        ],
        "sphere_and_objects": [
            {"params": [torch.nn.Parameter(n(torch.randn(4, 5), dim=-1))], "constraint": "sphere"},
            {"params": [torch.nn.Parameter(_orthonormal(7, 3))],
             "constraint": PaperStiefel()},
        ],
        "free": [{"params": [torch.nn.Parameter(torch.randn(6, 4)),
                             torch.nn.Parameter(torch.randn(4))]}],
    }  # fmt: skip


def _grads(opt, seed):
    g = torch.Generator().manual_seed(seed)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = 0.1 * torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("params", list(_param_sets()))
@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 0.0},
        {"temperature": 1e-3},
        {"temperature": 0.0, "fuse": False},
        {"temperature": 1e-3, "scheme": "od"},
        {"temperature": 1e-3, "substeps": 2},
    ],
    ids=["T0", "T>0", "T0-unfused", "od", "substeps"],
)
def test_cola_step_has_no_host_sync(monkeypatch, guard, params, config):
    monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())
    groups = _param_sets()[params]
    opt = CoLA(groups, lr=0.05, friction=1.0, on_nonfinite="mask", seed=0, **config)
    _grads(opt, 0)
    opt.step()  # the first step checks the constraint residual on the host (by design)
    for k in range(1, 4):
        _grads(opt, k)
        with guard:
            opt.step()
    assert not guard.calls
    assert opt.n_rejected() == 0


@pytest.mark.parametrize(
    "params, options",
    [
        # on_nonfinite="raise" (the default): the all-gradients-finite flag, before any change
        (("circle", "orthogonal"), {}),
        # on_failure="subdivide": did any solve fail? (retries, which read more, only on failure)
        (("orthogonal", "sphere_and_objects"), {"on_nonfinite": "mask", "on_failure": "subdivide"}),
    ],
    ids=["default", "subdivide"],
)
def test_strict_modes_read_one_flag_per_step(monkeypatch, params, options):
    guard = SyncGuard(monkeypatch, strict=False)
    groups = [g for name in params for g in _param_sets()[name]]
    opt = CoLA(groups, lr=0.05, friction=1.0, temperature=1e-3, seed=0, **options)
    _grads(opt, 0)
    opt.step()
    for k in range(1, 4):
        _grads(opt, k)
        with guard:
            opt.step()
    assert len(guard.calls) == 3, [c[0] for c in guard.calls]
    assert opt.n_rejected() == 0


def test_cpu_sync_free_circle_step_reads_one_sum_per_chunk(monkeypatch):
    """On CPU the sync-free eager circle step reads one value per chunk of each circle tensor
    (the sum that tells whether a chunk's angles are all finite), and nothing else."""
    sizes = (2 * updates.CHUNK + 5, 300)  # 3 chunks and 1
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.05 * (2 * torch.rand(n, generator=gen) - 1)) for n in sizes]
    opt = CoLA([{"params": params, "constraint": "circle", "radius": 0.05}], lr=0.05,
               friction=1.0, temperature=1e-3, on_nonfinite="mask", seed=0)  # fmt: skip
    guard = SyncGuard(monkeypatch, strict=False)
    for k in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        with guard:
            opt.step()
        if k == 0:  # the first step also reads each parameter's constraint residual
            guard.calls.clear()
    assert [c[0] for c in guard.calls] == ["__float__"] * 8
    assert opt.n_rejected() == 0


# ---------------------------------------------------------------------------- sampler
def _sampler_cases():
    torch.manual_seed(0)
    s2 = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64), dim=-1)
    st = ml.Stiefel().random(16, 6, 2, dtype=torch.float64)
    theta = torch.linspace(0, 6.28, 33, dtype=torch.float64)[:-1]
    ellipse_x0 = torch.stack([2 * torch.cos(theta), torch.sin(theta)], dim=-1)
    ellipse = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
    z = lambda x: x[..., 2]  # noqa: E731
    return {
        "sphere-BAOAB": (ml.Langevin(ml.Sphere(), potential=lambda x: -z(x), step_size=0.1), s2),
        "sphere-OBABO": (
            ml.Langevin(ml.Sphere(), potential=lambda x: -z(x), step_size=0.1, scheme="OBABO"),
            s2,
        ),
        "stiefel-geodesic": (
            ml.Langevin(ml.Stiefel(), potential=lambda x: -x[..., 0, 0], step_size=0.1),
            st,
        ),
        "stiefel-rattle": (
            ml.Langevin(
                ml.Stiefel(), potential=lambda x: -x[..., 0, 0], step_size=0.1, geodesic=False
            ),
            st,
        ),
        "ellipse-gBAOAB": (
            ml.Langevin(ellipse, potential=lambda x: x[..., 1], step_size=0.05, substeps=2),
            ellipse_x0,
        ),
        "sphere-euler": (
            ml.OverdampedLangevin(ml.Sphere(), potential=lambda x: -z(x), step_size=0.01),
            s2,
        ),
        "ellipse-lm": (
            ml.OverdampedLangevin(
                ellipse, potential=lambda x: x[..., 1], step_size=0.01, scheme="lm"
            ),
            ellipse_x0,
        ),
        "ellipse-hmc-conditional": (
            ml.HMC(
                ellipse,
                potential=lambda x: x[..., 1],
                step_size=0.1,
                n_leapfrog=2,
                measure="conditional",
            ),
            ellipse_x0,
        ),
        "stiefel-ghmc": (
            ml.HMC(ml.Stiefel(), potential=lambda x: -x[..., 0, 0], step_size=0.3, friction=1.0),
            st,
        ),
        "sphere-hmc-adaptive": (
            ml.HMC(
                ml.Sphere(),
                potential=lambda x: -z(x),
                step_size=0.3,
                n_leapfrog=3,
                adapt_step_size=True,
            ),
            s2,
        ),
        "ellipse-ghmc-adaptive": (
            ml.HMC(
                ellipse,
                potential=lambda x: x[..., 1],
                step_size=0.01,
                friction=1.0,
                adapt_step_size=True,
            ),
            ellipse_x0,
        ),
    }


@pytest.mark.parametrize("name", list(_sampler_cases()))
def test_sampling_loop_has_no_host_sync(guard, monkeypatch, name):
    monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())
    dynamics, x0 = _sampler_cases()[name]
    step, finish = dynamics.step, sampling._raise_if_failed
    n_calls = []

    def guarded_step(*args, **kwargs):
        guard.active = True  # from the first integrator step on
        n_calls.append(1)
        return step(*args, **kwargs)

    def end_of_loop(*args, **kwargs):
        guard.active = False  # the totals are read once, after the loop
        return finish(*args, **kwargs)

    monkeypatch.setattr(dynamics, "step", guarded_step)
    monkeypatch.setattr(sampling, "_raise_if_failed", end_of_loop)
    out = dynamics.sample(
        x0,
        n_steps=12,
        burn_in=2,
        thin=2,
        observables={"first": lambda x: x.flatten(-(x.dim() - 1))[..., 0]},
        generator=torch.Generator().manual_seed(0),
    )
    assert len(n_calls) == 12
    assert not guard.calls
    assert out.n_failures == 0


def test_cpu_shake_reads_one_residual_per_iterate(monkeypatch):
    """On CPU the generic SHAKE solve reads one number per iterate it runs (its largest
    residual, to end once every chain has stopped) and nothing else: Langevin steps on the
    ellipse read at least once per solve and at most its budget."""
    dynamics, x0 = _sampler_cases()["ellipse-gBAOAB"]
    manifold = dynamics.manifold
    state = dynamics.init(x0, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    solves = []
    shake = manifold._shake

    def counted(*args, **kwargs):
        solves.append(1)
        return shake(*args, **kwargs)

    monkeypatch.setattr(manifold, "_shake", counted)
    guard = SyncGuard(monkeypatch, strict=False)
    with guard:
        for _ in range(5):
            state, ok, _ = dynamics.step(state, gen)
    assert bool(ok.all())
    assert {name for name, _ in guard.calls} == {"__float__"}
    assert all("_shake" in where for _, where in guard.calls)
    assert len(solves) == 5 * 2 * dynamics.substeps
    assert len(solves) <= len(guard.calls) < len(solves) * manifold.max_iter


# ---------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _on_cuda(groups):
    for group in groups:
        group["params"] = [torch.nn.Parameter(p.detach().cuda()) for p in group["params"]]
    return groups


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("params", ["circle", "orthogonal", "sphere_and_objects", "free"])
@pytest.mark.parametrize("temperature", [0.0, 1e-3])
def test_cola_step_has_no_cuda_sync(params, temperature):
    groups = _on_cuda(_param_sets()[params])
    opt = CoLA(groups, lr=0.05, temperature=temperature, on_nonfinite="mask", seed=0)

    def grads(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = 0.1 * torch.randn(p.shape, generator=g, device="cuda")

    grads(0)
    opt.step()
    for k in range(1, 4):
        grads(k)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.n_rejected() == 0


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(
    "name", ["sphere-BAOAB", "stiefel-rattle", "stiefel-geodesic", "sphere-euler"]
)
def test_sampling_loop_has_no_cuda_sync(monkeypatch, name):
    # (the Stiefel geodesic's case has 6 x 2 frames: p <= 3 takes the stacked exponential; wider
    # frames would call torch.linalg.matrix_exp, which reads its norms on the host)
    dynamics, x0 = _sampler_cases()[name]
    step, finish = dynamics.step, sampling._raise_if_failed

    def guarded_step(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        return step(*args, **kwargs)

    def end_of_loop(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        return finish(*args, **kwargs)

    monkeypatch.setattr(dynamics, "step", guarded_step)
    monkeypatch.setattr(sampling, "_raise_if_failed", end_of_loop)
    try:
        out = dynamics.sample(
            x0.cuda(), n_steps=8, generator=torch.Generator(device="cuda").manual_seed(0)
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.n_failures == 0
