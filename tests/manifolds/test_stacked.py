"""Stacks of small matrices stored entries first: products, the exponential, the Stiefel
geodesic built from them (against torch's batched products, ``torch.linalg.matrix_exp`` and the
batched layout of the same geodesic)."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_langevin.manifolds import frames, stacked
from manifold_langevin.manifolds import stiefel_geodesic as geodesic_module
from manifold_langevin.manifolds.stiefel import Stiefel

EPS64 = torch.finfo(torch.float64).eps


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=_gen(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entry error of ``a`` against ``b``, relative to each matrix's largest entry."""
    err = (a - b).abs().amax((-2, -1))
    return float((err / b.abs().amax((-2, -1)).clamp_min(1e-300)).max())


# ----------------------------------------------------------------------------- layout, products
def test_to_and_from_stacked_are_inverse_and_exact():
    x = _randn(2, 3, 5, 4)
    s = stacked.to_stacked(x)
    assert s.shape == (5, 4, 6) and s.is_contiguous()
    assert torch.equal(s[:, :, 4], x[1, 1])
    back = stacked.from_stacked(s, (2, 3))
    assert back.shape == x.shape and torch.equal(back, x)


@pytest.mark.parametrize("r,k,c", [(6, 6, 6), (10, 6, 3), (3, 10, 3), (1, 1, 1), (2, 7, 5)])
def test_products_match_batched_matmul(r, k, c):
    a, b = _randn(50, r, k, seed=1), _randn(50, k, c, seed=2)
    sa, sb = stacked.to_stacked(a), stacked.to_stacked(b)
    scale = float(a.abs().max() * b.abs().max() * k)
    prod = stacked.from_stacked(stacked.mm(sa, sb), (50,))
    assert torch.allclose(prod, a @ b, atol=4 * EPS64 * scale, rtol=0)
    out = torch.full((r, c, 50), float("nan"), dtype=torch.float64)
    assert stacked.mm(sa, sb, out=out) is out and torch.equal(out, stacked.mm(sa, sb))
    acc = stacked.to_stacked(a @ b)
    stacked.addmm(acc, sa, sb)
    assert torch.allclose(stacked.from_stacked(acc, (50,)), 2 * (a @ b), atol=8 * EPS64 * scale)


@pytest.mark.parametrize(
    "n", [1, 10, stacked.TMM_LOOP_MAX_ROWS, stacked.TMM_LOOP_MAX_ROWS + 1, 200]
)
def test_transposed_products_match_for_short_and_long_frames(n):
    """Both ways of summing over the rows (one row at a time, or one broadcast product)."""
    a, b = _randn(40, n, 3, seed=3), _randn(40, n, 2, seed=4)
    got = stacked.from_stacked(stacked.tmm(stacked.to_stacked(a), stacked.to_stacked(b)), (40,))
    scale = float(a.abs().max() * b.abs().max() * n)
    assert torch.allclose(got, a.mT @ b, atol=4 * EPS64 * scale, rtol=0)


def test_polish_and_skew_exponential_match_the_batched_kernels():
    x = Stiefel().random(30, 7, 3, dtype=torch.float64, generator=_gen(5))
    x = x + 1e-6 * _randn(30, 7, 3, seed=6)  # off the manifold: the polish has work to do
    got = stacked.from_stacked(stacked.polish(stacked.to_stacked(x)), (30,))
    assert torch.allclose(got, frames.polish(x), atol=4 * EPS64, rtol=0)
    for p in (1, 2, 3, 4):
        a = _randn(30, p, p, seed=7 + p)
        a = a - a.mT
        s = stacked.expm_skew(stacked.to_stacked(a))
        ref = frames.expm_skew(a)
        if p <= 3:  # the same closed forms on the same entries: the same bits
            assert torch.equal(stacked.from_stacked(s, (30,)), ref)
        else:
            assert torch.allclose(stacked.from_stacked(s, (30,)), ref, atol=0, rtol=0)


# ----------------------------------------------------------------------------- exponential
def _with_norm(a: torch.Tensor, nu: float) -> torch.Tensor:
    """``a`` rescaled to 1-norm (largest column sum) ``nu``, each matrix."""
    return a / a.abs().sum(-2).amax(-1)[..., None, None] * nu


NORMS = [0.0, 1e-12, 1e-3, 0.3, stacked.EXPM_THETA, 1.2500001, 2.5, 7.0, 20.0, 80.0]


@pytest.mark.parametrize("m", [2, 4, 6])
def test_expm_of_skew_matrices_is_a_rotation_to_rounding(m):
    """Skew matrices: ``e^X`` is orthogonal and ``e^X e^-X = I``; against matrix_exp too. The
    error bound grows with each squaring (about one rounding unit each)."""
    a = _randn(400, m, m, seed=10)
    a = a - a.mT
    eye = torch.eye(m, dtype=torch.float64)
    for nu in NORMS:
        x = _with_norm(a, nu)
        e = stacked.from_stacked(stacked.expm(stacked.to_stacked(x)), (400,))
        squarings = max(0, math.ceil(math.log2(max(nu, 1e-300) / stacked.EXPM_THETA)))
        tol = 4 * m * EPS64 * (1 + squarings)
        assert _rel(e.mT @ e, eye.expand_as(e)) <= tol, nu
        assert _rel(e, torch.linalg.matrix_exp(x)) <= 4 * tol, nu
        inv = stacked.from_stacked(stacked.expm(stacked.to_stacked(-x)), (400,))
        assert _rel(e @ inv, eye.expand_as(e)) <= 2 * tol, nu


@pytest.mark.parametrize("m", [2, 6])
def test_expm_of_general_matrices_matches_matrix_exp(m):
    """Non-normal matrices: both algorithms lose accuracy as the norm grows; a wrong
    coefficient or squaring count would be off by 1e-6 or more."""
    a = _randn(400, m, m, seed=11)
    for nu in NORMS:
        x = _with_norm(a, nu)
        e = stacked.from_stacked(stacked.expm(stacked.to_stacked(x)), (400,))
        # measured: 2 to 6 rounding units up to 1-norm 1.25, 1000 to 2200 at 80
        assert _rel(e, torch.linalg.matrix_exp(x)) <= 8 * EPS64 * (1 + nu) ** 2, nu


def test_expm_beyond_its_squaring_cap_degrades_as_documented():
    """Past 1-norm ``theta 2^cap = 80`` the Taylor polynomial runs on a norm above theta: the
    truncation error grows as ``(nu / 80)^20`` rounding units, still small at twice the cap."""
    a = _randn(200, 6, 6, seed=12)
    a = a - a.mT
    cap = stacked.EXPM_THETA * 2**stacked.EXPM_MAX_SQUARINGS
    x = _with_norm(a, 2 * cap)
    e = stacked.from_stacked(stacked.expm(stacked.to_stacked(x)), (200,))
    err = _rel(e, torch.linalg.matrix_exp(x))
    assert err <= 2**20 * EPS64, err
    assert err > 0  # (it is an approximation there, not the exact result by accident)


def test_expm_keeps_non_finite_entries_to_their_own_matrix():
    a = _randn(5, 6, 6, seed=13) * 0.3
    a[1, 2, 3] = float("nan")
    a[3, 0, 0] = float("inf")
    e = stacked.from_stacked(stacked.expm(stacked.to_stacked(a)), (5,))
    assert not torch.isfinite(e[1]).all() and not torch.isfinite(e[3]).all()
    good = [0, 2, 4]
    assert _rel(e[good], torch.linalg.matrix_exp(a[good])) <= 64 * EPS64


def test_expm_in_float32_and_under_autograd():
    a = _randn(100, 6, 6, seed=14) * 0.4
    e32 = stacked.expm(stacked.to_stacked(a.float()))
    assert e32.dtype == torch.float32
    ref = torch.linalg.matrix_exp(a)
    assert (
        _rel(stacked.from_stacked(e32, (100,)).double(), ref) <= 32 * torch.finfo(torch.float32).eps
    )
    # with a graph to build, every product gets its own tensor (no out= buffers): the gradient
    # is the matrix exponential's
    x = a[:4].clone().requires_grad_()
    w = _randn(4, 6, 6, seed=15)
    (stacked.from_stacked(stacked.expm(stacked.to_stacked(x)), (4,)) * w).sum().backward()
    y = a[:4].clone().requires_grad_()
    (torch.linalg.matrix_exp(y) * w).sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- the geodesic
def _always_stacked(monkeypatch):
    monkeypatch.setattr(geodesic_module, "_STACKED_MIN_MATRICES", 1)
    monkeypatch.setattr(geodesic_module, "_STACKED_MIN_SQUARE", 1)


def _tangent(m, shape, batch, step, seed):
    x = m.random(*batch, *shape, dtype=torch.float64, generator=_gen(seed))
    v = m.proju(x, _randn(*batch, *shape, seed=seed + 1))
    return x, v * (step / torch.linalg.matrix_norm(v).clamp_min(1e-30))[..., None, None]


@pytest.mark.parametrize("shape", [(6, 3), (10, 3), (3, 3), (2, 2), (2, 5), (9, 2), (4, 1)])
@pytest.mark.parametrize("step", [1e-3, 1.0, 8.0])
def test_stacked_geodesic_is_the_batched_one(monkeypatch, shape, step):
    """Frames of at most three columns take the stacked layout; the same flow in the batched
    layout (torch's products and matrix_exp), to rounding, from tiny to many turns, with a
    float time and with per-matrix times."""
    m = Stiefel()
    x, v = _tangent(m, shape, (3, 4), step, seed=20)
    times = [0.7, -0.35, torch.tensor([[0.0], [0.1], [-1.3]], dtype=torch.float64)]
    _always_stacked(monkeypatch)
    fast = [m.geodesic(x, v, t) for t in times]
    monkeypatch.setattr(geodesic_module, "_STACKED_MAX_P", 0)
    for t, (xf, vf) in zip(times, fast):
        xb, vb = m.geodesic(x, v, t)
        assert xf.shape == xb.shape == (3, 4, *shape)
        scale = max(1.0, step)
        assert torch.allclose(xf, xb, atol=64 * EPS64 * scale, rtol=0), (xf - xb).abs().max()
        assert torch.allclose(vf, vb, atol=64 * EPS64 * scale**2, rtol=0), (vf - vb).abs().max()


def test_stacked_geodesic_broadcasts_and_differentiates(monkeypatch):
    _always_stacked(monkeypatch)
    m = Stiefel()
    x, v = _tangent(m, (6, 3), (4,), 1.0, seed=30)
    xt, _ = m.geodesic(x[None], v[None], torch.tensor([[0.1], [-0.3]], dtype=torch.float64))
    assert xt.shape == (2, 4, 6, 3)
    assert torch.allclose(xt[1, 2], m.geodesic(x[2], v[2], -0.3)[0], atol=1e-14, rtol=0)
    # gradients through the stacked path equal those through the batched one
    w = _randn(4, 6, 3, seed=31)
    grads = []
    for max_p in (3, 0):
        monkeypatch.setattr(geodesic_module, "_STACKED_MAX_P", max_p)
        u = v.clone().requires_grad_()
        xt, vt = m.geodesic(x, u, 0.6)
        ((xt + vt) * w).sum().backward()
        grads.append(u.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)


def test_the_layout_is_chosen_by_width_count_and_device(monkeypatch):
    """On CPU the stacked layout from ``_STACKED_MIN_MATRICES`` frames of at most three columns
    on (square ones: ``_STACKED_MIN_SQUARE``), the batched one below and for wider frames (seen
    through the products called: the stacked layout's, or torch's batched ones)."""
    calls = []
    real = stacked.mm
    monkeypatch.setattr(stacked, "mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = Stiefel()
    few = geodesic_module._STACKED_MIN_MATRICES - 1
    few_square = geodesic_module._STACKED_MIN_SQUARE - 1
    for batch, shape, used in [
        ((few,), (6, 3), False),
        ((few + 1,), (6, 3), True),
        ((2, few), (5, 2), True),
        ((300,), (8, 4), False),
        ((few_square,), (3, 3), False),
        ((few_square + 1,), (3, 3), True),
    ]:
        calls.clear()
        x, v = _tangent(m, shape, batch, 0.5, seed=40)
        m.geodesic(x, v, 0.3)
        assert bool(calls) == used, (batch, shape)


def test_the_geodesic_in_pieces_is_the_geodesic_in_one_piece(monkeypatch):
    """On CPU the stacked geodesic runs in pieces of ``_STACKED_CHUNK`` matrices; every
    operation is per matrix, so the numbers are the same bit for bit (a piece shorter than the
    others at the end, per-matrix times); a gradient through the pieces, to rounding."""
    _always_stacked(monkeypatch)
    m = Stiefel()
    x, v = _tangent(m, (6, 3), (5, 6), 1.0, seed=50)
    times = torch.linspace(-1.0, 1.0, 30, dtype=torch.float64).reshape(5, 6)
    whole = [m.geodesic(x, v, t) for t in (0.4, times)]
    monkeypatch.setattr(geodesic_module, "_STACKED_CHUNK", 7)
    for t, (xw, vw) in zip((0.4, times), whole):
        xp, vp = m.geodesic(x, v, t)
        assert torch.equal(xp, xw) and torch.equal(vp, vw)
    u = v.clone().requires_grad_()
    m.geodesic(x, u, times)[0].sum().backward()
    monkeypatch.setattr(geodesic_module, "_STACKED_CHUNK", 8192)
    u2 = v.clone().requires_grad_()
    m.geodesic(x, u2, times)[0].sum().backward()
    # (the backward's reductions over broadcast dimensions may round by piece size)
    assert torch.allclose(u.grad, u2.grad, atol=8 * EPS64, rtol=0), (u.grad - u2.grad).abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stacked_geodesic_on_cuda_is_sync_free_and_matches_the_cpu():
    """Off the CPU the stacked layout is taken at any count: no host synchronisation (the
    batched layout's matrix_exp has one), the CPU's numbers to rounding."""
    m = Stiefel()
    x, v = _tangent(m, (10, 3), (40,), 3.0, seed=60)
    xc, vc = x.cuda(), v.cuda()
    m.geodesic(xc, vc, 0.3)  # warm-up (kernel loading)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        xt, vt = m.geodesic(xc, vc, 0.3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    xr, vr = m.geodesic(x, v, 0.3)
    assert torch.allclose(xt.cpu(), xr, atol=64 * EPS64, rtol=0)
    assert torch.allclose(vt.cpu(), vr, atol=64 * EPS64 * 9, rtol=0)
