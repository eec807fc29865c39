"""``validation.released_circle.ReleasedCircleCoLA``: the released c-CoLA-ud circle scheme.

Pins its two known behaviours (the radius shrinks under ``rotation="released"`` and not under
``"exact"``; ``gradient="lagged"`` moves the weights with the previous step's gradient), its
agreement with the library's ``CoLA(constraint="circle")`` when both are switched off, and its
seeded noise.
"""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.manifolds.circles import circle_momentum
from validation import exp_e2
from validation.released_circle import ReleasedCircleCoLA

R = 0.1
H, GAMMA = 0.3, 1.0


def _weights(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 0.9 * R
    return w, g


def _radius_after(rotation, steps=20, scale=0.05, temperature=0.0, seed=0):
    """``sqrt(w^2 + xi^2) / r`` after ``steps`` steps on a fixed gradient (100 weights)."""
    w0, g = _weights()
    grad = scale * torch.randn(w0.shape, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = ReleasedCircleCoLA(
        [w], lr=H, friction=GAMMA, temperature=temperature, radius=R, rotation=rotation, seed=seed
    )
    for _ in range(steps):
        w.grad = grad.clone()
        opt.step()
    return opt.radii()[0] / R, w.detach()


def test_released_rotation_shrinks_the_radius():
    rho, w = _radius_after("released")
    # measured: mean 0.9692, smallest 0.8423 after 20 steps (float64)
    assert float(rho.mean()) < 0.99, float(rho.mean())
    assert float(rho.min()) < 0.9, float(rho.min())
    assert float(rho.max()) <= 1 + 1e-12
    assert bool((w.abs() <= R).all())


def test_exact_rotation_keeps_the_radius():
    for temperature in (0.0, 1e-4):
        rho, _ = _radius_after("exact", temperature=temperature)
        assert float((rho - 1).abs().max()) < 1e-12


def test_residuals_report_the_shrink():
    w0, g = _weights()
    grad = 0.05 * torch.randn(w0.shape, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = ReleasedCircleCoLA([{"params": [w], "param_names": ["w"]}], lr=H, radius=R)
    for _ in range(20):
        w.grad = grad.clone()
        opt.step()
    rho = opt.radii()[0] / R
    res = opt.residuals()
    assert set(res) == {"w"}
    assert res["w"] == pytest.approx(float((1 - rho**2).abs().max()), rel=1e-12)
    assert opt.n_rejected() == 0


def _trajectory(grads, *, gradient, rotation="exact", temperature=0.0, seed=0):
    """Weights after each step of a circle tensor and an unconstrained one, fed ``grads``."""
    w0, g = _weights(12, seed=1)
    b0 = torch.randn(5, generator=g, dtype=torch.float64)
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = ReleasedCircleCoLA(
        [{"params": [w], "radius": R}, {"params": [b]}],
        lr=H,
        friction=GAMMA,
        temperature=temperature,
        rotation=rotation,
        gradient=gradient,
        seed=seed,
    )
    out = [(w0, b0)]
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        out.append((w.detach().clone(), b.detach().clone()))
    return out, opt


def _grads(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(12, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("rotation", ["released", "exact"])
def test_lagged_gradient_moves_with_the_previous_gradient(rotation):
    grads = _grads(5, seed=2)
    base, opt = _trajectory(grads, gradient="lagged", rotation=rotation)
    # the first step starts from zero momentum: at T = 0 the weights stay, the momentum does not
    assert torch.equal(base[1][0], base[0][0]) and torch.equal(base[1][1], base[0][1])
    assert float(next(iter(opt.state.values()))["momentum_buffer"].abs().max()) > 0
    for k in range(1, 4):
        other = list(grads)
        other[k] = tuple(-3.0 * t for t in grads[k])  # change gradient k only
        alt, _ = _trajectory(other, gradient="lagged", rotation=rotation)
        # the weights after step k (index k + 1) do not depend on gradient k ...
        for i in range(k + 2):
            assert torch.equal(alt[i][0], base[i][0]) and torch.equal(alt[i][1], base[i][1])
        # ... the weights after step k + 1 do
        assert float((alt[k + 2][0] - base[k + 2][0]).abs().max()) > 1e-4
        assert float((alt[k + 2][1] - base[k + 2][1]).abs().max()) > 1e-3


def test_current_gradient_moves_with_its_own_gradient():
    grads = _grads(4, seed=3)
    base, _ = _trajectory(grads, gradient="current")
    assert float((base[1][0] - base[0][0]).abs().max()) > 1e-4  # the first step moves
    for k in range(3):
        other = list(grads)
        other[k] = tuple(-3.0 * t for t in grads[k])
        alt, _ = _trajectory(other, gradient="current")
        for i in range(k + 1):
            assert torch.equal(alt[i][0], base[i][0]) and torch.equal(alt[i][1], base[i][1])
        assert float((alt[k + 1][0] - base[k + 1][0]).abs().max()) > 1e-4
        assert float((alt[k + 1][1] - base[k + 1][1]).abs().max()) > 1e-3


def _library(grads, first_kick):
    w0, g = _weights(12, seed=1)
    b0 = torch.randn(5, generator=g, dtype=torch.float64)
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = ml.optim.CoLA(
        [{"params": [w], "constraint": "circle", "radius": R}, {"params": [b]}],
        lr=H,
        friction=GAMMA,
        first_kick=first_kick,
        seed=0,
    )
    out = [(w0, b0)]
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        out.append((w.detach().clone(), b.detach().clone()))
    return out, opt


def _max_gap(a, b):
    return max(float((x - y).abs().max()) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def test_exact_current_at_zero_temperature_is_the_library_map():
    """Both switches off, T = 0: the same map as CoLA with ``first_kick="full"`` (kick h with
    the current gradient every step); CoLA's default first kick is h/2, which is this map fed
    half the first gradient."""
    grads = _grads(10, seed=4)
    ours, opt = _trajectory(grads, gradient="current")
    lib, lopt = _library(grads, "full")
    assert _max_gap(ours, lib) < 1e-13
    w = opt.param_groups[0]["params"][0]
    lw = lopt.param_groups[0]["params"][0]
    st, lst = opt.state[w], lopt.state[lw]
    assert float((st["xi"] - lst["xi"]).abs().max()) < 1e-12
    # the library holds the angular velocity omega of the momentum omega (-xi, w)
    lpw, lpxi = circle_momentum(lw.detach(), lst["xi"], lst["angular_velocity"])
    for key, want in (("momentum_buffer", lpw), ("xi_momentum", lpxi)):
        assert float((st[key] - want).abs().max()) < 1e-12, key
    # the documented difference with CoLA's default first_kick="half"
    lib_half, _ = _library(grads, "half")
    assert _max_gap(ours, lib_half) > 1e-3
    halved = [tuple(0.5 * t for t in grads[0]), *grads[1:]]
    ours_halved, _ = _trajectory(halved, gradient="current")
    assert _max_gap(ours_halved, lib_half) < 1e-13


def test_released_switches_depart_from_the_library_map():
    grads = _grads(10, seed=4)
    lib, _ = _library(grads, "full")
    for rotation, gradient in (("released", "current"), ("exact", "lagged")):
        ours, _ = _trajectory(grads, gradient=gradient, rotation=rotation)
        assert _max_gap(ours, lib) > 1e-4, (rotation, gradient)


def test_noise_is_seeded():
    grads = _grads(6, seed=5)
    a, _ = _trajectory(grads, gradient="lagged", rotation="released", temperature=1e-3, seed=7)
    b, _ = _trajectory(grads, gradient="lagged", rotation="released", temperature=1e-3, seed=7)
    c, _ = _trajectory(grads, gradient="lagged", rotation="released", temperature=1e-3, seed=8)
    d, _ = _trajectory(grads, gradient="lagged", rotation="released", temperature=0.0)
    assert _max_gap(a, b) == 0.0
    assert _max_gap(a, c) > 1e-4
    assert _max_gap(a, d) > 1e-4  # the noise does something
    # lagged, T > 0: the first step moves the weights by the noise alone
    assert float((a[1][1] - a[0][1]).abs().max()) > 1e-4


def test_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="rotation"):
        ReleasedCircleCoLA([w], lr=0.1, radius=R, rotation="approx")
    with pytest.raises(ValueError, match="gradient"):
        ReleasedCircleCoLA([w], lr=0.1, radius=R, gradient="next")
    with pytest.raises(ValueError, match="lr"):
        ReleasedCircleCoLA([w], lr=-0.1, radius=R)


def test_e2_builds_it_with_the_paper_radii():
    model = exp_e2.make_mlp(0, sizes=(20, 16, 4))
    opt = exp_e2.build_optimizer("released", model, 0, lr=H, friction=GAMMA, temperature=0.0)
    assert isinstance(opt, ReleasedCircleCoLA)
    assert opt.rotation == "released" and opt.gradient == "lagged"
    assert [g["radius"] for g in opt.param_groups] == [*exp_e2.RADII, None]
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    # the first layer's init (|w| up to 1/sqrt(20)) is clipped onto float32(0.05) > 0.05
    weights = [p.detach() for p in model.parameters() if p.dim() >= 2]
    assert float(weights[0].abs().max()) <= exp_e2.RADII[0] * (1 + 1e-6)
    assert float(weights[1].abs().max()) <= exp_e2.RADII[1] * (1 + 1e-6)
    assert len(opt.residuals()) == 2
