"""CoLA's updates at finite times, against exact transition laws, on every path of the optimizer.

``lr`` is the Langevin time step ``h``, ``friction`` the friction ``gamma`` and ``temperature``
the temperature ``tau`` (the optimizer's docstring): after ``n`` steps the parameters must follow
the law of the continuous dynamics at time ``t = n h``, up to the scheme's step-size bias
(weak order 2 for ``"ud"``, 1 for ``"od"``). Pinned for each constraint (``None``, ``"circle"``,
``"sphere"``, ``"orthogonal"``), scheme and temperature (0 and > 0, never 1), with radii other
than 1:

* unconstrained: Ornstein-Uhlenbeck for a quadratic loss (mean and covariance of the parameter
  and of the momentum, underdamped and overdamped); the damped oscillator and gradient flow at
  zero temperature;
* circle, sphere and orthogonal: Brownian motion (``"od"``, zero loss) and free underdamped
  motion (``"ud"``, zero loss; exact on the circle, numpy references on ``S^2`` and ``O(3)``),
  and at zero temperature the pendulum / gradient flow of a loss, against scipy's ODE solver or
  closed forms;
* momenta at zero loss: ``E|p(t)|^2 = dim tau (1 - e^{-2 gamma t})`` from rest and the
  autocorrelation ``e^{-gamma t}`` of the O steps, exactly at every step size.

Many independent chains come from one parameter (entries, circle weights, sphere rows: the zero
or separable losses make them independent) or from many same-shape orthogonal matrices, which
CoLA stacks into one batched solve. Thresholds: ``|estimate - exact| <= 4 se + C h^p``, ``C``
stated where it is set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import manifold_langevin as ml
from tests import laws

F64 = torch.float64
H_UD = (0.1, 0.2, 0.4)
CoLA = ml.optim.CoLA  # the optimizer package loads lazily: load it at collection


def _zero_loss(params):
    return sum((0.0 * p).sum() for p in params)


def _run(params, loss, n_steps, checkpoints=(), **kw):
    """``n_steps`` CoLA steps on ``params`` with ``loss``; yields ``(n, opt)`` at the checkpoints
    (step counts)."""
    opt = CoLA(params, **kw)
    for n in range(1, n_steps + 1):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
        if n in checkpoints:
            yield n, opt
    assert opt.n_rejected() == 0


def _steps(t, h):
    n = round(t / h)
    assert math.isclose(n * h, t), (t, h)
    return n


# ---------------------------------------------------------------------------- unconstrained
K_FREE, C_FREE, Q0_FREE = 1.5, 0.3, 1.2
GAMMA_FREE, TAU_FREE, T_FREE = 0.8, 0.4, 1.6


def _quadratic(params):
    (w,) = params
    return 0.5 * K_FREE * ((w - C_FREE) ** 2).sum()


def _free_param(n, q0=Q0_FREE):
    return torch.nn.Parameter(torch.full((n,), C_FREE + q0, dtype=F64))


def _free_ud_discrete(h, tau):
    """Exact discrete-time law of CoLA's free "ud" path (BAOAB from rest: half kick first)."""
    n = _steps(T_FREE, h)
    return laws.splitting_moments(
        "BAOAB", K_FREE, h, n, laws.ou_step(GAMMA_FREE, tau), [Q0_FREE, 0.0], np.zeros((2, 2))
    )


def _free_od_discrete(h, tau):
    mean, var = Q0_FREE, 0.0
    for _ in range(_steps(T_FREE, h)):
        mean, var = (1 - h * K_FREE) * mean, (1 - h * K_FREE) ** 2 * var + 2 * h * tau
    return mean, var


# C for the free paths: the exact discrete-time laws (splitting_moments for BAOAB, the Euler
# recursion for SGLD) differ from the continuous one by at most 0.18 h^2 ("ud", over the five
# moments of (q, v), h <= 0.4) and 0.25 h ("od", mean and variance, h <= 0.2);
# test_free_allowances_cover_the_exact_scheme_bias checks it.
C_FREE_UD, C_FREE_OD = 0.3, 0.35
H_OD_FREE = (0.05, 0.1, 0.2)


def _free_ud_exact(tau):
    return laws.underdamped_ou(K_FREE, GAMMA_FREE, tau, T_FREE, Q0_FREE, 0.0)


def _free_od_exact(tau):
    mean, cov = laws.overdamped_ou(K_FREE, tau, T_FREE, Q0_FREE)
    return float(mean[0]), float(cov[0, 0])


def _moments_error(mean_d, cov_d, mean, cov):
    d = mean_d - mean
    return max(np.abs(d).max(), np.abs(cov_d + np.outer(d, d) - cov).max())


def test_free_allowances_cover_the_exact_scheme_bias():
    for tau in (0.0, TAU_FREE):
        mean, cov = _free_ud_exact(tau)
        errs = [_moments_error(*_free_ud_discrete(h, tau), mean, cov) for h in H_UD]
        assert all(e <= C_FREE_UD * h**2 for e, h in zip(errs, H_UD)), errs
        assert 3.0 < errs[1] / errs[0] < 5.0, errs
        mean, var = _free_od_exact(tau)
        errs = []
        for h in H_OD_FREE:
            m_d, v_d = _free_od_discrete(h, tau)
            errs.append(max(abs(m_d - mean), abs(v_d + (m_d - mean) ** 2 - var)))
        assert all(e <= C_FREE_OD * h for e, h in zip(errs, H_OD_FREE)), errs
        assert 1.6 < errs[1] / errs[0] < 2.4, errs


@pytest.mark.parametrize("h", H_UD)
def test_free_ud_is_underdamped_ou_at_finite_time(h):
    """Loss k |w - c|^2 / 2 on 20000 entries from rest: mean and covariance of (q, v) = (w - c,
    the BAOAB momentum buf - (h/2) grad) at t = 1.6 against the Ornstein-Uhlenbeck law,
    4 se + C h^2 for each of the five moments."""
    w = _free_param(20_000)
    ((_, opt),) = _run(
        [w], _quadratic, _steps(T_FREE, h), {_steps(T_FREE, h)},
        lr=h, friction=GAMMA_FREE, temperature=TAU_FREE, seed=1,
    )  # fmt: skip
    q = w.detach().numpy() - C_FREE
    v = opt.state[w]["momentum_buffer"].numpy() - 0.5 * h * K_FREE * q
    mean, cov = _free_ud_exact(TAU_FREE)
    z = np.stack([q, v], 1)
    allowance = C_FREE_UD * h**2
    for i in range(2):
        laws.check(f"h={h} E[z{i}]", *laws.mean_se(z[:, i]), mean[i], allowance)
        for j in range(i, 2):
            prod = (z[:, i] - mean[i]) * (z[:, j] - mean[j])
            laws.check(f"h={h} Cov[z{i},z{j}]", *laws.mean_se(prod), cov[i, j], allowance)


@pytest.mark.parametrize("h", H_UD)
def test_free_ud_at_zero_temperature_is_the_damped_oscillator(h):
    """tau = 0: heavy ball = the damped oscillator q'' = -k q - gamma q' sampled at t = n h:
    |q - exact| and |v - exact| <= C h^2, for several starts."""
    q0 = np.array([-1.0, 0.5, 2.0])
    w = torch.nn.Parameter(torch.tensor(C_FREE + q0, dtype=F64))
    ((_, opt),) = _run(
        [w], _quadratic, _steps(T_FREE, h), {_steps(T_FREE, h)},
        lr=h, friction=GAMMA_FREE, temperature=0.0,
    )  # fmt: skip
    q = w.detach().numpy() - C_FREE
    v = opt.state[w]["momentum_buffer"].numpy() - 0.5 * h * K_FREE * q
    for i, start in enumerate(q0):
        q_ex, v_ex = laws.damped_oscillator(K_FREE, GAMMA_FREE, T_FREE, start)
        laws.check(f"h={h} q", q[i], 0.0, q_ex, C_FREE_UD * h**2 * abs(start) / Q0_FREE)
        laws.check(f"h={h} v", v[i], 0.0, v_ex, C_FREE_UD * h**2 * abs(start) / Q0_FREE)


@pytest.mark.parametrize("h", H_OD_FREE)
def test_free_od_is_overdamped_ou_at_finite_time(h):
    """SGLD: w <- w - h grad + sqrt(2 h tau) R is Euler-Maruyama for dq = -k q dt + sqrt(2 tau) dW:
    mean and variance at t = 1.6 within 4 se + C h."""
    w = _free_param(20_000)
    list(_run([w], _quadratic, _steps(T_FREE, h), scheme="od", lr=h, temperature=TAU_FREE, seed=2))
    q = w.detach().numpy() - C_FREE
    mean, var = _free_od_exact(TAU_FREE)
    laws.check(f"h={h} E[q]", *laws.mean_se(q), mean, C_FREE_OD * h)
    laws.check(f"h={h} Var[q]", *laws.mean_se((q - mean) ** 2), var, C_FREE_OD * h)


@pytest.mark.parametrize("h", H_OD_FREE)
def test_free_od_at_zero_temperature_is_gradient_flow(h):
    w = _free_param(1)
    list(_run([w], _quadratic, _steps(T_FREE, h), scheme="od", lr=h, temperature=0.0))
    exact = Q0_FREE * math.exp(-K_FREE * T_FREE)
    laws.check(f"h={h} q", float(w.detach()[0]) - C_FREE, 0.0, exact, C_FREE_OD * h)


# ---------------------------------------------------------------------------- circles
R_CIRC, TAU_CIRC, GAMMA_CIRC = 0.5, 0.3, 1.0


def _circle_param(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter((2 * torch.rand(n, generator=g, dtype=F64) - 1) * R_CIRC)


def _circle_state(opt, w):
    st = opt.state[w]
    wn, xi = w.detach().numpy(), st["xi"].numpy()
    if "angular_velocity" not in st:
        return wn, xi, None
    return wn, xi, st["angular_velocity"].numpy() * R_CIRC  # arc velocity


def _circle_rest_correlation(h, n_steps):
    """Exact discrete-time E[x_n . x_0] / r^2 of CoLA's circle "ud" path without loss: the
    rotations are exact, so the arc length follows A(h/2) O(h) A(h/2) from rest (numpy)."""
    _, s = laws.splitting_moments(
        "AOA", 0.0, h, n_steps, laws.ou_step(GAMMA_CIRC, TAU_CIRC), [0, 0], np.zeros((2, 2))
    )
    return math.exp(-s[0, 0] / (2 * R_CIRC**2))


# C for the circle "ud" position statistic: the exact discrete bias above is at most 0.055 h^2
# at h <= 0.4, t <= 1.6 (test_circle_allowance_covers_the_exact_scheme_bias checks it)
C_CIRC_UD = 0.1


def test_circle_allowance_covers_the_exact_scheme_bias():
    for h in H_UD:
        for t in (0.8, 1.6):
            exact = laws.circle_free_correlation(R_CIRC, GAMMA_CIRC, TAU_CIRC, t, "rest")
            err = abs(_circle_rest_correlation(h, _steps(t, h)) - exact)
            assert err <= C_CIRC_UD * h**2, (h, t, err)


@pytest.mark.parametrize("h", H_UD)
def test_circle_ud_free_motion_is_exact_in_arc_length(h):
    """Zero loss, from rest, r = 0.5, tau = 0.3: E[w w0 + xi xi0] / r^2 = exp(-Var s / (2 r^2))
    with the arc length's variance from rest (4 se + C h^2), E[v^2] = tau (1 - e^{-2 gamma t})
    and E[v(1.6) v(0.8)] = e^{-0.8 gamma} E[v(0.8)^2] exactly (the O steps alone act on v)."""
    w = _circle_param(20_000)
    w0 = w.detach().numpy().copy()
    xi0 = np.sqrt(R_CIRC**2 - w0**2)
    n1, n2 = _steps(0.8, h), _steps(1.6, h)
    v1 = None
    for n, opt in _run(
        [w], _zero_loss, n2, {n1, n2}, lr=h, friction=GAMMA_CIRC, temperature=TAU_CIRC,
        constraint="circle", radius=R_CIRC, seed=4,
    ):  # fmt: skip
        t = n * h
        wn, xi, v = _circle_state(opt, w)
        corr = (wn * w0 + xi * xi0) / R_CIRC**2
        exact = laws.circle_free_correlation(R_CIRC, GAMMA_CIRC, TAU_CIRC, t, "rest")
        laws.check(f"h={h} t={t:.1f} E[x.x0]", *laws.mean_se(corr), exact, C_CIRC_UD * h**2)
        exact_v2 = TAU_CIRC * (1 - math.exp(-2 * GAMMA_CIRC * t))
        laws.check(f"h={h} t={t:.1f} E[v^2]", *laws.mean_se(v * v), exact_v2, 0.0)
        if v1 is None:
            v1 = v
        else:
            resid = (v - math.exp(-GAMMA_CIRC * 0.8) * v1) * v1
            laws.check(f"h={h} E[(v2 - e^(-g dt) v1) v1]", *laws.mean_se(resid), 0.0, 0.0)


@pytest.mark.parametrize("h", (0.02, 0.05))
def test_circle_od_is_brownian_motion_on_the_circle(h):
    """Zero loss: each step rotates by sqrt(2 h tau) R / r, an exact Brownian increment of the
    angle, so E[w w0 + xi xi0] / r^2 = exp(-tau t / r^2) at every step size (4 se, no
    allowance), at t = 0.4 and 0.8."""
    w = _circle_param(20_000)
    w0 = w.detach().numpy().copy()
    xi0 = np.sqrt(R_CIRC**2 - w0**2)
    n1, n2 = _steps(0.4, h), _steps(0.8, h)
    for n, opt in _run(
        [w], _zero_loss, n2, {n1, n2}, scheme="od", lr=h, temperature=TAU_CIRC,
        constraint="circle", radius=R_CIRC, seed=5,
    ):  # fmt: skip
        wn, xi, _ = _circle_state(opt, w)
        corr = (wn * w0 + xi * xi0) / R_CIRC**2
        exact = laws.sphere_brownian_correlation(2, R_CIRC, TAU_CIRC, n * h)
        laws.check(f"h={h} t={n * h:.1f}", *laws.mean_se(corr), exact, 0.0)


BETA = 0.5  # linear loss -BETA * w (circle) or -b . x with |b| = BETA (sphere rows)
PHI0 = np.array([0.3, 1.0, 2.0, 2.8])  # start angles from the loss's minimum
T_DET = 1.6


def _pendulum(rate, gamma, t, phi0):
    """phi'' = -rate sin(phi) - gamma phi' from rest (scipy, rtol 1e-11)."""
    sol = solve_ivp(
        lambda _, y: [y[1], -rate * math.sin(y[0]) - gamma * y[1]],
        (0.0, t), [phi0, 0.0], method="DOP853", rtol=1e-11, atol=1e-13,
    )  # fmt: skip
    return float(sol.y[0, -1])


# C for the zero-temperature runs, positions in units of r: the errors at h = 0.1, 0.2, 0.4
# ("ud") and 0.05, 0.1, 0.2 ("od") measured err / h^p = 0.031 ("ud") and 0.52 ("od") on the
# circle (r = 0.5, beta / r = 1), 0.0016 and 0.019 on the sphere (r = 2, beta / r = 0.25),
# constant across h (the stated orders); C is twice that
C_PEND = {("circle", "ud"): 0.06, ("circle", "od"): 1.0, ("sphere", "ud"): 0.004,
          ("sphere", "od"): 0.04}  # fmt: skip


@pytest.mark.parametrize("scheme, h", [("ud", 0.1), ("ud", 0.2), ("ud", 0.4), ("od", 0.05),
                                       ("od", 0.1), ("od", 0.2)])  # fmt: skip
def test_circle_at_zero_temperature_follows_the_pendulum(scheme, h):
    """tau = 0, loss -beta w: the angle phi from the w axis obeys r phi'' = -beta sin phi -
    gamma r phi' ("ud", from rest; scipy) or phi' = -(beta / r) sin phi ("od", closed form);
    |w / r - cos phi(t)| and |xi / r - sin phi(t)| <= C h^p at t = 1.6."""
    w = torch.nn.Parameter(torch.tensor(R_CIRC * np.cos(PHI0), dtype=F64))
    kw = {"friction": GAMMA_CIRC} if scheme == "ud" else {}
    ((_, opt),) = _run(
        [w], lambda ps: -BETA * ps[0].sum(), _steps(T_DET, h), {_steps(T_DET, h)},
        scheme=scheme, lr=h, temperature=0.0, constraint="circle", radius=R_CIRC, **kw,
    )  # fmt: skip
    wn, xi, _ = _circle_state(opt, w)
    for i, phi0 in enumerate(PHI0):
        if scheme == "ud":
            phi = _pendulum(BETA / R_CIRC, GAMMA_CIRC, T_DET, phi0)
        else:
            phi = laws.gradient_flow_angle(phi0, BETA / R_CIRC, T_DET)
        allowance = C_PEND["circle", scheme] * h ** (2 if scheme == "ud" else 1)
        laws.check(f"phi0={phi0} w/r", wn[i] / R_CIRC, 0.0, math.cos(phi), allowance)
        laws.check(f"phi0={phi0} xi/r", xi[i] / R_CIRC, 0.0, math.sin(phi), allowance)


# ---------------------------------------------------------------------------- sphere rows
R_SPH, TAU_SPH, GAMMA_SPH = 2.0, 0.5, 1.0


def _sphere_param(n, seed=6):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(ml.Sphere(R_SPH).random(n, 3, dtype=F64, generator=g))


# C for the sphere "ud" free motion: the bias of E[x(t).x(0)] / r^2 measured at most 0.013 h^2
# (200k rows against a 200k-chain reference at h = 0.01)
C_SPH_UD = 0.1


@pytest.mark.parametrize("h", H_UD)
def test_sphere_ud_free_motion(h):
    """Zero loss, from rest, rows on S^2 of radius 2, tau = 0.5: E[x(t) . x(0)] / r^2 against the
    numpy reference (4 sqrt(se^2 + se_ref^2) + C h^2) and E|p(t)|^2 = 2 tau (1 - e^{-2 gamma t})
    (the rotations keep |p|: exact), at t = 0.8 and 1.6."""
    x = _sphere_param(10_000)
    x0 = x.detach().numpy().copy()
    ref = laws.sphere_free_reference(3, R_SPH, GAMMA_SPH, TAU_SPH, (0.8, 1.6), "rest")
    n1, n2 = _steps(0.8, h), _steps(1.6, h)
    for n, opt in _run(
        [x], _zero_loss, n2, {n1, n2}, lr=h, friction=GAMMA_SPH, temperature=TAU_SPH,
        constraint="sphere", radius=R_SPH, seed=7,
    ):  # fmt: skip
        t = round(n * h, 10)
        est, se = laws.mean_se((x.detach().numpy() * x0).sum(-1) / R_SPH**2)
        exact, se_ref = ref[0.8 if math.isclose(t, 0.8) else 1.6]
        laws.check(f"h={h} t={t}", est, math.hypot(se, se_ref), exact, C_SPH_UD * h**2)
        p = opt.state[x]["momentum_buffer"].numpy()
        exact_p2 = 2 * TAU_SPH * (1 - math.exp(-2 * GAMMA_SPH * t))
        laws.check(f"h={h} t={t} E|p|^2", *laws.mean_se((p * p).sum(-1)), exact_p2, 0.0)


def _sphere_od_discrete(h, n_steps, d=3):
    """Exact discrete E[x_n . x_0] / r^2 of CoLA's sphere "od" path without loss: each step is
    the geodesic of the tangent Gaussian v = sqrt(2 h tau) P R for unit time, so
    E[x_{n+1} . x_0 | x_n] = E[cos(|v| / r)] x_n . x_0 (|v|^2 / (2 h tau) is chi^2 with d - 1
    degrees of freedom); quadrature."""
    from scipy.integrate import quad
    from scipy.stats import chi

    a = math.sqrt(2 * h * TAU_SPH) / R_SPH
    phi = quad(lambda u: math.cos(a * u) * chi.pdf(u, d - 1), 0, np.inf)[0]
    return phi**n_steps


# C for the sphere "od" Brownian motion, per unit of dt tau / r^2: the exact discrete bias above
# is at most 0.127 (dt tau / r^2) at t <= 4 (test_sphere_od_allowance_covers_... checks it; 200k
# rows measured -0.08 +- 0.015 at h = 0.4, t = 4)
C_SPH_OD = 0.25
H_SPH_OD = (0.1, 0.2, 0.4)  # dt tau / r^2 = 0.0125, 0.025, 0.05


def test_sphere_od_allowance_covers_the_exact_scheme_bias():
    for h in H_SPH_OD:
        for t in (2.0, 4.0):
            exact = laws.sphere_brownian_correlation(3, R_SPH, TAU_SPH, t)
            err = abs(_sphere_od_discrete(h, _steps(t, h)) - exact)
            assert err <= C_SPH_OD * h * TAU_SPH / R_SPH**2, (h, t, err)


@pytest.mark.parametrize("h", H_SPH_OD)
def test_sphere_od_is_brownian_motion_on_the_sphere(h):
    """Zero loss: E[x(t) . x(0)] / r^2 = exp(-2 tau t / r^2) on S^2_r at t = 2 and 4,
    4 se + C h tau / r^2."""
    x = _sphere_param(10_000)
    x0 = x.detach().numpy().copy()
    n1, n2 = _steps(2.0, h), _steps(4.0, h)
    for n, _opt in _run(
        [x], _zero_loss, n2, {n1, n2}, scheme="od", lr=h, temperature=TAU_SPH,
        constraint="sphere", radius=R_SPH, seed=8,
    ):  # fmt: skip
        t = n * h
        corr = (x.detach().numpy() * x0).sum(-1) / R_SPH**2
        exact = laws.sphere_brownian_correlation(3, R_SPH, TAU_SPH, t)
        laws.check(
            f"h={h} t={t:.1f}", *laws.mean_se(corr), exact, C_SPH_OD * h * TAU_SPH / R_SPH**2
        )


@pytest.mark.parametrize("scheme, h", [("ud", 0.1), ("ud", 0.2), ("ud", 0.4), ("od", 0.05),
                                       ("od", 0.1), ("od", 0.2)])  # fmt: skip
def test_sphere_at_zero_temperature_follows_the_pendulum(scheme, h):
    """tau = 0, loss -b . x per row (|b| = beta along e_3): from rest each row moves in the plane
    of x(0) and b, its angle psi from b obeying r psi'' = -beta sin psi - gamma r psi' ("ud") or
    psi' = -(beta / r) sin psi ("od"): the rows at t = 1.6 equal r (cos psi b_hat + sin psi u)
    within C h^p (in units of r), u the unit direction of x(0) across b."""
    alpha = np.linspace(0.0, 2 * np.pi, len(PHI0), endpoint=False)
    u = np.stack([np.cos(alpha), np.sin(alpha), np.zeros_like(alpha)], 1)
    b_hat = np.array([0.0, 0.0, 1.0])
    rows = R_SPH * (np.cos(PHI0)[:, None] * b_hat + np.sin(PHI0)[:, None] * u)
    x = torch.nn.Parameter(torch.tensor(rows, dtype=F64))
    b = torch.tensor(BETA * b_hat, dtype=F64)
    kw = {"friction": GAMMA_SPH} if scheme == "ud" else {}
    list(_run(
        [x], lambda ps: -(ps[0] * b).sum(), _steps(T_DET, h), scheme=scheme, lr=h,
        temperature=0.0, constraint="sphere", radius=R_SPH, **kw,
    ))  # fmt: skip
    got = x.detach().numpy() / R_SPH
    for i, psi0 in enumerate(PHI0):
        if scheme == "ud":
            psi = _pendulum(BETA / R_SPH, GAMMA_SPH, T_DET, psi0)
        else:
            psi = laws.gradient_flow_angle(psi0, BETA / R_SPH, T_DET)
        allowance = C_PEND["sphere", scheme] * h ** (2 if scheme == "ud" else 1)
        want = math.cos(psi) * b_hat + math.sin(psi) * u[i]
        laws.check(f"psi0={psi0}", float(np.abs(got[i] - want).max()), 0.0, 0.0, allowance)


# ---------------------------------------------------------------------------- orthogonal
TAU_ORTH, GAMMA_ORTH = 0.5, 1.0


def _orthogonal_params(n, shape, seed=9):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(ml.optim.orthogonal_init_(torch.randn(*shape, generator=g, dtype=F64)))
        for _ in range(n)
    ]


def _trace_correlation(params, starts):
    return np.array([float((w.detach() * w0).sum()) for w, w0 in zip(params, starts)])


# C for the O(3) free motion (RATTLE steps): the bias of E[tr(W(t)^T W(0))] / 3 measured at most
# 0.024 h^2 (3000 matrices against a 100k-chain reference at h = 0.01). Free-flight RATTLE steps
# keep |p| on the Stiefel manifold (to rounding, measured), so E|p|^2 is exact: no allowance.
C_ORTH_UD = 0.1


@pytest.mark.parametrize("h", H_UD)
def test_orthogonal_ud_free_motion_on_o3(h):
    """Zero loss, from rest, 300 orthogonal 3 x 3 weights (one batched solve), tau = 0.5:
    E[tr(W(t)^T W(0))] / 3 against the body-coordinate numpy reference (4 combined se + C h^2) and
    E|p|^2 = 3 tau (1 - e^{-2 gamma t}) (dim O(3) = 3), p the tangent part of the buffer."""
    params = _orthogonal_params(300, (3, 3))
    starts = [w.detach().clone() for w in params]
    ref = laws.rotation_free_reference(GAMMA_ORTH, TAU_ORTH, (0.8, 1.6), "rest")
    n1, n2 = _steps(0.8, h), _steps(1.6, h)
    stiefel = ml.Stiefel()
    for n, opt in _run(
        params, _zero_loss, n2, {n1, n2}, lr=h, friction=GAMMA_ORTH, temperature=TAU_ORTH,
        constraint="orthogonal", seed=10,
    ):  # fmt: skip
        t = round(n * h, 10)
        est, se = laws.mean_se(_trace_correlation(params, starts) / 3)
        exact, se_ref = ref[0.8 if math.isclose(t, 0.8) else 1.6]
        laws.check(f"h={h} t={t}", est, math.hypot(se, se_ref), exact, C_ORTH_UD * h**2)
        p2 = [
            float((stiefel.proju(w.detach(), opt.state[w]["momentum_buffer"]) ** 2).sum())
            for w in params
        ]
        exact_p2 = 3 * TAU_ORTH * (1 - math.exp(-2 * GAMMA_ORTH * t))
        laws.check(f"h={h} t={t} E|p|^2", *laws.mean_se(p2), exact_p2, 0.0)


# C for Brownian motion on V(4, 2) by projected Euler-Maruyama, per unit of dt tau: the
# measured bias of E[tr(W(t)^T W(0))] / 2 is at most 2.0 dt tau (2000 matrices, tau = 0.25 and
# 0.4, t <= 0.96)
C_ORTH_OD = 3.0
H_ORTH_OD = (0.015, 0.03, 0.06)
TAU_ORTH_OD = 0.25


@pytest.mark.parametrize("h", H_ORTH_OD)
def test_orthogonal_od_is_brownian_motion_on_the_stiefel_manifold(h):
    """Zero loss, 300 weights of shape 4 x 2 (orthonormal columns), tau = 0.25:
    E[tr(W(t)^T W(0))] / 2 = exp(-tau (n - (k + 1) / 2) t) = exp(-2.5 tau t) at t = 0.48 and
    0.96, 4 se + C h tau (steps kept small enough that no SHAKE solve fails: at tau = 0.4 and
    h = 0.1 about 0.6% of them do)."""
    tau = TAU_ORTH_OD
    params = _orthogonal_params(300, (4, 2))
    starts = [w.detach().clone() for w in params]
    n1, n2 = _steps(0.48, h), _steps(0.96, h)
    for n, _opt in _run(
        params, _zero_loss, n2, {n1, n2}, scheme="od", lr=h, temperature=tau,
        constraint="orthogonal", seed=11,
    ):  # fmt: skip
        t = n * h
        corr = _trace_correlation(params, starts) / 2
        exact = laws.stiefel_brownian_correlation(4, 2, tau, t)
        laws.check(f"h={h} t={t:.2f}", *laws.mean_se(corr), exact, C_ORTH_OD * h * tau)


def _stiefel_project(w, z):
    s = w.T @ z
    return z - w @ (0.5 * (s + s.T))


def _stiefel_flow(w0, target, k, gamma, t, scheme):
    """The zero-temperature dynamics of the loss k |W - C|^2 / 2 on V(n, p), by scipy:
    "od": W' = P_W(F); "ud": W'' = P_W(F) - gamma W' - W W'^T W' from rest (the constraint force
    keeps W^T W = I), F = -k (W - C), P_W(Z) = Z - W sym(W^T Z)."""
    shape = w0.shape
    size = w0.size

    def force(w):
        return -k * (w - target)

    if scheme == "od":
        rhs = lambda _, y: _stiefel_project(y.reshape(shape), force(y.reshape(shape))).ravel()  # noqa: E731
        y0 = w0.ravel()
    else:

        def rhs(_, y):
            w, v = y[:size].reshape(shape), y[size:].reshape(shape)
            acc = _stiefel_project(w, force(w)) - gamma * v - w @ (v.T @ v)
            return np.concatenate([v.ravel(), acc.ravel()])

        y0 = np.concatenate([w0.ravel(), np.zeros(size)])
    sol = solve_ivp(rhs, (0.0, t), y0, method="DOP853", rtol=1e-11, atol=1e-13)
    return sol.y[:size, -1].reshape(shape)


# C for the zero-temperature orthogonal runs (max entry error): measured err / h^p = 0.34 to 0.38
# ("ud", RATTLE, h = 0.1 to 0.4) and 0.14 to 0.15 ("od", SHAKE, h = 0.05 to 0.2)
C_ORTH_DET_UD, C_ORTH_DET_OD = 0.6, 0.25


@pytest.mark.parametrize("scheme, h", [("ud", 0.1), ("ud", 0.2), ("ud", 0.4), ("od", 0.05),
                                       ("od", 0.1), ("od", 0.2)])  # fmt: skip
def test_orthogonal_at_zero_temperature_follows_the_constrained_flow(scheme, h):
    """tau = 0, loss k |W - C|^2 / 2 on a 4 x 2 weight: W(1.6) against scipy's solution of the
    constrained ODE (damped geodesic motion with the projected force, or projected gradient
    flow), max entry error <= C h^p."""
    k = 1.0
    rng = np.random.default_rng(0)
    w0 = np.linalg.qr(rng.standard_normal((4, 2)))[0]
    target = rng.standard_normal((4, 2))
    w = torch.nn.Parameter(torch.tensor(w0, dtype=F64))
    c = torch.tensor(target, dtype=F64)
    kw = {"friction": GAMMA_ORTH} if scheme == "ud" else {}
    list(_run(
        [w], lambda ps: 0.5 * k * ((ps[0] - c) ** 2).sum(), _steps(T_DET, h), scheme=scheme,
        lr=h, temperature=0.0, constraint="orthogonal", **kw,
    ))  # fmt: skip
    want = _stiefel_flow(w0, target, k, GAMMA_ORTH, T_DET, scheme)
    allowance = C_ORTH_DET_UD * h**2 if scheme == "ud" else C_ORTH_DET_OD * h
    err = float(np.abs(w.detach().numpy() - want).max())
    laws.check(f"{scheme} h={h} max |W - W_exact|", err, 0.0, 0.0, allowance)


# ---------------------------------------------------------------------------- momenta
@pytest.mark.parametrize("gamma, h", [(0.5, 0.1), (2.0, 0.4)])
def test_free_momentum_autocorrelation_at_zero_loss(gamma, h):
    """No force: the buffer sees only the O steps, buf <- e^{-gamma h} buf + sqrt(tau (1 -
    e^{-2 gamma h})) R: E[buf_n^2] = tau (1 - e^{-2 gamma t_n}) from rest and
    E[(buf_n - e^{-gamma (t_n - t_m)} buf_m) buf_m] = 0, exactly (4 se)."""
    tau = 0.6
    w = _free_param(20_000)
    bufs = []
    for n, opt in _run(
        [w], _zero_loss, 8, {2, 4, 8}, lr=h, friction=gamma, temperature=tau, seed=12
    ):
        buf = opt.state[w]["momentum_buffer"].numpy().copy()
        exact = tau * (1 - math.exp(-2 * gamma * n * h))
        laws.check(f"E[buf_{n}^2]", *laws.mean_se(buf * buf), exact, 0.0)
        bufs.append((n, buf))
    (m, first), *later = bufs
    for n, buf in later:
        resid = (buf - math.exp(-gamma * (n - m) * h) * first) * first
        laws.check(f"autocorrelation {m}->{n}", *laws.mean_se(resid), 0.0, 0.0)
