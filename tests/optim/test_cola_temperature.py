"""CoLA samples at the temperature it is given: the long-run average of a quadratic loss against
its exact value under ``exp(-L / tau)`` times the surface measure of the constraint set.

For every constraint (``None``, ``"circle"``, ``"sphere"``, ``"orthogonal"``) and both schemes at
``tau != 1`` and radii ``!= 1``:

* unconstrained, ``L = k |w - c|^2 / 2``: equipartition, ``E[L] = tau / 2`` per entry (BAOAB is
  exact for a harmonic loss; SGLD's stationary variance is ``tau / (k (1 - h k / 2))``);
* circle, ``L = k (w - c)^2 / 2`` on ``w^2 + xi^2 = r^2``: the uniform angle weighted by
  ``exp(-L / tau)``, by quadrature;
* sphere rows, ``L = k |x - c|^2 / 2 = const - k c . x``: von Mises-Fisher on ``S^2_r`` with
  ``kappa = k |c| r / tau``, ``E[c_hat . x] = r (coth kappa - 1 / kappa)``;
* orthogonal ``4 x 2`` weights, ``L = k |W - c e_1^T|^2 / 2``: the loss sees only the first
  column, which is uniform on ``S^3`` under the surface (Haar) measure of ``V(4, 2)``, so
  ``E[c_hat . W e_1] = I_2(kappa) / I_1(kappa)`` with ``kappa = k |c| / tau``.

Each test also checks its own power: the exact values at ``2 tau`` and ``tau / 2`` lie several
thresholds away. Thresholds: ``|estimate - exact| <= 4 se + C h^p``, ``se`` from the per-chain
time averages of independent chains, ``C`` stated where it is set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import manifold_langevin as ml
from tests import laws

F64 = torch.float64
CoLA = ml.optim.CoLA  # the optimizer package loads lazily: load it at collection


def _long_run(params, loss, h, burn_in, record, *, per_chain, **kw):
    """Time averages of ``per_chain(params)`` (one value per chain) over ``record`` time units
    after ``burn_in``; returns the mean over chains and its standard error."""
    opt = CoLA(params, lr=h, **kw)
    n_burn, n_rec = round(burn_in / h), round(record / h)
    acc = 0.0
    for n in range(n_burn + n_rec):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
        if n >= n_burn:
            with torch.no_grad():
                acc = acc + per_chain(params)
    assert opt.n_rejected() == 0
    return laws.mean_se(np.asarray(acc) / n_rec)


def _check_with_power(name, est, se, exact_fn, tau, allowance):
    """``|est - exact(tau)| <= 4 se + allowance``, and a factor 2 in the temperature either way
    would move the exact value by more than twice that threshold."""
    exact = exact_fn(tau)
    limit = 4 * se + allowance
    for other in (2 * tau, tau / 2):
        assert abs(exact_fn(other) - exact) > 2 * limit, (name, other, exact_fn(other), limit)
    laws.check(name, est, se, exact, allowance)


SCHEMES = {"ud": {"scheme": "ud", "friction": 1.0}, "od": {"scheme": "od"}}


# ---------------------------------------------------------------------------- unconstrained
K_FREE, C_FREE, TAU_FREE = 2.0, 0.3, 0.3


def _free_exact_discrete(scheme, h, tau):
    """E[L] per entry under the scheme's own stationary law (numpy), for the allowance."""
    if scheme == "od":
        return 0.5 * tau / (1 - 0.5 * h * K_FREE)
    # BAOAB iterated to stationarity
    _, cov = laws.splitting_moments(
        "BAOAB", K_FREE, h, 2000, laws.ou_step(1.0, tau), [0.0, 0.0], np.zeros((2, 2))
    )
    return 0.5 * K_FREE * cov[0, 0]


# C for the free loss: SGLD's exact stationary E[L] exceeds tau / 2 by tau k h / 4 / (1 - h k / 2)
# = 0.0079 at h = 0.05 (C = 0.2 allows 0.01); BAOAB's equals tau / 2 to rounding (C = 0)
H_FREE = {"ud": 0.2, "od": 0.05}
BIAS_FREE = {"ud": 0.0, "od": 0.2}
N_FREE = 10_000


def test_free_allowance_covers_the_exact_scheme_bias():
    for scheme, h in H_FREE.items():
        bias = abs(_free_exact_discrete(scheme, h, TAU_FREE) - 0.5 * TAU_FREE)
        assert bias <= BIAS_FREE[scheme] * h ** (2 if scheme == "ud" else 1) + 1e-12, (scheme, bias)


@pytest.mark.parametrize("scheme", ["ud", "od"])
def test_free_equipartition(scheme):
    """10000 entries started at c (rest), burn-in 5, record 20 time units: E[L] per entry =
    tau / 2 within 4 se + C h^p."""
    h = H_FREE[scheme]
    w = torch.nn.Parameter(torch.full((N_FREE,), C_FREE, dtype=F64))
    est, se = _long_run(
        [w],
        lambda ps: 0.5 * K_FREE * ((ps[0] - C_FREE) ** 2).sum(),
        h, 5.0, 20.0,
        per_chain=lambda ps: (0.5 * K_FREE * (ps[0] - C_FREE) ** 2).numpy(),
        temperature=TAU_FREE, seed=20, **SCHEMES[scheme],
    )  # fmt: skip
    allowance = BIAS_FREE[scheme] * h ** (2 if scheme == "ud" else 1)
    _check_with_power(f"free {scheme}", est, se, lambda t: 0.5 * t, TAU_FREE, allowance)


# ---------------------------------------------------------------------------- circles
R_CIRC, K_CIRC, C_CIRC, TAU_CIRC = 0.5, 8.0, 0.2, 0.3


def _circle_exact(tau):
    loss = lambda phi: 0.5 * K_CIRC * (R_CIRC * math.cos(phi) - C_CIRC) ** 2  # noqa: E731
    z = quad(lambda phi: math.exp(-loss(phi) / tau), 0, math.pi)[0]
    return quad(lambda phi: loss(phi) * math.exp(-loss(phi) / tau), 0, math.pi)[0] / z


# C for the circle: with 200k weights the error of E[L] (step-size bias and what is left of the
# start-up transient) measured +0.0039 +- 0.0002 = 0.098 h^2 ("ud", h = 0.2) and
# +0.0080 +- 0.0001 = 0.40 h ("od", h = 0.02; Euler's bias grows like h k / 2 for a stiff loss)
H_CIRC = {"ud": 0.2, "od": 0.02}
BIAS_CIRC = {"ud": 0.15, "od": 0.6}
N_CIRC = 20_000


@pytest.mark.parametrize("scheme", ["ud", "od"])
def test_circle_temperature(scheme):
    """20000 weights on circles of radius 0.5, tau = 0.3, burn-in 2, record 4 time units (the
    loss depends on w only, so each chain may stay on its half circle: E[L] is the same there)."""
    h = H_CIRC[scheme]
    g = torch.Generator().manual_seed(21)
    w = torch.nn.Parameter((2 * torch.rand(N_CIRC, generator=g, dtype=F64) - 1) * R_CIRC)

    def per_weight(ps):
        return (0.5 * K_CIRC * (ps[0] - C_CIRC) ** 2).numpy()

    est, se = _long_run(
        [w], lambda ps: 0.5 * K_CIRC * ((ps[0] - C_CIRC) ** 2).sum(), h, 2.0, 4.0,
        per_chain=per_weight, temperature=TAU_CIRC, constraint="circle", radius=R_CIRC,
        seed=22, **SCHEMES[scheme],
    )  # fmt: skip
    allowance = BIAS_CIRC[scheme] * h ** (2 if scheme == "ud" else 1)
    _check_with_power(f"circle {scheme}", est, se, _circle_exact, TAU_CIRC, allowance)


# ---------------------------------------------------------------------------- sphere rows
R_SPH, K_SPH, TAU_SPH = 2.0, 1.0, 0.5
C_SPH = np.array([0.0, 0.0, 0.5])


def _sphere_exact(tau):
    c = float(np.linalg.norm(C_SPH))
    kappa = K_SPH * c * R_SPH / tau
    mean_cos = 1 / math.tanh(kappa) - 1 / kappa
    return 0.5 * K_SPH * (R_SPH**2 + c * c) - K_SPH * c * R_SPH * mean_cos


def _vmf_rows(n, tau, seed):
    """Exact samples of the stationary law on S^2_r (inverse CDF of cos theta), numpy."""
    rng = np.random.default_rng(seed)
    kappa = K_SPH * float(np.linalg.norm(C_SPH)) * R_SPH / tau
    u = rng.random(n)
    cos = 1 + np.log(u + (1 - u) * np.exp(-2 * kappa)) / kappa
    phi = 2 * np.pi * rng.random(n)
    sin = np.sqrt(np.clip(1 - cos**2, 0, None))
    return R_SPH * np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], 1)


# C for the sphere: with 100k rows the error of E[L] measured -0.0077 +- 0.0010 = 0.19 h^2
# ("ud", h = 0.2) and +0.0033 +- 0.0009 = 0.066 h ("od", h = 0.05)
H_SPH = {"ud": 0.2, "od": 0.05}
BIAS_SPH = {"ud": 0.3, "od": 0.15}
N_SPH = 5000


@pytest.mark.parametrize("scheme", ["ud", "od"])
def test_sphere_temperature(scheme):
    """5000 rows on S^2 of radius 2 started from the exact law, burn-in 4, record 8 time units:
    E[L] per row within 4 se + C h^p (kappa = 2; at 2 tau or tau / 2 it would be 1 or 4)."""
    h = H_SPH[scheme]
    x = torch.nn.Parameter(torch.tensor(_vmf_rows(N_SPH, TAU_SPH, 23), dtype=F64))
    c = torch.tensor(C_SPH, dtype=F64)

    def per_row(ps):
        return (0.5 * K_SPH * ((ps[0] - c) ** 2).sum(-1)).numpy()

    est, se = _long_run(
        [x], lambda ps: 0.5 * K_SPH * ((ps[0] - c) ** 2).sum(), h, 4.0, 8.0,
        per_chain=per_row, temperature=TAU_SPH, constraint="sphere", radius=R_SPH,
        seed=24, **SCHEMES[scheme],
    )  # fmt: skip
    allowance = BIAS_SPH[scheme] * h ** (2 if scheme == "ud" else 1)
    _check_with_power(f"sphere {scheme}", est, se, _sphere_exact, TAU_SPH, allowance)


# ---------------------------------------------------------------------------- orthogonal
K_ORTH, TAU_ORTH = 1.0, 0.25
C_COL = np.array([0.0, 0.0, 0.0, 1.0])


def _orthogonal_exact(tau):
    c = float(np.linalg.norm(C_COL))
    kappa = K_ORTH * c / tau
    # |W|^2 = 2 (two orthonormal columns); E[c_hat . W e_1] on S^3 is I_2 / I_1
    return 0.5 * K_ORTH * (2 + c * c) - K_ORTH * c * laws.vmf_mean_cos(4, kappa)


# C for the orthogonal weights: with 2000 matrices the error of E[L] measured +0.010 +- 0.004 =
# 0.26 h^2 ("ud", RATTLE, h = 0.2) and +0.016 +- 0.003 = 0.33 h ("od", SHAKE, h = 0.05)
H_ORTH = {"ud": 0.2, "od": 0.05}
BIAS_ORTH = {"ud": 0.5, "od": 0.6}
N_ORTH = 200


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["ud", "od"])
def test_orthogonal_temperature(scheme):
    """200 weights 4 x 2 (one batched solve) from Haar points, burn-in 3, record 6 time units."""
    h = H_ORTH[scheme]
    g = torch.Generator().manual_seed(25)
    params = [
        torch.nn.Parameter(ml.optim.orthogonal_init_(torch.randn(4, 2, generator=g, dtype=F64)))
        for _ in range(N_ORTH)
    ]
    target = torch.zeros(4, 2, dtype=F64)
    target[:, 0] = torch.tensor(C_COL, dtype=F64)

    def loss(ps):
        return sum(0.5 * K_ORTH * ((p - target) ** 2).sum() for p in ps)

    def per_matrix(ps):
        return np.array([float(0.5 * K_ORTH * ((p - target) ** 2).sum()) for p in ps])

    est, se = _long_run(
        params, loss, h, 3.0, 6.0, per_chain=per_matrix, temperature=TAU_ORTH,
        constraint="orthogonal", seed=26, **SCHEMES[scheme],
    )  # fmt: skip
    allowance = BIAS_ORTH[scheme] * h ** (2 if scheme == "ud" else 1)
    _check_with_power(f"orthogonal {scheme}", est, se, _orthogonal_exact, TAU_ORTH, allowance)
