"""``torch.compile`` and CoLA: the whole step traces without graph breaks, and ``compile=True``.

* ``torch.compile(opt.step, fullgraph=True)`` succeeds (``fullgraph`` raises at the first graph
  break) for circle, orthogonal, sphere and unconstrained groups at zero temperature in the
  sync-free mode, and gives the eager results. Dynamo only traces here (a counting backend that
  runs the captured graphs eagerly), so this takes seconds.
* At positive temperature every noise draw is a graph break: dynamo (torch 2.13) does not trace
  calls that take an explicit ``torch.Generator``, and CoLA draws from its own generators so that
  runs are reproducible and resumable. The test checks that those are the only breaks and that
  the compiled step reproduces the eager one bit for bit (the same noise stream).
* ``CoLA(compile=True)`` (the inductor-compiled circle update) matches the eager update. This one
  compiles a C++ kernel: about 10-20 s the first time on 2 cores, then inductor's on-disk cache
  serves it. The test checks that inductor really produced a kernel and that CoLA did not fall
  back to eager (it warns and falls back when compilation fails); it is skipped only where no
  C++ compiler is installed (CI and the development machines have gcc).
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from torch._inductor import metrics

import manifold_langevin as ml
from manifold_langevin.optim import CoLA, constrained_groups


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(10, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12), torch.nn.Tanh(),
        torch.nn.Linear(12, 3),
    )  # fmt: skip


def _groups(model, kind):
    if kind == "mixed":
        groups = constrained_groups(model, "orthogonal")
        extra = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(4, 6), dim=-1))
        model.register_parameter("extra", extra)
        return [*groups, {"params": [extra], "param_names": ["extra"], "constraint": "sphere"}]
    return constrained_groups(model, kind)


def _run(model, opt, step, n=4):
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        if hasattr(model, "extra"):
            model.extra.grad = torch.ones_like(model.extra)
        step()


def _pair(kind, twin_kw=None, **kw):
    """Two identical models and optimizers (``twin_kw`` overrides options of the second), each
    after one eager step (the first step reads the constraint residual on the host, by design)."""
    out = []
    for options in (kw, {**kw, **(twin_kw or {})}):
        model = _model()
        opt = CoLA(
            _groups(model, kind), lr=0.1, friction=1.0, on_nonfinite="mask", seed=0, **options
        )
        _run(model, opt, opt.step, n=1)
        out += [model, opt]
    return out


@pytest.mark.parametrize("kind", ["circle", "orthogonal", "mixed"])
def test_step_compiles_without_graph_breaks(kind):
    model, opt, twin, twin_opt = _pair(kind)
    backend = CompileCounter()
    compiled = torch.compile(opt.step, backend=backend, fullgraph=True)
    _run(model, opt, compiled)
    _run(twin, twin_opt, twin_opt.step)
    assert backend.frame_count >= 1  # it was traced (a recompile when the step count turns dynamic)
    assert not counters["graph_break"]
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert opt.n_rejected() == 0


def test_wide_orthogonal_step_compiles_without_graph_breaks():
    """A frame with ``p >= 256`` takes the blocked Gram products of ``Stiefel.rattle``; they
    trace too (a product written straight into a block view would be a graph break)."""
    from manifold_langevin.manifolds.frames import GRAM_BLOCKS as _GRAM_BLOCKS

    k = min(p for p, _ in _GRAM_BLOCKS) + 4
    gen = torch.Generator().manual_seed(0)
    weights, opts = [], []
    for _ in range(2):
        w = torch.nn.Parameter(ml.optim.orthogonal_init_(torch.randn(k + 40, k, generator=gen)))
        opt = CoLA([{"params": [w], "constraint": "orthogonal"}], lr=0.1, on_nonfinite="mask")
        weights.append(w)
        opts.append(opt)
    weights[1].data.copy_(weights[0].data)
    grads = [1e-2 * torch.randn(k + 40, k, generator=gen) for _ in range(4)]
    backend = CompileCounter()
    steps = [torch.compile(opts[0].step, backend=backend, fullgraph=True), opts[1].step]
    for i, g in enumerate(grads):
        for w, step, opt in zip(weights, steps, opts):
            w.grad = g.clone()
            (opt.step if i == 0 else step)()  # the first step reads the residual, by design
    assert backend.frame_count >= 1 and not counters["graph_break"]
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)
    assert opts[0].n_rejected() == 0


def test_noise_draws_are_the_only_graph_breaks():
    model, opt, twin, twin_opt = _pair("orthogonal", temperature=1e-3)
    backend = CompileCounter()
    _run(model, opt, torch.compile(opt.step, backend=backend))
    _run(twin, twin_opt, twin_opt.step)
    reasons = list(counters["graph_break"])
    assert reasons, "expected graph breaks at the noise draws"
    assert all("Generator" in r for r in reasons), reasons
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def _cxx():
    """A C++ compiler on the path (inductor's CPU backend needs one), or None."""
    names = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


@pytest.mark.skipif(_cxx() is None, reason="no C++ compiler: inductor cannot build CPU kernels")
def test_compiled_circle_update_matches_eager():
    metrics.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, opt, twin, twin_opt = _pair("circle", compile=True, twin_kw={"compile": False})
        _run(model, opt, opt.step, n=3)
        _run(twin, twin_opt, twin_opt.step, n=3)
    fallbacks = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    assert not fallbacks, f"compilation failed with {_cxx()} on the path: {fallbacks}"
    assert opt.compile is True and twin_opt.compile is False
    # inductor compiled a graph and generated a C++ kernel for it (the count is restored from the
    # on-disk cache on a hit), so the comparison below is compiled against eager
    assert counters["frames"]["ok"] >= 1 and counters["aot_autograd"]["ok"] >= 1, dict(counters)
    assert metrics.generated_kernel_count >= 1, metrics.generated_kernel_count
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for group in opt.param_groups:
        if group["constraint"] != "circle":
            continue
        r2 = float(group["radius"]) ** 2
        for p in group["params"]:
            circle = p.detach() ** 2 + opt.state[p]["xi"] ** 2
            assert (circle - r2).abs().max() <= 1e-5 * r2


def test_compile_flag_is_validated():
    with pytest.raises(ValueError, match="compile"):
        CoLA([torch.nn.Parameter(torch.zeros(3))], lr=0.1, compile="yes")
    opt = CoLA([torch.nn.Parameter(torch.zeros(3))], lr=0.1, compile=True)
    assert copy.deepcopy(opt).compile is True
    assert ml.optim.CoLA is CoLA
