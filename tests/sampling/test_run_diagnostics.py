"""The diagnostics a sampling run reports: the device traces and their memory bound, the ESS,
R-hat and MCSE on the result (computed from the traces, scaled to every chain), the warnings and
strict-mode errors of a run that cannot be trusted, and the arviz container."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.sampling.diagnostics import summarise
from manifold_langevin.sampling.loop import ESS_WARN, RHAT_WARN
from manifold_langevin.sampling.traces import Traces

DT = torch.float64


def _ellipse():
    return ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)


def _ellipse_points(n):
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=DT)[:-1]
    return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)


def _sphere_start(n, generator):
    return torch.nn.functional.normalize(torch.randn(n, 3, dtype=DT, generator=generator), dim=-1)


OBS = {"z": lambda x: x[..., 2], "x": lambda x: x}


# ------------------------------------------------------------------------------- the traces
def test_traces_keep_every_stride_th_recorded_step_of_every_chain():
    values = {"a": torch.zeros(3, 4, 2, dtype=DT)}
    tr = Traces(values, torch.Size([3, 4]), n_recorded=10, dtype=DT, max_draws=4)
    assert (tr.stride, tr.n_draws, tr.n_traced) == (3, 4, 12)  # draws at 0, 3, 6, 9
    for r in range(10):
        tr.add(r, {"a": torch.full((3, 4, 2), float(r), dtype=DT)})
    a = tr.finish()["a"]
    assert a.shape == (12, 4, 2)
    assert a[:, :, 0].eq(torch.tensor([0.0, 3.0, 6.0, 9.0], dtype=DT)).all()


def test_traces_respect_the_memory_bound_by_tracing_the_first_chains():
    values = {"a": torch.arange(100, dtype=DT).reshape(100, 1)}
    per_chain = 50 * 8  # 50 draws of one float64
    tr = Traces(values, torch.Size([100]), n_recorded=50, dtype=DT, max_bytes=7 * per_chain + 1)
    assert tr.n_traced == 7 and tr.n_draws == 50
    assert tr.nbytes <= 7 * per_chain + 1
    tr.add(0, values)
    assert tr.finish()["a"][:, 0, 0].tolist() == list(range(7))
    # one chain that does not fit: its draws are cut instead
    tr = Traces(values, torch.Size([100]), n_recorded=50, dtype=DT, max_bytes=20 * 8)
    assert tr.n_traced == 1 and tr.n_draws <= 20 and tr.nbytes <= 20 * 8


def test_no_traces_and_no_diagnostics_with_trace_draws_zero():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=0.2)
    g = torch.Generator().manual_seed(0)
    out = sampler.sample(_sphere_start(8, g), 50, observables=OBS, generator=g, trace_draws=0)
    assert out.traces == {} and out.rhat == {} and out.ess_bulk == {}
    with pytest.raises(ValueError, match="no traces"):
        out.to_arviz()


def test_tracing_does_not_change_the_run():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=0.2)
    runs = []
    for draws in (0, 7):
        g = torch.Generator().manual_seed(3)
        runs.append(sampler.sample(_sphere_start(16, g), 60, burn_in=10, observables=OBS,
                                   generator=g, trace_draws=draws))  # fmt: skip
    assert torch.equal(runs[0].state.x, runs[1].state.x)
    assert torch.equal(runs[0].means["z"], runs[1].means["z"])


# ------------------------------------------------------------------------ ESS, R-hat, MCSE
def test_result_diagnostics_are_those_of_its_traces_and_mcse_agrees_with_batch_means():
    # vMF on S^2 (kappa 2), 400 chains from the uniform law (a stationary-enough start), BAOAB
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2], step_size=0.3)
    g = torch.Generator().manual_seed(1)
    out = sampler.sample(_sphere_start(400, g), 1200, burn_in=200, observables=OBS, generator=g,
                         n_batches=10, trace_draws=250)  # fmt: skip
    assert out.trace_stride == 4 and out.n_traced_chains == 400
    assert out.traces["x"].shape == (400, 250, 3)
    ref = summarise(out.traces)
    torch.testing.assert_close(out.rhat["x"], ref["x"]["rhat"])
    torch.testing.assert_close(out.ess_bulk["z"], ref["z"]["ess_bulk"])
    assert float(out.rhat["z"]) < RHAT_WARN
    # two estimates of the same error: batch means over 1000 recorded steps with 10 batches per
    # chain (4000 batch means: relative sd of the stderr ~ 1/sqrt(2 * 4000)) and the ESS of the
    # thinned traces; ESS-based MCSE is a mild over-estimate on a stride-4 trace, never 2x
    ratio = out.mcse["z"] / out.stderrs["z"]
    assert 0.8 < float(ratio) < 1.5, float(ratio)


def test_ess_is_scaled_to_every_chain_when_only_some_are_traced():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2], step_size=0.3)
    g = torch.Generator().manual_seed(2)
    per_chain = 100 * 8 * 4  # 100 draws of z (1) and x (3), float64
    out = sampler.sample(_sphere_start(256, g), 300, burn_in=100, observables=OBS, generator=g,
                         trace_draws=100, trace_bytes=64 * per_chain)  # fmt: skip
    assert out.n_traced_chains == 64
    ref = summarise(out.traces)
    torch.testing.assert_close(out.ess_bulk["z"], 4 * ref["z"]["ess_bulk"])
    torch.testing.assert_close(out.mcse["z"], ref["z"]["mcse_mean"] / 2)


# ------------------------------------------------------------------------ untrusted runs
def test_chains_stuck_in_different_places_warn_on_rhat():
    # two groups of chains in different modes: a deep double well on the circle, cos(2 theta)
    well = lambda x: -12.0 * (x[..., 0] ** 2 - x[..., 1] ** 2)  # noqa: E731
    sampler = ml.Langevin(ml.Sphere(), potential=well, step_size=0.05)
    x0 = torch.tensor([[1.0, 0.0]] * 8 + [[-1.0, 0.0]] * 8, dtype=DT)
    g = torch.Generator().manual_seed(0)
    with pytest.warns(ml.UntrustedRunWarning, match="R-hat"):
        out = sampler.sample(x0, 400, burn_in=100, observables={"c": lambda x: x[..., 0]},
                             generator=g)  # fmt: skip
    assert float(out.rhat["c"]) > 1.5
    with pytest.raises(ml.UntrustedRunError, match="R-hat") as err:
        sampler.sample(x0, 400, burn_in=100, observables={"c": lambda x: x[..., 0]},
                       generator=torch.Generator().manual_seed(0), strict=True)  # fmt: skip
    assert err.value.result.rhat["c"] > 1.5


def test_too_few_effective_samples_warn():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=0.01)
    g = torch.Generator().manual_seed(0)
    with pytest.warns(ml.UntrustedRunWarning, match=f"ESS below {ESS_WARN} for 'z \\(bulk\\)'"):
        sampler.sample(_sphere_start(2, g), 40, observables={"z": OBS["z"]}, generator=g)


def test_a_mixed_run_does_not_warn():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2], step_size=0.3)
    g = torch.Generator().manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ml.UntrustedRunWarning)
        sampler.sample(_sphere_start(200, g), 600, burn_in=200, observables=OBS, generator=g)


def test_the_all_failing_ellipse_run_warns_and_strict_raises():
    sampler = ml.Langevin(_ellipse(), potential=lambda x: x[..., 1], step_size=50.0)
    x0 = _ellipse_points(64)
    with pytest.warns(ml.UntrustedRunWarning, match=r"9\d\.\d+% of the chain-steps failed"):
        sampler.sample(x0, 20, observables={"y": lambda x: x[..., 1]},
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    with pytest.raises(ml.ShakeError):
        sampler.sample(x0, 20, strict=True, generator=torch.Generator().manual_seed(0))


def test_a_constant_observable_has_no_rhat_and_does_not_warn():
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2], step_size=0.3)
    g = torch.Generator().manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ml.UntrustedRunWarning)
        radius = {"r": lambda x: x.norm(dim=-1).round(decimals=6)}
        out = sampler.sample(
            _sphere_start(200, g), 600, burn_in=200, generator=g, observables=radius
        )
    assert math.isnan(float(out.rhat["r"]))


# ------------------------------------------------------------------------------- arviz
def test_to_arviz_holds_the_traces_and_its_diagnostics_agree():
    az = pytest.importorskip("arviz")
    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2], step_size=0.3)
    g = torch.Generator().manual_seed(5)
    out = sampler.sample(_sphere_start(8, g), 500, burn_in=100, observables=OBS, generator=g)
    data = out.to_arviz()
    post = data["posterior"]
    assert post["x"].shape == (8, 400, 3) and post["z"].shape == (8, 400)
    assert post["z"].dims[:2] == ("chain", "draw")
    ess = az.ess(data, method="bulk")
    rhat = az.rhat(data, method="rank")
    assert ess["z"].values == pytest.approx(float(out.ess_bulk["z"]), rel=1e-8)
    assert rhat["x"].values == pytest.approx(out.rhat["x"].numpy(), rel=1e-10)


def test_to_arviz_without_arviz_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_arviz(name, *args, **kwargs):
        if name == "arviz":
            raise ImportError("No module named 'arviz'")
        return real(name, *args, **kwargs)

    sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -x[..., 2], step_size=0.2)
    g = torch.Generator().manual_seed(0)
    out = sampler.sample(_sphere_start(4, g), 20, observables=OBS, generator=g)
    monkeypatch.setattr(builtins, "__import__", no_arviz)
    with pytest.raises(ImportError, match=r"manifold-langevin\[arviz\]"):
        out.to_arviz()


def test_rhat_needs_about_a_hundred_effective_draws_per_chain():
    # stationary AR(1) chains (started in their stationary law): R-hat - 1 is about 0.9 / (ESS
    # per chain), the relation the R-hat warning and the tutorial quote; it falls below 1.01
    # only around 100 effective draws per chain
    from manifold_langevin.sampling.diagnostics import ess, rhat

    g = torch.Generator().manual_seed(0)
    phi, chains = 0.9, 500
    products, below = [], []
    for n in (400, 1000, 4000):
        x = torch.empty(chains, n, dtype=DT)
        x[:, 0] = torch.randn(chains, dtype=DT, generator=g)
        noise = torch.randn(chains, n, dtype=DT, generator=g) * math.sqrt(1 - phi**2)
        for i in range(1, n):
            x[:, i] = phi * x[:, i - 1] + noise[:, i]
        r, per_chain = float(rhat(x)), float(ess(x)) / chains
        products.append((r - 1) * per_chain)
        below.append(r < RHAT_WARN)
    assert all(0.6 < p < 1.3 for p in products), products
    assert below == [False, False, True]
