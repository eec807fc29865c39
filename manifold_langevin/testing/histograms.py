"""Histogram checks of a problem's 1-D marginal: bin indicators recorded as observables, a
chi-square statistic against the exact bin probabilities with the batch-means covariance, and a
Kolmogorov-Smirnov test of the chains' final points."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats
from scipy.integrate import quad

from .problem import Problem

__all__ = [
    "N_BINS",
    "bin_edges",
    "bin_probabilities",
    "chi_square",
    "histogram_observable",
    "marginal_record",
    "merge_groups",
]

N_BINS = 24
"""Bins of every marginal's histogram."""


def bin_edges(problem: Problem) -> np.ndarray:
    a, b = problem.marginal.support
    return np.linspace(a, b, N_BINS + 1)


def bin_probabilities(density, edges: np.ndarray) -> np.ndarray:
    f = lambda t: float(density(np.array([t]))[0])  # noqa: E731
    p = np.array([quad(f, lo, hi, limit=200)[0] for lo, hi in itertools.pairwise(edges)])
    return p / p.sum()


def histogram_observable(problem: Problem, edges: np.ndarray):
    fn = problem.observables[problem.marginal.observable]
    inner = edges[1:-1].tolist()

    def indicators(x: torch.Tensor) -> torch.Tensor:
        v = fn(x).contiguous()
        idx = torch.bucketize(v, torch.as_tensor(inner, dtype=v.dtype, device=v.device))
        return torch.nn.functional.one_hot(idx, len(inner) + 1).to(v.dtype)

    return indicators


def cdf(density, support, n_grid: int = 4001):
    a, b = support
    grid = np.linspace(a, b, n_grid)
    vals = density(grid)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (vals[1:] + vals[:-1]) * np.diff(grid))])
    cum /= cum[-1]
    return lambda t: np.interp(t, grid, cum)


def merge_groups(p: np.ndarray, min_prob: float) -> list[list[int]]:
    """Consecutive bins merged until each group has probability ``>= min_prob`` (a short
    remainder joins the last group): rare bins make the batch-means covariance ill-conditioned."""
    groups, cur, acc = [], [], 0.0
    for i, pi in enumerate(p):
        cur.append(i)
        acc += pi
        if acc >= min_prob:
            groups.append(cur)
            cur, acc = [], 0.0
    if cur:
        if groups:
            groups[-1].extend(cur)
        else:
            groups.append(cur)
    return groups


def chi_square(
    p_hat: np.ndarray,
    p: np.ndarray,
    batch_means: np.ndarray | None,
    se: np.ndarray,
    groups: list[list[int]] | None = None,
):
    """Chi-square of a histogram against bin probabilities ``p``.

    Bins are merged into ``groups`` (default: each of probability at least ``1 / (2 N_BINS)``);
    the statistic is ``d^T Cov^-1 d`` over all groups but the last (they sum to one), with ``Cov``
    the covariance of the mean estimated from the batch means (each chain's batches; independent
    chains), or diagonal from the standard errors if the batch means are not available.
    Returns ``(chi2, dof, p_value)``.
    """
    if groups is None:
        groups = merge_groups(p, 0.5 / len(p))

    def merge(a):
        return np.stack([a[..., g].sum(-1) for g in groups], -1)

    d = (merge(p_hat) - merge(p))[:-1]
    if batch_means is not None and batch_means.shape[0] > 5 * len(groups):
        bm = merge(batch_means)[:, :-1]
        cov = np.atleast_2d(np.cov(bm, rowvar=False)) / bm.shape[0]
    else:
        var = np.array([(se[g] ** 2).sum() for g in groups])[:-1]  # ignores correlations
        cov = np.diag(np.maximum(var, 1e-300))
    chi2 = float(d @ np.linalg.lstsq(cov, d, rcond=None)[0])
    dof = len(d)
    return chi2, dof, float(stats.chi2.sf(chi2, dof))


# -------------------------------------------------------------------------------------- runs
def marginal_record(problem: Problem, out, edges: np.ndarray, rec: dict) -> dict:
    obs, density, support = problem.marginal
    p = bin_probabilities(density, edges)
    p_hat = out.means["_hist"].double().cpu().numpy()
    se = out.stderrs["_hist"].double().cpu().numpy()
    bm = getattr(out, "batch_means", {}).get("_hist")
    if bm is not None:
        bm = bm.double().cpu().numpy().reshape(-1, len(p))
    chi2, dof, p_value = chi_square(p_hat, p, bm, se)
    # KS on the chains' final points (independent chains, each approximately at stationarity)
    final = problem.observables[obs](out.state.x).double().cpu().numpy()
    ks = stats.kstest(final, cdf(density, support))
    entry = {
        "observable": obs,
        "edges": edges.tolist(),
        "histogram": p_hat.tolist(),
        "histogram_stderr": se.tolist(),
        "bin_probabilities": p.tolist(),
        "chi2": chi2,
        "chi2_dof": dof,
        "chi2_p_value": p_value,
        "ks_statistic": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
        "ks_n": len(final),
    }
    if problem.conditional_density is not None:
        pc = bin_probabilities(problem.conditional_density, edges)
        entry["conditional_bin_probabilities"] = pc.tolist()
        groups = merge_groups(p, 0.5 / len(p))
        entry["chi2_conditional"] = chi_square(p_hat, pc, bm, se, groups)[0]
        ks_c = stats.kstest(final, cdf(problem.conditional_density, support))
        entry["ks_statistic_conditional"] = float(ks_c.statistic)
        entry["ks_p_value_conditional"] = float(ks_c.pvalue)
    return entry
