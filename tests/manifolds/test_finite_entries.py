"""``finite_entries`` decides finiteness as ``torch.isfinite`` does, entry by entry."""

from __future__ import annotations

import pytest
import torch

from manifold_langevin.manifolds.base import finite_entries

SPECIAL = [0.0, -0.0, 1.0, -2.5, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_it_agrees_with_isfinite_on_every_special_value(dtype):
    info = torch.finfo(dtype)
    values = torch.tensor([*SPECIAL, info.max, -info.max, info.tiny, info.tiny / 4], dtype=dtype)
    # every pair of values, in each of three tensors
    a, b = torch.meshgrid(values, values, indexing="ij")
    c = torch.roll(a, 1, dims=0)
    want = torch.isfinite(a) & torch.isfinite(b) & torch.isfinite(c)
    assert torch.equal(finite_entries(a, b, c), want)
    assert torch.equal(finite_entries(a), torch.isfinite(a))


def test_it_broadcasts():
    x = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    y = torch.tensor([1.0, float("inf")])
    assert torch.equal(finite_entries(x, y), torch.isfinite(x) & torch.isfinite(y))
    assert torch.equal(finite_entries(y, x), torch.isfinite(x) & torch.isfinite(y))


def test_it_leaves_its_inputs_alone():
    x = torch.tensor([1.0, float("nan")])
    y = torch.tensor([float("inf"), 2.0])
    before = (x.clone(), y.clone())
    finite_entries(x, y)
    assert torch.allclose(x, before[0], equal_nan=True)
    assert torch.allclose(y, before[1], equal_nan=True)
