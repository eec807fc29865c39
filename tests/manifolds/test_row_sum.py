"""``row_sum``: short rows summed by slice additions give torch's own sums, bit for bit on CPU
(the golden trajectories rely on it), and long rows fall through to ``sum``."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from manifold_langevin.manifolds.small_systems import (
    COMBINATION_MAX_COLUMNS,
    COMBINATION_MIN_ENTRIES,
    SHORT_ROW_MAX,
    normal_combination,
    row_product,
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
    """``row_product(a, b)`` (the ImplicitManifold's ``J v`` and Gram products) gives
    ``a @ b``: the shapes, and the numbers to rounding (a dot product of at most four terms)."""
    m, n, k = shape
    g = torch.Generator().manual_seed(n)
    a = torch.randn(1000, m, n, dtype=dtype, generator=g)
    b = torch.randn(1000, n, k, dtype=dtype, generator=g)
    got, want = row_product(a, b), a @ b
    assert got.shape == want.shape
    eps = torch.finfo(dtype).eps
    bound = 4 * n * eps * (a.abs() @ b.abs())
    assert ((got - want).abs() <= bound).all()
    # broadcast batch dimensions, as for the Jacobian at the old point
    assert row_product(a, b[:1]).shape == (a @ b[:1]).shape


class _Ops(TorchDispatchMode):
    """Records the aten operators a block of code runs."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _uses_matmul(jac_t, lam) -> bool:
    with _Ops() as ops:
        normal_combination(jac_t, lam)
    return any(name.startswith("bmm") for name in ops.names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n, m", [(3, 1), (9, 2), (9, 3), (6, 4), (30, 2), (12, 6), (30, 9), (40, 16), (40, 17)]
)
@pytest.mark.parametrize("chains", [1, 30, 2000])
def test_normal_combination_is_the_batched_matmul_bit_for_bit(dtype, n, m, chains):
    """``normal_combination(J^T, lam)`` (SHAKE's correction ``J^T lam``) adds the columns'
    products in the batched matmul's order, or calls it: the same bits either way, also for
    a chain-minor Jacobian, and the branch is the one the size rule names."""
    g = torch.Generator().manual_seed(10 * n + m)
    jac_t = torch.randn(chains, n, m, dtype=dtype, generator=g)
    lam = torch.randn(chains, m, 1, dtype=dtype, generator=g)
    want = jac_t @ lam
    assert torch.equal(normal_combination(jac_t, lam), want)
    columns = m <= COMBINATION_MAX_COLUMNS and chains * n >= COMBINATION_MIN_ENTRIES * m
    assert _uses_matmul(jac_t, lam) == (m > 1 and not columns)
    # the chains as the fastest-varying dimension, as for the points' chain-minor layout: the
    # column sums give the contiguous matmul's bits (torch's matmul of a strided batch may not)
    if chains > 1:
        minor = jac_t.movedim(0, -1).contiguous().movedim(-1, 0)
        assert not minor.is_contiguous() and torch.equal(minor, jac_t)
        got = normal_combination(minor, lam)
        assert torch.equal(got, minor @ lam if _uses_matmul(minor, lam) else want)
    # broadcast multipliers of one chain: the rule counts the broadcast batch
    assert torch.equal(normal_combination(jac_t, lam[:1]), jac_t @ lam[:1])
    assert torch.equal(normal_combination(jac_t[:1], lam), jac_t[:1] @ lam)
    assert _uses_matmul(jac_t[:1], lam) == _uses_matmul(jac_t, lam)


@pytest.mark.parametrize("chains", [1, 2000])
def test_normal_combination_is_differentiable(chains):
    """Under autograd the column sums build fresh tensors (no in-place accumulation): the
    gradients with respect to both factors are the batched matmul's."""
    g = torch.Generator().manual_seed(3)
    jac_t = torch.randn(chains, 30, 6, dtype=torch.float64, generator=g).requires_grad_()
    lam = torch.randn(chains, 6, 1, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(chains, 30, 1, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((normal_combination(jac_t, lam) * w).sum(), (jac_t, lam))
    want = torch.autograd.grad(((jac_t @ lam) * w).sum(), (jac_t, lam))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-14)
