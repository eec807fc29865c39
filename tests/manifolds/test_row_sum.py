"""``row_sum``: short rows summed by slice additions give torch's own sums, bit for bit on CPU
(the golden trajectories rely on it), and long rows fall through to ``sum``."""

from __future__ import annotations

import pytest
import torch

from manifold_langevin.manifolds.base import SHORT_ROW_MAX, row_sum


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
