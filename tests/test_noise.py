"""Noise sources: generators and callables are interchangeable; coupling keeps each chain's law."""

import math

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.noise import CoupledNoise, standard_normal


def test_standard_normal_from_generator_matches_randn():
    like = torch.empty(5, 3, dtype=torch.float64)
    a = standard_normal(like, torch.Generator().manual_seed(3))
    b = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_noise_source_shape_is_checked():
    with pytest.raises(ValueError, match="shape"):
        standard_normal(torch.empty(4, 3), lambda like: torch.zeros(4))


def test_coupled_draws_are_standard_normal():
    noise = CoupledNoise(torch.Generator().manual_seed(0))
    like = torch.empty(200_000, dtype=torch.float64)
    a, b = noise.fine(0)(like), noise.fine(1)(like)
    c = noise.coarse()(like)
    assert torch.allclose(c, (a + b) / math.sqrt(2))
    # mean 0, variance 1 within 5 standard errors (se of the variance: sqrt(2 / n))
    assert abs(float(c.mean())) < 5 / math.sqrt(like.numel())
    assert abs(float(c.var()) - 1) < 5 * math.sqrt(2 / like.numel())
    # correlation with each fine draw is 1/sqrt(2)
    corr = float((c * a).mean())
    assert abs(corr - 1 / math.sqrt(2)) < 5 / math.sqrt(like.numel())


def test_coupling_misuse_is_reported():
    noise = CoupledNoise(torch.Generator().manual_seed(0))
    noise.fine(0)(torch.empty(3))
    with pytest.raises(RuntimeError, match="must match"):
        noise.coarse()
    with pytest.raises(ValueError):
        noise.fine(2)
    noise.fine(1)(torch.empty(3))
    draw = noise.coarse()
    draw(torch.empty(3))
    with pytest.raises(RuntimeError, match="more tensors"):
        draw(torch.empty(3))


def _force(x):
    f = torch.zeros_like(x)
    f[..., -1] = 4.0
    return f


@pytest.mark.parametrize("scheme", ["BAOAB", "OBABO"])
def test_coupled_chains_stay_close_and_on_manifold(scheme):
    """Coarse (h) and fine (h/2) chains driven by the same increments track each other closely,
    while independent chains decorrelate completely; both stay on the sphere."""
    n, h = 500, 0.1
    coarse, fine = (
        ml.Langevin(ml.Sphere(), step_size=s, friction=1.0, scheme=scheme, force=_force)
        for s in (h, h / 2)
    )
    g = torch.Generator().manual_seed(1)
    x0 = ml.Sphere().random(n, 3, dtype=torch.float64, generator=g)
    sc = coarse.init(x0, generator=g)
    sf = fine.init(x0, p0=sc.p)
    si = fine.init(x0, p0=sc.p)  # an independent fine chain from the same start
    noise = CoupledNoise(g)
    for _ in range(200):  # 20 time units: many relaxation times
        sf, _, _ = fine.step(sf, noise.fine(0))
        sf, _, _ = fine.step(sf, noise.fine(1))
        sc, _, _ = coarse.step(sc, noise.coarse())
        for _ in range(2):
            si, _, _ = fine.step(si, g)
    coupled = (sc.x - sf.x).norm(dim=-1).mean()
    independent = (sc.x - si.x).norm(dim=-1).mean()
    assert float(coupled) < 0.1 * float(independent), (float(coupled), float(independent))
    assert float(ml.Sphere().residual_norm(sc.x).max()) < 1e-12
    assert float(ml.Sphere().residual_norm(sf.x).max()) < 1e-12
