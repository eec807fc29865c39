"""The paper's per-weight circle constraint ``w^2 + xi^2 = r^2`` (magnitude control ``|w| <= r``).

Each weight ``w`` gets an auxiliary variable ``xi``; the pair lives on a circle of radius ``r``. A
point of :class:`Circles` is a tensor ``(..., 2)`` holding ``(w, xi)``. The optimizer keeps ``w`` as
the parameter and ``xi`` in its state, so the maths is written once on separate components
(:func:`circle_rotate`, :func:`circle_project`) and the manifold methods call them.
"""

from __future__ import annotations

import torch

from .sphere import Sphere

__all__ = ["Circles", "circle_project", "circle_rotate"]


def circle_project(
    w: torch.Tensor, xi: torch.Tensor, pw: torch.Tensor, pxi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tangent projection of the momentum ``(pw, pxi)`` at ``(w, xi)``, elementwise."""
    coef = (w * pw + xi * pxi) / (w * w + xi * xi)
    return pw - coef * w, pxi - coef * xi


def circle_rotate(
    w: torch.Tensor,
    xi: torch.Tensor,
    pw: torch.Tensor,
    pxi: torch.Tensor,
    t: float | torch.Tensor,
    radius: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Exact constrained free flow on circles for time ``t``, elementwise.

    With angular velocity :math:`\omega = (w p_\xi - \xi p_w) / r^2`, the flow is the rotation by
    :math:`\theta = \omega t` applied to position and momentum alike:
    :math:`(w, \xi) \leftarrow R_\theta (w, \xi)` and
    :math:`(p_w, p_\xi) \leftarrow R_\theta (p_w, p_\xi)`. Both components are rotated from their
    OLD values (the released scripts used the already-rotated ``w`` for ``xi``, which shrinks the
    radius). The position is renormalised onto radius ``r`` so that round-off cannot accumulate.

    Returns:
        ``(w_t, xi_t, pw_t, pxi_t)``.
    """
    r2 = w * w + xi * xi
    theta = (w * pxi - xi * pw) / r2 * t
    cos, sin = torch.cos(theta), torch.sin(theta)
    w_t = cos * w - sin * xi
    xi_t = sin * w + cos * xi
    scale = radius * torch.rsqrt(w_t * w_t + xi_t * xi_t)
    return w_t * scale, xi_t * scale, cos * pw - sin * pxi, sin * pw + cos * pxi


class Circles(Sphere):
    """Independent circles of radius ``r``: points ``(..., 2)`` holding ``(w, xi)`` pairs.

    A :class:`Sphere` in two dimensions whose geodesic is the exact rotation of
    :func:`circle_rotate`. Every leading index is an independent circle, so a weight tensor of any
    shape becomes a batch of circles.

    Args:
        radius: circle radius ``r > 0`` (the bound on ``|w|``).
    """

    name = "Circles"

    def geodesic(self, x, v, t):
        w_t, xi_t, pw_t, pxi_t = circle_rotate(
            x[..., 0], x[..., 1], v[..., 0], v[..., 1], self._time(t, x), self.radius
        )
        return torch.stack([w_t, xi_t], dim=-1), torch.stack([pw_t, pxi_t], dim=-1)

    @staticmethod
    def _time(t, x):
        return torch.as_tensor(t, dtype=x.dtype, device=x.device)

    def proju(self, x, u):
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
        excess = (w.abs() - radius).amax() if w.numel() else torch.zeros(())
        if bool(excess > 0):
            raise ValueError(
                f"weights exceed the circle radius {radius} by up to {float(excess):.3g}; "
                "rescale them to |w| <= radius first"
            )
        return torch.stack([w, torch.sqrt((radius**2 - w * w).clamp_min(0))], dim=-1)
