"""The optimizer conformance table: a CoLA step IS the composition of the integrators' sub-steps.

For every constraint kind (circles, spheres, Stiefel tall and wide, unconstrained tensors, and
manifold objects: an implicit ellipse and a sphere), scheme (``ud``, ``od``), temperature (zero,
positive), geodesic option and fusion, three CoLA steps from the same start with fixed gradients
are compared with the composition of the generic maps of ``manifold_langevin.integrators.
substeps`` (B: ``kick``, A: ``drift``, O: ``ornstein_uhlenbeck``, E: ``euler``) applied to the same
tensors viewed as points of the manifold (circle weights as ``Circles`` points ``(w, xi)``,
unconstrained tensors as ``Euclidean`` points) with the same normals. CoLA's fast paths (the
fused circle kick-and-rotate, the in-place ``_foreach`` Euclidean step, the unprojected Stiefel
RATTLE momentum, the stacking of same-shape tensors) must agree with the generic maps to
rounding: a fast path that drifts from the maths fails here.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.integrators.substeps import (
    damped_drift,
    drift,
    euler,
    kick,
    ornstein_uhlenbeck,
    ou_coefficients,
)
from manifold_langevin.manifolds.circles import circle_momentum

DTYPE = torch.float64
H, GAMMA = 0.2, 1.3


def _ellipse() -> ml.ImplicitManifold:
    return ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)


class Kind:
    """How CoLA sees a constraint, and the same parameters as points of a manifold."""

    def __init__(self, name, group, shape, manifold, geodesic_default, start):
        self.name, self.group, self.shape = name, group, shape
        self.manifold, self.geodesic_default, self.start = manifold, geodesic_default, start

    def __repr__(self) -> str:
        return self.name


def _rows_on_sphere(r):
    def start(z):
        m = z.reshape(z.shape[0], -1) if z.dim() >= 2 else z
        return (m * (r / m.norm(dim=-1, keepdim=True))).reshape(z.shape)

    return start


def _orthonormal(z):
    out = z.clone()
    ml.optim.orthogonal_init_(out)
    return out


def _on_ellipse(z):
    t = torch.atan2(z[..., 1], z[..., 0])
    return torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)


KINDS = [
    Kind("circle", {"constraint": "circle", "radius": 0.3}, (5, 4), ml.Circles(0.3), True,
         lambda z: z.clamp(-0.29, 0.29)),
    Kind("sphere", {"constraint": "sphere", "radius": 1.5}, (4, 3), ml.Sphere(1.5), True,
         _rows_on_sphere(1.5)),
    Kind("orthogonal-tall", {"constraint": "orthogonal"}, (6, 3), ml.Stiefel(), False,
         _orthonormal),
    Kind("orthogonal-wide", {"constraint": "orthogonal"}, (3, 5), ml.Stiefel(), False,
         _orthonormal),
    Kind("free", {"constraint": None}, (4, 3), ml.Euclidean(ndim=2), True, lambda z: z),
    Kind("sphere-object", {"constraint": ml.Sphere(2.0)}, (4, 3), ml.Sphere(2.0), True,
         _rows_on_sphere(2.0)),
    Kind("ellipse-object", {"constraint": _ellipse()}, (4, 2), _ellipse(), False, _on_ellipse),
]  # fmt: skip

SETTINGS = [
    # (scheme, temperature, geodesic, fuse)
    *itertools.product(["ud"], [0.0, 0.05], [None, True, False], [True, False]),
    *itertools.product(["od"], [0.0, 0.05], [None, True, False], [True]),
]


def _case_id(kind, setting):
    scheme, tau, geo, fuse = setting
    return f"{kind.name}-{scheme}-tau{tau}-geo{geo}-{'fused' if fuse else 'unfused'}"


CASES = [
    pytest.param(k, s, id=_case_id(k, s))
    for k in KINDS
    for s in SETTINGS
    # a closed-form flow cannot be forced where there is none: CoLA then takes RATTLE, which
    # the geodesic=False case covers already
    if not (s[2] is True and not k.manifold.has_geodesic)
]


class Recorder:
    """Draws, as a noise source for the composition, the normals CoLA draws from its generator
    in the same order: one draw for a stacked bucket of matrices or vectors; one per tensor for
    circle weights and unconstrained tensors. For circles the O step draws one normal per
    weight (``like`` is shaped as the weights: ``Circles.random_normal_tangent``) and the Euler
    step two (``(2, n)``: row 0 for ``w``, row 1 for ``xi``; ``like`` has the pairs' last axis)."""

    def __init__(self, generator_state, kind):
        self.gen = torch.Generator().set_state(generator_state)
        self.kind = kind

    def __call__(self, like):
        if self.kind.name == "circle" and like.dim() == len(self.kind.shape) + 1:
            parts = [torch.randn(one.shape, generator=self.gen, dtype=like.dtype)
                     for one in like.unbind(0)]  # fmt: skip
            return torch.stack(parts)
        if self.kind.name == "circle":
            parts = []
            for one in like.unbind(0):
                z = torch.randn((2, one.numel() // 2), generator=self.gen, dtype=like.dtype)
                parts.append(z.T.reshape(one.shape))
            return torch.stack(parts)
        if self.kind.name == "free":
            parts = [torch.randn(one.shape, generator=self.gen, dtype=like.dtype)
                     for one in like.unbind(0)]  # fmt: skip
            return torch.stack(parts)
        return torch.randn(like.shape, generator=self.gen, dtype=like.dtype)


def _points(kind, params, xi):
    """The parameters as one stack of manifold points (as CoLA stacks a bucket)."""
    if kind.name == "circle":
        return torch.stack([torch.stack([w, x], dim=-1) for w, x in zip(params, xi)])
    return torch.stack([p.reshape(kind.shape) for p in params])


def _composition(kind, x, p, grad, kick_h, scheme, tau, geo, fuse, noise):
    """One step of the documented scheme, composed from the integrators' generic maps."""
    m = kind.manifold
    c1, c2 = ou_coefficients(GAMMA, tau, H)
    geodesic = m.has_geodesic and (kind.geodesic_default if geo is None else geo)
    if kind.name == "circle":
        geodesic = True  # CoLA rotates circles exactly, whatever the option
    force = -grad
    if scheme == "od":
        return euler(m, x, force, H, tau, noise, geodesic=geodesic)[0], None
    p = kick(m, x, p, force, kick_h)
    if c2 == 0.0 and fuse:
        x, p, _ = damped_drift(m, x, p, H, c1, geodesic=geodesic)
        return x, p
    x, p, _ = drift(m, x, p, 0.5 * H, geodesic=geodesic)
    p = ornstein_uhlenbeck(m, x, p, c1, c2, noise)
    x, p, _ = drift(m, x, p, 0.5 * H, geodesic=geodesic)
    return x, p


@pytest.mark.parametrize("kind, setting", CASES)
def test_cola_step_is_the_composition_of_substeps(kind, setting):
    scheme, tau, geo, fuse = setting
    g = torch.Generator().manual_seed(4)
    shape = kind.shape
    params = [
        torch.nn.Parameter(kind.start(torch.randn(shape, generator=g, dtype=DTYPE)))
        for _ in range(2)  # two tensors of one shape: CoLA stacks them into one bucket
    ]
    gen = torch.Generator().manual_seed(17)
    group = {"params": params, **kind.group, "scheme": scheme, "temperature": tau,
             "geodesic": geo, "fuse": fuse}  # fmt: skip
    opt = ml.optim.CoLA([group], lr=H, friction=GAMMA, generator=gen)
    r = kind.group.get("radius")
    xi = [torch.sqrt(r * r - q.detach() ** 2) for q in params] if kind.name == "circle" else None
    x = _points(kind, [q.detach().clone() for q in params], xi)
    p = torch.zeros_like(x) if scheme == "ud" else None
    pending = 0.0
    for step in range(3):
        grads = [0.7 * torch.randn(shape, generator=g, dtype=DTYPE) for _ in params]
        for q, gq in zip(params, grads):
            q.grad = gq
        noise = Recorder(gen.get_state(), kind)
        opt.step()
        kick_h = pending + 0.5 * H
        pending = 0.5 * H
        if kind.name == "circle":
            grad = torch.stack([torch.stack([gq, torch.zeros_like(gq)], dim=-1) for gq in grads])
        else:
            grad = torch.stack([gq.reshape(shape) for gq in grads])
        x, p = _composition(kind, x, p, grad, kick_h, scheme, tau, geo, fuse, noise)
        assert opt.n_rejected() == 0
        got = _points(kind, [q.detach() for q in params],
                      [opt.state[q]["xi"] for q in params] if xi is not None else None)  # fmt: skip
        scale = float(x.abs().max())
        torch.testing.assert_close(got, x, rtol=0, atol=1e-12 * scale, msg=f"position, step {step}")
        if scheme == "ud":
            if kind.name == "circle":
                # the state holds the angular velocity omega: the momentum is omega (-xi, w)
                mom = torch.stack([
                    torch.stack(circle_momentum(q.detach(), opt.state[q]["xi"],
                                                opt.state[q]["angular_velocity"]), -1)
                    for q in params
                ])  # fmt: skip
            else:
                mom = torch.stack([opt.state[q]["momentum_buffer"].reshape(shape) for q in params])
            # CoLA may store a Stiefel momentum before its tangent projection (its next RATTLE
            # step sees only the tangent part); the velocity is the tangent part
            mom = kind.manifold.proju(got, mom)
            pscale = max(float(p.abs().max()), 1.0)
            torch.testing.assert_close(mom, p, rtol=0, atol=1e-11 * pscale,
                                       msg=f"momentum, step {step}")  # fmt: skip
        # the stream advanced by exactly the normals the composition used
        assert torch.equal(noise.gen.get_state(), gen.get_state())


def test_the_table_covers_every_kind_scheme_temperature_and_option():
    ids = {c.id for c in CASES}
    for kind in KINDS:
        for scheme, tau in itertools.product(["ud", "od"], [0.0, 0.05]):
            assert any(i.startswith(f"{kind.name}-{scheme}-tau{tau}-") for i in ids)
    assert len(CASES) >= 7 * 12
    # the O coefficients themselves are checked against their closed form elsewhere; here the
    # noise must be real in the tau > 0 cases
    assert ou_coefficients(GAMMA, 0.05, H)[1] == pytest.approx(
        math.sqrt(0.05 * (1 - math.exp(-2 * GAMMA * H)))
    )
