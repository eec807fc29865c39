"""CUDA: the same optimizer on the GPU (skipped without one)."""

from __future__ import annotations

import io

import pytest
import torch

from manifold_langevin.optim import CoLA, constrained_groups

from .helpers import ortho_residual

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _run(constraint, steps, state=None, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    ).cuda()
    opt = CoLA(constrained_groups(model, constraint), lr=0.1, temperature=1e-2, seed=0, **kw)
    if state is not None:
        model.load_state_dict(state[0])
        opt.load_state_dict(state[1])
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(steps, 16, 6, device="cuda", generator=g)
    y = torch.randn(steps, 16, 3, device="cuda", generator=g)
    for i in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[i]), y[i]).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_cuda_training_keeps_the_constraint_and_is_reproducible(constraint):
    model, opt = _run(constraint, 50)
    assert "cuda:0" in opt._generators
    assert all(p.is_cuda for p in model.parameters())
    assert all(v <= 1e-5 for v in opt.residuals().values())
    if constraint == "orthogonal":
        assert ortho_residual(model[2].weight.cpu()) <= 1e-5
    again, _ = _run(constraint, 50)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=False)
    assert sd["state"][0]["momentum_buffer"].is_cuda


def test_cuda_mask_mode_has_no_sync():
    model, opt = _run("orthogonal", 2, on_nonfinite="mask")
    x = torch.randn(16, 6, device="cuda")
    opt.zero_grad()
    model(x).sum().backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_generator_state_follows_the_accelerator_by_order():
    # a checkpoint written on another rank names its own device (cuda:1 here, as if saved on
    # rank 1); loading it on cuda:0 must restore that stream into this rank's generator
    _, opt = _run("circle", 3)
    sd = opt.state_dict()
    sd["cola"]["generators"] = {
        ("cuda:1" if k == "cuda:0" else k): v for k, v in sd["cola"]["generators"].items()
    }
    _, fresh = _run("circle", 0)
    fresh.load_state_dict(sd)
    assert set(fresh._generators) == {"cuda:0"} | ({"cpu"} & set(opt._generators))
    assert torch.equal(
        fresh._generators["cuda:0"].get_state(), opt._generators["cuda:0"].get_state()
    )
