"""``sample(..., compile=True)``: the step under ``torch.compile`` with its noise drawn eagerly.

With dynamo's counting backend (the captured graphs run eagerly, so this takes seconds) the
compiled runs equal the eager ones bit for bit, the generator ends in the same state (the same
draws in the same order), and the closed-form manifolds' step is one graph. With inductor (a
C++ kernel, seconds to compile) the trajectory agrees with the eager one to rounding. A compiler
failure warns and the run goes on eagerly with the same noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import manifold_langevin as ml
from manifold_langevin.noise import standard_normal
from manifold_langevin.sampling.compiled import CompiledStep, StateDependentDraws

DT = torch.float64


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test starts with dynamo's caches empty, so that the graphs a test counts are its
    own (and the recompile limit is counted from zero in the test about it)."""
    torch._dynamo.reset()
    yield


def _sphere():
    mu = torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    sampler = ml.Langevin(
        ml.Sphere(), potential=lambda x: -2.0 * (x * mu).sum(-1), step_size=0.1, friction=1.0
    )
    x0 = torch.nn.functional.normalize(
        torch.randn(64, 3, dtype=DT, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    return sampler, x0


def _stiefel():
    f = torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    sampler = ml.Langevin(
        ml.Stiefel(), potential=lambda x: -(x * f).sum((-2, -1)), step_size=0.1, friction=1.0
    )
    return sampler, ml.Stiefel().random(32, 4, 2, dtype=DT, generator=torch.Generator())


def _ellipse_rattle():
    """An implicit ellipse through RATTLE with steps large enough that some solves fail (the
    failure branch redraws a momentum: one more draw per step)."""
    m = ml.ImplicitManifold(lambda x: x[..., 0] ** 2 / 4.0 + x[..., 1] ** 2 - 1.0)
    sampler = ml.Langevin(m, potential=lambda x: 0.5 * x[..., 1] ** 2, step_size=1.2)
    t = torch.linspace(0, 2 * math.pi, 48, dtype=DT)
    return sampler, torch.stack([2 * torch.cos(t), torch.sin(t)], -1)


def _circle_rattle():
    """Two constraints (a sphere cut by a plane, RATTLE): the Gram products are ``2 x 2``, which
    a compiled step writes out elementwise in the order of the eager ``bmm``."""
    m = ml.ImplicitManifold(
        lambda x: torch.stack([(x * x).sum(-1) - 1.0, x[..., 0] + x[..., 1] + x[..., 2] - 0.5], -1)
    )
    sampler = ml.Langevin(m, potential=lambda x: 0.5 * x[..., 2] ** 2, step_size=0.3)
    x0 = m.random(40, 3, dtype=DT, generator=torch.Generator().manual_seed(3))
    return sampler, x0


def _hmc():
    _, x0 = _sphere()
    mu = torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    hmc = ml.HMC(ml.Sphere(), potential=lambda x: -2.0 * (x * mu).sum(-1), step_size=0.4,
                 n_leapfrog=3)  # fmt: skip
    return hmc, x0


CASES = {
    "sphere": _sphere,
    "stiefel": _stiefel,
    "ellipse-rattle": _ellipse_rattle,
    "circle-rattle": _circle_rattle,
    "hmc": _hmc,
}
OBS = {"first": lambda x: x[..., 0], "square": lambda x: (x * x).sum(-1)}


def _run(make, compile, n_steps=25, seed=7):
    sampler, x0 = make()
    gen = torch.Generator().manual_seed(seed)
    out = sampler.sample(
        x0, n_steps, observables=OBS, generator=gen, compile=compile, trace_draws=0
    )
    return out, gen


@pytest.mark.filterwarnings("ignore::manifold_langevin.errors.UntrustedRunWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_run_is_the_eager_run(case):
    counter = CompileCounter()
    eager, g_eager = _run(CASES[case], False)
    compiled, g_compiled = _run(CASES[case], {"backend": counter})
    assert counter.frame_count >= 1  # it really went through dynamo
    assert torch.equal(compiled.state.x, eager.state.x)
    assert torch.equal(compiled.state.p, eager.state.p)
    for k in OBS:
        assert torch.equal(compiled.means[k], eager.means[k])
    assert compiled.n_failures == eager.n_failures
    assert torch.equal(g_compiled.get_state(), g_eager.get_state())  # the same draws
    if case == "ellipse-rattle":
        assert eager.n_failures > 0  # the redraw branch ran
    if case == "hmc":
        assert compiled.acceptance_rate == eager.acceptance_rate


@pytest.mark.parametrize("case", ["sphere", "stiefel"])
def test_closed_form_steps_are_one_graph(case):
    """No graph break in a whole step (the force's autograd traced, the noise passed in)."""
    sampler, x0 = CASES[case]()
    state = sampler.init(x0, generator=torch.Generator().manual_seed(0))
    counter = CompileCounter()
    step = CompiledStep(sampler, backend=counter)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            state, ok, finite = step(state, gen)
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace torch.autograd.grad: the force is a graph break")
    assert counter.frame_count == 1, counter.frame_count
    assert bool(ok.all()) and bool(finite.all())


def test_more_samplers_than_the_recompile_limit_all_compile():
    """Dynamo keeps its cache, and counts its recompile limit, per code object: a process that
    compiles more samplers than the limit (a sweep over step sizes, say) compiles every one of
    them, none quietly running eagerly because the others used up the limit."""
    limit = torch._dynamo.config.recompile_limit
    counter = CompileCounter()
    x0 = _sphere()[1]
    for i in range(limit + 2):
        sampler = ml.Langevin(
            ml.Sphere(), potential=lambda x: -(x[..., 2]), step_size=0.05 + 0.01 * i
        )
        step = CompiledStep(sampler, backend=counter)
        with torch.no_grad():
            step(sampler.init(x0, generator=torch.Generator()), torch.Generator())
        assert counter.frame_count >= i + 1, f"sampler {i} ran eagerly"


def test_inductor_run_agrees_with_eager_to_rounding():
    eager, g_eager = _run(_sphere, False, n_steps=40)
    compiled, g_compiled = _run(_sphere, True, n_steps=40)
    assert torch.allclose(compiled.state.x, eager.state.x, atol=1e-12, rtol=0)
    assert torch.allclose(compiled.state.p, eager.state.p, atol=1e-12, rtol=0)
    assert torch.equal(g_compiled.get_state(), g_eager.get_state())
    for k in OBS:
        assert torch.allclose(compiled.means[k], eager.means[k], atol=1e-12, rtol=0)


def test_a_compiler_failure_warns_and_runs_eagerly(monkeypatch):
    def broken(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    eager, _ = _run(_sphere, False)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        compiled, _ = _run(_sphere, True)
    assert torch.equal(compiled.state.x, eager.state.x)  # eagerly, the same noise


def test_state_dependent_draws_are_refused():
    """A step that asks for other normals than the recorded step did is an error, not a silent
    reuse of the wrong noise."""

    class Changing:
        calls = 0

        def step(self, state, generator):
            self.calls += 1
            shape = (2,) if self.calls == 1 else (3,)
            return standard_normal(torch.empty(shape, dtype=DT), generator)

    step = CompiledStep(Changing(), backend=CompileCounter())
    with pytest.raises(StateDependentDraws, match="depend on the state"):
        step(None, torch.Generator().manual_seed(0))


def test_a_sampler_compiles_once_across_runs():
    """``sample(compile=...)`` keeps the sampler's compiled step: a second run (another chain
    count: one recompilation for the new shapes) and a third (the first count again: none)
    reuse it, and each run still draws the eager run's noise."""
    sampler, x0 = _sphere()
    counter = CompileCounter()
    runs = [x0, x0[:16], x0]
    for x in runs:
        gen, gen_eager = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        out = sampler.sample(x, 3, generator=gen, compile={"backend": counter})
        eager = sampler.sample(x, 3, generator=gen_eager)
        assert torch.equal(out.state.x, eager.state.x)
        assert torch.equal(gen.get_state(), gen_eager.get_state())
    assert counter.frame_count == 2, counter.frame_count
