"""The samplers' chain-minor storage of short points: same values, same numbers, faster user sums;
results come back in the default layout."""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.integrators.base import (
    CHAIN_MINOR_MAX_EVENT,
    State,
    chain_minor,
    standard_layout,
)
from manifold_langevin.noise import standard_normal


def _is_chain_minor(x: torch.Tensor) -> bool:
    return x.movedim(-1, 0).is_contiguous() and not x.is_contiguous()


@pytest.mark.parametrize("shape", [(100, 3), (4, 25, 2), (7, 32)])
def test_chain_minor_keeps_values_and_shape(shape):
    x = torch.randn(shape, dtype=torch.float64)
    y = chain_minor(x, 1)
    assert _is_chain_minor(y) and y.shape == x.shape and torch.equal(y, x)
    assert chain_minor(y, 1) is y  # already in that layout: no copy
    # a reduction over the short last dimension: the same numbers up to 4 entries (the order
    # of the additions is the same), to rounding beyond
    a, b = (y * y).sum(-1), (x * x).sum(-1)
    if shape[-1] <= 4:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=shape[-1] * 2.3e-16, atol=0)


def test_chain_minor_leaves_other_tensors_alone():
    long = torch.randn(10, CHAIN_MINOR_MAX_EVENT + 1)
    one_chain = torch.randn(1, 3)
    matrices = torch.randn(10, 3, 3)
    for x, ndim in ((long, 1), (one_chain, 1), (matrices, 2), (torch.randn(3), 1)):
        assert chain_minor(x, ndim) is x
    meta = torch.empty(10, 3, device="meta")
    assert chain_minor(meta, 1) is meta  # CPU only


def test_standard_layout_makes_the_state_contiguous():
    x = chain_minor(torch.randn(50, 3), 1)
    state = standard_layout(State(x, x * 2, x * 3))
    assert all(t.is_contiguous() for t in (state.x, state.p, state.force))
    assert torch.equal(state.x, x) and torch.equal(state.p, 2 * x)
    plain = State(torch.randn(5, 3), None, torch.randn(5, 3))
    assert standard_layout(plain) is plain


@pytest.mark.parametrize(
    "manifold", [ml.Sphere(), ml.ImplicitManifold(lambda x: (x * x).sum(-1) - 1.0)]
)
def test_samplers_run_chain_minor_and_return_the_default_layout(manifold):
    """The state stays chain-minor through the steps (every elementwise result keeps its
    inputs' layout); the trajectory is the one the default layout gives, bit for bit; sample()
    returns its final state contiguous (``view`` works on it)."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.nn.functional.normalize(
        torch.randn(300, 3, dtype=torch.float64, generator=gen), dim=-1
    )
    sampler = ml.Langevin(
        manifold, potential=lambda x: -2.0 * x[..., 2], step_size=0.05, temperature=1.0
    )
    state = sampler.init(x0, generator=torch.Generator().manual_seed(1))
    assert _is_chain_minor(state.x)
    g1 = torch.Generator().manual_seed(2)
    for _ in range(5):
        state, ok, finite = sampler.step(state, g1)
    # the momentum and the force too: the noise comes in the points' layout
    assert all(_is_chain_minor(t) for t in (state.x, state.p, state.force))
    assert bool(ok.all() and finite.all())
    # the same steps in the default layout (the layout applied by init is undone by hand)
    ref = sampler.init(x0, generator=torch.Generator().manual_seed(1))
    ref = standard_layout(ref)
    g2 = torch.Generator().manual_seed(2)
    for _ in range(5):
        ref, _, _ = sampler.step(ref, g2)
    assert ref.x.is_contiguous()
    assert torch.equal(state.x, ref.x) and torch.equal(state.p, ref.p)
    result = ml.sample(sampler, x0, n_steps=20, generator=torch.Generator().manual_seed(3))
    assert result.state.x.is_contiguous()
    assert result.state.x.view(-1).shape == (900,)


def test_noise_comes_in_the_layout_of_its_like_with_the_same_values():
    x = chain_minor(torch.randn(100, 3, dtype=torch.float64), 1)
    a = standard_normal(x, torch.Generator().manual_seed(0))
    b = standard_normal(x.contiguous(), torch.Generator().manual_seed(0))
    assert _is_chain_minor(a) and b.is_contiguous() and torch.equal(a, b)
