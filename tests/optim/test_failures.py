"""Failures: NaN gradients, off-manifold starts, SHAKE that cannot converge, host syncs."""

from __future__ import annotations

import pytest
import torch

from manifold_langevin import NonFiniteError, OffManifoldError, ShakeError
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_

from .helpers import assert_snapshot_equal, batches, mlp, snapshot, train


def _model_and_opt(constraint, **kw):
    model = mlp()
    opt = CoLA(constrained_groups(model, constraint), lr=0.1, temperature=1e-2, seed=0, **kw)
    train(model, opt, batches(3), 3)
    return model, opt


def _nan_gradient(model, opt):
    x, y = batches(1)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x[0]), y[0]).backward()
    model[2].weight.grad[1, 2] = float("nan")


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_nan_gradient_raises_and_changes_nothing(constraint):
    model, opt = _model_and_opt(constraint)
    _nan_gradient(model, opt)
    snap = snapshot(opt)
    with pytest.raises(NonFiniteError, match=r"'2\.weight'"):
        opt.step()
    assert_snapshot_equal(opt, snap)


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_nan_gradient_skip_changes_nothing(constraint):
    model, opt = _model_and_opt(constraint, on_nonfinite="skip")
    _nan_gradient(model, opt)
    snap = snapshot(opt)
    opt.step()
    assert_snapshot_equal(opt, snap)
    assert opt.n_skipped == 1
    assert opt.state_dict()["cola"]["n_skipped"] == 1


def test_nan_gradient_at_the_first_step_creates_no_state():
    model = mlp()
    opt = CoLA(constrained_groups(model, "circle"), lr=0.1, seed=0)
    _nan_gradient(model, opt)
    gen = opt._generators["cpu"].get_state().clone()
    with pytest.raises(NonFiniteError):
        opt.step()
    assert not any(opt.state.values())
    assert torch.equal(opt._generators["cpu"].get_state(), gen)


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_nan_gradient_mask_rejects_only_the_bad_part(constraint):
    model, opt = _model_and_opt(constraint, on_nonfinite="mask")
    _nan_gradient(model, opt)
    bad = model[2].weight
    before = bad.detach().clone()
    others = [p.detach().clone() for p in model.parameters() if p is not bad]
    opt.step()
    for p in model.parameters():
        assert torch.isfinite(p).all()
    if constraint == "orthogonal":
        assert torch.equal(bad, before)  # the whole matrix is rejected
        assert int(opt.state[bad]["n_rejected"]) == 1
        assert torch.equal(opt.state[bad]["momentum_buffer"], torch.zeros_like(bad))
    else:
        changed = bad.detach() != before
        assert not changed[1, 2] and changed.sum() > 0  # only that weight is kept
        assert int(opt.state[bad]["n_rejected"]) == 1
    moved = [
        p
        for p, o in zip((p for p in model.parameters() if p is not bad), others)
        if not torch.equal(p, o)
    ]
    assert moved


def test_mask_mode_step_reads_nothing_on_the_host(monkeypatch):
    model, opt = _model_and_opt("orthogonal", on_nonfinite="mask")
    circ, copt = _model_and_opt("circle", on_nonfinite="mask")
    x, y = batches(1)
    for net, o in ((model, opt), (circ, copt)):
        o.zero_grad()
        torch.nn.functional.mse_loss(net(x[0]), y[0]).backward()

    def boom(*args, **kwargs):
        raise AssertionError("host sync inside step()")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    opt.step()
    copt.step()


@pytest.mark.parametrize("constraint, radius", [("orthogonal", None), ("circle", 0.01)])
def test_off_manifold_parameters_are_reported(constraint, radius):
    model = mlp()
    groups = constrained_groups(model, constraint, radius=radius, init=False)
    opt = CoLA(groups, lr=0.1)
    train_data = batches(1)
    with pytest.raises(OffManifoldError, match=r"'[02]\.weight'") as info:
        train(model, opt, train_data, 1)
    assert info.value.residual > info.value.tolerance
    assert not any(opt.state.values())


def _hard_problem(**kw):
    torch.manual_seed(0)
    good = torch.nn.Parameter(orthogonal_init_(torch.randn(6, 3)))
    bad = torch.nn.Parameter(orthogonal_init_(torch.randn(6, 3)))
    opt = CoLA(
        [{"params": [good, bad], "param_names": ["good", "bad"]}],
        lr=1.0,
        constraint="orthogonal",
        temperature=1e-2,
        seed=0,
        **kw,
    )
    good.grad, bad.grad = 0.01 * torch.randn(6, 3), 0.01 * torch.randn(6, 3)
    opt.step()
    good.grad = 0.01 * torch.randn(6, 3)
    bad.grad = 50.0 * torch.randn(6, 3)  # a tangential step far beyond the curvature
    return good, bad, opt


def test_shake_failure_is_rejected_and_counted():
    good, bad, opt = _hard_problem()
    g0, b0 = good.detach().clone(), bad.detach().clone()
    opt.step()
    assert torch.equal(bad, b0)
    assert torch.equal(opt.state[bad]["momentum_buffer"], torch.zeros(6, 3))
    assert opt.state[bad]["step"] == 2
    assert int(opt.state[bad]["n_rejected"]) == 1
    assert int(opt.state[good]["n_rejected"]) == 0
    assert not torch.equal(good, g0)
    assert opt.n_rejected() == 1
    assert torch.isfinite(bad).all() and torch.isfinite(good).all()


def test_shake_failure_raise_names_the_parameter_and_changes_nothing():
    _, _, opt = _hard_problem(on_failure="raise")
    snap = snapshot(opt)
    with pytest.raises(ShakeError, match="'bad'") as info:
        opt.step()
    assert info.value.parameter == "'bad'"
    assert not info.value.residual <= 1e-3  # large or NaN
    assert_snapshot_equal(opt, snap)
