"""Runs are reproducible from a seeded generator, and the seed matters."""

from __future__ import annotations

import torch

import manifold_langevin as ml


def _run(seed, scheme="BAOAB"):
    s = ml.Sphere()
    x0 = s.random(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sampler = ml.Langevin(s, potential=lambda x: -x[..., 2], step_size=0.1, scheme=scheme)
    out = sampler.sample(
        x0,
        n_steps=50,
        observables={"z": lambda x: x[..., 2]},
        generator=torch.Generator().manual_seed(seed),
    )
    return out.state.x


def test_same_seed_same_trajectory():
    assert torch.equal(_run(1), _run(1))
    assert torch.equal(_run(1, "OBABO"), _run(1, "OBABO"))


def test_other_seed_other_trajectory():
    assert not torch.allclose(_run(1), _run(2))


def test_step_by_step_equals_sample():
    s = ml.Sphere()
    x0 = s.random(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sampler = ml.Langevin(s, potential=lambda x: -x[..., 2], step_size=0.1)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    out = sampler.sample(x0, n_steps=20, generator=g1)
    state = sampler.init(x0, generator=g2)
    for _ in range(20):
        state, _, _ = sampler.step(state, g2)
    assert torch.equal(out.state.x, state.x)
