r"""MCMC convergence diagnostics: rank-normalised split $\hat R$, bulk and tail effective sample
sizes, and the Monte Carlo standard error of the mean.

The definitions follow Vehtari, Gelman, Simpson, Carpenter and Bürkner, *Rank-normalization,
folding, and localization: an improved $\hat R$ for assessing convergence of MCMC*, Bayesian
Analysis 16 (2021), with the effective sample size from Geyer's initial monotone sequence as
Stan computes it, and the conventions of ArviZ (`arviz.ess`, `arviz.rhat`, `arviz.mcse`), whose
results these functions reproduce to rounding.

Every function takes a trace shaped `(chain, draw, *element)` (the layout ArviZ uses) of any
floating dtype, computes in float64 on the trace's device, reads nothing on the host, and returns
a float64 tensor shaped `element`: each element (each coordinate of the recorded quantity) is
diagnosed on its own.

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
    (Vehtari et al. 2021, eq. 10). Geyer's initial positive sequence keeps the pairs
    $P_k = \hat\rho_{2k} + \hat\rho_{2k+1}$ while they are positive, the initial monotone
    sequence replaces them by their running minimum, and
    $\hat\tau = -1 + 2 \sum_{k<K} P_k + \hat\rho_{2K}$ (the even term of the first rejected
    pair enters when it is positive), floored at $1/\log_{10} N$ as ArviZ does;
    $\mathrm{ESS} = N / \hat\tau$.

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
    t = _Trace(trace)
    if t.too_short:
        return t.nan()
    if kind == "bulk":
        out = t.ess_bulk()
    elif kind == "tail":
        out = t.ess_tail()
    else:
        out = t.ess_mean()
    return t.finish(out)


def rhat(trace: torch.Tensor) -> torch.Tensor:
    r"""Rank-normalised split $\hat R$ of every element of a trace.

    $\hat R = \max(\hat R_\text{bulk}, \hat R_\text{tail})$ where $\hat R_\text{bulk}$ is the
    classic $\hat R$ of the rank-normalised split chains and $\hat R_\text{tail}$ that of the
    rank-normalised folded split chains $|x - \operatorname{median}(x)|$ (Vehtari et al. 2021,
    section 4.2). For $M$ chains of $n$ draws, with $B = n\,\mathrm{var}_m(\bar z_m)$ and
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
    t = _Trace(trace)
    if t.too_short or t.n_chains < 2:
        return t.nan()
    return t.finish(t.rhat())


def mcse_mean(trace: torch.Tensor) -> torch.Tensor:
    r"""Monte Carlo standard error of the mean of every element of a trace.

    $\mathrm{sd}(x) / \sqrt{\mathrm{ESS}_\text{mean}}$, with the standard deviation (divisor
    $N - 1$) of all draws of all chains and the `"mean"` effective sample size of [`ess`][
    manifold_langevin.sampling.diagnostics.ess].

    Args:
        trace: shaped `(chain, draw, *element)`, any floating dtype.

    Returns:
        float64 tensor shaped `element`.

    Raises:
        ValueError: a trace with fewer than 2 dimensions.
    """
    t = _Trace(trace)
    if t.too_short:
        return t.nan()
    return t.finish(t.mcse_mean())


def summarise(traces: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    r"""All diagnostics of several traces at once.

    Shares the work between the diagnostics of one trace (the split chains, their ranks and the
    sorted values are computed once).

    Args:
        traces: `name -> trace`, each shaped `(chain, draw, *element)`.

    Returns:
        `name -> {"ess_bulk", "ess_tail", "rhat", "mcse_mean"}`, each a float64 tensor shaped
        like that trace's elements; see [`ess`][manifold_langevin.sampling.diagnostics.ess],
        [`rhat`][manifold_langevin.sampling.diagnostics.rhat] and [`mcse_mean`][
        manifold_langevin.sampling.diagnostics.mcse_mean].

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
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, trace in traces.items():
        t = _Trace(trace)
        if t.too_short:
            nan = t.nan()
            out[name] = {"ess_bulk": nan, "ess_tail": nan.clone(), "rhat": nan.clone()}
            out[name]["mcse_mean"] = nan.clone()
            continue
        out[name] = {
            "ess_bulk": t.finish(t.ess_bulk()),
            "ess_tail": t.finish(t.ess_tail()),
            "rhat": t.finish(t.rhat()) if t.n_chains >= 2 else t.nan(),
            "mcse_mean": t.finish(t.mcse_mean()),
        }
    return out


# ---------------------------------------------------------------------------- one trace
class _Trace:
    """A trace as float64 `(element, chain, draw)` with its split chains and cached sorts."""

    def __init__(self, trace: torch.Tensor):
        if trace.dim() < 2:
            raise ValueError(
                f"a trace is shaped (chain, draw, *element), got shape {tuple(trace.shape)}"
            )
        self.element_shape = trace.shape[2:]
        self.n_chains, self.n_draws = trace.shape[0], trace.shape[1]
        self.device = trace.device
        self.too_short = self.n_draws < _MIN_DRAWS or self.n_chains < 1
        if self.too_short:
            return
        m = math.prod(self.element_shape)
        x = trace.detach().reshape(self.n_chains, self.n_draws, m)
        # (element, chain, draw): the draw axis last for the FFT and the chain means
        self.x = x.permute(2, 0, 1).to(torch.float64).contiguous()
        self.invalid = torch.isnan(self.x).flatten(1).any(-1)
        half = self.n_draws // 2
        if self.n_draws % 2 == 0:
            self.split = self.x.reshape(m, 2 * self.n_chains, half)  # a view
        else:
            self.split = torch.cat((self.x[..., :half], self.x[..., -half:]), dim=1)
        self._z: torch.Tensor | None = None
        self._sorted_split: torch.Tensor | None = None
        self._split_order: torch.Tensor | None = None

    def nan(self) -> torch.Tensor:
        return torch.full(self.element_shape, math.nan, dtype=torch.float64, device=self.device)

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.where(self.invalid, torch.full_like(values, math.nan), values)
        return values.reshape(self.element_shape)

    def z_split(self) -> torch.Tensor:
        if self._z is None:
            self._z, self._sorted_split, self._split_order = _rank_normalise(self.split)
        return self._z

    def ess_bulk(self) -> torch.Tensor:
        return _ess_of_split(self.z_split())

    def ess_mean(self) -> torch.Tensor:
        return _ess_of_split(self.split)

    def ess_tail(self) -> torch.Tensor:
        if self._sorted_split is not None and self.n_draws % 2 == 0:
            # the split chains hold every draw
            low, high = (_quantile_type7(self._sorted_split, p) for p in _TAIL_PROBS)
        else:
            low, high = (_quantile_type7_unsorted(self.x.flatten(1), p) for p in _TAIL_PROBS)
        ess_low = _ess_of_split(self._split_of((self.x <= low[:, None, None]).to(torch.float64)))
        ess_high = _ess_of_split(self._split_of((self.x <= high[:, None, None]).to(torch.float64)))
        # min(ess_low, ess_high) with Python's `min` semantics (the first unless the second is
        # smaller)
        return torch.where(ess_high < ess_low, ess_high, ess_low)

    def rhat(self) -> torch.Tensor:
        bulk = _rhat_of_split(self.z_split())
        folded = _folded_normal_scores(self._sorted_split, self._split_order, self.split.shape)
        tail = _rhat_of_split(folded)
        # max(bulk, tail) with Python's `max` semantics, as ArviZ: NaN in the bulk stays
        return torch.where(tail > bulk, tail, bulk)

    def mcse_mean(self) -> torch.Tensor:
        sd = self.x.flatten(1).std(dim=-1, correction=1)
        return sd / self.ess_mean().sqrt()

    def _split_of(self, values: torch.Tensor) -> torch.Tensor:
        half = self.n_draws // 2
        if self.n_draws % 2 == 0:
            return values.reshape(values.shape[0], 2 * self.n_chains, half)
        return torch.cat((values[..., :half], values[..., -half:]), dim=1)


# ---------------------------------------------------------------------------- building blocks
def _rank_normalise(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""$\Phi^{-1}((r - 3/8)/(N + 1/4))$ of the average ranks $r$ of each row's $N$ values.

    `v` is `(element, chain, draw)`; the ranks run over all chains and draws of one element.
    Returns the normalised values shaped like `v`, and each element's sorted values with their
    positions in the flattened `v`.
    """
    flat = v.reshape(v.shape[0], -1)
    ordered, order = torch.sort(flat, dim=-1)
    return _normal_scores(ordered, order).reshape(v.shape), ordered, order


def _normal_scores(ordered: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The rank-normalised values from sorted rows `ordered` and their original positions."""
    n = ordered.shape[-1]
    pos = torch.arange(n, device=ordered.device).expand_as(order)
    new = ordered[:, 1:] != ordered[:, :-1]
    edge = torch.ones_like(new[:, :1])
    first = torch.cat((edge, new), dim=-1)  # the first of a run of ties
    last = torch.cat((new, edge), dim=-1)  # the last of a run of ties
    start = torch.cummax(torch.where(first, pos, 0), dim=-1).values
    stop = torch.where(last, pos, n - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    ranks = (start + stop).to(torch.float64) / 2 + 1
    z_ordered = torch.special.ndtri((ranks - 0.375) / (n + 0.25))
    return torch.empty_like(ordered).scatter_(-1, order, z_ordered)


def _folded_normal_scores(
    ordered: torch.Tensor, order: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    r"""The rank-normalised $|x - \operatorname{median}(x)|$ from the sorted values of $x$.

    Over the sorted values the folded ones fall then rise, two sorted runs that a stable sort
    merges far faster than it sorts arbitrary values.
    """
    n = ordered.shape[-1]  # even: 2 * chains * half
    median = (ordered[:, n // 2 - 1] + ordered[:, n // 2]) / 2
    folded, merge = torch.sort((ordered - median[:, None]).abs(), dim=-1, stable=True)
    return _normal_scores(folded, order.gather(-1, merge)).reshape(shape)


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
    for $t <$ `lags` (Vehtari et al. 2021, eq. 10), with $\hat\rho_0 = 1$."""
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
