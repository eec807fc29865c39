"""The samplers' fused ``A O A`` step where the O step draws no noise (``fuse=True``).

With a closed-form geodesic the fused step is the same map as the unfused one (one flow of time
``(1 + c1) h / 2`` then the damping, against two flows of ``h / 2`` with the damping between):
equal to rounding. With RATTLE A steps it is one SHAKE solve instead of two, a different
second-order map: the two differ by ``O(h^3)`` per step. Where the O step has noise, or the word
has no ``A O A``, fusing changes nothing.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import manifold_langevin as ml

DT = torch.float64


def _start(manifold, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    if isinstance(manifold, ml.Stiefel):
        return manifold.random(n, 5, 3, dtype=DT, generator=g)
    return manifold.random(n, 3, dtype=DT, generator=g)


def _potential(x):
    return -(x[..., 0, 0] if x.dim() == 3 else x[..., 0])


def _run(manifold, h, fuse, steps=20, **kw):
    x0 = _start(manifold)
    s = ml.Langevin(manifold, _potential, step_size=h, fuse=fuse, **kw)
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    state = s.init(x0, p0=p0, generator=g)  # p0 is projected onto the tangent space
    with torch.no_grad():
        for _ in range(steps):
            state, ok, finite = s.step(state, g)
            assert bool((ok & finite).all())
    return state


@pytest.mark.parametrize("manifold", [ml.Sphere(1.3), ml.Stiefel()], ids=["sphere", "stiefel"])
@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"friction": 0.0}], ids=["tau0", "gamma0"])
def test_fused_geodesic_step_is_the_same_map(manifold, kw):
    a, b = _run(manifold, 0.2, False, **kw), _run(manifold, 0.2, True, **kw)
    torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.p, a.p, rtol=0, atol=1e-12)


def test_fused_rattle_step_differs_at_third_order():
    # one step from the same start (unit-size tangent momenta): the difference shrinks like h^3,
    # a ratio of 8 per halving
    diffs = []
    for h in (0.1, 0.05, 0.025):
        a = _run(ml.Stiefel(), h, False, steps=1, temperature=0.0, geodesic=False)
        b = _run(ml.Stiefel(), h, True, steps=1, temperature=0.0, geodesic=False)
        diffs.append(float((a.x - b.x).abs().max()))
    assert diffs[0] > 1e-8  # a different map indeed
    for big, small in itertools.pairwise(diffs):
        assert math.log2(big / small) == pytest.approx(3.0, abs=0.5), diffs


def test_fusing_changes_nothing_with_noise_or_without_an_aoa():
    for kw in ({"temperature": 0.5}, {"temperature": 0.0, "scheme": "OBABO"}):
        a, b = _run(ml.Sphere(), 0.2, False, **kw), _run(ml.Sphere(), 0.2, True, **kw)
        assert torch.equal(a.x, b.x) and torch.equal(a.p, b.p)
    with pytest.raises(ValueError, match="fuse"):
        ml.Langevin(ml.Sphere(), step_size=0.1, fuse="yes")
