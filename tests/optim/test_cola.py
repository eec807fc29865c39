"""CoLA's update: SGD equivalence, the carried kick, the constraints held over long runs, shapes,
batching, per-group hyperparameters, dtypes and geoopt parameters."""

from __future__ import annotations

import copy
import itertools
import math

import geoopt
import pytest
import torch
from scipy import stats

import manifold_langevin as ml
from manifold_langevin.manifolds.circles import circle_momentum
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_, sgd_equivalent

from .helpers import batches, mlp, ortho_residual, train


# ---------------------------------------------------------------------------- SGD equivalence
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("momentum", [0.9, 0.5, 0.0])
def test_equals_sgd_with_momentum(dtype, tol, momentum):
    m1 = mlp(dtype=dtype)
    m2 = copy.deepcopy(m1)
    sgd = torch.optim.SGD(m1.parameters(), lr=0.05, momentum=momentum)
    cola = CoLA(m2.parameters(), **sgd_equivalent(lr=0.05, momentum=momentum))
    data = batches(30, dtype=dtype)
    for i in range(30):
        train(m1, sgd, data, 1, start=i)
        train(m2, cola, data, 1, start=i)
        for p, q in zip(m1.parameters(), m2.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=tol), i
    # the runs did move
    assert not torch.allclose(m1[0].weight, mlp(dtype=dtype)[0].weight, atol=1e-3)


def test_sgd_equivalent_mapping():
    kw = sgd_equivalent(lr=0.1, momentum=0.9)
    h, gamma = kw["lr"], kw["friction"]
    mu = math.exp(-gamma * h)
    assert mu == pytest.approx(0.9, rel=1e-12)
    assert h * h * (1 + mu) / 2 == pytest.approx(0.1, rel=1e-12)
    assert sgd_equivalent(0.1, 0.0)["friction"] == math.inf
    with pytest.raises(ValueError):
        sgd_equivalent(0.1, 1.5)


def test_first_step_is_a_half_kick_then_carried_kicks():
    # unconstrained, tau = 0: check the exact BAOAB bookkeeping over three steps
    h, gamma = 0.2, 0.7
    c1 = math.exp(-gamma * h)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = CoLA([x], lr=h, friction=gamma, fuse=False)
    xs, p = x.detach().clone(), torch.zeros(2, dtype=torch.float64)
    grads = [torch.tensor([0.3, 0.1]), torch.tensor([-0.2, 0.5]), torch.tensor([0.0, 1.0])]
    for n, g in enumerate(grads):
        g = g.double()
        x.grad = g.clone()
        opt.step()
        p = p - (h / 2 if n == 0 else h) * g
        xs = xs + h / 2 * p
        p = c1 * p
        xs = xs + h / 2 * p
        assert torch.allclose(x.detach(), xs, atol=1e-15)
        assert torch.allclose(opt.state[x]["momentum_buffer"], p, atol=1e-15)


# ---------------------------------------------------------------------------- hand-written maps
# The B, A and O maps of the CoLA docstring written out again for each constraint kind, in float64
# and without the library's sub-steps, projections or flows, so that a bug shared by the
# optimizer and its helpers (a wrong O coefficient, a wrong rotation or geodesic, an unprojected
# kick) shows. A kind is ``(project, flow)``: ``project(x, v)`` the tangent projection at ``x``
# and ``flow(x, p, t)`` the A map. Circle points are ``(2, n)`` stacks ``[w; xi]``.
def _ou(gamma, tau, h):
    """The O step's ``c1 = exp(-gamma h)``, ``c2 = sqrt(tau (1 - exp(-2 gamma h)))``."""
    return math.exp(-gamma * h), math.sqrt(tau * (1.0 - math.exp(-2.0 * gamma * h)))


def _circle_project(x, v):
    return v - (x * v).sum(0) / (x * x).sum(0) * x


def _circle_flow(x, p, t):
    """Rotation of the (w, xi) planes by ``omega t``, ``omega = (w p_xi - xi p_w) / r^2``."""
    theta = (x[0] * p[1] - x[1] * p[0]) / (x * x).sum(0) * t
    c, s = torch.cos(theta), torch.sin(theta)

    def rot(v):
        return torch.stack([c * v[0] - s * v[1], s * v[0] + c * v[1]])

    return rot(x), rot(p)


def _row_project(x, v):
    return v - x * (x * v).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True)


def _row_geodesic(x, p, t):
    """Great circles of the row spheres: ``x cos(wt) + r p/|p| sin(wt)``, ``w = |p| / r``."""
    r = x.norm(dim=-1, keepdim=True)
    speed = p.norm(dim=-1, keepdim=True)
    c, s = torch.cos(speed / r * t), torch.sin(speed / r * t)
    return x * c + r * p / speed * s, p * c - x * speed / r * s


def _row_shake(x, y):
    """``y + lam x`` on the unit row spheres: the root nearest zero of ``|y + lam x|^2 = 1``."""
    a = (x * x).sum(-1, keepdim=True)
    b = (x * y).sum(-1, keepdim=True)
    c = (y * y).sum(-1, keepdim=True) - 1.0
    return y + (-c / (b + torch.sqrt(b * b - a * c))) * x


def _tall(m):
    return m.mT if m.shape[-2] < m.shape[-1] else m


def _frame_project(x, v):
    """``V - T sym(T^T V)`` on the tall form ``T`` (orthonormal columns, or rows when wide)."""
    t, vt = _tall(x), _tall(v)
    a = t.mT @ vt
    out = vt - t @ (0.5 * (a + a.mT))
    return out.mT if x.shape[-2] < x.shape[-1] else out


def _frame_shake(x, y):
    """``Y + T Lambda`` (``Lambda`` symmetric) with orthonormal columns, by the contraction
    ``Lambda <- Lambda - F(Lambda) / 2`` iterated to round-off (the library runs Newton)."""
    t, yt = _tall(x), _tall(y)
    eye = torch.eye(t.shape[-1], dtype=t.dtype)
    lam = torch.zeros_like(eye)
    for _ in range(200):
        z = yt + t @ lam
        f = z.mT @ z - eye
        if f.abs().max() < 1e-15:
            break
        lam = lam - 0.5 * f
    z = yt + t @ lam
    return z.mT if x.shape[-2] < x.shape[-1] else z


def _rattle(project, shake):
    """One RATTLE step: ``x' = shake(x, x + t p)``, ``p' = P(x') (x' - x) / t``."""

    def flow(x, p, t):
        x_new = shake(x, x + t * p)
        return x_new, project(x_new, (x_new - x) / t)

    return flow


_REFERENCE = {
    "circle": (_circle_project, _circle_flow),
    "sphere": (_row_project, _row_geodesic),
    "orthogonal_tall": (_frame_project, _rattle(_frame_project, _frame_shake)),
    "orthogonal_wide": (_frame_project, _rattle(_frame_project, _frame_shake)),
    "free": (lambda x, v: v, lambda x, p, t: (x + t * p, p)),
    "manifold_object": (_row_project, _rattle(_row_project, _row_shake)),
}


def _composition_start(kind, gen):
    """``(CoLA options, start point)`` of a parameter of each constraint kind (float64)."""
    z = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    if kind == "circle":
        return {"constraint": "circle", "radius": 0.3}, 0.27 * torch.tanh(z)
    if kind == "sphere":
        return {"constraint": "sphere", "radius": 2.0}, 2.0 * z / z.norm(dim=-1, keepdim=True)
    if kind.startswith("orthogonal"):
        q = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))[0]
        return {"constraint": "orthogonal"}, q if kind == "orthogonal_tall" else q.mT
    if kind == "free":
        return {"constraint": None}, z
    unit_rows = ml.ImplicitManifold(lambda x: (x * x).sum(-1) - 1.0)
    return {"constraint": unit_rows}, z / z.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("kind", list(_REFERENCE))
def test_ud_step_is_the_composition_of_substeps(kind):
    """Three noisy CoLA steps equal B A O A with the carried kick, from the hand-written maps
    above and CoLA's noise stream replayed (one standard normal per coordinate and step, laid
    out like the point; for circles one per weight, the tangent space being a line)."""
    project, flow = _REFERENCE[kind]
    # closed forms: round-off of some 100 operations on O(1) numbers (measured <= 5e-16). RATTLE
    # (SHAKE solved to a tolerance): the library stops once the residual is below the float64
    # SHAKE tolerance, 1e-12, so the point may differ by that and the velocity (x' - x) / (h/2)
    # by 1e-12 / (h/2) (measured: 1e-15 and 6e-15, Newton's last step lands far below it)
    rattle = kind.startswith("orthogonal") or kind == "manifold_object"
    atol = 1e-12 if rattle else 1e-13
    options, w0 = _composition_start(kind, torch.Generator().manual_seed(0))
    w = torch.nn.Parameter(w0.clone())
    h, gamma, tau = 0.1, 2.0, 0.3
    opt = CoLA([w], lr=h, friction=gamma, temperature=tau, seed=5, **options)
    gen = torch.Generator().manual_seed(5)
    c1, c2 = _ou(gamma, tau, h)
    circle = kind == "circle"
    if circle:
        r = options["radius"]
        x = torch.stack([w0.flatten(), torch.sqrt(r * r - w0.flatten() ** 2)])
    else:
        x = w0.clone()
    p = torch.zeros_like(x)
    for n in range(3):
        g = torch.sin(3 * w.detach() + n)
        w.grad = g.clone()
        opt.step()
        force = torch.stack([-g.flatten(), torch.zeros(g.numel(), dtype=g.dtype)]) if circle else -g
        p = project(x, p + (h / 2 if n == 0 else h) * force)  # B, with the carried kick
        x, p = flow(x, p, h / 2)  # A
        if circle:  # one normal per weight along the unit tangent (-xi, w) / |(w, xi)|
            z = torch.randn(x.shape[1], generator=gen, dtype=x.dtype)
            noise = z * torch.stack([-x[1], x[0]]) / x.norm(dim=0)
        else:
            noise = project(x, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        p = c1 * p + c2 * noise  # O
        x, p = flow(x, p, h / 2)  # A
        st = opt.state[w]
        if circle:
            got_x = torch.stack([w.detach().flatten(), st["xi"].flatten()])
            # the state holds the angular velocity omega: the momentum is omega (-xi, w)
            pw, pxi = circle_momentum(got_x[0], got_x[1], st["angular_velocity"].flatten())
            got_p = torch.stack([pw, pxi])
        else:
            got_x, got_p = w.detach(), st["momentum_buffer"]
            if kind.startswith("orthogonal"):
                # an orthogonal weight's buffer is stored before its tangent projection (Stiefel's
                # RATTLE step sees only the tangent part): the velocity is its projection
                got_p = project(got_x, got_p)
        torch.testing.assert_close(got_x, x, rtol=0, atol=atol)
        torch.testing.assert_close(got_p, p, rtol=0, atol=atol / (h / 2) if rattle else atol)


# ---------------------------------------------------------------------------- noise magnitude
def _noise_ratio(increment, variance, dim):
    """``|increment|^2 / (variance * dim)`` for an increment whose ``dim`` tangent coordinates
    should be independent ``N(0, variance)``: then ``dim`` times the ratio is chi-square with
    ``dim`` degrees of freedom, mean 1 and standard deviation ``sqrt(2 / dim)``."""
    return float(increment.double().square().sum()) / (variance * dim)


def _noise_start(kind, gen):
    """``(CoLA options, start point, tangent dimension)``, some 20,000 tangent coordinates."""
    if kind == "free":
        return (
            {"constraint": None},
            torch.randn(100, 200, generator=gen, dtype=torch.float64),
            20_000,
        )
    if kind == "circle":
        w = torch.rand(100, 200, generator=gen, dtype=torch.float64) * 1.8 - 0.9
        return {"constraint": "circle", "radius": 1.0}, w, 20_000  # one angle per weight
    if kind == "sphere":
        z = torch.randn(2000, 11, generator=gen, dtype=torch.float64)
        return {"constraint": "sphere"}, z / z.norm(dim=-1, keepdim=True), 2000 * 10
    q = torch.linalg.qr(torch.randn(200, 100, generator=gen, dtype=torch.float64))[0]
    q = q if kind == "orthogonal_tall" else q.mT
    return {"constraint": "orthogonal"}, q, 200 * 100 - 100 * 101 // 2


@pytest.mark.parametrize("scheme", ["ud", "od"])
@pytest.mark.parametrize("kind", ["free", "circle", "sphere", "orthogonal_tall", "orthogonal_wide"])
def test_noise_of_one_step_has_the_stated_variance(kind, scheme):
    """With no force, a first step from rest moves a parameter by its noise alone: ``(h/2) c2 P R``
    for ``"ud"`` (the O step between the two half drifts, ``c2^2 = tau (1 - exp(-2 gamma h))``)
    and ``sqrt(2 h tau) P R`` for ``"od"``, ``R`` standard normal, ``P`` the tangent projection.

    The sum of squares of the increment over its ``dim`` tangent coordinates is then
    ``variance * chi2(dim)``; with ``dim`` about 20,000 its ratio to the mean is 1 within
    ``5 sqrt(2 / dim)`` (0.05 to 0.058; a false alarm has probability 6e-7) whatever the seed. A
    step on a curved set differs from the tangent one at second order, relatively by the step's
    angle squared: below 1e-4 at ``tau = 1e-4`` (``"od"``: 4.5e-3 per coordinate on radius 1).
    A wrong coefficient (``sqrt(2)`` too large, ``1 - c1`` for ``1 - c1^2``, ``h`` for ``h/2``)
    or noise left out moves the ratio by 0.48 or more.
    """
    h, gamma, tau = 0.1, 1.0, 1e-4
    options, w0, dim = _noise_start(kind, torch.Generator().manual_seed(0))
    w = torch.nn.Parameter(w0.clone())
    opt = CoLA([w], lr=h, friction=gamma, temperature=tau, scheme=scheme, seed=1, **options)
    w.grad = torch.zeros_like(w)
    opt.step()
    increment = w.detach() - w0
    if kind == "circle":  # the weight and its auxiliary variable move along the circle together
        xi0 = torch.sqrt(1.0 - w0**2)
        increment = torch.stack([increment, opt.state[w]["xi"] - xi0])
    if scheme == "ud":
        variance = (h / 2) ** 2 * tau * (1.0 - math.exp(-2.0 * gamma * h))
    else:
        variance = 2.0 * h * tau
    ratio = _noise_ratio(increment, variance, dim)
    assert abs(ratio - 1.0) <= 5 * math.sqrt(2.0 / dim), (ratio, dim)
    assert opt.n_rejected() == 0


@pytest.mark.parametrize("constraint", ["circle", "orthogonal", None])
def test_fused_drift_matches_unfused_at_zero_temperature(constraint):
    model = mlp(dtype=torch.float64)
    other = copy.deepcopy(model)
    data = batches(10, dtype=torch.float64)
    groups = lambda net: constrained_groups(net, constraint) if constraint else net.parameters()  # noqa: E731
    o1 = CoLA(groups(model), lr=0.1, friction=1.0, fuse=True)
    o2 = CoLA(groups(other), lr=0.1, friction=1.0, fuse=False)
    train(model, o1, data, 10)
    train(other, o2, data, 10)
    # exact for rotations and straight lines; RATTLE: agree to O(h^3) per step
    tol = 1e-3 if constraint == "orthogonal" else 1e-12
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.allclose(p, q, atol=tol)


# ---------------------------------------------------------------------------- long runs
def _noisy_steps(param, opt, n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(param.shape, generator=g)
    for _ in range(n_steps):
        param.grad = param.detach() - target  # a quadratic loss
        opt.step()


def _orthogonal_run(shape, n_steps, geodesic, n_matrices=1):
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(orthogonal_init_(torch.randn(shape))) for _ in range(n_matrices)]
    opt = CoLA(
        ws,
        lr=0.1,
        friction=1.0,
        temperature=0.05,
        constraint="orthogonal",
        geodesic=geodesic,
        seed=0,
    )
    w0 = [w.detach().clone() for w in ws]
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(shape, generator=g) for _ in ws]
    for _ in range(n_steps):
        for w, target in zip(ws, targets):
            w.grad = w.detach() - target  # a quadratic loss
        opt.step()
    for w, start in zip(ws, w0):
        assert ortho_residual(w) <= 1e-5
        assert torch.isfinite(w).all()
        assert opt.state[w]["step"] == n_steps
        assert (w - start).abs().max() > 0.2  # it went somewhere
    assert opt.n_rejected() == 0


def test_orthogonal_residual_after_10k_float32_steps():
    # three same-shape matrices share each batched solve; p = 9 > 8 takes Stiefel's Neumann
    # SHAKE (its exact p <= 8 variant is about 3x slower per call and is covered below)
    _orthogonal_run((12, 9), 10_000, geodesic=None, n_matrices=3)


@pytest.mark.parametrize("shape", [(8, 4), (4, 8), (6, 6)])
@pytest.mark.parametrize("geodesic", [None, True])
def test_orthogonal_residual_float32_shapes_and_flows(shape, geodesic):
    _orthogonal_run(shape, 500, geodesic)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 4), (4, 8), (6, 6)])
@pytest.mark.parametrize("geodesic", [None, True])
def test_orthogonal_residual_after_10k_float32_steps_slow(shape, geodesic):
    _orthogonal_run(shape, 10_000, geodesic)


def test_circle_residual_after_10k_float32_steps():
    r = 0.1
    w = torch.nn.Parameter(torch.empty(500).uniform_(-r, r))
    opt = CoLA([w], lr=0.3, friction=1.0, temperature=0.01, constraint="circle", radius=r, seed=0)
    _noisy_steps(w, opt, 10_000)
    xi = opt.state[w]["xi"]
    rel = ((w.detach() ** 2 + xi**2 - r * r).abs() / (r * r)).max()
    assert rel <= 1e-5
    assert (w.detach().abs() <= r).all()
    # the noise moved the weights around the whole circle
    assert (xi < 0).any() and (w.detach().abs() > 0.9 * r).any()


def test_float64_residuals():
    model = mlp(dtype=torch.float64)
    opt = CoLA(constrained_groups(model, "orthogonal"), lr=0.1, temperature=1e-3, seed=0)
    train(model, opt, batches(200, dtype=torch.float64), 200)
    assert all(v <= 1e-12 for v in opt.residuals().values())
    model = mlp(dtype=torch.float64)
    opt = CoLA(constrained_groups(model, "circle"), lr=0.3, temperature=1e-3, seed=0)
    train(model, opt, batches(200, dtype=torch.float64), 200)
    assert all(v <= 1e-14 for v in opt.residuals().values())


# ---------------------------------------------------------------------------- shapes, batching
def test_wide_tall_and_conv_shapes():
    torch.manual_seed(0)
    shapes = {
        "tall": (16, 4),
        "wide": (4, 16),
        "square": (5, 5),
        "conv_wide": (8, 3, 3, 3),
        "conv_tall": (32, 2, 2, 2),
    }
    params = {k: torch.nn.Parameter(orthogonal_init_(torch.randn(s))) for k, s in shapes.items()}
    opt = CoLA(
        [{"params": list(params.values()), "param_names": list(params)}],
        lr=0.2,
        temperature=0.01,
        constraint="orthogonal",
        seed=0,
    )
    for _ in range(50):
        for p in params.values():
            p.grad = torch.randn_like(p)
        opt.step()
    for k, p in params.items():
        assert p.shape == shapes[k]
        m = p.detach().reshape(p.shape[0], -1)
        gram = m @ m.T if m.shape[0] < m.shape[1] else m.T @ m
        assert (gram - torch.eye(gram.shape[0])).abs().max() <= 1e-5, k
    assert set(opt.residuals()) == set(shapes)


@pytest.mark.parametrize("constraint", ["orthogonal", "circle", "sphere", None])
def test_batched_equals_one_by_one(constraint):
    """Same-shape tensors stacked into one bucket give the results of separate groups."""
    torch.manual_seed(0)
    ws = [orthogonal_init_(torch.randn(6, 4, dtype=torch.float64)) for _ in range(3)]
    if constraint == "sphere":
        ws = [torch.nn.functional.normalize(w, dim=-1) for w in ws]
    if constraint == "circle":
        ws = [w.clamp(-0.3, 0.3) for w in ws]
    kw = {"constraint": constraint, "radius": 0.3 if constraint == "circle" else None}
    a = [torch.nn.Parameter(w.clone()) for w in ws]
    b = [torch.nn.Parameter(w.clone()) for w in ws]
    opt_a = CoLA([{"params": a}], lr=0.1, friction=0.5, **kw)
    opt_b = CoLA([{"params": [p]} for p in b], lr=0.1, friction=0.5, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        grads = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in ws]
        for p, q, gr in zip(a, b, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt_a.step()
        opt_b.step()
    key = "angular_velocity" if constraint == "circle" else "momentum_buffer"
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=0, atol=1e-13)
        assert torch.allclose(opt_a.state[p][key], opt_b.state[q][key], rtol=0, atol=1e-13)


def test_params_without_grad_are_left_alone():
    model = mlp()
    opt = CoLA(constrained_groups(model, "orthogonal"), lr=0.1, seed=0)
    frozen = model[2].weight.detach().clone()
    model[2].weight.requires_grad_(False)
    train(model, opt, batches(3), 3)
    assert torch.equal(model[2].weight, frozen)
    assert model[2].weight not in opt.state or not opt.state[model[2].weight]


# ---------------------------------------------------------------------------- groups, schemes
def test_per_group_temperature_and_scheme():
    torch.manual_seed(0)
    hot = torch.nn.Parameter(orthogonal_init_(torch.randn(60, 30)))
    cold = torch.nn.Parameter(orthogonal_init_(torch.randn(6, 3)))
    od = torch.nn.Parameter(torch.randn(5))
    opt = CoLA(
        [
            {"params": [hot], "temperature": 0.1},
            {"params": [cold]},
            {"params": [od], "constraint": None, "scheme": "od", "temperature": 0.0},
        ],
        lr=0.1,
        constraint="orthogonal",
        # not 0: the first normals would then be the Gaussian matrix ``hot`` was made from,
        # whose tangent part at its own orthonormal factor is small (the ratio below is 0.16)
        seed=1,
    )
    hot0, cold0, od0 = hot.detach().clone(), cold.detach().clone(), od.detach().clone()
    for n in range(10):
        for p in (hot, cold):
            p.grad = torch.zeros_like(p)  # no force: only the noise moves a parameter
        od.grad = torch.ones_like(od)
        opt.step()
        if n == 0:
            # the hot group's first step from rest is its noise (h/2) c2 P R at its own
            # temperature 0.1 (friction 1, h 0.1), over 60 * 30 - 30 * 31 / 2 = 1335 tangent
            # coordinates: the ratio is 1 within 5 sqrt(2 / 1335) = 0.19 (see the noise test
            # above); the default temperature 0 gives 0, a sqrt(2) error 2
            variance = 0.05**2 * 0.1 * (1.0 - math.exp(-0.2))
            ratio = _noise_ratio(hot.detach() - hot0, variance, 1335)
            assert abs(ratio - 1.0) <= 5 * math.sqrt(2.0 / 1335), ratio
    assert torch.allclose(cold, cold0, rtol=0, atol=1e-6)  # SHAKE only removes round-off
    assert torch.allclose(od.detach(), od0 - 10 * 0.1, atol=1e-6)  # plain gradient descent
    assert "momentum_buffer" not in opt.state[od]
    assert ortho_residual(hot) <= 1e-5


@pytest.mark.parametrize("constraint", ["orthogonal", "circle", "sphere"])
def test_overdamped_scheme_keeps_the_constraint_and_descends(constraint):
    torch.manual_seed(0)
    w = torch.nn.Parameter(orthogonal_init_(torch.randn(8, 4)) * 0.1)
    kw = {"radius": 0.1} if constraint in ("circle", "sphere") else {}
    if constraint == "orthogonal":
        w = torch.nn.Parameter(orthogonal_init_(torch.randn(8, 4)))
    elif constraint == "sphere":
        w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(8, 4), dim=-1) * 0.1)
    target = torch.randn(8, 4)
    opt = CoLA([w], lr=0.05, scheme="od", temperature=0.0, constraint=constraint, **kw)
    losses = []
    for _ in range(100):
        loss = ((w - target) ** 2).sum()
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    assert max(opt.residuals().values()) <= 1e-5
    # with noise, it keeps the constraint too
    opt = CoLA([w], lr=0.05, scheme="od", temperature=0.1, constraint=constraint, seed=0, **kw)
    for _ in range(100):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert max(opt.residuals().values()) <= 1e-5


def test_sphere_rows_and_manifold_objects():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(5, 3, 2), dim=(1, 2)) * 2)
    v = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(4, 3), dim=-1) * 2)
    opt = CoLA(
        [
            {"params": [w], "constraint": "sphere", "radius": 2.0},
            {"params": [v], "constraint": ml.Sphere(2.0)},
        ],
        lr=0.1,
        temperature=0.1,
        seed=0,
    )
    for _ in range(30):
        w.grad, v.grad = torch.randn_like(w), torch.randn_like(v)
        opt.step()
    assert torch.allclose(w.detach().reshape(5, -1).norm(dim=-1), torch.full((5,), 2.0), atol=1e-5)
    assert torch.allclose(v.detach().norm(dim=-1), torch.full((4,), 2.0), atol=1e-5)


def test_geoopt_manifold_parameters_use_their_manifold():
    torch.manual_seed(0)
    st = geoopt.ManifoldParameter(ml.Stiefel().random(7, 3), manifold=geoopt.Stiefel())
    sp = geoopt.ManifoldParameter(ml.Sphere().random(4, 5), manifold=geoopt.Sphere())
    eu = geoopt.ManifoldParameter(torch.randn(3), manifold=geoopt.Euclidean())
    opt = CoLA([st, sp, eu], lr=0.1, temperature=0.1, seed=0)
    # the same tensors as plain parameters with the named constraints (and none for the
    # Euclidean one), in the same order, so the noise stream is the same: every update must be
    # bit for bit the one of its named twin
    twins = [torch.nn.Parameter(p.detach().clone()) for p in (st, sp, eu)]
    twin_opt = CoLA(
        [
            {"params": [twins[0]], "constraint": "orthogonal"},
            {"params": [twins[1]], "constraint": "sphere"},
            {"params": [twins[2]]},
        ],
        lr=0.1,
        temperature=0.1,
        seed=0,
    )
    start = [p.detach().clone() for p in (st, sp, eu)]
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        for p, q in zip((st, sp, eu), twins):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        twin_opt.step()
    for p, q, p0 in zip((st, sp, eu), twins, start):
        assert torch.equal(p.detach(), q.detach())
        assert (p.detach() - p0).abs().max() > 0.1  # 30 steps of unit gradients moved it
    assert torch.equal(
        opt.state[eu]["momentum_buffer"], twin_opt.state[twins[2]]["momentum_buffer"]
    )
    assert ortho_residual(st) <= ml.Stiefel().tolerance(st.detach())
    assert (sp.detach().norm(dim=-1) - 1).abs().max() <= ml.Sphere().tolerance(sp.detach())
    with pytest.raises(ValueError, match="ManifoldParameter"):
        CoLA([st], lr=0.1, constraint="circle", radius=1.0)


def test_lr_zero_group_is_left_unchanged():
    w = torch.nn.Parameter(orthogonal_init_(torch.randn(5, 3)))
    opt = CoLA([w], lr=0.1, constraint="orthogonal")
    opt.param_groups[0]["lr"] = 0.0
    w0 = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    assert torch.equal(w, w0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.1, "friction": -1.0}, "friction"),
        ({"lr": 0.1, "temperature": float("nan")}, "temperature"),
        ({"lr": 0.1, "scheme": "xx"}, "scheme"),
        ({"lr": 0.1, "constraint": "circle"}, "radius"),
        ({"lr": 0.1, "constraint": "orthogonal", "radius": 1.0}, "radius"),
        ({"lr": 0.1, "constraint": "nope"}, "constraint"),
        ({"lr": 0.1, "substeps": 0}, "substeps"),
        ({"lr": 0.1, "first_kick": "double"}, "first_kick"),
        ({"lr": 0.1, "on_nonfinite": "ignore"}, "on_nonfinite"),
        ({"lr": 0.1, "on_failure": "retry"}, "on_failure"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, match):
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        CoLA([w], **kwargs)


def test_orthogonal_needs_a_matrix():
    with pytest.raises(ValueError, match="matrix"):
        CoLA([torch.nn.Parameter(torch.zeros(3))], lr=0.1, constraint="orthogonal")


def test_closure_is_called_and_its_loss_returned():
    """``step(closure)`` calls the closure once, before the update and with gradients enabled,
    returns its loss (at the old weights) and steps with the gradients it computed: the same
    update as a step after a hand-made backward pass."""
    model = mlp()
    twin = copy.deepcopy(model)
    opt = CoLA(constrained_groups(model, "circle"), lr=0.1, temperature=1e-3, seed=0)
    twin_opt = CoLA(constrained_groups(twin, "circle"), lr=0.1, temperature=1e-3, seed=0)
    x, y = batches(1)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(x[0]), y[0])
    returned = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[0]), y[0])
        loss.backward()
        returned.append(loss)
        return loss

    loss = opt.step(closure)
    assert len(returned) == 1 and loss is returned[0]
    assert loss.ndim == 0 and float(loss.detach()) == float(expected)
    twin_opt.zero_grad()
    torch.nn.functional.mse_loss(twin(x[0]), y[0]).backward()
    twin_opt.step()
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start):
        assert torch.equal(p, q)
        assert not torch.equal(p, p0)


_CONFIGS = list(
    itertools.product(
        [(5, 3), (3, 5), (4, 4), (6, 2, 2), (2, 3, 2, 2), (7, 1)],
        ["orthogonal", "circle", "sphere"],
        [torch.float32, torch.float64],
        ["ud", "od"],
        [0.0, 0.1],
    )
)


def _state_and_tangent(constraint, w, xi, radius):
    """``(point, projection, tangent dimension)`` of a parameter in its constraint's own view
    (circles: ``[w; xi]`` stacks; spheres: rows; orthogonal: the ``(out, in*...)`` matrix)."""
    if constraint == "circle":
        x = torch.stack([w.flatten(), xi.flatten()]).double()
        return x, _circle_project, w.numel()
    x = w.reshape(w.shape[0], -1).double()
    if constraint == "sphere":
        return x, _row_project, x.shape[0] * (x.shape[1] - 1)
    p = min(x.shape)
    return x, _frame_project, max(x.shape) * p - p * (p + 1) // 2


@pytest.mark.parametrize("shape, constraint, dtype, scheme, temperature", _CONFIGS)
def test_random_configurations_keep_the_constraint(shape, constraint, dtype, scheme, temperature):
    """Every combination of shape, constraint, dtype, scheme and temperature: ten steps keep the
    constraint to the dtype's tolerance, without a rejection, and the steps are the ones stated.

    * the first step of the noiseless twin (``tau = 0``, same gradient) is ``-a P g`` to first
      order, ``a = (1 + exp(-gamma h)) h^2 / 4`` for ``"ud"`` (a half kick, then the fused drift
      of time ``(1 + c1) h / 2``) and ``a = h`` for ``"od"``, ``P`` the hand-written tangent
      projection. The gradient of that step is ``0.05 N(0, 1)``, so the step turns by at most
      0.05 rad (a 4 sd entry on a circle of radius 0.2 under ``"od"``) and the second-order
      terms are a few percent of it at most (measured: up to 1.7%); 5% is allowed, plus 4
      tolerances for SHAKE and float32 round-off;
    * at ``tau = 0.1`` the difference from the twin after that step is the noise, ``sigma P R``
      (``sigma^2 = (h/2)^2 tau (1 - exp(-2 gamma h))`` or ``2 h tau``): its sum of squares over
      ``sigma^2`` is chi-square with the tangent dimension ``d`` (6 to 21 here), held between
      the chi-square's 1e-6 and 1 - 1e-6 quantiles (no noise, or noise 10x too large, fails;
      the variance itself is checked with power by the noise test above).
    """
    seed = _CONFIGS.index((shape, constraint, dtype, scheme, temperature))
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g, dtype=dtype)
    radius = None
    if constraint == "orthogonal":
        orthogonal_init_(w0)
    elif constraint == "circle":
        radius = 0.2
        w0 = (0.5 * radius * w0).clamp(-radius, radius)  # 5% of them at |w| = r, where xi = 0
    else:
        radius = 1.5
        w0 = torch.nn.functional.normalize(w0.reshape(shape[0], -1), dim=-1).reshape(shape) * 1.5
    h, gamma = 0.05, 1.0
    kw = {"lr": h, "scheme": scheme, "constraint": constraint, "radius": radius}
    w, cold = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = CoLA([w], temperature=temperature, seed=seed + 1000, **kw)
    cold_opt = CoLA([cold], temperature=0.0, seed=seed + 1000, **kw)
    grad = 0.05 * torch.randn(shape, generator=g, dtype=dtype)
    for p, o in ((w, opt), (cold, cold_opt)):
        p.grad = grad.clone()
        o.step()

    def view(p, o):
        xi = o.state[p]["xi"] if constraint == "circle" else None
        return _state_and_tangent(constraint, p.detach(), xi, radius)

    xi0 = torch.sqrt((radius**2 - w0**2).clamp_min(0)) if constraint == "circle" else None
    x0, project, dim = _state_and_tangent(constraint, w0, xi0, radius)
    x_cold, _, _ = view(cold, cold_opt)
    x_hot, _, _ = view(w, opt)
    if constraint == "circle":
        force = torch.stack([-grad.flatten(), torch.zeros(grad.numel(), dtype=dtype)]).double()
    else:
        force = -grad.reshape(x0.shape).double()
    a = (1.0 + math.exp(-gamma * h)) * h * h / 4 if scheme == "ud" else h
    predicted = a * project(x0, force)
    tol = _constraint_tolerance(constraint, w0, radius)
    error = float((x_cold - x0 - predicted).norm())
    assert error <= 0.05 * float(predicted.norm()) + 4 * tol, (error, float(predicted.norm()))
    if temperature > 0:
        c2sq = temperature * (1.0 - math.exp(-2.0 * gamma * h))
        variance = (h / 2) ** 2 * c2sq if scheme == "ud" else 2.0 * h * temperature
        noise = x_hot - x_cold
        if dim == 0:  # a sphere in R^1 is two points: nothing can move
            assert float(noise.norm()) <= 4 * tol
        else:
            chi2 = float(noise.square().sum()) / variance
            low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], dim)
            assert low <= chi2 <= high, (chi2, dim, low, high)

    for _ in range(9):
        w.grad = torch.randn(shape, generator=g, dtype=dtype)
        opt.step()
    assert max(opt.residuals().values()) <= tol, (opt.residuals(), tol)
    assert opt.n_rejected() == 0
    assert w.dtype == dtype and w.shape == shape and torch.isfinite(w).all()


def _constraint_tolerance(constraint, w, radius):
    """What a step must hold: the SHAKE tolerance of the manifold for ``w``'s dtype and size,
    and for circles (renormalised at every step, ``max |w^2 + xi^2 - r^2| / r^2``) 8 eps."""
    if constraint == "circle":
        return 8 * torch.finfo(w.dtype).eps
    m = w.reshape(w.shape[0], -1)
    return (ml.Sphere(radius) if constraint == "sphere" else ml.Stiefel()).tolerance(m)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_hold_the_default_tolerance(dtype):
    """docs/gotchas.md: in half precision the default tolerance is 4 eps whatever the size (the
    products accumulate in float32, so the floor is about eps, not 8 eps sqrt(N)); a weight
    keeps it over noisy CoLA steps, with no rejection and a residual below eps."""
    n, k = 512, 128  # (float16 products are slow on CPU)
    eps = torch.finfo(dtype).eps
    tol = ml.Stiefel().tolerance(torch.empty(n, k, dtype=dtype))
    assert tol == 4 * eps == ml.Stiefel().tolerance(torch.empty(8, 2, dtype=dtype))
    assert ml.Sphere().tolerance(torch.empty(10**4, dtype=dtype)) == tol
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(orthogonal_init_(torch.randn(n, k, dtype=torch.float64)).to(dtype))
    opt = CoLA([{"params": [w], "constraint": "orthogonal"}], lr=0.1, temperature=1e-4)
    for _ in range(60):
        w.grad = (0.03 * torch.randn(n, k, generator=gen)).to(dtype)
        opt.step()
    assert opt.n_rejected() == 0
    # measured in float32: the weights themselves, not the half-precision check
    residual = float(ml.Stiefel().residual_norm(w.detach().float()))
    assert residual <= eps, residual


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("scheme", ["ud", "od"])
def test_a_new_radius_takes_the_weights_onto_its_circle(scheme, defer):
    """A group's radius changed between steps (a radius schedule): the next step puts every
    ``(w, xi)`` on the new circle, so ``|w| <= r`` holds for the new ``r`` from then on."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(0.1 * (2 * torch.rand(2000, generator=g, dtype=torch.float64) - 1))
    kw = {"on_failure": "raise"} if defer else {}
    opt = CoLA([w], lr=0.1, constraint="circle", radius=0.1, scheme=scheme, seed=0, **kw)
    for radius in (0.1, 0.1, 0.04, 0.04, 0.3):
        opt.param_groups[0]["radius"] = radius
        w.grad = 0.1 * torch.randn(2000, generator=g, dtype=torch.float64)
        opt.step()
        xi = opt.state[w]["xi"]
        assert torch.allclose(w * w + xi * xi, torch.full_like(xi, radius**2), rtol=1e-13)
        assert float(w.abs().max()) <= radius
