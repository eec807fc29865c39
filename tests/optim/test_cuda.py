"""CUDA: the same optimizer on the GPU (skipped without one)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_

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


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_cuda_trajectory_matches_the_cpu_one_in_float64(constraint):
    """At zero temperature the step is deterministic: the GPU follows the CPU trajectory to
    rounding (float64; the gradients are given, so only the step's arithmetic differs)."""
    gen = torch.Generator().manual_seed(3)
    w0 = orthogonal_init_(torch.randn(300, 260, dtype=torch.float64, generator=gen))
    group = {"constraint": constraint}
    if constraint == "circle":
        w0 = 0.09 * (2 * torch.rand(300, 260, dtype=torch.float64, generator=gen) - 1)
        group["radius"] = 0.1
    grads = [0.05 * torch.randn(300, 260, dtype=torch.float64, generator=gen) for _ in range(20)]
    out = []
    for device in ("cpu", "cuda"):
        w = torch.nn.Parameter(w0.to(device, copy=True))
        opt = CoLA([{"params": [w], **group}], lr=0.1, friction=1.0)
        for g in grads:
            w.grad = g.to(device)
            opt.step()
        assert opt.n_rejected() == 0
        out.append(w.detach().cpu())
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-11)


def test_cuda_compiled_circle_update_matches_eager():
    """``CoLA(compile=True)`` on the GPU: inductor builds a Triton kernel (no eager fallback)
    that gives the eager update."""
    torch._dynamo.reset()
    models, opts = [], []
    for compile_ in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 3)
        )
        model = model.cuda()
        opt = CoLA(constrained_groups(model, "circle"), lr=0.1, seed=0, compile=compile_)
        models.append(model)
        opts.append(opt)
    x = torch.randn(5, 32, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager warns
        for i in range(5):
            for model, opt in zip(models, opts):
                opt.zero_grad()
                model(x[i]).square().mean().backward()
                opt.step()
    assert opts[0].compile is True
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_weights_hold_the_default_tolerance(dtype):
    """The default half-precision tolerance (4 eps, docs/gotchas.md) on the GPU, where
    half-precision products may reduce in reduced precision: a 1024 x 512 weight keeps it over
    noisy steps, with a residual below eps."""
    n, k = 1024, 512
    gen = torch.Generator().manual_seed(0)
    w0 = orthogonal_init_(torch.randn(n, k, dtype=torch.float64, generator=gen))
    w = torch.nn.Parameter(w0.to(device="cuda", dtype=dtype))
    opt = CoLA([{"params": [w], "constraint": "orthogonal"}], lr=0.1, temperature=1e-4)
    for _ in range(60):
        w.grad = (0.03 * torch.randn(n, k, generator=gen)).to(device="cuda", dtype=dtype)
        opt.step()
    assert opt.n_rejected() == 0
    residual = float(ml.Stiefel().residual_norm(w.detach().float()))
    assert residual <= torch.finfo(dtype).eps, residual
