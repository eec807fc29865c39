"""Failures: NaN gradients, off-manifold starts, SHAKE that cannot converge, host syncs."""

from __future__ import annotations

import pytest
import torch

from manifold_langevin import NonFiniteError, OffManifoldError, ShakeError, Stiefel, _host_reads
from manifold_langevin.optim import CoLA, constrained_groups, orthogonal_init_

from .helpers import (
    assert_snapshot_equal,
    batches,
    mlp,
    ortho_residual,
    params_equal,
    snapshot,
    train,
)


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


@pytest.mark.parametrize("constraint", ["orthogonal", "circle"])
def test_a_skipped_step_leaves_no_trace_in_the_noise(constraint):
    # at temperature > 0: the run goes on exactly as one that never saw the bad gradient, so the
    # generator did not advance (no noise drawn, none consumed) and nothing else moved
    data = batches(6)
    ref_model, ref = _model_and_opt(constraint, on_nonfinite="skip")
    model, opt = _model_and_opt(constraint, on_nonfinite="skip")
    _nan_gradient(model, opt)
    opt.step()
    assert torch.equal(opt._generators["cpu"].get_state(), ref._generators["cpu"].get_state())
    train(model, opt, data, 2)
    train(ref_model, ref, data, 2)
    assert params_equal(model, ref_model)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        for key in ("momentum_buffer", "xi", "angular_velocity"):
            if key in ref.state[q]:
                assert torch.equal(opt.state[p][key], ref.state[q][key]), key
    assert torch.equal(opt._generators["cpu"].get_state(), ref._generators["cpu"].get_state())
    assert opt.n_skipped == 1 and ref.n_skipped == 0


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


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("noisy", [True, False])
def test_eager_circle_mask_matches_the_functional_selection(fuse, noisy):
    """The eager in-place circle step holds its rejected entries in float arithmetic; the
    functional update (the compiled and deferred paths) selects with ``torch.where``. They
    reject the same entries, which keep their point exactly with zero angular velocity, and
    agree on the others to rounding."""
    from manifold_langevin.integrators.substeps import ou_coefficients
    from manifold_langevin.optim.updates import circle_update, circle_update_

    g = torch.Generator().manual_seed(5)
    n, radius, h = 3000, 0.1, 0.3
    angle = torch.rand(n, dtype=torch.float64, generator=g) * 6.3
    state = [radius * torch.cos(angle), radius * torch.sin(angle)]
    state.append(torch.randn(n, dtype=torch.float64, generator=g))
    grad = torch.randn(n, dtype=torch.float64, generator=g)
    bad = torch.zeros(n, dtype=torch.bool)
    bad[::97] = True
    specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    grad[bad] = specials.repeat(11)[: int(bad.sum())]
    z = torch.randn(n, dtype=torch.float64, generator=g) if noisy else None
    c1, c2 = ou_coefficients(1.0, 1e-2 if noisy else 0.0, h)
    numbers = (0.5 * h, h, c1, c2, 1e-2, radius)
    want, want_count = circle_update(state, grad, z, True, fuse, True, False, *numbers)
    got = [t.clone() for t in state]
    count = circle_update_(got, grad, z, True, fuse, True, False, *numbers)
    assert int(count) == int(want_count) == int(bad.sum())
    for new, ref in zip(got, want):
        assert torch.isfinite(new).all()
        torch.testing.assert_close(new[~bad], ref[~bad], rtol=0, atol=1e-14)
    assert torch.equal(got[0][bad], state[0][bad]) and torch.equal(got[1][bad], state[1][bad])
    assert torch.equal(got[2][bad], torch.zeros_like(got[2][bad]))
    assert torch.equal(want[0][bad], state[0][bad]) and not want[2][bad].any()


def test_mask_mode_step_reads_nothing_on_the_host(monkeypatch):
    """The device-generic sync-free step (CUDA's; on CPU the eager circle step may read one sum
    per chunk, next test) reads no tensor value."""
    from manifold_langevin.manifolds import elementary

    monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())
    # an accelerator's tensors take torch's cos and sin (on CPU float32 NumPy's run on the same
    # memory, which ``Tensor.numpy`` below would count as a read)
    monkeypatch.setattr(elementary, "numpy_trig_applies", lambda theta: False)
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


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("noisy", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_mask_step_tests_each_chunk_then_holds_as_the_generic_step(monkeypatch, fuse, noisy,
                                                                        dtype):  # fmt: skip
    """On CPU the eager sync-free circle step reads one sum of each chunk's angles and holds
    entries only in a chunk where one is not finite: the same numbers, bit for bit, as the
    device-generic step that always holds, the same rejection counts, and one read per chunk."""
    from manifold_langevin.integrators.substeps import ou_coefficients
    from manifold_langevin.optim import updates

    g = torch.Generator().manual_seed(9)
    n, radius, h = 3 * updates.CHUNK, 0.1, 0.3
    a = updates.CHUNK
    angle = torch.rand(n, dtype=torch.float64, generator=g) * 6.3
    angle[a + 300] = torch.pi / 2  # xi = r: the kick of the largest gradient overflows there
    state = [radius * torch.cos(angle), radius * torch.sin(angle)]
    state.append(torch.randn(n, dtype=torch.float64, generator=g))
    grad = torch.randn(n, dtype=torch.float64, generator=g)
    # the middle chunk has a NaN, an Inf, and a finite gradient so large that its kick overflows
    grad[a + 5], grad[a + 77] = float("nan"), float("inf")
    grad[a + 300] = torch.finfo(dtype).max
    state, grad = [t.to(dtype) for t in state], grad.to(dtype)
    z = torch.randn(n, dtype=torch.float64, generator=g).to(dtype) if noisy else None
    c1, c2 = ou_coefficients(1.0, 1e-2 if noisy else 0.0, h)
    numbers = (0.5 * h, h, c1, c2, 1e-2, radius)

    def run(readable):
        monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", readable)
        out, counts = [t.clone() for t in state], []
        for i in range(0, n, a):
            piece = [t[i : i + a] for t in out]
            zi = None if z is None else z[i : i + a]
            count = updates.circle_update_(piece, grad[i : i + a], zi, True, fuse, True, False,
                                           *numbers)  # fmt: skip
            counts.append(None if count is None else int(count))
        return out, counts

    reads = []
    real_float = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real_float(t))
    got, got_counts = run(("cpu",))
    n_reads = len(reads)
    want, want_counts = run(())
    assert n_reads == 3 and len(reads) == n_reads  # one per chunk; the generic step reads none
    # the finite chunks report nothing held (None) where the generic step counts 0
    assert got_counts == [None, 3, None] and want_counts == [0, 3, 0]
    for new, ref in zip(got, want):
        assert torch.equal(new, ref)
        assert torch.isfinite(new).all()
    # the held entries kept their point and got zero angular velocity
    held = [a + 5, a + 77, a + 300]
    assert torch.equal(got[0][held], state[0][held]) and not got[2][held].any()


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


def _hard_problem(scale=50.0, **kw):
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
    bad.grad = scale * torch.randn(6, 3)  # 50: a tangential step far beyond the curvature
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


# ------------------------------------------------------------------------ on_failure="subdivide"
# _hard_problem(scale) on seed 0: a plain RATTLE step (substeps=1) of the 'bad' matrix fails from
# scale 1 on; the fewest sub-steps that converge (measured): at temperature 1e-2, 2 for scale 1,
# 4 for scale 2, 8 for scale 3, 16 for scale 8; at temperature 0 (one fused A step of time
# (1 + c1) h / 2), 2 for scale 1 and 16 for scale 5
@pytest.mark.parametrize(
    "temperature, scale, k",
    [
        (0.0, 1.0, 2),
        (0.0, 5.0, 16),
        (1e-2, 1.0, 2),
        (1e-2, 2.0, 4),
        (1e-2, 3.0, 8),
        (1e-2, 8.0, 16),
    ],
)
def test_subdivide_retries_the_failed_matrix_with_more_substeps(temperature, scale, k):
    good, bad, opt = _hard_problem(scale, on_failure="subdivide")
    opt.param_groups[0]["temperature"] = temperature
    b0 = bad.detach().clone()
    plain_good, _, plain = _hard_problem(scale)  # the same step, rejected
    plain.param_groups[0]["temperature"] = temperature
    plain.step()
    assert plain.n_rejected() == 1
    opt.step()
    assert opt.n_rejected() == 0
    assert ortho_residual(bad) <= Stiefel().tolerance(bad.detach())
    assert not torch.equal(bad, b0)
    # the matrix that converged at once is untouched by the retry
    assert torch.equal(good, plain_good)
    assert torch.equal(
        opt.state[good]["momentum_buffer"], plain.state[plain_good]["momentum_buffer"]
    )
    # the retried matrix is what a step with substeps=k gives (same normals: bit-identical here),
    # and the generator is where it is after any step
    _, direct_bad, direct = _hard_problem(scale)
    direct.param_groups[0].update(temperature=temperature, substeps=k)
    direct.step()
    assert direct.n_rejected() == 0
    torch.testing.assert_close(bad, direct_bad, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        opt.state[bad]["momentum_buffer"],
        direct.state[direct_bad]["momentum_buffer"],
        rtol=0,
        atol=1e-5,
    )
    assert torch.equal(opt._generators["cpu"].get_state(), plain._generators["cpu"].get_state())


def test_subdivide_gives_up_after_16_times_the_substeps_and_rejects():
    good, bad, opt = _hard_problem(on_failure="subdivide")  # scale 50: hopeless
    b0 = bad.detach().clone()
    opt.step()
    assert torch.equal(bad, b0)
    assert torch.equal(opt.state[bad]["momentum_buffer"], torch.zeros(6, 3))
    assert int(opt.state[bad]["n_rejected"]) == 1 and opt.n_rejected() == 1
    assert torch.isfinite(good).all() and ortho_residual(good) <= Stiefel().tolerance(good.detach())


def test_subdivide_changes_nothing_when_every_solve_converges():
    data = batches(4)
    runs = []
    for mode in ("reject", "subdivide"):
        model = mlp()
        opt = CoLA(
            constrained_groups(model, "orthogonal"),
            lr=0.1,
            temperature=1e-2,
            seed=0,
            on_failure=mode,
        )
        train(model, opt, data, 4)
        assert opt.n_rejected() == 0
        runs.append((model, opt))
    assert params_equal(runs[0][0], runs[1][0])
    gens = [o._generators["cpu"].get_state() for _, o in runs]
    assert torch.equal(*gens)


def test_subdivide_skips_a_non_finite_gradient():
    model, opt = _model_and_opt("orthogonal", on_nonfinite="mask", on_failure="subdivide")
    _nan_gradient(model, opt)
    before = model[2].weight.detach().clone()
    opt.step()
    assert torch.equal(model[2].weight, before)
    assert int(opt.state[model[2].weight]["n_rejected"]) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
