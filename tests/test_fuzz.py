"""Fuzzing the public API with bad inputs (hypothesis, derandomized: the same examples every run).

Two properties:

* a bad input (wrong shape, dtype or device, NaN/Inf, an off-manifold start, a hyperparameter that
  is zero, negative, NaN, infinite or not a number) raises a clear exception, ``TypeError`` /
  ``ValueError`` or one of :mod:`manifold_langevin.errors`, whose message names the problem (a
  keyword is checked), never a raw ``IndexError`` / ``AttributeError`` / ``RuntimeError`` from
  inside torch;
* an input that is accepted gives a valid result: finite and on the manifold to the dtype's
  tolerance (never NaN that looks like output, never a point off the constraint set), and it
  moves (an optimizer or sampler that does nothing is not a valid result).

Sizes are tiny and ``max_examples`` modest so that the file runs in well under a minute on a
loaded 2-core machine.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manifold_langevin as ml
from manifold_langevin import NonFiniteError, OffManifoldError
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
FEW = settings(FUZZ, max_examples=15)
#: the two "accepted means valid" properties explore a larger space
MANY = settings(FUZZ, max_examples=120)

NAN, INF = float("nan"), float("inf")
#: what the library may raise for a bad input (its own errors derive from these three)
CLEAR = (TypeError, ValueError, FloatingPointError)


def raises_clear(fn, *keywords):
    """``fn()`` raises one of :data:`CLEAR` whose message contains one of ``keywords``."""
    with pytest.raises(CLEAR) as info:
        fn()
    msg = str(info.value).lower()
    assert any(k.lower() in msg for k in keywords), (type(info.value).__name__, msg, keywords)
    return info.value


# ---------------------------------------------------------------------------- bad numbers
def bad_positive(allow_zero=False, allow_inf=False):
    """Values a positive (or non-negative) real hyperparameter must refuse."""
    special = [NAN, -INF, -1.0, -1e-300, "0.1", None, 1j, [0.1], float("-0.5")]
    if not allow_zero:
        special += [0, 0.0]
    if not allow_inf:
        special += [INF]
    return st.one_of(
        st.sampled_from(special),
        st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=True),
        st.integers(max_value=-1),
    )


def bad_count():
    """Values a count (an integer >= 1) must refuse."""
    return st.one_of(
        st.integers(max_value=0),
        st.sampled_from([NAN, INF, 2.5, 1.0, "3", None, True, False]),
    )


U = lambda x: -x[..., -1]  # noqa: E731


@FUZZ
@given(
    which=st.sampled_from(["step_size", "friction", "temperature", "substeps", "scheme"]),
    data=st.data(),
)
def test_langevin_rejects_bad_hyperparameters(which, data):
    value = data.draw(
        {
            "step_size": bad_positive(),
            "friction": bad_positive(allow_zero=True, allow_inf=True),
            "temperature": bad_positive(allow_zero=True),
            "substeps": bad_count(),
            "scheme": st.sampled_from(["", "XYZ", "BAB", 3, None, "euler"]),
        }[which]
    )
    kw = {"step_size": 0.1, which: value}
    raises_clear(lambda: ml.Langevin(ml.Sphere(), U, **kw), which)


@FUZZ
@given(
    which=st.sampled_from(["step_size", "temperature", "substeps", "scheme"]),
    scheme=st.sampled_from(["euler", "lm"]),
    data=st.data(),
)
def test_overdamped_rejects_bad_hyperparameters(which, scheme, data):
    value = data.draw(
        {
            "step_size": bad_positive(),
            "temperature": bad_positive(allow_zero=True),
            "substeps": bad_count(),  # also for "euler", which does not use it
            "scheme": st.sampled_from(["", "BAOAB", "Euler", 3, None, ["lm"]]),
        }[which]
    )
    kw = {"step_size": 0.1, "scheme": scheme, which: value}
    raises_clear(lambda: ml.OverdampedLangevin(ml.Sphere(), U, **kw), which)


@FUZZ
@given(
    which=st.sampled_from(["radius", "tol", "max_iter"]),
    cls=st.sampled_from(["Sphere", "Circles", "Stiefel", "Implicit"]),
    data=st.data(),
)
def test_manifolds_reject_bad_hyperparameters(which, cls, data):
    if which == "radius" and cls in ("Stiefel", "Implicit"):
        which = "tol"
    if which == "max_iter" and cls in ("Sphere", "Circles"):
        which = "tol"
    value = data.draw(
        # None is the default of tol and of Stiefel's max_iter (chosen by dtype)
        (bad_count() if which == "max_iter" else bad_positive()).filter(
            lambda v: v is not None or which == "radius"
        )
    )
    make = {
        "Sphere": ml.Sphere,
        "Circles": ml.Circles,
        "Stiefel": ml.Stiefel,
        "Implicit": lambda **kw: ml.ImplicitManifold(lambda x: (x * x).sum(-1) - 1, **kw),
    }[cls]
    raises_clear(lambda: make(**{which: value}), which)


@FUZZ
@given(
    which=st.sampled_from(["lr", "friction", "temperature", "substeps", "radius"]),
    data=st.data(),
)
def test_cola_rejects_bad_hyperparameters(which, data):
    value = data.draw(
        {
            "lr": bad_positive(allow_zero=True),
            "friction": bad_positive(allow_zero=True, allow_inf=True),
            "temperature": bad_positive(allow_zero=True),
            "substeps": bad_count(),
            "radius": bad_positive(),
        }[which]
    )
    w = torch.nn.Parameter(torch.full((3, 2), 0.05))
    kw = {"lr": 0.1, "constraint": "circle", "radius": 0.1, which: value}
    raises_clear(lambda: CoLA([w], **kw), which)


@FUZZ
@given(
    which=st.sampled_from(["lr", "friction", "temperature", "substeps"]),
    data=st.data(),
)
def test_cola_rejects_bad_hyperparameters_set_after_construction(which, data):
    # a scheduler (or a user) may write any value into a param group between steps
    value = data.draw(
        {
            "lr": st.sampled_from([NAN, INF, -0.1, -INF]),
            "friction": st.sampled_from([NAN, -1.0, -INF]),
            "temperature": st.sampled_from([NAN, INF, -1e-3]),
            "substeps": st.sampled_from([0, -1, 2.0, True, None]),
        }[which]
    )
    torch.manual_seed(0)
    w = torch.nn.Parameter(orthogonal_init_(torch.randn(5, 3)))
    opt = CoLA([w], lr=0.1, constraint="orthogonal", temperature=1e-3, seed=0)
    w.grad = torch.randn(5, 3)
    opt.step()
    before = w.detach().clone()
    opt.param_groups[0][which] = value
    w.grad = torch.randn(5, 3)
    raises_clear(opt.step, which)
    assert torch.equal(w, before)


@FEW
@given(
    radius=st.one_of(
        bad_positive().filter(lambda r: r is not None),  # None: the paper's radii
        st.sampled_from([(0.1,), (0.1, -1.0), (0.1, NAN), {"2.weight": INF}]),
    ),
)
def test_constrained_groups_rejects_bad_radii(radius):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    raises_clear(lambda: constrained_groups(net, "circle", radius=radius), "radius")


def test_constrained_groups_rejects_bad_arguments():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    raises_clear(lambda: constrained_groups([torch.randn(3, 3)], "orthogonal"), "nn.module")
    raises_clear(lambda: constrained_groups(net, "sphere"), "constraint")
    raises_clear(lambda: constrained_groups(net, None), "constraint")
    raises_clear(lambda: constrained_groups(net, "orthogonal", radius=0.1), "radius")
    raises_clear(lambda: constrained_groups(net, "orthogonal", init="yes"), "init")


# ---------------------------------------------------------------------------- bad start points
def _sampler(name):
    if name == "sphere":
        return ml.Langevin(ml.Sphere(), U, step_size=0.1), (4, 3)
    if name == "stiefel":
        return ml.Langevin(ml.Stiefel(), lambda x: -x[..., 0, 0], step_size=0.1), (2, 4, 3)
    if name == "circles":
        return ml.Langevin(ml.Circles(0.5), lambda x: x[..., 0], step_size=0.1), (5, 2)
    if name == "ellipse":
        ellipse = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
        return ml.Langevin(ellipse, lambda x: x[..., 1], step_size=0.05), (4, 2)
    return ml.OverdampedLangevin(ml.Sphere(), U, step_size=0.01), (4, 3)


def _on_manifold(sampler, shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(shape, generator=g, dtype=dtype)
    if isinstance(sampler.manifold, ml.ImplicitManifold):
        t = torch.linspace(0.0, 6.0, shape[0], dtype=dtype)
        return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)
    return sampler.manifold.projx(z)


SAMPLERS = ["sphere", "stiefel", "circles", "ellipse", "overdamped"]


@FUZZ
@given(
    name=st.sampled_from(SAMPLERS),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex64]),
)
def test_sample_rejects_non_floating_starts(name, dtype):
    sampler, shape = _sampler(name)
    x0 = torch.zeros(shape).to(dtype)
    raises_clear(lambda: sampler.sample(x0, 5), "floating")


@FUZZ
@given(name=st.sampled_from(SAMPLERS), data=st.data())
def test_sample_rejects_wrong_shapes(name, data):
    sampler, shape = _sampler(name)
    nd = sampler.manifold.ndim
    bad = data.draw(
        st.sampled_from(
            [shape[len(shape) - nd + 1 :], (0, *shape[1:]), (*shape[:-1], 0)]
            + ([(*shape[:-1], 3)] if name == "circles" else [])
        )
    )
    x0 = torch.zeros(bad, dtype=torch.float64)
    raises_clear(lambda: sampler.sample(x0, 5), "shape", "dimension", "chains")


@FUZZ
@given(
    name=st.sampled_from(SAMPLERS),
    value=st.sampled_from([NAN, INF, -INF]),
    where=st.integers(0, 10_000),
)
def test_sample_rejects_non_finite_starts(name, value, where):
    sampler, shape = _sampler(name)
    x0 = _on_manifold(sampler, shape)
    x0.view(-1)[where % x0.numel()] = value
    err = raises_clear(lambda: sampler.sample(x0, 5), "nan/inf")
    assert isinstance(err, OffManifoldError)


@FUZZ
@given(
    name=st.sampled_from(SAMPLERS),
    scale=st.one_of(st.floats(0.0, 0.99), st.floats(1.01, 1e6)),
)
def test_sample_rejects_off_manifold_starts(name, scale):
    sampler, shape = _sampler(name)
    x0 = _on_manifold(sampler, shape) * scale
    err = raises_clear(lambda: sampler.sample(x0, 5), "off the manifold")
    assert isinstance(err, OffManifoldError) and err.residual > err.tolerance
    # project=True puts it back (except a zero point: no nearest point on a sphere)
    if scale > 0.1 and not isinstance(sampler.manifold, ml.ImplicitManifold):
        out = sampler.sample(x0, 5, project=True, generator=torch.Generator().manual_seed(0))
        assert out.max_residual <= sampler.manifold.tolerance(x0)


def test_sample_rejects_meta_tensors_and_bad_generators():
    sampler, shape = _sampler("sphere")
    raises_clear(lambda: sampler.sample(torch.zeros(shape, device="meta"), 5), "meta")
    x0 = _on_manifold(sampler, shape)
    raises_clear(lambda: sampler.sample(x0, 5, generator=3), "generator")
    raises_clear(lambda: sampler.sample(x0, 5, generator="cpu"), "generator")


@FUZZ
@given(
    which=st.sampled_from(["n_steps", "burn_in", "thin", "n_batches", "check_every"]),
    value=st.one_of(st.integers(-5, 0), st.sampled_from([2.5, NAN, INF, "10", None, True, 10**9])),
)
def test_sample_rejects_bad_counts(which, value):
    if which == "burn_in" and isinstance(value, int) and not isinstance(value, bool):
        value = -1 if value == 0 else value  # burn_in 0 is valid; 10**9 >= n_steps is not
    if which == "check_every" and value is None:
        value = 0  # None is valid (no early checks)
    if which != "burn_in" and value == 10**9:
        value = 0
    sampler, shape = _sampler("sphere")
    x0 = _on_manifold(sampler, shape)
    raises_clear(lambda: sampler.sample(x0, 10, **{which: value}), which)


@FEW
@given(
    name=st.sampled_from(["sphere", "stiefel", "circles"]),
    bad=st.sampled_from(["nan", "inf", "shape", "complex"]),
)
def test_sample_rejects_bad_momenta(name, bad):
    sampler, shape = _sampler(name)
    x0 = _on_manifold(sampler, shape)
    p0 = {
        "nan": torch.full(shape, NAN, dtype=torch.float64),
        "inf": torch.full(shape, INF, dtype=torch.float64),
        "shape": torch.zeros(*shape[:-1], shape[-1] + 1, dtype=torch.float64),
        "complex": torch.zeros(shape, dtype=torch.complex128),
    }[bad]
    raises_clear(lambda: sampler.sample(x0, 5, p0=p0), "p0")
    od = ml.OverdampedLangevin(sampler.manifold, step_size=0.01)
    raises_clear(lambda: od.sample(x0, 5, p0=torch.zeros_like(x0)), "p0")


@FEW
@given(
    kind=st.sampled_from(["potential", "force"]),
    bad=st.sampled_from(["float", "none", "nan", "inf", "wrong shape"]),
)
def test_sample_rejects_bad_potentials_and_forces(kind, bad):
    def fn(x):
        if bad == "float":
            return 1.0
        if bad == "none":
            return None
        if bad == "wrong shape":
            return x.sum() if kind == "potential" else x[..., 0]
        value = NAN if bad == "nan" else INF
        return x[..., 0] * value if kind == "potential" else x * value

    kw = {"potential": fn} if kind == "potential" else {"force": fn}
    sampler = ml.Langevin(ml.Sphere(), step_size=0.1, **kw)
    x0 = _on_manifold(sampler, (4, 3))
    raises_clear(lambda: sampler.sample(x0, 5), kind, "nan/inf")


@FEW
@given(
    observable=st.sampled_from([3, "x", lambda x: 1.0, lambda x: x.sum(), lambda x: None]),
)
def test_sample_rejects_bad_observables(observable):
    sampler, shape = _sampler("sphere")
    x0 = _on_manifold(sampler, shape)
    raises_clear(lambda: sampler.sample(x0, 5, observables={"o": observable}), "observable")


# ---------------------------------------------------------------------------- manifold methods
@FUZZ
@given(
    method=st.sampled_from(["proju", "residual_norm", "geodesic", "shake", "projx", "random"]),
    last=st.sampled_from([1, 3, 4]),
)
def test_circles_refuse_points_that_are_not_pairs(method, last):
    c = ml.Circles(0.5)
    x = torch.full((3, last), 0.1)
    call = {
        "proju": lambda: c.proju(x, x),
        "residual_norm": lambda: c.residual_norm(x),
        "geodesic": lambda: c.geodesic(x, x, 1.0),
        "shake": lambda: c.shake(x, x),
        "projx": lambda: c.projx(x),
        "random": lambda: c.random(3, last),
    }[method]
    raises_clear(call, "size 2")


@FUZZ
@given(
    method=st.sampled_from(["proju", "residual_norm", "constraint", "geodesic", "shake", "rattle"]),
    shape=st.sampled_from([(), (5,), (1,)]),
)
def test_stiefel_refuses_points_that_are_not_matrices(method, shape):
    s = ml.Stiefel()
    x = torch.ones(shape)
    call = {
        "proju": lambda: s.proju(x, x),
        "residual_norm": lambda: s.residual_norm(x),
        "constraint": lambda: s.constraint(x),
        "geodesic": lambda: s.geodesic(x, x, 1.0),
        "shake": lambda: s.shake(x, x),
        "rattle": lambda: s.rattle(x, x, 0.1),
    }[method]
    raises_clear(call, "matri")


@FEW
@given(
    w=st.sampled_from([[NAN], [0.05, NAN], [0.2], [-INF]]),
    radius=st.sampled_from([0.1, 1.0]),
)
def test_circle_lift_refuses_weights_off_the_circle(w, radius):
    t = torch.tensor(w) * (radius / 0.1 if abs(w[-1]) == 0.2 else 1.0)
    raises_clear(lambda: ml.Circles.from_weights(t, radius), "radius", "nan")
    raises_clear(lambda: ml.Circles.from_weights(torch.zeros(2), -radius), "radius")


@FEW
@given(ret=st.sampled_from([1.0, None, "g", [0.0]]))
def test_implicit_manifold_refuses_a_constraint_that_returns_no_tensor(ret):
    m = ml.ImplicitManifold(lambda x: ret)
    raises_clear(lambda: m.residual_norm(torch.ones(3, 2)), "tensor")


# ---------------------------------------------------------------------------- CoLA
def _param(constraint, shape, dtype=torch.float32):
    torch.manual_seed(0)
    if constraint == "orthogonal":
        return torch.nn.Parameter(orthogonal_init_(torch.randn(shape, dtype=dtype)))
    if constraint == "sphere":
        return torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(shape), dim=-1))
    return torch.nn.Parameter(0.05 * torch.rand(shape, dtype=dtype))


def _cola(p, constraint, **kw):
    radius = 0.1 if constraint == "circle" else None
    return CoLA([p], lr=kw.pop("lr", 0.1), constraint=constraint, radius=radius, seed=0, **kw)


@FUZZ
@given(
    constraint=st.sampled_from(["orthogonal", "circle", "sphere", None]),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.complex64, torch.bool]),
)
def test_cola_rejects_non_floating_parameters(constraint, dtype):
    p = torch.nn.Parameter(torch.zeros(4, 3).to(dtype), requires_grad=dtype.is_complex)
    raises_clear(lambda: _cola(p, constraint), "floating")


@FEW
@given(constraint=st.sampled_from(["orthogonal", "circle", "sphere", None]))
def test_cola_rejects_meta_parameters(constraint):
    p = torch.nn.Parameter(torch.zeros(4, 3, device="meta"))
    raises_clear(lambda: _cola(p, constraint), "meta")


@FEW
@given(shape=st.sampled_from([(5,), (), (0, 3), (3, 0)]))
def test_cola_rejects_tensors_the_orthogonal_constraint_cannot_hold(shape):
    p = torch.nn.Parameter(torch.zeros(shape))
    raises_clear(lambda: _cola(p, "orthogonal"), "matrix")


@FUZZ
@given(
    constraint=st.sampled_from(["orthogonal", "circle", "sphere"]),
    how=st.sampled_from(["scale", "nan", "inf"]),
    scale=st.floats(1.5, 1e6),
    where=st.integers(0, 10_000),
)
def test_cola_rejects_off_manifold_parameters(constraint, how, scale, where):
    p = _param(constraint, (5, 3))
    with torch.no_grad():
        if how == "scale":
            p.mul_(scale * (3.0 if constraint == "circle" else 1.0))
            if constraint == "circle":
                p.add_(0.2)  # some |w| > r for sure
        else:
            p.view(-1)[where % p.numel()] = NAN if how == "nan" else INF
    before = p.detach().clone()
    opt = _cola(p, constraint)
    p.grad = torch.randn_like(p)
    err = raises_clear(opt.step, "off its constraint set")
    assert isinstance(err, OffManifoldError)
    assert torch.equal(p, before) or how != "scale"
    assert not any(opt.state.values())


@FUZZ
@given(
    constraint=st.sampled_from(["orthogonal", "circle", "sphere", None]),
    mode=st.sampled_from(["raise", "skip", "mask"]),
    value=st.sampled_from([NAN, INF, -INF]),
    where=st.integers(0, 10_000),
    temperature=st.sampled_from([0.0, 1e-3]),
)
def test_cola_non_finite_gradients_never_reach_the_parameters(
    constraint, mode, value, where, temperature
):
    p = _param(constraint, (5, 3))
    opt = _cola(p, constraint, on_nonfinite=mode, temperature=temperature)
    p.grad = 0.1 * torch.randn_like(p)
    opt.step()
    before = p.detach().clone()
    p.grad = 0.1 * torch.randn_like(p)
    p.grad.view(-1)[where % p.numel()] = value
    if mode == "raise":
        err = raises_clear(opt.step, "nan/inf")
        assert isinstance(err, NonFiniteError)
        assert torch.equal(p, before)
        return
    opt.step()
    assert torch.isfinite(p).all()
    if mode == "skip":
        assert torch.equal(p, before) and opt.n_skipped == 1
    else:
        assert opt.n_rejected() >= 1
    _assert_on_constraint(p, opt, constraint)


def _constraint_tolerance(p, constraint):
    """What an accepted step must hold, for ``p``'s dtype and size: the SHAKE tolerance of the
    manifold (orthogonal frames, or the rows of the sphere) in the matrix view CoLA uses, and
    for circles, renormalised at every step (``max |w^2 + xi^2 - r^2| / r^2``), 8 eps."""
    if constraint == "circle":
        return 8 * torch.finfo(p.dtype).eps
    m = p.detach().reshape(p.shape[0], -1)
    return (ml.Sphere() if constraint == "sphere" else ml.Stiefel()).tolerance(m)


def _assert_on_constraint(p, opt, constraint):
    if constraint is None:
        return
    limit = _constraint_tolerance(p, constraint)
    for name, res in opt.residuals().items():
        assert res <= limit, (name, res, limit)


@MANY
@given(
    constraint=st.sampled_from(["orthogonal", "circle", "sphere", None]),
    lr=st.floats(1e-4, 10.0),
    log_scale=st.floats(-3.0, 6.0),
    temperature=st.sampled_from([0.0, 1e-3, 1.0]),
    friction=st.sampled_from([0.0, 1.0, INF]),
    scheme=st.sampled_from(["ud", "od"]),
    options=st.fixed_dictionaries(
        {
            "on_failure": st.sampled_from(["reject", "subdivide"]),
            "on_nonfinite": st.sampled_from(["raise", "mask"]),
            "geodesic": st.sampled_from([None, True, False]),
            "substeps": st.integers(1, 3),
            "fuse": st.booleans(),
            "first_kick": st.sampled_from(["half", "full"]),
        }
    ),
    shape=st.sampled_from([(5, 3), (3, 5), (4, 2, 2, 1), (1, 1), (6, 6)]),
    nan_at=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_cola_accepted_steps_are_finite_and_on_the_constraint(
    constraint, lr, log_scale, temperature, friction, scheme, options, shape, nan_at
):
    # large steps and large gradients may be rejected (counted), but never written as NaN or
    # off the constraint set; with on_nonfinite="mask" a NaN gradient entry is rejected too
    if constraint == "sphere":
        shape = shape[:2]
    if options["on_nonfinite"] == "raise":
        nan_at = None
    p = _param(constraint, shape)
    start = p.detach().clone()
    opt = _cola(
        p, constraint, lr=lr, temperature=temperature, friction=friction, scheme=scheme, **options
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        p.grad = 10.0**log_scale * torch.randn(p.shape, generator=g)
        if nan_at is not None:
            p.grad.view(-1)[nan_at % p.numel()] = NAN
        opt.step()
    if constraint is not None:
        assert torch.isfinite(p).all()
    _assert_on_constraint(p, opt, constraint)
    _assert_moved(p, start, opt, constraint, lr, 10.0**log_scale, temperature, friction, scheme)


def _assert_moved(p, start, opt, constraint, h, grad_scale, tau, gamma, scheme):
    """Three accepted steps move the parameter by a fraction of one step's size.

    One step moves each coordinate by about ``s``, the larger of its drift ``a * grad_scale``
    (``a = h`` for ``"od"``, ``(1 + exp(-gamma h)) h^2 / 4`` for ``"ud"``) and its noise
    (``sqrt(2 h tau)``, ``(h/2) sqrt(tau (1 - exp(-2 gamma h)))``), but not farther than the
    set's size (circles: the radius 0.1; spheres and frames: 1). Three steps of independent
    gradients and noise add up like a random walk, so the displacement over the ``n``
    coordinates is of the order of ``sqrt(n) min(s, size)``: at least 1% of it is asked (the 79
    examples without a rejection measured 52% to 400%). A frame or a sphere in one dimension is
    a point of a discrete set (nothing moves), and a step below float32 resolution is exempt.
    With rejections, something moves unless every step of every matrix, row or weight was one.
    """
    view = p.detach().reshape(p.shape[0], -1)
    if constraint in ("orthogonal", "sphere") and view.shape[1] == 1:
        return  # a 1 x 1 frame is +-1, a row sphere in R^1 two points
    moved = float((p.detach() - start).norm())
    units = {"orthogonal": 1, "sphere": view.shape[0]}.get(constraint, p.numel())
    if opt.n_rejected() > 0:
        if opt.n_rejected() < 3 * units:
            assert moved > 0, opt.n_rejected()
        return
    c1 = 0.0 if math.isinf(gamma) else math.exp(-gamma * h)
    if scheme == "ud":
        s = max((1 + c1) * h * h / 4 * grad_scale, h / 2 * math.sqrt(tau * (1 - c1 * c1)))
    else:
        s = max(h * grad_scale, math.sqrt(2 * h * tau))
    size = {"circle": 0.1, "sphere": 1.0, "orthogonal": 1.0}.get(constraint, math.inf)
    if s < 1e3 * torch.finfo(p.dtype).eps * float(start.abs().max()):
        return
    expected = math.sqrt(p.numel()) * min(s, size)
    assert moved >= 0.01 * expected, (moved, expected)


# ---------------------------------------------------------------------------- sampler results
@MANY
@given(
    name=st.sampled_from(["sphere", "stiefel", "circles", "ellipse"]),
    step_size=st.floats(1e-3, 50.0),
    temperature=st.sampled_from([0.0, 0.1, 10.0]),
    friction=st.sampled_from([0.0, 1.0, INF]),
    scheme=st.sampled_from(["BAOAB", "ABOBA", "OBABO", "euler", "lm"]),
    geodesic=st.sampled_from([None, False]),
    substeps=st.integers(1, 3),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_sampler_results_are_finite_and_on_the_manifold(
    name, step_size, temperature, friction, scheme, geodesic, substeps, dtype
):
    # large steps fail (counted) but the state stays finite and on the manifold
    base, shape = _sampler(name)
    if scheme in ("euler", "lm"):
        sampler = ml.OverdampedLangevin(
            base.manifold, base.potential, step_size=step_size, temperature=temperature,
            scheme=scheme, substeps=substeps,
        )  # fmt: skip
    else:
        sampler = ml.Langevin(
            base.manifold, base.potential, step_size=step_size, temperature=temperature,
            friction=friction, scheme=scheme, geodesic=geodesic, substeps=substeps,
        )  # fmt: skip
    x0 = _on_manifold(sampler, shape, dtype)
    try:
        out = sampler.sample(x0, 20, generator=torch.Generator().manual_seed(0))
    except NonFiniteError as err:
        # an unstable step size can blow the momenta up: a clear error, with the chains frozen
        # (finite, on the manifold) just before it. Only beyond the stability limit: the forces
        # and curvatures here are O(1), so Verlet-type steps are stable for h below about 2
        # (the examples that raise have h from 11.6 to 50)
        assert step_size > 2, (step_size, str(err))
        assert "nan/inf" in str(err).lower()
        assert torch.isfinite(err.state.x).all()
        res = sampler.manifold.residual_norm(err.state.x)
        assert float(res.max()) <= sampler.manifold.tolerance(x0)
        return
    assert torch.isfinite(out.state.x).all()
    assert out.state.p is None or torch.isfinite(out.state.p).all()
    assert out.max_residual <= sampler.manifold.tolerance(x0), out.max_residual
    assert float(sampler.manifold.residual_norm(out.state.x).max()) <= sampler.manifold.tolerance(
        x0
    )
    assert 0 <= out.failure_rate <= 1 and not math.isnan(out.failure_rate)
    # the chains move: with no failed step every chain; at tau > 0 by more than 1e-4 times the
    # noise of one step (h sqrt(tau) for the momentum drawn at the start, sqrt(2 h tau) for the
    # overdamped schemes), capped by the manifold's size 1: a chain that moved ends at a point
    # spread over at least that scale, within 1e-4 of it of the start with probability about
    # 1e-4 (on a circle, less in more dimensions). With some failed steps, at least one chain
    moved = (out.state.x - x0).flatten(1).norm(dim=1)
    if out.n_failures == 0:
        assert (moved > 0).all(), moved
        if temperature > 0:
            if scheme in ("euler", "lm"):
                noise = math.sqrt(2 * step_size * temperature)
            else:
                noise = step_size * math.sqrt(temperature)
            assert (moved > 1e-4 * min(noise, 1.0)).all(), (moved, noise)
    elif out.failure_rate < 1:
        assert moved.max() > 0, moved


def test_messages_name_the_parameter_of_the_group():
    # the keyword check above is a substring test: make sure it is not vacuous
    err = raises_clear(lambda: ml.Sphere(radius=-1.0), "radius")
    assert re.search(r"radius must be positive", str(err))
