"""The fast paths of ``ImplicitManifold`` and the generic SHAKE: small closed-form solves, the
Jacobian variants (one pass, seeded rows, batched rows and their fallback, a user Jacobian) and
the point cache. Each must agree with the plain computation it replaces."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin import _host_reads
from manifold_langevin.manifolds import implicit as mimpl
from manifold_langevin.manifolds import small_systems as small
from manifold_langevin.testing import get_problem

DT = torch.float64
DTYPES = (torch.float64, torch.float32)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ small solves
def _gram(batch, m, cond, dtype, seed=0):
    """Symmetric positive definite ``m x m`` matrices with condition number ``cond`` (random
    eigenvectors), and a non-symmetric companion ``A`` with the same singular values."""
    g = _gen(seed)
    q1 = torch.linalg.qr(torch.randn(batch, m, m, generator=g, dtype=DT))[0]
    q2 = torch.linalg.qr(torch.randn(batch, m, m, generator=g, dtype=DT))[0]
    s = torch.logspace(0, -math.log10(cond), m, dtype=DT) if m > 1 else torch.ones(1, dtype=DT)
    scale = torch.exp(torch.randn(batch, 1, 1, generator=g, dtype=DT))  # magnitudes vary
    spd = scale * (q1 * s) @ q1.mT
    gen = scale * (q1 * s) @ q2.mT
    return spd.to(dtype), gen.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [7, small.LU2_MIN_BATCH + 3])
@pytest.mark.parametrize("ill", [False, True], ids=["well", "ill"])
def test_small_solve_matches_lapack(dtype, m, batch, ill):
    eps = torch.finfo(dtype).eps
    cond = (1e-2 / eps if ill else 10.0) if m > 1 else 1.0
    rhs = torch.randn(batch, m, 2, generator=_gen(1), dtype=DT).to(dtype)
    for mat in _gram(batch, m, cond, dtype):
        ref = torch.linalg.solve_ex(mat, rhs)[0]
        fac = small.small_factor(mat)
        for got in (small.small_solve(mat, rhs), small.factor_solve(fac, rhs)):
            assert got.shape == ref.shape and got.dtype == dtype
            # two backward-stable solves agree to (condition number) x eps relative to |x|
            err = (got - ref).abs().amax(dim=(-2, -1)) / ref.abs().amax(dim=(-2, -1))
            assert float(err.max()) <= 64 * m * cond * eps
        # and the answer solves the system
        resid = (mat @ small.factor_solve(fac, rhs) - rhs).abs().amax()
        assert float(resid) <= 64 * m * eps * float(mat.abs().amax()) * float(
            small.factor_solve(fac, rhs).abs().amax()
        ) + 64 * m * eps * float(rhs.abs().amax())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, batch", [(2, 7), (3, 7), (3, 4000), (5, 300), (9, 4000)])
def test_a_factorisation_solves_with_lapacks_bits_each_time(dtype, m, batch):
    """Past the closed forms the factor is LAPACK's LU with its pivots, and each solve reuses
    it: ``solve_ex`` runs these same two calls, so every solve gives its bits, for a new
    right-hand side each time and for right-hand sides broadcast over the batch."""
    mat = _gram(batch, m, 1e3, dtype)[1]
    fac = small.small_factor(mat)
    assert isinstance(fac, tuple) and fac[0] in ("lu", "lu2")
    for seed in (2, 3):
        rhs = torch.randn(batch, m, 2, generator=_gen(seed), dtype=DT).to(dtype)
        assert torch.equal(small.factor_solve(fac, rhs), torch.linalg.solve_ex(mat, rhs)[0])
    one = torch.randn(m, 1, generator=_gen(4), dtype=DT).to(dtype)
    assert torch.equal(small.factor_solve(fac, one), torch.linalg.solve_ex(mat, one)[0])


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten operators run inside the block, by their packet name."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def whole_budget(monkeypatch):
    """The solves on the path of an accelerator: every iterate of the budget runs (on CPU a
    solve ends once every chain has stopped), so that counts of operations are fixed."""
    monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())


@pytest.mark.parametrize("newton, factorisations", [("frozen", 0), (False, 1), (2, 2)])
def test_a_kept_iteration_matrix_is_factorised_once(newton, factorisations, whole_budget):
    """SHAKE with a kept iteration matrix factorises each matrix once and only solves with it
    at the later iterates: the frozen iteration none (the old point's Gram factor, cached by a
    projection there), quasi-Newton one, a Newton start of two iterates two. The projections
    at the new point factorise its Gram matrix once between them. Three constraints, so that
    the factor is LAPACK's (no closed form)."""
    p = get_problem("rigid_triatomic")
    m = ml.ImplicitManifold(p.constraint, newton=newton)
    x = p.initial(50, DT, "cpu", _gen(31))
    v = m.proju(x, torch.randn(x.shape, generator=_gen(32), dtype=DT))
    v = v / v.norm(dim=-1, keepdim=True)
    m.proju(x, v)  # the old point's Jacobian and Gram factor cached
    with torch.no_grad(), _CountOps() as ops:
        y, p_new, ok = m.rattle(x, v, 0.01)
        m.proju(y, p_new)
    assert bool(ok.all())
    assert ops.counts.get("linalg_lu_factor_ex", 0) == factorisations + 1
    assert ops.counts.get("linalg_lu_solve", 0) == m.max_iter + 2
    assert ops.counts.get("linalg_solve_ex", 0) == 0


def _closed_form_and_lapack(dtype, m):
    batch = 4 * small.LU2_MIN_BATCH
    g = _gen(20)
    mat = torch.randn(batch, m, m, generator=g, dtype=dtype)
    mat[: batch // 4, -1] = mat[: batch // 4, 0] * (1 + 1e-4)  # nearly singular ones too
    rhs = torch.randn(batch, m, 3, generator=g, dtype=dtype)
    return mat, small.small_solve(mat, rhs), torch.linalg.solve_ex(mat, rhs)[0]


_BITS_SCRIPT = """
import sys, torch
from tests.manifolds.test_implicit_fast import _closed_form_and_lapack
for dtype in (torch.float32, torch.float64):
    for m in (1, 2):
        _, got, ref = _closed_form_and_lapack(dtype, m)
        if not torch.equal(got, ref):
            sys.exit(f"{dtype}, m = {m}: {int((got != ref).sum())} entries differ")
"""


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="checked against MKL's LAPACK")
def test_closed_forms_give_lapacks_bits():
    """The claim behind keeping the golden trajectories: the closed forms for m = 1, 2 do
    LAPACK's operations in LAPACK's order, so they return its bits. Checked against MKL's
    reference code path (``MKL_CBWR=COMPATIBLE``, read when MKL loads, hence the subprocess):
    MKL's kernels for some CPUs (AVX-512 ones, measured) order the 2 x 2 elimination
    differently and differ in the last bits (the test below bounds that)."""
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _BITS_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2])
def test_closed_forms_agree_with_lapack_on_any_cpu(dtype, m):
    # whatever kernels MKL picks: two backward-stable solves, within (condition number) x eps
    mat, got, ref = _closed_form_and_lapack(dtype, m)
    well = slice(mat.shape[0] // 4, None)
    eps = torch.finfo(dtype).eps
    err = (got[well] - ref[well]).abs().amax(dim=(-2, -1))
    scale = ref[well].abs().amax(dim=(-2, -1))
    cond = torch.linalg.cond(mat[well].double()).to(dtype)
    assert bool((err <= 64 * m * cond * eps * scale).all())


def test_closed_forms_keep_lapack_pivoting():
    # a 2 x 2 system whose first pivot is tiny: without the row swap the answer is garbage
    batch = small.LU2_MIN_BATCH
    mat = torch.tensor([[1e-20, 1.0], [1.0, 1.0]], dtype=DT).expand(batch, 2, 2).clone()
    rhs = torch.tensor([[1.0], [2.0]], dtype=DT).expand(batch, 2, 1)
    got = small.small_solve(mat, rhs)
    assert torch.allclose(got, torch.linalg.solve_ex(mat, rhs)[0], rtol=1e-15, atol=0)
    assert torch.allclose(got[0, :, 0], torch.tensor([1.0, 1.0], dtype=DT), rtol=1e-15)


@pytest.mark.parametrize("batch", [3, small.LU2_MIN_BATCH])
def test_singular_systems_give_nonfinite_answers_without_raising(batch):
    one = torch.zeros(batch, 1, 1, dtype=DT)
    assert not torch.isfinite(small.small_solve(one, torch.ones(batch, 1, 1, dtype=DT))).any()
    two = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=DT).expand(batch, 2, 2).clone()
    assert not torch.isfinite(small.small_solve(two, torch.ones(batch, 2, 1, dtype=DT))).all()


def test_closed_forms_have_no_batch_restrictions():
    # extra batch dimensions and a single system
    mat, _ = _gram(24, 2, 10.0, DT)
    rhs = torch.randn(24, 2, 1, generator=_gen(2), dtype=DT)
    got = small.small_solve(mat.reshape(2, 3, 4, 2, 2), rhs.reshape(2, 3, 4, 2, 1))
    assert torch.allclose(got.reshape(24, 2, 1), torch.linalg.solve(mat, rhs), rtol=1e-12)
    one = small.small_solve(mat[0], rhs[0])
    assert torch.allclose(one, torch.linalg.solve(mat[0], rhs[0]), rtol=1e-12)


# ------------------------------------------------------------------ Jacobians
def _reference_jacobian(g, x):
    """``torch.func``'s per-point Jacobian, an independent implementation."""

    def single(v):
        out = g(v)
        return out.unsqueeze(-1) if out.dim() == 0 else out

    return torch.func.vmap(torch.func.jacrev(single))(x)


@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic", "torus_quartic"])
@pytest.mark.parametrize("chains", [5, mimpl.BATCHED_ROWS_MAX_CHAINS + 1])
def test_autodiff_jacobian_matches_torch_func(name, chains):
    p = get_problem(name)
    x = p.initial(chains, DT, "cpu", _gen(3))
    x = x + 0.01 * torch.randn(x.shape, generator=_gen(4), dtype=DT)  # off the set too
    ref = _reference_jacobian(p.constraint, x)
    for batched in (True, False):
        m = p.make_manifold()
        m._batched_rows = batched
        g, jac = m._value_and_jacobian(x)
        assert jac.shape == ref.shape
        assert torch.allclose(jac, ref, rtol=1e-13, atol=1e-13)
        assert torch.equal(g, m.constraint(x))
        assert not g.requires_grad and not jac.requires_grad


class _NoBatchSquare(torch.autograd.Function):
    """``x^2`` whose backward leaves torch (through numpy): no vmap batching rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(2.0 * grad.detach().numpy() * x.detach().numpy())


def _unbatchable_g(x):
    s = _NoBatchSquare.apply(x)
    return torch.stack([s.sum(-1) - 1, x[..., 2] - 0.6, x[..., 0] - x[..., 1]], dim=-1)


def test_batched_rows_fall_back_to_plain_passes():
    m = ml.ImplicitManifold(_unbatchable_g)
    x = torch.randn(6, 3, generator=_gen(5), dtype=DT)
    assert m._batched_rows
    jac = m.jacobian(x)
    assert not m._batched_rows  # the failure is remembered
    expected = torch.zeros(6, 3, 3, dtype=DT)
    expected[:, 0] = 2 * x
    expected[:, 1, 2] = 1.0
    expected[:, 2, 0], expected[:, 2, 1] = 1.0, -1.0
    assert torch.allclose(jac, expected, rtol=1e-15, atol=0)
    assert torch.allclose(m.jacobian(x), expected, rtol=1e-15, atol=0)


def test_fixman_term_gradient_is_unchanged():
    # log det(J J^T) differentiated through the Jacobian, with one pass (m = 1) and with rows
    p = get_problem("ellipse")
    m = p.make_manifold()
    x = p.initial(4, DT, "cpu", _gen(6)).requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_det_gram(x).sum(), x)
    # J = (x/2, 2y): det = x^2/4 + 4 y^2, d log det = (x/2, 8y) / det
    det = x[:, 0] ** 2 / 4 + 4 * x[:, 1] ** 2
    expected = torch.stack([x[:, 0] / 2, 8 * x[:, 1]], dim=-1) / det[:, None]
    assert torch.allclose(grad, expected.detach(), rtol=1e-13)


# ------------------------------------------------------------------ user Jacobian
def _sphere_plane_jacobian(x):
    plane = torch.zeros_like(x)
    plane[..., 2] = 1.0
    return torch.stack([2 * x, plane], dim=-2)


def _ellipse_gradient(x):  # a scalar constraint's gradient, (..., n)
    return torch.stack([x[..., 0] / 2, 2 * x[..., 1]], dim=-1)


USER = {"sphere_plane": _sphere_plane_jacobian, "ellipse": _ellipse_gradient}


@pytest.mark.parametrize("name", sorted(USER))
def test_user_jacobian_gives_the_autodiff_dynamics(name):
    p = get_problem(name)
    auto = p.make_manifold()
    user = ml.ImplicitManifold(p.constraint, jacobian=USER[name])
    x0 = p.initial(16, DT, "cpu", _gen(7))
    assert user.check_jacobian(x0) <= 1e-14
    assert torch.allclose(user.jacobian(x0), auto.jacobian(x0), rtol=1e-14, atol=1e-14)
    runs = []
    for m in (auto, user):
        s = ml.Langevin(m, p.potential, step_size=0.1)
        gen = _gen(8)
        state = s.init(x0, generator=gen)
        with torch.no_grad():
            for _ in range(10):
                state, ok, _ = s.step(state, gen)
                assert bool(ok.all())
        runs.append(state)
    assert torch.allclose(runs[0].x, runs[1].x, rtol=0, atol=1e-12)
    assert torch.allclose(runs[0].p, runs[1].p, rtol=0, atol=1e-12)


def test_user_jacobian_for_the_fixman_term():
    p = get_problem("ellipse")
    user = ml.ImplicitManifold(p.constraint, jacobian=_ellipse_gradient)
    auto = p.make_manifold()
    x = p.initial(5, DT, "cpu", _gen(9)).requires_grad_(True)
    (gu,) = torch.autograd.grad(user.log_det_gram(x).sum(), x)
    (ga,) = torch.autograd.grad(auto.log_det_gram(x).sum(), x)
    assert torch.allclose(gu, ga, rtol=1e-13)


def test_a_wrong_user_jacobian_is_named():
    p = get_problem("sphere_plane")
    x = p.initial(6, DT, "cpu", _gen(10))
    wrong = ml.ImplicitManifold(p.constraint, jacobian=lambda x: 1.01 * _sphere_plane_jacobian(x))
    with pytest.raises(ValueError, match="differs from autodiff"):
        wrong.check_jacobian(x)
    flat = ml.ImplicitManifold(
        p.constraint, jacobian=lambda x: _sphere_plane_jacobian(x)[..., 0, :]
    )
    with pytest.raises(ValueError, match="m the number of constraints"):
        flat.shake(x, x)
    short = ml.ImplicitManifold(p.constraint, jacobian=lambda x: _sphere_plane_jacobian(x)[..., :2])
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        short.proju(x, x)
    with pytest.raises(TypeError, match="jacobian must be callable"):
        ml.ImplicitManifold(p.constraint, jacobian=3)
    with pytest.raises(TypeError, match="must return a tensor"):
        ml.ImplicitManifold(p.constraint, jacobian=lambda x: x.tolist()).proju(x, x)
    assert p.make_manifold().check_jacobian(x) == 0.0  # nothing to check


# ------------------------------------------------------------------ point cache
def test_cache_serves_only_the_unchanged_point():
    p = get_problem("sphere_plane")
    m = p.make_manifold()
    fresh = p.make_manifold()
    x = p.initial(8, DT, "cpu", _gen(11))
    v = m.proju(x, torch.randn(x.shape, generator=_gen(12), dtype=DT))
    u = torch.randn(x.shape, generator=_gen(13), dtype=DT)
    with torch.no_grad():
        x1, v1, ok = m.rattle(x, v, 0.1)
        assert bool(ok.all())
        assert m._cache.get(x1) is not None
        assert torch.equal(m.proju(x1, u), fresh.proju(x1, u))
        assert torch.equal(m.jvp(x1, u), fresh.jvp(x1, u))
        x1.mul_(1.1)  # in place: the cached Jacobian belongs to the old values
        assert m._cache.get(x1) is None
        assert torch.equal(m.proju(x1, u), fresh.proju(x1, u))
        y = x1.clone()  # equal values, another tensor: recomputed, same answer
        assert m._cache.get(y) is None
        assert torch.equal(m.proju(y, u), fresh.proju(y, u))
        x2, _, _ = m.rattle(x1, m.proju(x1, v1), 0.05)
        x2f, _, _ = fresh.rattle(x1, fresh.proju(x1, v1), 0.05)
        assert torch.equal(x2, x2f)


def test_cache_skips_inference_tensors_and_copies_start_empty():
    p = get_problem("ellipse")
    # autodiff needs autograd, so inference mode only serves a user Jacobian
    m = ml.ImplicitManifold(p.constraint, jacobian=_ellipse_gradient)
    with torch.inference_mode():
        x = p.initial(4, DT, "cpu", _gen(14))
        x1, _, _ = m.rattle(x, torch.zeros_like(x), 0.1)
        assert m._cache.get(x1) is None
        assert torch.allclose(m.residual_norm(x1), torch.zeros(4, dtype=DT), atol=1e-12)
    x = p.initial(4, DT, "cpu", _gen(14))
    m.proju(x, x)
    assert m._cache.get(x) is not None
    dup = copy.deepcopy(m)
    assert dup._cache.get(x) is None
    assert torch.equal(dup.proju(x, x), m.proju(x, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
def test_samplers_stay_on_the_set(name, dtype):
    p = get_problem(name)
    m = p.make_manifold()
    x0 = p.initial(32, dtype, "cpu", _gen(15))
    for s in (ml.Langevin(m, p.potential, step_size=0.1), ml.HMC(m, p.potential, step_size=0.1)):
        gen = _gen(16)
        state = s.init(x0, generator=gen)
        with torch.no_grad():
            for _ in range(5):
                state, ok, _ = s.step(state, gen)
        assert bool(ok.float().mean() >= 0.8)  # a few chains may fail a large HMC step
        assert float(m.residual_norm(state.x).max()) <= 10 * m.tolerance(state.x)
        assert float(m.jvp(state.x, state.p).abs().max()) <= 1e3 * torch.finfo(dtype).eps


def test_rank_deficiency_still_detected_with_two_constraints():
    twice = ml.ImplicitManifold(lambda x: torch.stack([x[..., 0] - 1, 2 * x[..., 0] - 2], dim=-1))
    x0 = torch.ones(small.LU2_MIN_BATCH + 1, 3, dtype=DT)
    with pytest.raises(ml.RankDeficientError, match="rank deficient"):
        ml.HMC(twice, lambda x: x[..., 1], step_size=0.1).init(x0)


def test_a_jacobian_with_a_graph_is_not_cached():
    # a differentiable user Jacobian under autograd: two backward passes through proju work
    p = get_problem("ellipse")
    m = ml.ImplicitManifold(p.constraint, jacobian=_ellipse_gradient)
    x = p.initial(3, DT, "cpu", _gen(17)).requires_grad_(True)
    u = torch.ones(3, 2, dtype=DT)
    for _ in range(2):
        (grad,) = torch.autograd.grad(m.proju(x, u).sum(), x)
        assert m._cache.get(x) is None
        assert bool(torch.isfinite(grad).all())


def _counted_sphere_plane_jacobian():
    """The sphere-plane Jacobian, and the list it appends to at every evaluation."""
    calls = []

    def counted(x):
        calls.append(1)
        return _sphere_plane_jacobian(x)

    return calls, counted


def _jacobians_in_three_steps(step_size: float, seeds: tuple[int, int], **manifold_kw):
    """Jacobian evaluations in three Langevin steps on the sphere-plane set (after one step
    that caches the start point's), each step solving every chain; with the manifold and the
    last state."""
    p = get_problem("sphere_plane")
    calls, counted = _counted_sphere_plane_jacobian()
    m = ml.ImplicitManifold(p.constraint, jacobian=counted, **manifold_kw)
    s = ml.Langevin(m, p.potential, step_size=step_size)
    gen = _gen(seeds[0])
    state = s.init(p.initial(16, DT, "cpu", _gen(seeds[1])), generator=gen)
    with torch.no_grad():
        state, ok, _ = s.step(state, gen)  # the start point's Jacobian is now cached
        calls.clear()
        for _ in range(3):
            state, ok, _ = s.step(state, gen)
            assert bool(ok.all())
    return len(calls), m, state


def test_a_rattle_step_forms_each_jacobian_once(whole_budget):
    """A Langevin (BAOAB, RATTLE) step forms the Jacobian at every Newton iterate of its two
    SHAKE solves and once at each solve's end point, and no more: the start point's (selected
    from those at the previous step's two ends) serves its kick, its first solve and the redraw
    of failed chains' momenta."""
    n_calls, m, _ = _jacobians_in_three_steps(0.1, (18, 19), max_iter=4)
    assert n_calls == 3 * 2 * (m.max_iter + 1)


@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
def test_selected_points_carry_the_jacobian_a_new_evaluation_gives(name):
    """``select_points`` caches, for the chain-wise selection of two cached points, the
    selection of their Jacobians and Gram factors: bit for bit what a fresh evaluation at the
    selected point gives (enough chains for the elementwise 2 x 2 factor)."""
    p = get_problem(name)
    m, fresh = p.make_manifold(), p.make_manifold()
    n = small.LU2_MIN_BATCH + 76
    x = p.initial(n, DT, "cpu", _gen(20))
    v = m.proju(x, 0.3 * torch.randn(x.shape, generator=_gen(21), dtype=DT))
    keep = (torch.arange(n) % 3 == 0).unsqueeze(-1)
    u = torch.randn(x.shape, generator=_gen(22), dtype=DT)
    with torch.no_grad():
        a, _, _ = m.rattle(x, v, 0.1)
        b, _, _ = m.rattle(a, m.proju(a, v), 0.1)
        m.proju(a, u)  # both factors formed
        assert m._cache.get(a) is not None and m._cache.get(b) is not None
        out = m.select_points(keep, a, b)
        assert torch.equal(out, torch.where(keep, a, b))
        entry = m._cache.get(out)
        assert entry is not None and entry.factor is not None
        assert torch.equal(entry.jac, fresh.jacobian(out))
        assert torch.equal(m.proju(out, u), fresh.proju(out, u))
        # an uncached operand: a plain selection, nothing cached for the result
        other = m.select_points(keep, x.clone(), b)
        assert m._cache.get(other) is None


# ------------------------------------------------------------------ frozen iteration matrix
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
def test_the_frozen_matrix_solves_to_newtons_point(name, dtype):
    """``newton="frozen"`` iterates with the old point's Gram matrix: within its reach it lands
    where Newton does (the same equations, both within the tolerance), and it flags a step
    beyond its reach that Newton still solves."""
    p = get_problem(name)
    newton, frozen = p.make_manifold(), ml.ImplicitManifold(p.constraint, newton="frozen")
    x = p.initial(64, dtype, "cpu", _gen(23))
    v = newton.proju(x, torch.randn(x.shape, generator=_gen(24), dtype=dtype))
    v = v / v.norm(dim=-1, keepdim=True)
    y_n, ok_n = newton.shake(x, x + 0.01 * v)
    y_f, ok_f = frozen.shake(x, x + 0.01 * v)
    assert bool(ok_n.all()) and bool(ok_f.all())
    # both points satisfy g to the tolerance; along the normals that pins them to within a few
    # tolerances of each other (|J| of order 1 on these sets)
    assert float((y_n - y_f).abs().max()) <= 20 * newton.tolerance(x)
    _, ok_far = frozen.shake(x, x + 0.5 * v)
    assert not bool(ok_far.all())  # beyond the frozen matrix's reach: flagged, not hidden
    assert bool(newton.shake(x, x + 0.5 * v)[1].all())


def test_a_frozen_rattle_step_forms_jacobians_only_at_its_ends():
    n_calls, m, state = _jacobians_in_three_steps(0.05, (25, 26), newton="frozen")
    assert n_calls == 3 * 2  # one at the end of each of the two solves
    assert float(m.residual_norm(state.x).max()) <= m.tolerance(state.x)


# ------------------------------------------------------------------ a Newton start, then kept
def _solve_pair(name, dtype, step):
    p = get_problem(name)
    m = p.make_manifold()
    x = p.initial(64, dtype, "cpu", _gen(27))
    v = m.proju(x, torch.randn(x.shape, generator=_gen(28), dtype=dtype))
    return p, m, x, x + step * v / v.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
def test_newton_start_spans_quasi_newton_and_newton(name):
    """``newton=k`` forms the iteration matrix at the first ``k`` iterates: ``k = 1`` is the
    quasi-Newton iteration and ``k >= max_iter`` Newton's, bit for bit."""
    p, newton, x, x_tilde = _solve_pair(name, DT, 0.2)
    quasi = ml.ImplicitManifold(p.constraint, newton=False)
    for k, same_as in ((1, quasi), (newton.max_iter, newton), (newton.max_iter + 3, newton)):
        y, ok = ml.ImplicitManifold(p.constraint, newton=k).shake(x, x_tilde)
        y_ref, ok_ref = same_as.shake(x, x_tilde)
        assert torch.equal(y, y_ref) and torch.equal(ok, ok_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
def test_three_newton_iterates_reach_where_quasi_newton_fails(name, dtype):
    """Three Newton iterates put the multipliers within rounding of the solution wherever
    Newton converges fast, so the kept matrix finishes the solve: at a step of 0.4 (the sets
    have sizes of order 1) ``newton=3`` solves every trial, lands where Newton does, and the
    quasi-Newton iteration with the same budget does not solve them all."""
    p, newton, x, x_tilde = _solve_pair(name, dtype, 0.4)
    y_n, ok_n = newton.shake(x, x_tilde)
    y_3, ok_3 = ml.ImplicitManifold(p.constraint, newton=3).shake(x, x_tilde)
    assert bool(ok_n.all()) and bool(ok_3.all())
    assert float((y_n - y_3).abs().max()) <= 20 * newton.tolerance(x)
    _, ok_q = ml.ImplicitManifold(p.constraint, newton=False).shake(x, x_tilde)
    if dtype == torch.float64:  # float32's looser tolerance lets quasi-Newton reach 0.3 to 0.5
        assert not bool(ok_q.all())


def test_a_newton_start_forms_a_jacobian_per_newton_iterate(whole_budget):
    """A Langevin step with ``newton=2`` forms the Jacobian at two iterates and at the end of
    each of its two solves."""
    n_calls, m, _ = _jacobians_in_three_steps(0.1, (29, 30), newton=2)
    assert n_calls == 3 * 2 * (2 + 1)
    assert m.newton and not m.frozen and m.matrix_updates == 2


def test_the_iteration_is_named():
    wanted = r"newton must be True, False, an integer >= 1 or 'frozen'"
    for bad, kind in (("old", ValueError), (0, ValueError), (-2, ValueError), (2.5, ValueError)):
        with pytest.raises(kind, match=wanted):
            ml.ImplicitManifold(lambda x: x[..., 0], newton=bad)
    with pytest.raises(TypeError, match=wanted):
        ml.ImplicitManifold(lambda x: x[..., 0], newton=[3])
    for bad in ("frozen", 3):
        with pytest.raises(ValueError, match="Stiefel takes newton=True or False"):
            ml.Stiefel(newton=bad)
    assert ml.ImplicitManifold(lambda x: x[..., 0], newton="frozen").frozen
    quasi = ml.ImplicitManifold(lambda x: x[..., 0], newton=False)
    assert not quasi.newton and quasi.matrix_updates == 1
    assert ml.ImplicitManifold(lambda x: x[..., 0]).matrix_updates is None
