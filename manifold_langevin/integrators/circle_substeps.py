r"""The B, A, O and E maps on circles, written on separate ``(w, xi)`` components.

The same maps as [`substeps`][manifold_langevin.integrators.substeps] applied to
[`Circles`][manifold_langevin.Circles] points ``(w, xi)`` of radius $r$ (tangent projection
[`circle_project`][manifold_langevin.manifolds.circles.circle_project], exact geodesic
[`circle_rotate`][manifold_langevin.manifolds.circles.circle_rotate]), for callers that hold
``w`` and ``xi`` in separate tensors: the optimizer keeps ``w`` as the parameter and ``xi`` in its
state, so stacking them into ``(..., 2)`` points would cost a copy of both per step. The loss
does not depend on ``xi``: the force is ``(-grad, 0)``, and these maps take the gradient.

Every function is elementwise and branches on no number's value, so the numbers may be 0-d
tensors (as they are under ``torch.compile``, where Python numbers would either recompile for
every new value or be baked into the kernel).
"""

from __future__ import annotations

import torch

from ..manifolds.circles import circle_project, circle_rotate, circle_tangent_normal
from .substeps import ou_update

__all__ = ["baoa_step_circles", "circle_bound", "circle_kick_rotate", "euler_circles"]


def circle_kick_rotate(
    w: torch.Tensor,
    xi: torch.Tensor,
    pw: torch.Tensor,
    pxi: torch.Tensor,
    force: torch.Tensor | None,
    kick: float,
    t: float,
    radius: float,
    scale: float = 1.0,
    normal: torch.Tensor | None = None,
    normal_angle: float = 0.0,
    normal_speed: float = 0.0,
    out: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""B then A: a kick, its tangent projection and the exact rotation for time ``t``, fused.

    The same map as [`circle_project`][manifold_langevin.manifolds.circles.circle_project]
    applied to ``(pw + kick * force, pxi)`` followed by
    [`circle_rotate`][manifold_langevin.manifolds.circles.circle_rotate] (the momentum then
    multiplied by ``scale``), written for fewer passes over memory: after the projection the
    momentum is $\omega\,(-\xi, w)$ with angular velocity

    $$\omega = \frac{w\,p_\xi - \xi\,(p_w + \kappa f)}{w^2 + \xi^2},$$

    the flow rotates $(w, \xi)$ by $\theta = \omega t$ (renormalised onto radius $r$, as
    ``circle_rotate`` does) and the rotated momentum is $\omega\,(-\xi_t, w_t)$ with the
    unnormalised rotated point. About 20 elementwise operations against some 35 for the
    composition; under ``torch.compile`` it becomes one loop.

    With ``normal`` ($z$, one standard normal per circle) the angle gains $a z$ and the returned
    angular velocity $b z$: $\theta = \omega t + a z$, $\omega' = s\,\omega + b z$ (``scale`` $s$,
    ``normal_angle`` $a$, ``normal_speed`` $b$), the form of a whole noisy ``A O A``
    (see [`baoa_step_circles`][]).

    Args:
        w: weights.
        xi: auxiliary variables.
        pw: momentum of ``w`` (need not be tangent: only the tangent part matters).
        pxi: momentum of ``xi``.
        force: the force on ``w`` (``None``: no kick); ``xi`` feels no force.
        kick: the kick time $\kappa$ (a number or a 0-d tensor, as the next three).
        t: the rotation time.
        radius: circle radius $r$.
        scale: factor applied to the returned momentum.
        normal: one standard normal per circle (``None``: none).
        normal_angle: its coefficient in the rotation angle.
        normal_speed: its coefficient in the returned angular velocity.
        out: four tensors to write the results into (they may be the inputs: every input is
            read before the first write); the same numbers, without four copies.

    Returns:
        ``(w_t, xi_t, pw_t, pxi_t)`` (``out`` when given).
    """
    if force is not None:
        pw = pw + force * kick
    r2 = torch.addcmul(w * w, xi, xi)
    omega = torch.addcmul(w * pxi, xi, pw, value=-1.0).div_(r2)
    theta = omega * t
    if normal is not None:
        theta = theta + normal * normal_angle
    cos, sin = torch.cos(theta), torch.sin(theta)
    w_t = torch.addcmul(cos * w, sin, xi, value=-1.0)
    xi_t = torch.addcmul(sin * w, cos, xi)
    omega = omega * scale
    if normal is not None:
        omega = omega + normal * normal_speed
    norm = torch.rsqrt(r2) * radius
    if out is not None:
        ow, oxi, opw, opxi = out
        torch.mul(omega, xi_t, out=opw).neg_()
        torch.mul(omega, w_t, out=opxi)
        return torch.mul(w_t, norm, out=ow), torch.mul(xi_t, norm, out=oxi), opw, opxi
    pw_t = torch.mul(omega, xi_t).neg_()
    pxi_t = omega * w_t
    return w_t.mul_(norm), xi_t.mul_(norm), pw_t, pxi_t


def circle_bound(w: torch.Tensor, radius) -> torch.Tensor:
    """``|w| <= r`` exactly: the renormalised rotation can overshoot ``r`` by an ulp near
    ``xi = 0``."""
    return torch.clamp(w, -radius, radius)


def baoa_step_circles(w, xi, pw, pxi, grad, kick_h, h, c1, c2, radius, noise, fuse, out=None):
    r"""[`baoa_step`][manifold_langevin.integrators.substeps.baoa_step] on circles:
    ``B(kick_h) A(h/2) O(h) A(h/2)`` with exact rotations.

    On a circle the tangent momentum is $\omega\,(-\xi, w)$ and the O step changes only the
    angular velocity: with the normal tangent vector $z\,u$ of
    [`circle_tangent_normal`][manifold_langevin.manifolds.circles.circle_tangent_normal]
    ($|u| = 1$, $|(-\xi, w)| = r$), $\omega \to \omega' = c_1 \omega + (c_2 / r) z$. Rotations
    of one circle compose, so ``A(h/2) O A(h/2)`` is one rotation by
    $\theta = \tfrac{h}{2}(\omega + \omega')$ ending with angular velocity $\omega'$, exact at any
    temperature; with ``fuse`` it is evaluated that way (one cosine and sine per weight instead
    of two).

    Args:
        w: weights.
        xi: auxiliary variables.
        pw: momentum of ``w``.
        pxi: momentum of ``xi``.
        grad: the gradient of the loss with respect to ``w`` (the force is ``-grad``).
        kick_h: kick time.
        h: step.
        c1: the O step's damping.
        c2: the O step's noise scale.
        radius: circle radius.
        noise: one standard normal per weight for the O step, shaped like ``w`` (``None`` when
            ``c2 == 0``).
        fuse: take ``A O A`` as one rotation (above; without noise the rotation of time
            ``(1 + c1) h / 2`` followed by the damping, as
            [`damped_drift`][manifold_langevin.integrators.substeps.damped_drift]).
        out: with ``fuse``, four tensors to write the results into (they may be the inputs;
            see [`circle_kick_rotate`][]); ignored otherwise.

    Returns:
        ``(w, xi, pw, pxi)``.
    """
    if fuse:
        t = 0.5 * (1.0 + c1) * h
        b = 0.0 if noise is None else c2 / radius
        w, xi, pw, pxi = circle_kick_rotate(
            w, xi, pw, pxi, grad, -kick_h, t, radius, c1, noise, 0.5 * h * b, b, out=out
        )
        if out is not None:
            return w.clamp_(-radius, radius), xi, pw, pxi
        return circle_bound(w, radius), xi, pw, pxi
    w, xi, pw, pxi = circle_kick_rotate(w, xi, pw, pxi, grad, -kick_h, 0.5 * h, radius)
    if noise is None:
        pw, pxi = ou_update(pw, c1, c2, None), ou_update(pxi, c1, c2, None)
    else:
        rw, rxi = circle_tangent_normal(w, xi, noise)
        pw, pxi = ou_update(pw, c1, c2, rw), ou_update(pxi, c1, c2, rxi)
    w, xi, pw, pxi = circle_rotate(w, xi, pw, pxi, 0.5 * h, radius)
    return circle_bound(w, radius), xi, pw, pxi


def euler_circles(w, xi, grad, h, temperature, radius, noise):
    r"""[`euler`][manifold_langevin.integrators.substeps.euler] on circles with the exact
    rotation (the geodesic from ``(w, xi)`` with initial velocity
    $P(hF + \sqrt{2h\tau}R)$ for unit time).

    Args:
        grad: the gradient of the loss with respect to ``w`` (the force is ``-grad``).
        noise: ``(R_w, R_xi)`` standard normals (``None`` when ``temperature == 0``).

    Returns:
        ``(w, xi)``.
    """
    vw = -h * grad
    if noise is not None:
        s = (2.0 * h * temperature) ** 0.5
        vw, vxi = vw + s * noise[0], s * noise[1]
    else:
        vxi = torch.zeros_like(xi)
    vw, vxi = circle_project(w, xi, vw, vxi)
    w, xi, _, _ = circle_rotate(w, xi, vw, vxi, 1.0, radius)
    return circle_bound(w, radius), xi
