"""Convergence diagnostics: agreement with ArviZ to rounding, the building blocks against direct
computations, and statistical properties on chains whose answers are known.

The ArviZ comparisons skip without ArviZ; everything else needs only torch.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

from manifold_langevin.sampling import diagnostics as diag
from manifold_langevin.sampling.diagnostics import ess, mcse_mean, rhat, summarise

DT = torch.float64
RTOL = 1e-8


def _ar1(chains, draws, phi, element=(), seed=0, dtype=DT):
    """Stationary Gaussian AR(1) chains, $x_t = \\phi x_{t-1} + \\sqrt{1 - \\phi^2}\\, e_t$."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn((chains, draws, *element), generator=g, dtype=DT)
    x = torch.empty_like(e)
    x[:, 0] = e[:, 0]
    s = math.sqrt(1.0 - phi * phi)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + s * e[:, t]
    return x.to(dtype)


def _all(trace):
    return {
        "ess_bulk": ess(trace, "bulk"),
        "ess_tail": ess(trace, "tail"),
        "ess_mean": ess(trace, "mean"),
        "rhat": rhat(trace),
        "mcse_mean": mcse_mean(trace),
    }


# ---------------------------------------------------------------------------- ArviZ
@pytest.fixture(scope="module")
def az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ announces its refactor on import
        arviz = pytest.importorskip("arviz")
    logging.getLogger("arviz").setLevel(logging.ERROR)  # its shape warnings for short traces
    return arviz


def _arviz(az, trace):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "more chains than draws" for short traces
        ds = az.convert_to_dataset({"x": trace.numpy()})
        out = {
            "ess_bulk": az.ess(ds, method="bulk"),
            "ess_tail": az.ess(ds, method="tail"),
            "ess_mean": az.ess(ds, method="mean"),
            "rhat": az.rhat(ds, method="rank"),
            "mcse_mean": az.mcse(ds, method="mean"),
        }
    return {
        k: torch.as_tensor(v["x"].values, dtype=DT).reshape(trace.shape[2:]) for k, v in out.items()
    }


def _assert_matches(ours, ref, rtol=RTOL):
    for key, expected in ref.items():
        got = ours[key]
        assert got.dtype == DT and got.shape == expected.shape, key
        torch.testing.assert_close(got, expected, rtol=rtol, atol=0.0, equal_nan=True, msg=key)


def _cases():
    cases = {
        # (chains, draws): one chain (R-hat NaN in ArviZ), odd draws, the 4-draw minimum
        "1x1000 phi=0.5": _ar1(1, 1000, 0.5, seed=1),
        "1x5 phi=0.5": _ar1(1, 5, 0.5, seed=2),
        "2x101 phi=0.9": _ar1(2, 101, 0.9, seed=3),
        "4x1000 phi=-0.4": _ar1(4, 1000, -0.4, seed=4),
        "4x7 phi=0.3": _ar1(4, 7, 0.3, seed=5),
        "4x4 iid": _ar1(4, 4, 0.0, seed=6),
        "64x1000 phi=0.95": _ar1(64, 1000, 0.95, seed=7),
        "64x501 phi=0.2": _ar1(64, 501, 0.2, seed=8),
        "4x201 element (2, 3)": _ar1(4, 201, 0.7, element=(2, 3), seed=9),
        # ties: rounded AR(1) values and small integers (odd draws), a binary trace whose folded
        # values are constant (tail R-hat NaN, so R-hat is the bulk one)
        "ties rounded": torch.round(2 * _ar1(4, 200, 0.6, seed=10)),
        "ties integers": torch.randint(
            0, 3, (4, 101), generator=torch.Generator().manual_seed(11)
        ).to(DT),
        "ties binary": torch.tensor([0.0, 1.0], dtype=DT).repeat(4, 50),
        "constant": torch.full((4, 100), 0.7, dtype=DT),
    }
    shifted = _ar1(4, 300, 0.3, element=(2,), seed=12)
    shifted[1] += 2.0
    cases["not converged"] = shifted
    return cases


@pytest.mark.parametrize("name", list(_cases()))
def test_matches_arviz(az, name):
    trace = _cases()[name]
    ref = _arviz(az, trace)
    ours = _all(trace)
    _assert_matches(ours, ref)
    summary = summarise({"x": trace})["x"]
    assert set(summary) == {"ess_bulk", "ess_tail", "rhat", "mcse_mean"}
    for key, value in summary.items():
        torch.testing.assert_close(value, ours[key], rtol=1e-14, atol=0.0, equal_nan=True)
    if name == "ties binary":  # the folded values are constant: R-hat is the bulk one
        assert ours["rhat"].isfinite()
    if name == "not converged":
        assert (ref["rhat"] > 1.01).all() and (ours["rhat"] > 1.01).all()


def test_float32_matches_arviz(az):
    trace = _ar1(4, 301, 0.6, element=(3,), seed=13, dtype=torch.float32)
    ours = _all(trace)
    # ArviZ computes the ESS in float64 whatever the input...
    ref32 = _arviz(az, trace)
    _assert_matches(
        {k: ours[k] for k in ("ess_bulk", "ess_tail", "ess_mean")},
        {k: ref32[k] for k in ("ess_bulk", "ess_tail", "ess_mean")},
    )
    # ...but folds (R-hat) and takes the standard deviation (MCSE) in float32; ours are float64
    # throughout, so they equal ArviZ's on the same values cast to float64
    _assert_matches(ours, _arviz(az, trace.to(DT)))
    torch.testing.assert_close(ours["mcse_mean"], ref32["mcse_mean"], rtol=1e-5, atol=0.0)


def test_nan_and_short_traces_match_arviz(az):
    trace = _ar1(4, 100, 0.5, element=(2,), seed=14)
    trace[2, 50, 0] = math.nan  # NaN in one element only
    ours, ref = _all(trace), _arviz(az, trace)
    _assert_matches(ours, ref)
    assert all(v[0].isnan() and v[1].isfinite() for v in ours.values())
    short = _ar1(4, 3, 0.5, element=(2,), seed=15)
    _assert_matches(_all(short), _arviz(az, short))


# ---------------------------------------------------------------------------- degenerate input
def test_degenerate_traces_give_nan_or_counts_without_raising():
    const = torch.full((3, 9, 2), 2.5)
    out = _all(const)
    n_split = 3 * 2 * 4  # the middle draw of 9 is dropped
    for kind in ("ess_bulk", "ess_tail", "ess_mean"):
        torch.testing.assert_close(out[kind], torch.full((2,), float(n_split), dtype=DT))
    assert out["rhat"].isnan().all()
    assert (out["mcse_mean"] == 0).all()
    for draws in (0, 1, 3):
        short = _all(torch.randn(4, draws, 2))
        assert all(v.shape == (2,) and v.isnan().all() for v in short.values())
    one_chain = _all(_ar1(1, 200, 0.3, seed=16))
    assert one_chain["rhat"].isnan() and one_chain["ess_bulk"].isfinite()
    assert all(v.isnan().all() for v in summarise({"x": torch.randn(2, 3)})["x"].values())


def test_errors_and_output_layout():
    with pytest.raises(ValueError, match="kind"):
        ess(torch.randn(4, 100), kind="median")
    with pytest.raises(ValueError, match="chain, draw"):
        rhat(torch.randn(100))
    out = _all(torch.randn(4, 20, 2, 3, dtype=torch.float16).float())
    assert all(v.shape == (2, 3) and v.dtype == DT for v in out.values())


def test_the_middle_draw_of_an_odd_trace_is_dropped():
    trace = _ar1(4, 101, 0.5, seed=17)
    moved = trace.clone()
    moved[:, 50] = torch.tensor([1e3, -1e3, 0.25, 7.0], dtype=DT)
    for f in (lambda t: ess(t, "bulk"), lambda t: ess(t, "mean"), rhat):
        torch.testing.assert_close(f(moved), f(trace), rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------------------- building blocks
def _direct_normal_scores(flat):
    """Blom normal scores of average ranks of each row, by counting (O(N^2))."""
    n = flat.shape[-1]
    less = (flat[:, None, :] < flat[:, :, None]).sum(-1).to(DT)
    equal = (flat[:, None, :] == flat[:, :, None]).sum(-1).to(DT)
    ranks = less + (equal + 1) / 2  # the average rank of a run of ties
    return torch.special.ndtri((ranks - 3 / 8) / (n + 1 / 4))


@pytest.mark.parametrize("values", ["ties", "continuous"])
def test_ranks_average_ties_and_use_blom_offset(values):
    g = torch.Generator().manual_seed(18)
    if values == "ties":
        v = torch.randint(0, 5, (3, 32), generator=g).to(DT)
    else:
        v = torch.randn(3, 32, generator=g, dtype=DT)
    ordered, order = v.sort(dim=-1)
    z = diag._normal_scores(ordered, order)
    torch.testing.assert_close(z, _direct_normal_scores(v), rtol=0.0, atol=1e-15)


def _classic_rhat(v):
    n = v.shape[-1]
    b = n * v.mean(-1).var(dim=-1)
    w = v.var(dim=-1).mean(-1)
    return ((b / w + n - 1) / n).sqrt()


@pytest.mark.parametrize("values", ["ties", "continuous"])
@pytest.mark.parametrize("disagreement", ["location", "scale"])
def test_rank_normalised_rhat_and_bulk_ess_from_direct_ranks(values, disagreement):
    # R-hat = max(R-hat of the normal scores of the split chains, R-hat of those of the folded
    # split chains |x - median|), the bulk ESS that of the normal scores; here with ranks counted
    # directly, without ArviZ. A shifted chain raises the bulk R-hat, a wider one the tail R-hat.
    g = torch.Generator().manual_seed(19)
    trace = torch.randn(4, 21, 2, generator=g, dtype=DT)  # odd: the middle draw is dropped
    if disagreement == "location":
        trace[1] += 0.8
    else:
        trace[1] *= 4.0
    if values == "ties":
        trace = torch.round(trace)
    split = torch.cat((trace[:, :10], trace[:, 11:]), dim=0).permute(2, 0, 1)  # (2, 8, 10)
    flat = split.reshape(2, -1)
    z = _direct_normal_scores(flat).reshape(split.shape)
    folded = (flat - flat.quantile(0.5, dim=-1, keepdim=True)).abs()
    z_folded = _direct_normal_scores(folded).reshape(split.shape)
    bulk, tail = _classic_rhat(z), _classic_rhat(z_folded)
    assert ((tail > bulk) == (disagreement == "scale")).all()
    expected = torch.maximum(bulk, tail)
    torch.testing.assert_close(rhat(trace), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(ess(trace, "bulk"), diag._ess_of_split(z), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("n", [2, 3, 7, 50, 97])
def test_mean_autocovariance_is_the_direct_sum(n):
    v = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(n), dtype=DT)
    c = v - v.mean(-1, keepdim=True)
    direct = torch.stack(
        [(c[..., : n - t] * c[..., t:]).sum(-1).mean(-1) / n for t in range(n)], dim=-1
    )
    torch.testing.assert_close(diag._mean_autocovariance(v), direct, rtol=0.0, atol=1e-13)


@pytest.mark.parametrize("chains", [1, 2, 5])
def test_combined_autocorrelation_uses_within_and_between_chain_variance(chains):
    # rho_t = 1 - (W - mean_m gamma_{m,t}) / var_plus, W the mean within-chain variance (divisor
    # n - 1), var_plus = (n - 1)/n W + the variance of the chain means (Vehtari et al. 2021)
    g = torch.Generator().manual_seed(chains)
    v = torch.randn(2, chains, 9, generator=g, dtype=DT) + torch.randn(2, chains, 1, generator=g)
    n = v.shape[-1]
    c = v - v.mean(-1, keepdim=True)
    acov = torch.stack([(c[..., : n - t] * c[..., t:]).sum(-1).mean(-1) / n for t in range(n)], -1)
    w = v.var(dim=-1).mean(-1, keepdim=True)
    var_plus = (n - 1) / n * w
    if chains > 1:
        var_plus = var_plus + v.mean(-1).var(dim=-1)[:, None]
    expected = 1 - (w - acov) / var_plus
    expected[:, 0] = 1.0
    ours = diag._combined_autocorrelation(v, n)
    torch.testing.assert_close(ours, expected, rtol=0.0, atol=1e-13)


def test_fft_length_is_the_smallest_5_smooth_number():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 300):
        assert diag._fft_length(n) == next(m for m in range(n, 2 * n + 2) if smooth(m))


def _geyer_reference(rho):
    """Geyer's initial positive then monotone sequence, as a scalar loop (Stan's formulation)."""
    rho = list(rho)
    n = len(rho) + 1  # rho holds lags 0..2 kmax + 1, kmax = (n - 3) // 2 for an even n
    kept = [1.0, rho[1]]
    t = 1
    even, odd = 1.0, rho[1]
    while t < n - 3 and even + odd > 0:
        even, odd = rho[t + 1], rho[t + 2]
        if even + odd >= 0:
            kept += [even, odd]
        t += 2
    max_t = t - 2
    tail = even if (even > 0 or len(kept) > max_t + 1) else 0.0
    pairs = [kept[2 * k] + kept[2 * k + 1] for k in range((max_t + 1) // 2)]
    for k in range(1, len(pairs)):
        pairs[k] = min(pairs[k], pairs[k - 1])
    return -1.0 + 2.0 * sum(pairs) + tail


def test_geyer_sequence_matches_a_scalar_loop():
    g = torch.Generator().manual_seed(19)
    lags = 40
    decays = torch.rand(200, 1, generator=g, dtype=DT) * 1.2 - 0.3
    noise = 0.15 * torch.randn(200, lags, generator=g, dtype=DT)
    rho = decays ** torch.arange(lags, dtype=DT) + noise
    rho[:, 0] = 1.0
    # edge cases: the first pair non-positive; a pair summing to exactly zero with a negative
    # even term; never truncated before the end; a positive even term after a negative pair
    rho[0, 1] = -1.0
    rho[1, :6] = torch.tensor([1.0, 0.5, -0.25, 0.25, 0.1, 0.0])
    rho[2] = 0.9 ** torch.arange(lags, dtype=DT)
    rho[3, :6] = torch.tensor([1.0, 0.5, 0.3, -0.6, 0.2, 0.0])
    total = 10_000
    ours = diag._geyer_tau(rho, total)
    floor = 1 / math.log10(total)
    expected = torch.tensor([max(_geyer_reference(r.tolist()), floor) for r in rho], dtype=DT)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.95, 0.0, 1.0])
def test_tail_quantile_is_linear_interpolation(p):
    x = torch.randn(3, 37, generator=torch.Generator().manual_seed(20), dtype=DT).sort(-1).values
    expected = torch.quantile(x, p, dim=-1)  # "linear": R's type 7
    torch.testing.assert_close(diag._quantile_type7(x, p), expected, rtol=0.0, atol=1e-15)
    shuffled = x[:, torch.randperm(37, generator=torch.Generator().manual_seed(21))]
    unsorted = diag._quantile_type7_unsorted(shuffled, p)
    torch.testing.assert_close(unsorted, expected, rtol=0.0, atol=1e-15)


@pytest.mark.parametrize("draws", [200, 201])
def test_tail_ess_and_mcse_from_their_definitions(draws):
    # ESS tail = the smaller "mean" ESS of the indicators x <= q_0.05 and x <= q_0.95 (quantiles
    # of all draws, the middle one of an odd count included); MCSE = sd / sqrt(ESS mean)
    trace = _ar1(4, draws, 0.6, element=(2,), seed=26)
    flat = trace.permute(2, 0, 1).reshape(2, -1)
    per_q = [ess((trace <= flat.quantile(p, dim=-1)).to(DT), "mean") for p in (0.05, 0.95)]
    torch.testing.assert_close(ess(trace, "tail"), torch.minimum(*per_q), rtol=1e-12, atol=0.0)
    expected = flat.std(dim=-1) / ess(trace, "mean").sqrt()
    torch.testing.assert_close(mcse_mean(trace), expected, rtol=1e-12, atol=0.0)


_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_no_host_reads_and_the_trace_is_untouched(monkeypatch):
    # every way a tensor value reaches Python is patched to fail while the diagnostics run
    def forbidden(name):
        def read(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a value on the host")

        return read

    traces = {"ar1": _ar1(4, 101, 0.5, element=(3,), seed=27), "one chain": torch.randn(1, 50)}
    traces["ar1"][0, 3, 1] = math.nan
    before = {k: v.clone() for k, v in traces.items()}
    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    out = summarise(traces)
    out["ar1"]["ess_mean"] = ess(traces["ar1"], "mean")
    monkeypatch.undo()
    assert out["ar1"]["ess_bulk"][1].isnan() and out["ar1"]["ess_mean"][0].isfinite()
    for k, v in traces.items():  # the traces are left as they were
        torch.testing.assert_close(v, before[k], rtol=0.0, atol=0.0, equal_nan=True)


# ---------------------------------------------------------------------------- properties
def test_iid_bulk_ess_is_the_number_of_draws():
    # For iid draws the lag-t autocorrelation estimates are about N(0, 1/N) and independent
    # (Bartlett), so tau_hat = 1 + 2 rho_1 + rho_2 + 2 (kept later pairs, ~1 on average, each of
    # variance 2/N) has sd about 3/sqrt(N); ESS/N has the same sd (measured: 2.75/sqrt(N) to
    # 2.96/sqrt(N) over 400 replicates at N = 2000 and 4000). The truncation biases ESS/N low by
    # about 0.6/sqrt(N) (measured). Bounds: 5 sd per element, 5 sd of the mean of 16 plus the bias.
    x = torch.randn(4, 1000, 16, generator=torch.Generator().manual_seed(21), dtype=DT)
    n = 4000
    sd = 3.0 / math.sqrt(n)
    for kind in ("bulk", "mean"):
        ratio = ess(x, kind) / n
        assert ((ratio - 1).abs() < 5 * sd).all(), (kind, ratio)
        assert abs(ratio.mean() - 1) < 5 * sd / 4 + 1 / math.sqrt(n), (kind, ratio.mean())


def test_chains_stuck_apart_have_few_effective_draws():
    # one of 4 iid chains offset by 3 sd: the split chain means have variance about
    # 9 * 0.214 = 1.9, so every rho_t is about 1 - 1/2.9 = 0.66 and ESS is a few draws per chain
    # (without the between-chain variance it would stay near N = 4000)
    x = torch.randn(4, 1000, 8, generator=torch.Generator().manual_seed(28), dtype=DT)
    x[3] += 3.0
    for kind in ("bulk", "mean", "tail"):
        assert (ess(x, kind) < 0.05 * 4000).all(), kind


@pytest.mark.parametrize("phi", [-0.3, 0.5, 0.9])
def test_ar1_ess_approaches_the_integrated_autocorrelation(phi):
    # ESS/N -> 1/tau = (1 - phi)/(1 + phi). The windowed estimator has relative variance about
    # 2 (2 W + 1) / N (Madras and Sokal 1988) with Geyer's window W at most about 5/(1 - |phi|)
    # lags (the measured sd over 100 replicates, 0.030, 0.030 and 0.071 for phi = -0.3, 0.5, 0.9,
    # is below this). Bound: 5 sd of the mean of 16 independent elements.
    chains, draws, elements = 8, 4000, 16
    x = _ar1(chains, draws, phi, element=(elements,), seed=22)
    n = chains * draws
    sd = math.sqrt(2 * (2 * 5 / (1 - abs(phi)) + 1) / n)
    for kind in ("mean", "bulk"):
        ratio = ess(x, kind) / n / ((1 - phi) / (1 + phi))
        assert abs(ratio.mean() - 1) < 5 * sd / math.sqrt(elements), (kind, ratio.mean())


def test_rhat_separates_mixed_from_shifted_chains():
    # iid chains: R-hat - 1 ~ (B/W - 1)/(2n), B/W ~ chi2_7/7 for 8 split chains of n = 500,
    # sd sqrt(2/7)/1000 = 5e-4, so 1.01 is ~19 sd away. One chain shifted by 1 (sd 1): the split
    # chain means have variance 0.214, R-hat ~ sqrt(1.214) = 1.10 (measured min over 400: 1.07).
    x = torch.randn(4, 1000, 16, generator=torch.Generator().manual_seed(23), dtype=DT)
    assert (rhat(x) < 1.01).all()
    x[0] += 1.0
    assert (rhat(x) > 1.05).all()


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu_without_host_sync():
    traces = {
        "ar1": _ar1(8, 301, 0.7, element=(3,), seed=24),
        "ties": torch.round(2 * _ar1(4, 200, 0.6, seed=25)).float(),
        "short": torch.randn(4, 3),
    }
    traces["ar1"][1, 5, 2] = math.nan
    cpu = summarise(traces)
    on_gpu = {k: v.cuda() for k, v in traces.items()}
    summarise(on_gpu)  # warm-up (cuFFT plans)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = summarise(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, values in cpu.items():
        for key, value in values.items():
            assert gpu[name][key].device.type == "cuda"
            torch.testing.assert_close(
                gpu[name][key].cpu(), value, rtol=1e-10, atol=0.0, equal_nan=True
            )
