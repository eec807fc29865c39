"""The paper's per-weight circle constraint ``w^2 + xi^2 = r^2`` (magnitude control ``|w| <= r``).

Each weight ``w`` gets an auxiliary variable ``xi``; the pair lives on a circle of radius ``r``. A
point of [`Circles`][] is a tensor ``(..., 2)`` holding ``(w, xi)``. The optimizer keeps ``w`` as
the parameter and ``xi`` in its state, so the closed forms are written once on separate components
([`circle_rotate`][], [`circle_project`][]), the manifold methods call them, and so do the
integrators' component forms (``manifold_langevin.integrators.circle_substeps``).
"""

from __future__ import annotations

import torch

from .._checks import check_positive
from ..noise import standard_normal
from .base import as_time
from .elementary import cos_sin
from .sphere import Sphere

__all__ = [
    "Circles",
    "circle_angular_velocity",
    "circle_momentum",
    "circle_project",
    "circle_rotate",
    "circle_tangent_normal",
]


def circle_project(
    w: torch.Tensor, xi: torch.Tensor, pw: torch.Tensor, pxi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tangent projection of the momentum ``(pw, pxi)`` at ``(w, xi)``, elementwise."""
    coef = (w * pw + xi * pxi) / (w * w + xi * xi)
    return pw - coef * w, pxi - coef * xi


def circle_angular_velocity(
    w: torch.Tensor, xi: torch.Tensor, pw: torch.Tensor, pxi: torch.Tensor
) -> torch.Tensor:
    r"""The angular velocity $\omega = (w\,p_\xi - \xi\,p_w) / (w^2 + \xi^2)$ of the momentum
    ``(pw, pxi)`` at ``(w, xi)``: its tangent part is $\omega\,(-\xi, w)$
    ([`circle_momentum`][]), elementwise."""
    return (w * pxi - xi * pw) / (w * w + xi * xi)


def circle_momentum(
    w: torch.Tensor, xi: torch.Tensor, omega: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The tangent momentum $\omega\,(-\xi, w)$ of angular velocity ``omega`` at ``(w, xi)``
    (the inverse of [`circle_angular_velocity`][] on tangent momenta), elementwise."""
    return -omega * xi, omega * w


def circle_tangent_normal(
    w: torch.Tensor, xi: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A standard normal tangent vector at ``(w, xi)`` from one normal ``z`` per circle.

    The tangent space of a circle is the line through the unit tangent
    $u = (-\xi, w) / \sqrt{w^2 + \xi^2}$, and the projection of a standard normal
    $R \in \mathbb{R}^2$ onto it is $(u \cdot R)\,u$ with $u \cdot R \sim N(0, 1)$: the same
    law as $z\,u$ for a single standard normal $z$, drawn at half the cost.

    Returns:
        ``(z u_w, z u_xi)``.
    """
    s = z * torch.rsqrt(w * w + xi * xi)
    return torch.mul(s, xi).neg_(), s * w


def circle_rotate(
    w: torch.Tensor,
    xi: torch.Tensor,
    pw: torch.Tensor,
    pxi: torch.Tensor,
    t: float | torch.Tensor,
    radius: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Exact constrained free flow on circles for time ``t``, elementwise.

    With angular velocity $\omega = (w p_\xi - \xi p_w) / r^2$, the flow is the rotation by
    $\theta = \omega t$ applied to position and momentum alike:
    $(w, \xi) \leftarrow R_\theta (w, \xi)$ and
    $(p_w, p_\xi) \leftarrow R_\theta (p_w, p_\xi)$. Both components are rotated from their
    OLD values (the released scripts used the already-rotated ``w`` for ``xi``, which shrinks the
    radius). The position is renormalised onto radius ``r`` so that round-off cannot accumulate.

    Returns:
        ``(w_t, xi_t, pw_t, pxi_t)``.
    """
    r2 = w * w + xi * xi
    theta = (w * pxi - xi * pw) / r2 * t
    cos, sin = cos_sin(theta)
    w_t = cos * w - sin * xi
    xi_t = sin * w + cos * xi
    scale = radius * torch.rsqrt(w_t * w_t + xi_t * xi_t)
    return w_t * scale, xi_t * scale, cos * pw - sin * pxi, sin * pw + cos * pxi


class Circles(Sphere):
    """Independent circles of radius ``r``: points ``(..., 2)`` holding ``(w, xi)`` pairs.

    A [`Sphere`][] in two dimensions whose geodesic is the exact rotation of
    [`circle_rotate`][]. Every leading index is an independent circle, so a weight tensor of any
    shape becomes a batch of circles.

    Args:
        radius: circle radius ``r > 0`` (the bound on ``|w|``).
    """

    name = "Circles"

    def _pairs(self, x: torch.Tensor) -> None:
        # a Sphere's formulas run on any last dimension: without this a (..., 3) tensor would be
        # silently treated as 2-spheres (or cut to its first two columns)
        if x.dim() < 1 or x.shape[-1] != 2:
            raise ValueError(
                f"Circles points have a last dimension of size 2 (w, xi), got {tuple(x.shape)}"
            )

    def residual_norm(self, x):
        self._pairs(x)
        return super().residual_norm(x)

    def shake(self, x, x_tilde, *, max_iter=None):
        self._pairs(x)
        return super().shake(x, x_tilde, max_iter=max_iter)

    def projx(self, x):
        self._pairs(x)
        return super().projx(x)

    def random(self, *size, dtype=None, device=None, generator=None):
        """Uniform points of shape ``size`` (last dimension 2)."""
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        if not size or size[-1] != 2:
            raise ValueError(f"Circles points have a last dimension of size 2, got size {size}")
        return super().random(*size, dtype=dtype, device=device, generator=generator)

    def geodesic(self, x, v, t):
        self._pairs(x)
        w_t, xi_t, pw_t, pxi_t = circle_rotate(
            x[..., 0], x[..., 1], v[..., 0], v[..., 1], as_time(t, x), self.radius
        )
        return torch.stack([w_t, xi_t], dim=-1), torch.stack([pw_t, pxi_t], dim=-1)

    def random_normal_tangent(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """A standard Gaussian on the tangent space at ``x`` from one normal per circle
        ([`circle_tangent_normal`][]; the law of the projected ambient normal at half the draws).

        ``generator`` is a ``torch.Generator`` or a noise source
        ([`manifold_langevin.noise`][manifold_langevin.noise]); the normals are drawn with the
        shape ``x.shape[:-1]``.
        """
        self._pairs(x)
        w, xi = x[..., 0], x[..., 1]
        uw, uxi = circle_tangent_normal(w, xi, standard_normal(w, generator))
        return torch.stack([uw, uxi], dim=-1)

    def proju(self, x, u):
        self._pairs(x)
        pw, pxi = circle_project(x[..., 0], x[..., 1], u[..., 0], u[..., 1])
        return torch.stack([pw, pxi], dim=-1)

    def _check_shape(self, shape, name):
        if len(shape) < 1 or shape[-1] != 2:
            return False, f"{name} must have a last dimension of size 2 (w, xi), got {tuple(shape)}"
        return True, None

    @staticmethod
    def from_weights(w: torch.Tensor, radius: float) -> torch.Tensor:
        """Lift weights with ``|w| <= r`` to circle points ``(w, sqrt(r^2 - w^2))``.

        Raises:
            ValueError: if some ``|w| > r`` (clip or rescale the weights first).
        """
        radius = check_positive("radius", radius)
        if not w.is_floating_point():
            raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
        excess = (w.abs() - radius).amax() if w.numel() else torch.zeros(())
        if not bool(excess <= 0):  # NaN included
            raise ValueError(
                f"weights exceed the circle radius {radius} by up to {float(excess):.3g} (or are "
                "NaN); rescale them to |w| <= radius first"
            )
        return torch.stack([w, torch.sqrt((radius**2 - w * w).clamp_min(0))], dim=-1)
