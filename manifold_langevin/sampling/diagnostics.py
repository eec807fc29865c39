r"""MCMC convergence diagnostics: rank-normalised split $\hat R$, bulk and tail effective sample
sizes, and the Monte Carlo standard error of the mean.

The definitions follow Vehtari, Gelman, Simpson, Carpenter and Bürkner, *Rank-normalization,
folding, and localization: an improved $\hat R$ for assessing convergence of MCMC*, Bayesian
Analysis 16 (2021), with the effective sample size from the initial monotone sequence of Geyer
(*Practical Markov chain Monte Carlo*, Statistical Science 7, 1992) as Stan computes it, and the
conventions of ArviZ (`arviz.ess`, `arviz.rhat`, `arviz.mcse`), whose results these functions
reproduce to rounding.

Every function takes a trace shaped `(chain, draw, *element)` (the layout ArviZ uses) of any
floating dtype, computes in float64 on the trace's device, reads nothing on the host, and returns
a float64 tensor shaped `element`: each element (each coordinate of the recorded quantity) is
diagnosed on its own. Elements are processed in groups (about a quarter of them at a time), and
the working memory stays within a few times the float64 size of the trace (measured: about 5
times with three elements, about 8 times for a single one: the sorts, their indices, the normal
scores).

Conventions shared by all of them:

- **Split chains.** Each chain is cut into its first and last $\lfloor S/2 \rfloor$ draws, which
  become two chains; for an odd number of draws $S$ the middle draw is dropped.
- **Rank normalisation.** All $N$ values of the split chains are ranked together (ties get the
  average of their ranks, as `scipy.stats.rankdata(method="average")`), and rank $r$ becomes
  $z = \Phi^{-1}\big((r - 3/8)/(N + 1/4)\big)$ (Blom's offset).
- **Degenerate input.** An element with a NaN anywhere in its trace, or a trace with fewer than
  4 draws, gives NaN (for $\hat R$ also fewer than 2 chains). A constant element has effective
  sample size $N$ (the size of the split trace), $\hat R$ NaN and standard error 0. None of these
  raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["ess", "mcse_mean", "rhat", "summarise"]

_KINDS = ("bulk", "tail", "mean")
_TAIL_PROBS = (0.05, 0.95)
_MIN_DRAWS = 4
# a split trace whose values span less than this is treated as constant (numpy's
# `finfo(float64).resolution`, the threshold ArviZ uses)
_CONSTANT_RANGE = 1e-15


# ---------------------------------------------------------------------------- public functions
def ess(trace: torch.Tensor, kind: str = "bulk") -> torch.Tensor:
    r"""Effective sample size of every element of a trace.

    For split chains $x_{mn}$ ($M$ chains of $n$ draws, $N = Mn$), with $\hat\gamma_{m,t}$ the
    (biased, FFT-computed) autocovariance of chain $m$ at lag $t$, $W$ the mean within-chain
    variance and $\widehat{\mathrm{var}}^+ = \frac{n-1}{n} W + \mathrm{var}_m(\bar x_m)$, the
    combined autocorrelation is
    $\hat\rho_t = 1 - (W - \overline{\hat\gamma_{\cdot,t}}) / \widehat{\mathrm{var}}^+$
    (Vehtari et al. 2021). Geyer's initial positive sequence keeps the pairs
    $P_k = \hat\rho_{2k} + \hat\rho_{2k+1}$ while they are positive, the initial monotone
    sequence replaces them by their running minimum, and
    $\hat\tau = -1 + 2 \sum_{k<K} P_k + \hat\rho_{2K}$ (the even term of the pair after the
    kept ones counts when it is positive or that pair is not negative), floored at
    $1/\log_{10} N$ as ArviZ does; $\mathrm{ESS} = N / \hat\tau$.

    Args:
        trace: shaped `(chain, draw, *element)`, any floating dtype.
        kind: `"bulk"`: ESS of the rank-normalised split chains; `"tail"`: the smaller ESS of
            the indicators $x \le q_{0.05}$ and $x \le q_{0.95}$ of the split chains (quantiles
            of all draws, linear interpolation between order statistics, R's type 7); `"mean"`:
            ESS of the split chains themselves.

    Returns:
        float64 tensor shaped `element`.

    Raises:
        ValueError: an unknown `kind`, or a trace with fewer than 2 dimensions.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return _diagnose(trace, ("ess_" + kind,))["ess_" + kind]


def rhat(trace: torch.Tensor) -> torch.Tensor:
    r"""Rank-normalised split $\hat R$ of every element of a trace.

    $\hat R = \max(\hat R_\text{bulk}, \hat R_\text{tail})$ where $\hat R_\text{bulk}$ is the
    classic $\hat R$ of the rank-normalised split chains and $\hat R_\text{tail}$ that of the
    rank-normalised folded split chains $|x - \operatorname{median}(x)|$ (Vehtari et al.
    2021). For $M$ chains of $n$ draws, with $B = n\,\mathrm{var}_m(\bar z_m)$ and
    $W$ the mean within-chain variance, $\hat R = \sqrt{(B/W + n - 1)/n}$. Values above 1.01
    indicate that the chains have not mixed.

    Args:
        trace: shaped `(chain, draw, *element)`, any floating dtype.

    Returns:
        float64 tensor shaped `element`; NaN with fewer than 2 chains (as ArviZ) or 4 draws, for
        a NaN in the trace, and for a constant element.

    Raises:
        ValueError: a trace with fewer than 2 dimensions.
    """
    return _diagnose(trace, ("rhat",))["rhat"]


def mcse_mean(trace: torch.Tensor) -> torch.Tensor:
    r"""Monte Carlo standard error of the mean of every element of a trace.

    $\mathrm{sd}(x) / \sqrt{\mathrm{ESS}_\text{mean}}$, with the standard deviation (divisor
    $N - 1$) of all draws of all chains and the `"mean"` effective sample size of
    [`ess`][manifold_langevin.sampling.diagnostics.ess].

    Args:
        trace: shaped `(chain, draw, *element)`, any floating dtype.

    Returns:
        float64 tensor shaped `element`.

    Raises:
        ValueError: a trace with fewer than 2 dimensions.
    """
    return _diagnose(trace, ("mcse_mean",))["mcse_mean"]


def summarise(traces: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    r"""All diagnostics of several traces at once.

    Shares the work between the diagnostics of one trace (the split chains, their ranks and the
    sorted values are computed once).

    Args:
        traces: `name -> trace`, each shaped `(chain, draw, *element)`.

    Returns:
        `name -> {"ess_bulk", "ess_tail", "rhat", "mcse_mean"}`, each a float64 tensor shaped
        like that trace's elements; see [`ess`][manifold_langevin.sampling.diagnostics.ess],
        [`rhat`][manifold_langevin.sampling.diagnostics.rhat] and
        [`mcse_mean`][manifold_langevin.sampling.diagnostics.mcse_mean].

    Raises:
        ValueError: a trace with fewer than 2 dimensions.

    Examples:
        >>> import torch
        >>> from manifold_langevin.sampling.diagnostics import summarise
        >>> g = torch.Generator().manual_seed(0)
        >>> mixed = torch.randn(4, 1000, 2, generator=g)  # 4 chains, 1000 draws, 2 coordinates
        >>> stuck = mixed + torch.tensor([0.0, 0.0, 0.0, 1.0])[:, None, None]  # one chain off
        >>> summary = summarise({"mixed": mixed, "stuck": stuck})
        >>> summary["mixed"]["rhat"].shape
        torch.Size([2])
        >>> summary["mixed"]["rhat"] < 1.01, summary["stuck"]["rhat"] > 1.01
        (tensor([True, True]), tensor([True, True]))
        >>> bool((summary["mixed"]["ess_bulk"] > 3000).all())
        True
    """
    return {name: _diagnose(trace, _SUMMARY) for name, trace in traces.items()}


# ---------------------------------------------------------------------------- one trace
_SUMMARY = ("ess_bulk", "ess_tail", "rhat", "mcse_mean")
# element groups hold at most this many values (or one element), bounding the working memory
_GROUP_VALUES = 1 << 22


def _diagnose(trace: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The `wanted` diagnostics of a trace, computed over groups of elements.

    A group holds about a quarter of the elements (at most `_GROUP_VALUES` values, at least one
    element), so the float64 copies and sorts of the work never hold more than a few times the
    values of one group.
    """
    if trace.dim() < 2:
        raise ValueError(
            f"a trace is shaped (chain, draw, *element), got shape {tuple(trace.shape)}"
        )
    n_chains, n_draws, shape = trace.shape[0], trace.shape[1], trace.shape[2:]
    if n_draws < _MIN_DRAWS or n_chains < 1:
        nan = torch.full(shape, math.nan, dtype=torch.float64, device=trace.device)
        return {key: nan.clone() for key in wanted}
    m = math.prod(shape)
    x = trace.detach().reshape(n_chains, n_draws, m)
    group = max(1, min(-(-m // 4), _GROUP_VALUES // (n_chains * n_draws)))
    parts = []
    for lo in range(0, m, group):
        # (element, chain, draw): the draw axis last for the FFT and the chain means
        chunk = x[:, :, lo : lo + group].permute(2, 0, 1).to(torch.float64).contiguous()
        parts.append(_diagnose_group(chunk, wanted))
    out = {}
    for key in wanted:
        values = torch.cat([part[key] for part in parts]) if len(parts) > 1 else parts[0][key]
        out[key] = values.reshape(shape)
    return out


def _diagnose_group(x: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The `wanted` diagnostics of float64 chains `x` shaped `(element, chain, draw)`.

    The order of the work frees each large intermediate as soon as it is used: the sorted split
    values give the tail quantiles (when the split holds every draw), the bulk normal scores and,
    merged into folded order, the tail normal scores.
    """
    n_elem, n_chains, n_draws = x.shape
    out: dict[str, torch.Tensor] = {}
    split = _split(x)
    quantiles = None
    want_rhat = "rhat" in wanted and n_chains >= 2  # as ArviZ: no R-hat from one chain
    if "rhat" in wanted and not want_rhat:
        out["rhat"] = torch.full((n_elem,), math.nan, dtype=x.dtype, device=x.device)
    if "ess_bulk" in wanted or want_rhat:
        ordered, order = torch.sort(split.reshape(n_elem, -1), dim=-1)
        if "ess_tail" in wanted and n_draws % 2 == 0:  # the split chains hold every draw
            quantiles = [_quantile_type7(ordered, p) for p in _TAIL_PROBS]
        z = _normal_scores(ordered, order).reshape(split.shape)
        if want_rhat:
            n = ordered.shape[-1]  # even: 2 * chains * half
            median = (ordered[:, n // 2 - 1] + ordered[:, n // 2]) / 2
            # over the sorted values the folded ones fall then rise: two sorted runs, which a
            # stable sort merges far faster than it sorts arbitrary values
            folded, merge = torch.sort((ordered - median[:, None]).abs(), dim=-1, stable=True)
            del ordered
            merge = order.gather(-1, merge)
            del order
            z_folded = _normal_scores(folded, merge).reshape(split.shape)
            del folded, merge
            bulk, tail = _rhat_of_split(z), _rhat_of_split(z_folded)
            del z_folded
            # max(bulk, tail) with Python's `max` semantics, as ArviZ: NaN in the bulk stays
            out["rhat"] = torch.where(tail > bulk, tail, bulk)
        else:
            del ordered, order
        if "ess_bulk" in wanted:
            out["ess_bulk"] = _ess_of_split(z)
        del z
    if "ess_tail" in wanted:
        if quantiles is None:
            quantiles = [_quantile_type7_unsorted(x.reshape(n_elem, -1), p) for p in _TAIL_PROBS]
        low, high = (_ess_of_split(_split((x <= q[:, None, None]).to(x.dtype))) for q in quantiles)
        # min(low, high) with Python's `min` semantics (the first unless the second is smaller)
        out["ess_tail"] = torch.where(high < low, high, low)
    if "ess_mean" in wanted or "mcse_mean" in wanted:
        ess_mean = _ess_of_split(split)
        if "ess_mean" in wanted:
            out["ess_mean"] = ess_mean
        if "mcse_mean" in wanted:
            out["mcse_mean"] = x.reshape(n_elem, -1).std(dim=-1, correction=1) / ess_mean.sqrt()
    invalid = torch.isnan(x).reshape(n_elem, -1).any(-1)
    return {key: torch.where(invalid, math.nan, out[key]) for key in wanted}


def _split(x: torch.Tensor) -> torch.Tensor:
    """Chains `(element, chain, draw)` cut into their first and last halves (the middle draw of
    an odd count dropped): `(element, 2 chain, draw // 2)`, a view for an even count."""
    n_elem, n_chains, n_draws = x.shape
    half = n_draws // 2
    if n_draws % 2 == 0:
        return x.reshape(n_elem, 2 * n_chains, half)
    return torch.cat((x[..., :half], x[..., -half:]), dim=1)


# ---------------------------------------------------------------------------- building blocks
def _normal_scores(ordered: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    r"""$\Phi^{-1}((r - 3/8)/(N + 1/4))$ of the average ranks $r$ of each row's $N$ values,
    from the sorted rows `ordered` and their positions `order` in the unsorted rows.

    A run of ties from sorted position $a$ to $b$ (0-based) has average rank $(a + b)/2 + 1$; the
    run starts are running maxima of the positions where the value changes, forwards and then
    backwards.
    """
    n = ordered.shape[-1]
    index = torch.int32 if n < 2**31 - 1 else torch.int64
    pos = torch.arange(n, device=ordered.device, dtype=index).expand(ordered.shape)
    tie = ordered[:, 1:] == ordered[:, :-1]
    scratch = torch.empty(ordered.shape, dtype=torch.int64, device=ordered.device)
    marks = pos.clone()
    marks[:, 1:].masked_fill_(tie, 0)
    start = torch.empty_like(marks)
    torch.cummax(marks, dim=-1, out=(start, scratch))
    marks.copy_(pos)  # the same in the reversed order
    marks[:, 1:].masked_fill_(tie.flip(-1), 0)
    del tie
    stop_reversed = torch.empty_like(marks)
    torch.cummax(marks, dim=-1, out=(stop_reversed, scratch))
    del marks, scratch
    ranks = start.to(torch.float64)
    del start
    ranks -= stop_reversed.flip(-1)  # stop = n - 1 - (run start in the reversed order)
    del stop_reversed
    ranks = ranks.add_(n + 1).div_(2).sub_(0.375).div_(n + 0.25)
    z = torch.special.ndtri(ranks)
    del ranks
    return torch.empty_like(ordered).scatter_(-1, order, z)


def _type7(n: int, p: float) -> tuple[int, float]:
    """The 1-based order statistic $k$ and weight $\\gamma$ of R's type-7 `p` quantile of $n$
    values (`scipy.stats.mstats.mquantiles` with `alphap = betap = 1`): linear interpolation
    $(1 - \\gamma) x_{(k)} + \\gamma x_{(k+1)}$ around $(n - 1) p + 1$."""
    aleph = n * p + (1.0 - p)
    k = math.floor(min(max(aleph, 1.0), n - 1.0))
    return k, min(max(aleph - k, 0.0), 1.0)


def _quantile_type7(ordered: torch.Tensor, p: float) -> torch.Tensor:
    """The type-7 `p` quantile of each row of sorted values."""
    k, gamma = _type7(ordered.shape[-1], p)
    return (1.0 - gamma) * ordered[:, k - 1] + gamma * ordered[:, k]


def _quantile_type7_unsorted(flat: torch.Tensor, p: float) -> torch.Tensor:
    """The type-7 `p` quantile of each row, from two selections (no full sort)."""
    k, gamma = _type7(flat.shape[-1], p)
    low = torch.kthvalue(flat, k, dim=-1).values
    high = torch.kthvalue(flat, k + 1, dim=-1).values
    return (1.0 - gamma) * low + gamma * high


def _rhat_of_split(v: torch.Tensor) -> torch.Tensor:
    r"""Classic $\hat R$ of chains `v` shaped `(element, chain, draw)`."""
    n = v.shape[-1]
    between = n * v.mean(-1).var(dim=-1, correction=1)
    within = v.var(dim=-1, correction=1).mean(-1)
    return ((between / within + n - 1) / n).sqrt()


def _fft_length(n: int) -> int:
    r"""The smallest $2^a 3^b 5^c \ge n$."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _mean_autocovariance(v: torch.Tensor) -> torch.Tensor:
    r"""$\frac1M \sum_m \hat\gamma_{m,t}$ for $t < n$, with
    $\hat\gamma_{m,t} = \frac1n \sum_{s < n - t} (x_{m,s} - \bar x_m)(x_{m,s+t} - \bar x_m)$.

    One zero-padded real FFT per chain; the power spectra are averaged over chains before the
    inverse transform, in blocks of chains so that the transforms hold about half the size of `v`.
    """
    n_elem, n_chains, n = v.shape
    length = _fft_length(2 * n)
    block = max(1, -(-n_chains // 4))
    power = torch.zeros(n_elem, length // 2 + 1, dtype=v.dtype, device=v.device)
    for lo in range(0, n_chains, block):
        chunk = v[:, lo : lo + block]
        spectrum = torch.fft.rfft(chunk - chunk.mean(-1, keepdim=True), n=length, dim=-1)
        power += (spectrum.real.square() + spectrum.imag.square()).sum(1)
    return torch.fft.irfft(power / n_chains, n=length, dim=-1)[:, :n] / n


def _ess_of_split(v: torch.Tensor) -> torch.Tensor:
    """Geyer's initial-monotone-sequence ESS of the chains `v` shaped `(element, chain, draw)`."""
    n_chains, n = v.shape[1], v.shape[2]
    # pairs P_0..P_kmax can be examined (ArviZ's loop runs while t < n - 3, t = 1, 3, ...)
    kmax = max(0, (n - 3) // 2)
    out = n_chains * n / _geyer_tau(_combined_autocorrelation(v, 2 * kmax + 2), n_chains * n)
    # a constant trace (zero variance, NaN correlations) counts every draw, as ArviZ
    flat = v.flatten(1)
    constant = (flat.amax(-1) - flat.amin(-1)) < _CONSTANT_RANGE
    return torch.where(constant, torch.full_like(out, float(n_chains * n)), out)


def _combined_autocorrelation(v: torch.Tensor, lags: int) -> torch.Tensor:
    r"""$\hat\rho_t = 1 - (W - \overline{\hat\gamma_{\cdot,t}}) / \widehat{\mathrm{var}}^+$
    for $t <$ `lags` (Vehtari et al. 2021), with $\hat\rho_0 = 1$."""
    n_chains, n = v.shape[1], v.shape[2]
    acov = _mean_autocovariance(v)[:, :lags]
    mean_var = acov[:, 0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if n_chains > 1:
        var_plus = var_plus + v.mean(-1).var(dim=-1, correction=1)
    rho = 1.0 - (mean_var[:, None] - acov) / var_plus[:, None]
    rho[:, 0] = 1.0
    return rho


def _geyer_tau(rho: torch.Tensor, total: int) -> torch.Tensor:
    r"""The integrated autocorrelation time from autocorrelations `rho` `(element, 2 kmax + 2)`.

    With pairs $P_k = \hat\rho_{2k} + \hat\rho_{2k+1}$, $k \le k_\max$: $K$ is the number of
    leading positive pairs (at most $k_\max$), the pairs before it are replaced by their running
    minimum (the initial monotone sequence), and
    $\hat\tau = -1 + 2 \sum_{k<K} \min_{j \le k} P_j + \hat\rho_{2K}$, where the last term
    counts when $P_K \ge 0$ or $\hat\rho_{2K} > 0$ (else 0); $\hat\tau$ is floored at
    $1/\log_{10} N$. NaN autocorrelations give NaN.
    """
    kmax = rho.shape[-1] // 2 - 1
    pairs = rho[:, 0::2] + rho[:, 1::2]
    n_kept = torch.cumprod((pairs > 0).to(torch.int64), dim=-1).sum(-1).clamp(max=kmax)
    monotone = torch.cummin(pairs, dim=-1).values
    k = torch.arange(kmax + 1, device=rho.device)
    kept = torch.where(k < n_kept[:, None], monotone, torch.zeros_like(monotone)).sum(-1)
    even = rho.gather(-1, (2 * n_kept)[:, None]).squeeze(-1)
    pair_k = pairs.gather(-1, n_kept[:, None]).squeeze(-1)
    extra = torch.where((pair_k >= 0) | (even > 0), even, torch.zeros_like(even))
    tau = (-1.0 + 2.0 * kept + extra).clamp(min=1.0 / math.log10(total))
    return torch.where(torch.isnan(rho[:, 1]), torch.full_like(tau, math.nan), tau)
