"""``sample(..., cuda_graph=True)``: the loop's body captured in CUDA graphs and replayed.

A graphed run launches the same kernels on the same inputs as the eager run, so everything it
returns equals the eager run's bit for bit, and the generator ends in the same state (each
replay draws what the eager step would have drawn from the generator at that moment).

Two backends run the same cases:

* on any machine, a backend that "replays" by calling the body again (its capture runs the
  body once on saved buffers and puts them and the generator back, as a real capture leaves
  them): this proves the loop's graphed path (the buffers kept in place, the device-side step
  index, one graph per burn-in / thinned / batch setting, the eager burn-in of step-size
  adaptation, the host's counts and traces) gives the eager numbers;
* on a CUDA device (skipped without one), ``torch.cuda.CUDAGraph`` itself, where Python runs
  the body once per setting and every later step is a replay: this proves that nothing the
  loop needs is done by Python between the replays.
"""

from __future__ import annotations

import math

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.sampling import graphed

DT = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ReplayByCalling:
    """A capture backend for machines without a GPU: ``capture`` runs the body on saved buffers
    and restores them and the generator (a real capture runs nothing); ``replay`` runs the body
    again and writes its outputs into the captured ones (a replay overwrites them in place)."""

    name = "replay by calling"

    @staticmethod
    def supports(device):
        return True

    @staticmethod
    def warm_up(device, fn):
        fn()

    @staticmethod
    def capture(fn, generator, pool, checkpoint):
        gen = generator if generator is not None else torch.default_generator
        rng = gen.get_state()
        restore = checkpoint()
        outputs = fn()
        restore()
        gen.set_state(rng)

        def replay():
            _copy_into(outputs, fn())

        return replay, outputs, pool


def _copy_into(old, new):
    if isinstance(old, torch.Tensor):
        old.copy_(new)
    elif isinstance(old, dict):
        for k in old:
            _copy_into(old[k], new[k])
    elif isinstance(old, (tuple, list)):
        for a, b in zip(old, new):
            _copy_into(a, b)


@pytest.fixture
def replay_by_calling(monkeypatch):
    monkeypatch.setattr(graphed, "BACKEND", ReplayByCalling())


# ---------------------------------------------------------------------------- the cases
def _sphere(device, n=64):
    mu = torch.tensor([0.0, 0.3, 1.0], dtype=DT, device=device)
    sampler = ml.Langevin(
        ml.Sphere(), potential=lambda x: -2.0 * (x * mu).sum(-1), step_size=0.1, friction=1.0
    )
    x0 = ml.Sphere().random(n, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    return sampler, x0.to(device), {"z": lambda x: x[..., 2], "x": lambda x: x}


def _thin_ellipse(device):
    """Large steps on the curved ends of a thin ellipse: about 18% of SHAKE solves fail."""
    thin = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 9 + 9 * x[..., 1:] ** 2 - 1)
    t = torch.linspace(0, 2 * math.pi, 200, dtype=DT)
    x0 = torch.stack([3 * torch.cos(t), torch.sin(t) / 3], -1)
    sampler = ml.Langevin(thin, step_size=0.5, temperature=4.0, friction=1.0)
    return sampler, x0.to(device), {"x": lambda x: x[..., 0]}


def _hmc(device):
    sampler = ml.HMC(
        ml.Sphere(),
        potential=lambda x: -3.0 * x[..., 0],
        step_size=0.3,
        n_leapfrog=4,
        adapt_step_size=True,
    )
    x0 = ml.Sphere().random(48, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    return sampler, x0.to(device), {"x0": lambda x: x[..., 0]}


def _hmc_fixed(device):
    sampler = ml.HMC(ml.Sphere(), potential=lambda x: -3.0 * x[..., 0], step_size=0.4, n_leapfrog=3)
    x0 = ml.Sphere().random(48, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    return sampler, x0.to(device), {"x0": lambda x: x[..., 0]}


def _overdamped(device):
    sampler = ml.OverdampedLangevin(ml.Stiefel(), potential=lambda x: -x[..., 0, 0], step_size=0.05)
    x0 = ml.Stiefel().random(32, 4, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    return sampler, x0.to(device), {"x00": lambda x: x[..., 0, 0]}


def _stiefel_geodesic(device):
    # BAOAB along the exact geodesic of 6 x 2 frames: on CUDA the stacked exponential, built on
    # the device (torch.linalg.matrix_exp would read its norms on the host and not be captured)
    sampler = ml.Langevin(ml.Stiefel(), potential=lambda x: -x[..., 0, 0], step_size=0.2)
    x0 = ml.Stiefel().random(32, 6, 2, dtype=DT, generator=torch.Generator().manual_seed(5))
    return sampler, x0.to(device), {"x00": lambda x: x[..., 0, 0]}


#: name -> (make, sample's keywords)
CASES = {
    # burn-in, thinning, batches of unequal length, traces thinned (stride 2)
    "sphere": (_sphere, dict(n_steps=60, burn_in=7, thin=3, n_batches=4, trace_draws=9)),
    "sphere_every_step": (_sphere, dict(n_steps=25, n_batches=10)),
    "failures": (_thin_ellipse, dict(n_steps=80, burn_in=10, n_batches=5)),
    "hmc_adapted": (_hmc, dict(n_steps=50, burn_in=20, n_batches=3)),
    # the Metropolis outcomes counted after burn-in only (two settings of the same step)
    "hmc_burn_in": (_hmc_fixed, dict(n_steps=40, burn_in=9, thin=2, n_batches=2)),
    "overdamped": (_overdamped, dict(n_steps=30, thin=2, n_batches=3)),
    "stiefel_geodesic": (_stiefel_geodesic, dict(n_steps=30, burn_in=5, n_batches=3)),
}


def _run(case, device, cuda_graph, **extra):
    make, kwargs = CASES[case]
    sampler, x0, observables = make(device)
    x_start = x0.clone()
    gen = torch.Generator(device=device).manual_seed(11)
    out = sampler.sample(
        x0, observables=observables, generator=gen, cuda_graph=cuda_graph, **kwargs, **extra
    )
    assert torch.equal(x0, x_start), "the caller's start points were written"
    return out, gen.get_state()


def _assert_same(a, b):
    assert a.n_failures == b.n_failures
    assert a.max_residual == b.max_residual
    assert a.acceptance_rate == b.acceptance_rate
    assert a.n_rejected == b.n_rejected
    assert a.step_size == b.step_size
    for name in ("means", "stderrs", "batch_means", "traces"):
        da, db = getattr(a, name), getattr(b, name)
        assert da.keys() == db.keys()
        for k in da:
            assert torch.equal(da[k], db[k]), (name, k)
    for field in ("x", "p", "force"):
        ta, tb = getattr(a.state, field), getattr(b.state, field)
        assert (ta is None) == (tb is None)
        if ta is not None:
            assert torch.equal(ta, tb), field
    assert a.rhat.keys() == b.rhat.keys()


def _check_case(case, device, **extra):
    eager, eager_rng = _run(case, device, cuda_graph=False, **extra)
    graph, graph_rng = _run(case, device, cuda_graph=True, **extra)
    _assert_same(eager, graph)
    assert torch.equal(eager_rng, graph_rng), "the generator ended elsewhere"
    return eager


@pytest.mark.parametrize("case", list(CASES))
def test_graphed_loop_equals_eager_loop(replay_by_calling, case):
    eager = _check_case(case, "cpu")
    if case == "failures":  # the case exercises the failure counts
        assert eager.n_failures > 0
    if case == "hmc_adapted":
        assert eager.acceptance_rate is not None and eager.step_size != 0.3
    if case == "hmc_burn_in":
        assert 0 < eager.n_rejected < 31 * 48  # both outcomes occur after burn-in


def test_graphed_strict_failure_names_the_eager_step(replay_by_calling):
    # projected Euler on the sphere fails where the noise's tangential part exceeds the radius;
    # with this seed the first failure is at step 10, raised at the check after step 14
    sampler = ml.OverdampedLangevin(ml.Sphere(), step_size=0.05, scheme="euler")
    x0 = ml.Sphere().random(20, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    seen = []
    for cuda_graph in (False, True):
        gen = torch.Generator().manual_seed(13)
        with pytest.raises(ml.ShakeError) as info:
            sampler.sample(
                x0, 200, strict=True, check_every=7, generator=gen, cuda_graph=cuda_graph
            )
        err = info.value
        seen.append((err.step, err.n_failures, err.state.x, gen.get_state()))
    (step, n, x, rng), (step_g, n_g, x_g, rng_g) = seen
    assert (step, n) == (step_g, n_g) == (10, 2)
    assert torch.equal(x, x_g) and torch.equal(rng, rng_g)


def test_graphed_run_resumes_like_an_eager_one(replay_by_calling):
    """Two graphed runs of 20 steps, the second from the first's state and generator, equal
    two eager ones (the stream is where the eager one is after the first run)."""
    sampler, x0, obs = _sphere("cpu")
    ends = []
    for cuda_graph in (False, True):
        gen = torch.Generator().manual_seed(5)
        first = sampler.sample(x0, 20, observables=obs, generator=gen, cuda_graph=cuda_graph)
        second = sampler.sample(
            first.state.x, 20, p0=first.state.p, observables=obs, generator=gen,
            cuda_graph=cuda_graph,
        )  # fmt: skip
        ends.append(second.state.x)
    assert torch.equal(ends[0], ends[1])


def test_cuda_graph_on_cpu_chains_is_refused():
    sampler, x0, _ = _sphere("cpu")
    with pytest.raises(ValueError, match="cuda_graph=True needs the chains on a CUDA device"):
        sampler.sample(x0, 5, cuda_graph=True)


def test_cuda_graph_argument_is_checked():
    sampler, x0, _ = _sphere("cpu")
    with pytest.raises(TypeError, match="cuda_graph must be True or False"):
        sampler.sample(x0, 5, cuda_graph="yes")


def test_cuda_graph_needs_a_generator_not_a_noise_source(replay_by_calling):
    sampler, x0, _ = _sphere("cpu")
    with pytest.raises(TypeError, match=r"needs a torch\.Generator"):
        sampler.sample(x0, 5, cuda_graph=True, generator=lambda like: torch.zeros_like(like))


# ---------------------------------------------------------------------------- on a GPU
@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_graphs_equal_eager_bit_for_bit(case):
    _check_case(case, "cuda")


@pytest.mark.cuda
@CUDA
def test_cuda_graph_steps_are_replays():
    sampler, x0, obs = _sphere("cuda", n=1000)
    gen = torch.Generator(device="cuda").manual_seed(0)
    sampler.sample(x0, 4, observables=obs, generator=gen, cuda_graph=True)  # warm
    steps = []

    def counting(*args, **kwargs):
        steps.append(1)
        return step(*args, **kwargs)

    step = sampler.step
    sampler.step = counting
    try:
        torch.cuda.synchronize()
        out = sampler.sample(x0, 40, observables=obs, generator=gen, cuda_graph=True)
    finally:
        del sampler.step
    # Python ran the integrator's step only at the warm-up and at each setting's capture
    # (one per batch, 10 here); every other step was a replay
    assert len(steps) <= 1 + 10, len(steps)
    assert out.n_failures == 0


@pytest.mark.cuda
@CUDA
def test_cuda_graph_of_the_compiled_step_matches_eager_to_rounding():
    sampler, x0, obs = _sphere("cuda", n=4096)
    outs = []
    for compile, cuda_graph in ((False, False), (True, True)):
        gen = torch.Generator(device="cuda").manual_seed(3)
        outs.append(
            sampler.sample(
                x0, 30, observables=obs, generator=gen, compile=compile, cuda_graph=cuda_graph
            )
        )
    eager, both = outs
    torch.testing.assert_close(both.state.x, eager.state.x, rtol=0, atol=1e-10)
    torch.testing.assert_close(both.means["z"], eager.means["z"], rtol=0, atol=1e-12)


@pytest.mark.cuda
@CUDA
def test_uncapturable_step_is_refused_and_leaves_everything_as_it_was():
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=DT, device="cuda")

    def potential(x):  # reads a value on the host: cannot be captured
        return -float((x * mu).sum(-1).mean()) * (x * mu).sum(-1)

    sampler = ml.Langevin(ml.Sphere(), potential=potential, step_size=0.1)
    x0 = ml.Sphere().random(16, 3, dtype=DT, generator=torch.Generator()).cuda()
    x_start = x0.clone()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rng = gen.get_state()
    with pytest.raises(RuntimeError, match="could not be captured in a CUDA graph"):
        sampler.sample(x0, 5, generator=gen, cuda_graph=True)
    assert torch.equal(x0, x_start) and torch.equal(gen.get_state(), rng)
    out = sampler.sample(x0, 5, generator=gen)  # the device still works, eagerly
    assert out.n_failures == 0


@pytest.mark.cuda
@CUDA
def test_cuda_graph_with_a_generator_on_another_device_is_refused():
    sampler, x0, _ = _sphere("cuda")
    with pytest.raises(ValueError, match="the generator is on cpu"):
        sampler.sample(x0, 5, cuda_graph=True, generator=torch.Generator().manual_seed(0))
