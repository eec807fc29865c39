"""``row_sum``: short rows summed by slice additions give torch's own sums, bit for bit on CPU
(the golden trajectories rely on it), and long rows fall through to ``sum``."""

from __future__ import annotations

import pytest
import torch

from manifold_langevin.manifolds.base import (
    SHORT_ROW_MAX,
    _normal_combination,
    _row_product,
    row_sum,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, SHORT_ROW_MAX, SHORT_ROW_MAX + 1, 10])
@pytest.mark.parametrize("keepdim", [False, True])
def test_row_sum_is_torch_sum_bit_for_bit(dtype, n, keepdim):
    g = torch.Generator().manual_seed(n)
    # entries of very different sizes, so that the order of the additions shows in the bits
    scale = torch.logspace(-8, 8, n, dtype=dtype)
    for rows in (1, 7, 1000, 50_000):
        t = torch.randn(rows, n, dtype=dtype, generator=g) * scale
        got, want = row_sum(t, keepdim=keepdim), t.sum(-1, keepdim=keepdim)
        assert got.shape == want.shape
        assert torch.equal(got, want)
    batched = torch.randn(3, 4, n, dtype=dtype, generator=g)
    assert torch.equal(row_sum(batched, keepdim=keepdim), batched.sum(-1, keepdim=keepdim))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(1, 3, 1), (1, 2, 1), (1, 4, 1), (1, 5, 1), (2, 3, 1), (1, 3, 2)]
)
def test_row_product_is_the_batched_matmul(dtype, shape):
    """``_row_product(a, b)`` (the ImplicitManifold's ``J v`` and Gram products) gives
    ``a @ b``: the shapes, and the numbers to rounding (a dot product of at most four terms)."""
    m, n, k = shape
    g = torch.Generator().manual_seed(n)
    a = torch.randn(1000, m, n, dtype=dtype, generator=g)
    b = torch.randn(1000, n, k, dtype=dtype, generator=g)
    got, want = _row_product(a, b), a @ b
    assert got.shape == want.shape
    eps = torch.finfo(dtype).eps
    bound = 4 * n * eps * (a.abs() @ b.abs())
    assert ((got - want).abs() <= bound).all()
    # broadcast batch dimensions, as for the Jacobian at the old point
    assert _row_product(a, b[:1]).shape == (a @ b[:1]).shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", [(3, 1), (9, 2), (9, 3), (6, 4), (30, 2), (12, 6)])
def test_normal_combination_is_the_batched_matmul_bit_for_bit(dtype, n, m):
    """``_normal_combination(J^T, lam)`` (SHAKE's correction ``J^T lam``) adds the columns'
    products in the batched matmul's order: the same bits, also for a chain-minor Jacobian."""
    g = torch.Generator().manual_seed(10 * n + m)
    jac_t = torch.randn(2000, n, m, dtype=dtype, generator=g)
    lam = torch.randn(2000, m, 1, dtype=dtype, generator=g)
    want = jac_t @ lam
    assert torch.equal(_normal_combination(jac_t, lam), want)
    # the chains as the fastest-varying dimension, as for the points' chain-minor layout
    minor = jac_t.movedim(0, -1).contiguous().movedim(-1, 0)
    assert not minor.is_contiguous() and torch.equal(minor, jac_t)
    assert torch.equal(_normal_combination(minor, lam), want)
    # broadcast multipliers of one chain
    assert torch.equal(_normal_combination(jac_t, lam[:1]), jac_t @ lam[:1])
