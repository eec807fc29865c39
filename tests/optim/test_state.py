"""Checkpoints, copies, schedulers and reproducibility of CoLA."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from manifold_langevin.manifolds.circles import circle_momentum
from manifold_langevin.optim import CoLA, constrained_groups

from .helpers import batches, mlp, params_equal, train

CONFIGS = [
    pytest.param({"constraint": "orthogonal", "temperature": 1e-3}, id="orthogonal-ud"),
    pytest.param(
        {"constraint": "orthogonal", "temperature": 1e-3, "geodesic": True},
        id="orthogonal-geodesic",
    ),
    pytest.param({"constraint": "circle", "temperature": 1e-3}, id="circle-ud"),
    pytest.param({"constraint": "circle", "temperature": 1e-3, "scheme": "od"}, id="circle-od"),
]


def _make(config, seed=0):
    config = dict(config)
    constraint = config.pop("constraint")
    model = mlp(seed=seed)
    opt = CoLA(constrained_groups(model, constraint), lr=0.1, seed=123, **config)
    return model, opt


@pytest.mark.parametrize("config", CONFIGS)
def test_resume_is_bit_identical(config):
    data = batches(20)
    model, opt = _make(config)
    train(model, opt, data, 10)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, data, 10, start=10)

    # a fresh process would rebuild the model and optimizer from scratch (other seeds on purpose)
    model2, opt2 = _make(config, seed=7)
    opt2.seed = 999
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, data, 10, start=10)
    assert params_equal(model, model2)
    for p, q in zip(model.parameters(), model2.parameters()):
        for k, v in opt.state[p].items():
            w = opt2.state[q][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w
            if torch.is_tensor(v):
                assert v.dtype == w.dtype


def test_state_dict_round_trip_keeps_counter_dtype():
    model, opt = _make({"constraint": "orthogonal", "temperature": 1e-3})
    train(model, opt, batches(2), 2)
    sd = opt.state_dict()
    assert sd["cola"]["version"] == 2
    assert "generators" in sd["cola"]
    opt.load_state_dict(sd)
    for st in opt.state.values():
        assert st["n_rejected"].dtype == torch.int64


def test_a_version_1_state_dict_loads_with_its_circle_momenta_converted():
    """Format 1 held a circle weight's momentum as ``momentum_buffer`` and ``xi_momentum``;
    loaded now, it becomes the angular velocity, and the run goes on as the original does."""
    config = {"constraint": "circle", "temperature": 1e-3}
    data = batches(12)
    model, opt = _make(config)
    train(model, opt, data, 6)
    sd = copy.deepcopy(opt.state_dict())
    old = copy.deepcopy(sd)  # the same state written in format 1
    old["cola"]["version"] = 1
    circles = 0
    for group, saved in zip(opt.param_groups, old["param_groups"]):
        for p, pid in zip(group["params"], saved["params"]):
            st = old["state"][pid]
            if "angular_velocity" in st:
                pw, pxi = circle_momentum(p.detach(), st["xi"], st.pop("angular_velocity"))
                st["momentum_buffer"], st["xi_momentum"] = pw, pxi
                circles += 1
    assert circles == 3  # the three weight matrices of the MLP
    model2, opt2 = _make(config, seed=7)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(old)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert set(opt2.state[q]) == set(opt.state[p])
        if "angular_velocity" in opt.state[p]:
            # the conversion and back, to float32 rounding
            got, want = opt2.state[q]["angular_velocity"], opt.state[p]["angular_velocity"]
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    train(model, opt, data, 6, start=6)
    train(model2, opt2, data, 6, start=6)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


def test_an_unknown_format_version_is_refused():
    model, opt = _make({"constraint": "circle"})
    train(model, opt, batches(1), 1)
    sd = opt.state_dict()
    sd["cola"]["version"] = 3
    with pytest.raises(ValueError, match="format version 3 is not supported"):
        opt.load_state_dict(sd)


def test_same_seed_same_run_and_other_seed_other_run():
    data = batches(5)
    runs = []
    for seed in (1, 1, 2):
        model = mlp()
        opt = CoLA(constrained_groups(model, "orthogonal"), lr=0.1, temperature=1e-2, seed=seed)
        train(model, opt, data, 5)
        runs.append(model)
    assert params_equal(runs[0], runs[1])
    assert not params_equal(runs[0], runs[2])


def test_seed_from_global_generator():
    torch.manual_seed(3)
    a = CoLA([torch.nn.Parameter(torch.zeros(2))], lr=0.1).seed
    torch.manual_seed(3)
    b = CoLA([torch.nn.Parameter(torch.zeros(2))], lr=0.1).seed
    assert a == b


def test_user_generator_is_used():
    w = torch.nn.Parameter(torch.zeros(3))
    gen = torch.Generator().manual_seed(0)
    opt = CoLA([w], lr=0.1, temperature=1.0, generator=gen)
    before = gen.get_state().clone()
    w.grad = torch.zeros(3)
    opt.step()
    assert not torch.equal(gen.get_state(), before)
    with pytest.raises(ValueError, match="seed"):
        CoLA([w], lr=0.1, seed=0, generator=gen)


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_deepcopy_continues_identically(config):
    data = batches(10)
    model, opt = _make(config)
    train(model, opt, data, 5)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2._generators["cpu"] is not opt._generators["cpu"]
    train(model, opt, data, 5, start=5)
    train(model2, opt2, data, 5, start=5)
    assert params_equal(model, model2)


def test_lr_scheduler_changes_the_step():
    x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = CoLA([x], lr=0.4, scheme="od")  # unconstrained Euler: x <- x - lr * grad
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(4):
        g = torch.full((3,), float(i + 1), dtype=torch.float64)
        x.grad = g.clone()
        opt.step()
        expected -= 0.4 * 0.5**i * g
        sched.step()
        assert torch.allclose(x.detach(), expected, atol=1e-15)


def test_lr_scheduler_carries_the_previous_half_kick():
    # ud: kick at step n is h_{n-1}/2 + h_n/2
    x = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = CoLA([x], lr=0.4, friction=float("inf"), fuse=False)  # momentum dropped every step
    sched = torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda _: 0.5)
    hs = [0.4, 0.2, 0.1]
    for n, h in enumerate(hs):
        before = x.detach().clone()
        x.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        kick = h / 2 if n == 0 else hs[n - 1] / 2 + h / 2
        assert torch.allclose(
            x.detach() - before, torch.tensor([-kick * h / 2], dtype=torch.float64)
        )
        sched.step()


def test_state_dict_from_another_model_is_refused():
    model, opt = _make({"constraint": "orthogonal"})
    train(model, opt, batches(1), 1)
    sd = opt.state_dict()

    other = mlp(sizes=(6, 10, 10, 3))  # same structure, other shapes
    opt_other = CoLA(constrained_groups(other, "orthogonal"), lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        opt_other.load_state_dict(sd)

    deeper = mlp(sizes=(6, 12, 12, 12, 3))  # other number of parameters
    opt_deeper = CoLA(constrained_groups(deeper, "orthogonal"), lr=0.1)
    with pytest.raises(ValueError, match=r"parameters|group"):
        opt_deeper.load_state_dict(sd)

    circ = mlp()
    opt_circ = CoLA(constrained_groups(circ, "circle"), lr=0.1)
    with pytest.raises(ValueError, match="group"):
        opt_circ.load_state_dict(sd)

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not written by CoLA"):
        opt.load_state_dict(sgd.state_dict())

    bad = dict(sd, cola=dict(sd["cola"], version=99))
    with pytest.raises(ValueError, match="version"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize(
    ("constraint", "scheme"),
    [("orthogonal", "od"), ("circle", "od"), (None, "od"), (None, "ud")],
)
def test_state_dict_of_other_shapes_is_refused_for_every_scheme(constraint, scheme):
    # the "od" state of an orthogonal or free parameter holds no tensor of its shape: the shapes
    # recorded under "cola" are what catches it
    def make(sizes):
        model = mlp(sizes=sizes)
        params = model.parameters() if constraint is None else constrained_groups(model, constraint)
        return model, CoLA(params, lr=0.1, temperature=1e-3, scheme=scheme, seed=0)

    model, opt = make((6, 12, 12, 3))
    train(model, opt, batches(1), 1)
    sd = opt.state_dict()
    assert sd["cola"]["shapes"][0][0] == tuple(opt.param_groups[0]["params"][0].shape)
    _, other = make((6, 10, 10, 3))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(sd)


def test_state_dict_without_version_is_refused_and_without_shapes_loads():
    model, opt = _make({"constraint": "orthogonal", "scheme": "od"})
    train(model, opt, batches(1), 1)
    sd = opt.state_dict()
    for cola in (
        {k: v for k, v in sd["cola"].items() if k != "version"},
        dict(sd["cola"], version=0),
    ):
        with pytest.raises(ValueError, match="format version"):
            opt.load_state_dict(dict(sd, cola=cola))
    # written before the shapes were recorded (same format version): loads, unchecked
    old = dict(sd, cola={k: v for k, v in sd["cola"].items() if k != "shapes"})
    _, fresh = _make({"constraint": "orthogonal", "scheme": "od"}, seed=3)
    fresh.load_state_dict(old)
    assert fresh.state_dict()["cola"]["generators"]["cpu"].equal(sd["cola"]["generators"]["cpu"])
