"""Exact laws of the continuous dynamics, computed independently of the package (numpy, scipy).

The finite-time and stationary tests compare the samplers and the optimizer with these:

* linear SDEs ``dz = A z dt + B dW`` (Ornstein-Uhlenbeck on a line or a plane, underdamped or
  overdamped): mean ``e^{At} z0`` and covariance ``e^{At} S0 e^{A^T t} + Q(t)``, ``Q`` from Van
  Loan's block exponential;
* the arc length travelled on a circle by underdamped Langevin dynamics without force, a Gaussian
  with a closed-form variance (the dynamics is flat along the circle);
* Brownian motion on the sphere ``S^{d-1}_r`` and on the Stiefel manifold ``V(n, k)`` (Euclidean
  metric): the coordinates are eigenfunctions of the Laplace-Beltrami operator, with eigenvalues
  ``-(d - 1) / r^2`` and ``-(n - (k + 1) / 2)`` (the mean curvature of the embedding);
* von Mises-Fisher means (Bessel ratios) for stationary averages on spheres;
* the exact discrete-time law of a splitting on a linear problem (:func:`splitting_moments`),
  which bounds the step-size bias a test allows;
* where no closed form exists (free underdamped dynamics on ``S^2`` and on ``O(3)``), a fine-step
  numpy integration written here from the equations of motion (exact rotations and exact
  Ornstein-Uhlenbeck steps), with its Monte Carlo standard error.

Nothing here imports the package.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import numpy as np
from scipy.linalg import expm
from scipy.special import ive

# ------------------------------------------------------------------------- statistics


def mean_se(values) -> tuple[float, float]:
    """Mean over independent samples (chains) and its standard error."""
    v = np.asarray(values, dtype=float).ravel()
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def check(name: str, estimate: float, se: float, exact: float, allowance: float, n_se=4.0):
    """``|estimate - exact| <= n_se * se + allowance``, with a message that shows the numbers."""
    err = estimate - exact
    limit = n_se * se + allowance
    assert abs(err) <= limit, (
        f"{name}: {estimate:.5f} vs exact {exact:.5f}: error {err:+.2e} exceeds "
        f"{n_se:g} se ({se:.1e}) + allowance {allowance:.1e} = {limit:.2e}"
    )


# ------------------------------------------------------------------------- linear SDEs


def linear_sde(A: np.ndarray, BBt: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """``(e^{At}, Q(t))`` with ``Q(t) = int_0^t e^{As} B B^T e^{A^T s} ds`` (Van Loan, 1978)."""
    n = A.shape[0]
    block = np.block([[-A, BBt], [np.zeros((n, n)), A.T]]) * t
    F = expm(block)
    return expm(A * t), F[n:, n:].T @ F[:n, n:]


def underdamped_ou(K, gamma, tau, t, y0, v0, S0=None):
    """Law at time ``t`` of ``dy = v dt, dv = -K y dt - gamma v dt + sqrt(2 gamma tau) dW``.

    ``y0``, ``v0``: start means (``m`` each); ``S0``: start covariance of ``(y, v)`` (zero if
    ``None``). Returns ``(mean, cov)`` of ``(y, v)``, shapes ``(2m,)`` and ``(2m, 2m)``.
    """
    K = np.atleast_2d(np.asarray(K, dtype=float))
    m = K.shape[0]
    A = np.block([[np.zeros((m, m)), np.eye(m)], [-K, -gamma * np.eye(m)]])
    BBt = np.zeros((2 * m, 2 * m))
    BBt[m:, m:] = 2.0 * gamma * tau * np.eye(m)
    E, Q = linear_sde(A, BBt, t)
    S0 = np.zeros((2 * m, 2 * m)) if S0 is None else np.asarray(S0, dtype=float)
    z0 = np.concatenate([np.atleast_1d(y0), np.atleast_1d(v0)]).astype(float)
    return E @ z0, E @ S0 @ E.T + Q


def overdamped_ou(K, tau, t, y0):
    """Law at time ``t`` of ``dy = -K y dt + sqrt(2 tau) dW`` from ``y0``: ``(mean, cov)``."""
    K = np.atleast_2d(np.asarray(K, dtype=float))
    m = K.shape[0]
    E, Q = linear_sde(-K, 2.0 * tau * np.eye(m), t)
    return E @ np.atleast_1d(np.asarray(y0, dtype=float)), Q


def ou_step(gamma: float, tau: float):
    """``hh -> (c1, c2)`` of the exact Ornstein-Uhlenbeck step of time ``hh``:
    ``c1 = exp(-gamma hh)`` (0 at infinite friction), ``c2 = sqrt(tau (1 - c1^2))``."""

    def c1_c2(hh):
        c1 = 0.0 if math.isinf(gamma) else math.exp(-gamma * hh)
        return c1, math.sqrt(tau * (1.0 - c1 * c1))

    return c1_c2


def splitting_moments(word, K, h, n_steps, c1_c2, mean0, cov0):
    """Exact mean and covariance of ``(y, v)`` after ``n_steps`` of the splitting ``word`` for the
    linear problem ``y' = v, v' = -K y`` plus friction and noise: B is ``v -= h K y``, A is
    ``y += h v``, O is ``v <- c1 v + c2 R`` with ``(c1, c2) = c1_c2(h)``, each letter's time
    ``h`` shared equally between its occurrences. Not an exact law of the SDE: the scheme's own
    law, used to bound the step-size bias that a test allows."""
    K = np.atleast_2d(np.asarray(K, dtype=float))
    m = K.shape[0]
    count = Counter(word)
    eye, zero = np.eye(m), np.zeros((m, m))
    mean, cov = np.asarray(mean0, dtype=float).copy(), np.asarray(cov0, dtype=float).copy()
    for _ in range(n_steps):
        for letter in word:
            hh = h / count[letter]
            noise = np.zeros((2 * m, 2 * m))
            if letter == "B":
                M = np.block([[eye, zero], [-hh * K, eye]])
            elif letter == "A":
                M = np.block([[eye, hh * eye], [zero, eye]])
            else:
                c1, c2 = c1_c2(hh)
                M = np.block([[eye, zero], [zero, c1 * eye]])
                noise[m:, m:] = c2 * c2 * eye
            mean, cov = M @ mean, M @ cov @ M.T + noise
    return mean, cov


def damped_oscillator(k, gamma, t, q0, v0=0.0):
    """Position and velocity at time ``t`` of ``q'' = -k q - gamma q'``."""
    mean, _ = underdamped_ou(k, gamma, 0.0, t, q0, v0)
    return float(mean[0]), float(mean[1])


# ------------------------------------------------------------------------- circles


def arc_variance(gamma: float, tau: float, t: float, start: str) -> float:
    """Variance of the arc length ``s(t) - s(0)`` for ``ds = v dt``,
    ``dv = -gamma v dt + sqrt(2 gamma tau) dW``, with ``v(0) ~ N(0, tau)`` (``"stationary"``)
    or ``v(0) = 0`` (``"rest"``)."""
    g, e1, e2 = gamma, math.exp(-gamma * t), math.exp(-2.0 * gamma * t)
    if start == "stationary":
        return 2.0 * tau / g * (t - (1.0 - e1) / g)
    if start == "rest":
        return 2.0 * tau / g * (t - 2.0 * (1.0 - e1) / g + (1.0 - e2) / (2.0 * g))
    raise ValueError(start)


def circle_free_correlation(r, gamma, tau, t, start):
    """``E[x(t) . x(0)] / r^2 = E[cos(s / r)] = exp(-Var(s) / (2 r^2))`` on a circle of radius
    ``r`` without force."""
    return math.exp(-arc_variance(gamma, tau, t, start) / (2.0 * r * r))


# ------------------------------------------------------------------------- Brownian motion


def sphere_brownian_correlation(d: int, r: float, tau: float, t: float) -> float:
    """``E[x(t) . x(0)] / r^2`` for ``dx = sqrt(2 tau) P(x) o dW`` on ``S^{d-1}_r``."""
    return math.exp(-(d - 1) * tau * t / (r * r))


def stiefel_brownian_correlation(n: int, k: int, tau: float, t: float) -> float:
    """``E[tr(X(t)^T X(0))] / k`` for Brownian motion at temperature ``tau`` on ``V(n, k)`` with
    the Euclidean metric (``k = n``: the orthogonal group, rate ``tau (n - 1) / 2``).

    The mean curvature vector of ``V(n, k)`` in ``R^{n x k}`` is ``-(n - (k + 1) / 2) X``: sum the
    second fundamental form ``II(V, V) = -X V^T V`` over an orthonormal tangent basis
    (``X A`` with ``A`` skew and ``X_perp B``), which gives ``(n - k) I + (k - 1) I / 2``.
    """
    return math.exp(-tau * (n - (k + 1) / 2.0) * t)


def gradient_flow_angle(phi0, rate, t):
    """Angle from the pole at time ``t`` of ``phi' = -rate sin(phi)``, the gradient flow of the
    loss ``-|b| x . b_hat`` on a sphere or circle of radius ``r`` (``rate = |b| / r``):
    ``tan(phi / 2) = tan(phi0 / 2) exp(-rate t)``."""
    return 2.0 * np.arctan(np.tan(np.asarray(phi0) / 2.0) * math.exp(-rate * t))


# ------------------------------------------------------------------------- stationary means


def vmf_mean_cos(d: int, kappa: float) -> float:
    """``E[cos theta]`` for the von Mises-Fisher law ``exp(kappa cos theta)`` on ``S^{d-1}``:
    ``I_{d/2}(kappa) / I_{d/2-1}(kappa)``."""
    return float(ive(d / 2.0, kappa) / ive(d / 2.0 - 1.0, kappa))


# ------------------------------------------------------------------------- fine-step references


def _tangent_normal(rng, x):
    z = rng.standard_normal(x.shape)
    return z - x * ((x * z).sum(-1, keepdims=True) / (x * x).sum(-1, keepdims=True))


def _rotate(x, p, t, r):
    """Great-circle flow on ``S_r`` for time ``t`` (exact)."""
    speed = np.sqrt((p * p).sum(-1, keepdims=True))
    w = speed / r
    ang = w * t
    safe = np.where(w > 0, w, 1.0)
    sin_over_w = np.where(w > 0, np.sin(ang) / safe, t)
    x_t = x * np.cos(ang) + p * sin_over_w
    p_t = p * np.cos(ang) - x * (w * np.sin(ang))
    return x_t * (r / np.sqrt((x_t * x_t).sum(-1, keepdims=True))), p_t


@functools.cache
def sphere_free_reference(d, r, gamma, tau, times, start, n_chains=20_000, h=0.02, seed=12345):
    """``E[x(t) . x(0)] / r^2`` and its standard error, at each of ``times``, for underdamped
    Langevin without force on ``S^{d-1}_r``, from numpy: steps ``A(h/2) O(h) A(h/2)`` with the
    exact great-circle flow and the exact Ornstein-Uhlenbeck step, ``start`` ``"maxwell"``
    (tangent momenta ``N(0, tau P)``) or ``"rest"``. The step bias is ``O(h^2)``: this splitting's
    is below 0.05 h^2 on the problems tested (measured against ``h = 0.005`` with 400k chains),
    2e-5 at the default ``h = 0.02``, far below the standard errors (about 1.5e-3).

    Returns ``{t: (mean, se)}``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_chains, d))
    x *= r / np.linalg.norm(x, axis=-1, keepdims=True)
    x0 = x.copy()
    p = np.sqrt(tau) * _tangent_normal(rng, x) if start == "maxwell" else np.zeros_like(x)
    c1 = math.exp(-gamma * h)
    c2 = math.sqrt(tau * (1.0 - c1 * c1))
    out, n = {}, 0
    for t in sorted(times):
        while n < round(t / h):
            x, p = _rotate(x, p, 0.5 * h, r)
            p = c1 * p + c2 * _tangent_normal(rng, x)
            x, p = _rotate(x, p, 0.5 * h, r)
            n += 1
        out[t] = mean_se((x * x0).sum(-1) / (r * r))
    return out


def _hat(w):
    z = np.zeros((*w.shape[:-1], 3, 3))
    z[..., 0, 1], z[..., 0, 2], z[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    return z - np.swapaxes(z, -1, -2)


def _expm_so3(w):
    """Rodrigues' formula for ``exp(hat(w))``, batched."""
    theta = np.linalg.norm(w, axis=-1)[..., None, None]
    K = _hat(w)
    safe = np.where(theta > 0, theta, 1.0)
    a = np.where(theta > 0, np.sin(theta) / safe, 1.0)
    b = np.where(theta > 0, (1.0 - np.cos(theta)) / safe**2, 0.5)
    return np.eye(3) + a * K + b * (K @ K)


@functools.cache
def rotation_free_reference(gamma, tau, times, start, n_chains=20_000, h=0.02, seed=54321):
    """``E[tr(W(t)^T W(0))] / 3`` and its standard error for underdamped Langevin without force
    on ``O(3)`` with the Frobenius metric, from numpy in body coordinates.

    The metric is bi-invariant, so the free flow is ``W exp(t Omega)`` with a constant body
    velocity ``Omega`` (``p = W Omega``, ``Omega`` skew), and the tangent noise ``P(W) R`` is
    ``W skew(G)`` with ``G`` standard normal: ``Omega`` is a flat Ornstein-Uhlenbeck process whose
    three coordinates ``w`` (``Omega = hat(w)``, ``|Omega|_F^2 = 2 |w|^2``) have variance
    ``tau / 2`` at equilibrium. Steps ``A(h/2) O(h) A(h/2)``; the trace does not depend on
    ``W(0)``. Returns ``{t: (mean, se)}``."""
    rng = np.random.default_rng(seed)
    R = np.broadcast_to(np.eye(3), (n_chains, 3, 3)).copy()
    s = math.sqrt(tau / 2.0)
    w = s * rng.standard_normal((n_chains, 3)) if start == "maxwell" else np.zeros((n_chains, 3))
    c1 = math.exp(-gamma * h)
    c2 = math.sqrt(1.0 - c1 * c1) * s
    out, n = {}, 0
    for t in sorted(times):
        while n < round(t / h):
            R = R @ _expm_so3(0.5 * h * w)
            w = c1 * w + c2 * rng.standard_normal(w.shape)
            R = R @ _expm_so3(0.5 * h * w)
            n += 1
        out[t] = mean_se(np.trace(R, axis1=-2, axis2=-1) / 3.0)
    return out
