r"""The B, A, O and E maps on circles, written on separate ``(w, xi)`` components.

The same maps as [`substeps`][manifold_langevin.integrators.substeps] applied to
[`Circles`][manifold_langevin.Circles] points ``(w, xi)`` of radius $r$, for callers that hold
``w`` and ``xi`` in separate tensors: the optimizer keeps ``w`` as the parameter and ``xi`` in its
state, so stacking them into ``(..., 2)`` points would cost a copy of both per step. The loss
does not depend on ``xi``: the force is ``(-grad, 0)``, and these maps take the gradient.

A tangent momentum of a circle is $\omega\,(-\xi, w)$: one number per circle, its angular
velocity $\omega$
([`circle_angular_velocity`][manifold_langevin.manifolds.circles.circle_angular_velocity] and
[`circle_momentum`][manifold_langevin.manifolds.circles.circle_momentum] convert). The
underdamped maps here carry $\omega$ instead of the two momentum components: a kick changes it
by the tangent part of the force, a free flow rotates $(w, \xi)$ by $\omega t$ and leaves it
unchanged, and the O step acts on it alone. That is what makes CoLA's eager circle step 14
elementwise passes over memory (the two components took 23).

Every function is elementwise and branches on no number's value (the one test of values a step
may make is its caller's: ``hold`` may be a function of the angles, see
[`baoa_step_circles`][]), so the numbers may be 0-d tensors (as they are under
``torch.compile``, where Python numbers would either recompile for every new value or be baked
into the kernel); with Python numbers the eager path uses the fused ``addcmul`` forms.
"""

from __future__ import annotations

import torch

from ..manifolds.circles import circle_project, circle_rotate
from ..manifolds.elementary import cos_sin

__all__ = [
    "baoa_step_circles",
    "circle_bound",
    "circle_kick",
    "circle_turn",
    "euler_circles",
    "hold_nonfinite",
]


def _fma(y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value, inplace: bool):
    """``y + value * a * b`` (into ``y`` when ``inplace``): one ``addcmul`` pass for a Python
    ``value``; a 0-d tensor ``value`` (under ``torch.compile``) takes tensor arithmetic."""
    if isinstance(value, torch.Tensor):
        term = a * b * value
        return y.add_(term) if inplace else y + term
    if inplace:
        return y.addcmul_(a, b, value=value)
    return torch.addcmul(y, a, b, value=value)


def _scale(x: torch.Tensor, value, inplace: bool) -> torch.Tensor:
    """``value * x`` (into ``x`` when ``inplace``)."""
    return x.mul_(value) if inplace else x * value


def _add(y: torch.Tensor, x: torch.Tensor, value, inplace: bool) -> torch.Tensor:
    """``y + value * x`` (into ``y`` when ``inplace``)."""
    if isinstance(value, torch.Tensor):
        term = x * value
        return y.add_(term) if inplace else y + term
    return y.add_(x, alpha=value) if inplace else torch.add(y, x, alpha=value)


def circle_kick(
    omega: torch.Tensor,
    xi: torch.Tensor,
    grad: torch.Tensor,
    kick,
    radius,
    inplace: bool = False,
) -> torch.Tensor:
    r"""B on angular velocities: the tangent part of a kick by the force ``-grad`` for time
    ``kick``, $\omega \leftarrow \omega + \kappa\,\xi\,\partial_w L / r^2$ (the force
    $(-\partial_w L, 0)$ along the unit tangent $(-\xi, w)/r$).

    Args:
        omega: angular velocities.
        xi: auxiliary variables (on the circle of radius ``radius`` with their weights).
        grad: the gradient of the loss with respect to ``w``.
        kick: the kick time $\kappa$.
        radius: circle radius $r$.
        inplace: write into ``omega``.
    """
    return _fma(omega, grad, xi, kick / (radius * radius), inplace)


def hold_nonfinite(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rotation angles with their NaN/Inf entries set to 0, and the 0/1 indicator of those
    entries (``1`` where held; ``theta``'s storage is reused for it).

    The sync-free mode's selection written in float arithmetic: comparisons, boolean masks and
    ``torch.where`` are several times slower than an ``add`` on CPU, while ``nan_to_num`` and
    ``sub`` are not. ``theta - nan_to_num(theta)`` is exactly 0 where ``theta`` is finite and
    NaN/Inf elsewhere. A turn by a held angle of 0 with the renormalisation factor taken as 1
    (``held`` in [`circle_turn`][]) returns the point exactly as it was.
    """
    clean = torch.nan_to_num(theta, nan=0.0, posinf=0.0, neginf=0.0)
    held = theta.sub_(clean).nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0)
    return clean, held


def _held(theta: torch.Tensor, hold) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(angles, indicator)`` for [`baoa_step_circles`][]'s ``hold``: those of
    [`hold_nonfinite`][] when ``hold`` is ``True`` or a function of the angles that answers
    ``True``; else the angles as they are and ``None``."""
    if hold is True or (callable(hold) and hold(theta)):
        return hold_nonfinite(theta)
    return theta, None


def _zero_held(omega: torch.Tensor, held: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``omega`` with its held entries set to 0 (they may be NaN, Inf or finite)."""
    omega = omega.nan_to_num_(0.0, 0.0, 0.0) if inplace else torch.nan_to_num(omega, 0.0, 0.0, 0.0)
    return omega.addcmul_(held, omega, value=-1.0)


def circle_turn(
    w: torch.Tensor,
    xi: torch.Tensor,
    theta: torch.Tensor,
    radius,
    inplace: bool = False,
    exact: bool = False,
    held: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rotate every ``(w, xi)`` by its angle ``theta``, onto radius ``r``.

    $(w, \xi) \leftarrow k\,R_\theta (w, \xi)$: both components rotated from their OLD
    values (the released scripts used the already-rotated ``w`` for ``xi``, which shrinks the
    radius), and the rounding of the earlier steps taken off the radius, so that it cannot
    accumulate. The factor is one Newton step for $r / |x|$ from 1,
    $k = \tfrac{3}{2} - \tfrac{1}{2} q$ with $q = (w^2 + \xi^2) / r^2 = 1 + \delta$: the radius
    after the step is off by $\tfrac{3}{8}\delta^2$ plus the rotation's own rounding, which is
    exact to rounding for the points the steps produce ($|\delta|$ of a few ulps) at two passes
    fewer than ``rsqrt``, and brings a point off its circle back quadratically for
    $|\delta| \le 1$ (any ``|w|, |xi| <= r``). A change of ``r`` is not a small $\delta$:
    ``exact`` takes $k = r / |x|$ itself (CoLA does at the first step after a group's radius
    changed).

    Args:
        w: weights.
        xi: auxiliary variables.
        theta: rotation angles; with ``inplace`` a temporary of the caller's, whose storage is
            reused.
        radius: circle radius $r$.
        inplace: write ``xi_t`` into ``xi`` (``w_t`` is always a new tensor: the caller writes
            it with the bound, [`circle_bound`][]).
        exact: the factor ``r / |x|`` exactly (``rsqrt``) instead of its Newton step.
        held: the 0/1 indicator of [`hold_nonfinite`][]: where 1 (the angle is 0 there) the
            factor is taken as exactly 1, so that the point comes back exactly as it was
            (``torch.lerp(k, 1, held)`` is exactly ``k`` where ``held`` is 0 and exactly 1 where
            it is 1: one pass).

    Returns:
        ``(w_t, xi_t)``.
    """
    inv_r2 = 1.0 / (radius * radius)
    if inplace and not isinstance(radius, torch.Tensor):
        cos, sin = cos_sin(theta, sin_out=theta)
        # r / |x| from the point before the rotation (a rotation keeps the norm)
        if exact:
            k = torch.mul(w, w).addcmul_(xi, xi).mul_(inv_r2).rsqrt_()
        else:
            k = torch.addcmul(w.new_full((), 1.5), w, w, value=-0.5 * inv_r2)
            k = k.addcmul_(xi, xi, value=-0.5 * inv_r2)
        if held is not None:
            k.lerp_(k.new_ones(()), held)
        cos.mul_(k)
        sin.mul_(k)
        w_t = torch.mul(cos, w).addcmul_(sin, xi, value=-1.0)
        return w_t, xi.mul_(cos).addcmul_(sin, w)
    cos, sin = cos_sin(theta)
    q = (w * w + xi * xi) * inv_r2
    k = torch.rsqrt(q) if exact else 1.5 - 0.5 * q
    if held is not None:
        k = torch.lerp(k, k.new_ones(()), held)
    cos, sin = cos * k, sin * k
    return cos * w - sin * xi, sin * w + cos * xi


def circle_bound(w: torch.Tensor, radius, out: torch.Tensor | None = None) -> torch.Tensor:
    """``|w| <= r`` exactly (into ``out`` when given): the renormalised rotation can overshoot
    ``r`` by an ulp near ``xi = 0``."""
    if out is not None and not isinstance(radius, torch.Tensor):
        return torch.clamp(w, -radius, radius, out=out)
    return torch.clamp(w, -radius, radius)


def baoa_step_circles(
    w,
    xi,
    omega,
    grad,
    kick_h,
    h,
    c1,
    c2,
    radius,
    noise,
    fuse,
    inplace=False,
    exact=False,
    hold=False,
):
    r"""[`baoa_step`][manifold_langevin.integrators.substeps.baoa_step] on circles:
    ``B(kick_h) A(h/2) O(h) A(h/2)`` with exact rotations, on angular velocities.

    The O step changes only the angular velocity: the normal tangent vector $z\,u$ of
    [`circle_tangent_normal`][manifold_langevin.manifolds.circles.circle_tangent_normal]
    ($|u| = 1$, $|(-\xi, w)| = r$) has angular velocity $z / r$, so
    $\omega \to \omega' = c_1 \omega + (c_2 / r) z$. Rotations of one circle compose, so
    ``A(h/2) O A(h/2)`` is one rotation by $\theta = \tfrac{h}{2}(\omega + \omega')$ ending
    with angular velocity $\omega'$, exact at any temperature; with ``fuse`` it is evaluated
    that way (one cosine and sine per weight instead of two).

    Args:
        w: weights.
        xi: auxiliary variables.
        omega: angular velocities (the momentum is $\omega\,(-\xi, w)$).
        grad: the gradient of the loss with respect to ``w`` (the force is ``-grad``).
        kick_h: kick time.
        h: step.
        c1: the O step's damping.
        c2: the O step's noise scale.
        radius: circle radius.
        noise: one standard normal per weight for the O step, shaped like ``w`` (``None`` when
            ``c2 == 0``).
        fuse: take ``A O A`` as one rotation (above).
        inplace: write the results into ``(w, xi, omega)`` (CoLA's eager path: the same map,
            equal to rounding, in fewer passes over memory).
        exact: renormalise onto the radius exactly (see [`circle_turn`][]): for points that are
            not on the circle of ``radius`` to rounding, as after a change of the radius.
        hold: the sync-free mode's rejection: an entry whose rotation angle is not finite
            keeps its point exactly and gets zero angular velocity
            ([`hold_nonfinite`][]). With the state and the noise finite, the angle is finite
            exactly where the whole update is: a NaN/Inf gradient makes the kicked angular
            velocity, and so the angle, NaN/Inf; a finite angle has a finite cosine and sine,
            and a finite kicked angular velocity (the angle is a positive multiple of it plus
            noise; with ``fuse=False`` the second angle is within the noise of the first), so
            the new point and angular velocity are finite. Every other entry gets exactly the
            numbers of ``hold=False``. Or a function of the angles that says whether to hold
            (a caller that can read values for free, CoLA on CPU, passes a test of their sum):
            where it answers ``False`` no entry is held, and the indicator is ``None``.

    Returns:
        ``(w, xi, omega)``; with ``hold`` (``True`` or a function) also the 0/1 indicator of
        the held entries (``None`` where the function answered ``False``).
    """
    omega = circle_kick(omega, xi, grad, kick_h, radius, inplace)
    b = None if noise is None else c2 / radius
    if fuse:
        # one rotation by theta = h/2 (omega + omega'), omega' = c1 omega + b z
        theta = omega * (0.5 * (1.0 + c1) * h)
        if noise is not None:
            theta = _add(theta, noise, 0.5 * h * b, True)  # theta is ours to overwrite
        theta, held = _held(theta, hold)
        w_t, xi = circle_turn(w, xi, theta, radius, inplace, exact, held)
        omega = _scale(omega, c1, inplace)
        if noise is not None:
            omega = _add(omega, noise, b, inplace)
        if held is not None:
            omega = _zero_held(omega, held, inplace)
    else:
        theta = omega * (0.5 * h)
        theta, held = _held(theta, hold)
        w_t, xi = circle_turn(w, xi, theta, radius, inplace, exact, held)
        omega = _scale(omega, c1, inplace)
        if noise is not None:
            omega = _add(omega, noise, b, inplace)
        if held is not None:
            omega = _zero_held(omega, held, inplace)
        w_t, xi = circle_turn(w_t, xi, omega * (0.5 * h), radius, inplace, held=held)
    w_t = circle_bound(w_t, radius, out=w if inplace else None)
    return (w_t, xi, omega, held) if hold else (w_t, xi, omega)


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
