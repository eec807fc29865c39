"""Spheres ``|x| = r`` on the last dimension, with closed-form SHAKE and exact rotation."""

from __future__ import annotations

import torch

from .._checks import check_positive
from .base import ConstrainedManifold, as_time, default_tolerance
from .elementary import cos_sin, sine_ratio
from .small_systems import row_sum

__all__ = ["Sphere"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return row_sum(a * b, keepdim=True)


class Sphere(ConstrainedManifold):
    r"""The sphere $S^{n-1}_r = \{x \in \mathbb{R}^n : |x| = r\}$, rows on the last dim.

    Constraint ``g(x) = (|x|^2 - r^2) / 2`` so that ``J(x) = x^T``. Its pieces are closed forms:

    * tangent projection ``v - x (x.v) / |x|^2``;
    * SHAKE ``x' = x~ + lam x`` with ``lam`` the root of smallest magnitude of
      ``|x|^2 lam^2 + 2 (x.x~) lam + |x~|^2 - r^2 = 0``; no root (negative discriminant) means the
      tangential displacement is too large for the curvature, and the chain is flagged;
    * geodesic (great-circle rotation) with angular speed ``w = |v| / r``:
      ``x(t) = x cos(wt) + v sin(wt) / w``, ``v(t) = -x w sin(wt) + v cos(wt)``.

    Every closed form uses the actual ``|x|`` rather than assuming ``|x| = r``, and the rotation is
    renormalised onto radius ``r``, so float32 round-off does not accumulate over long runs.

    Args:
        radius: sphere radius ``r > 0``.

    Examples:
        >>> s = Sphere(radius=2.0)
        >>> x = s.random(4, 3, generator=torch.Generator().manual_seed(0))
        >>> bool((x.norm(dim=-1) - 2.0).abs().max() < 1e-6)
        True
    """

    ndim = 1
    name = "Sphere"
    has_geodesic = True
    flags_nonfinite = True  # shake's flag tests the discriminant and the result's finiteness
    constant_gram = True  # J J^T = |x|^2 = r^2 on the set

    def __init__(self, radius: float = 1.0, *, tol: float | None = None):
        super().__init__(tol=tol, max_iter=1)
        self.radius = check_positive("radius", radius)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"

    def constraint(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (_dot(x, x) - self.radius**2)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-2)

    def jvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _dot(x, v)

    def vjp(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return lam * x

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u - x * (_dot(x, u) / _dot(x, x))

    def residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Relative violation ``| |x|^2 - r^2 | / r^2`` per chain."""
        return (row_sum(x * x) - self.radius**2).abs() / self.radius**2

    def tolerance(self, x: torch.Tensor) -> float:
        return self.tol if self.tol is not None else default_tolerance(x.dtype, x.shape[-1])

    def shake(self, x, x_tilde, *, max_iter=None):
        a = _dot(x, x)
        b = _dot(x, x_tilde)
        c = _dot(x_tilde, x_tilde) - self.radius**2
        disc = b * b - a * c
        root = torch.sqrt(disc.clamp_min(0))
        # the root nearest zero, written to avoid cancellation: lam = -c / (b + sign(b) sqrt(disc))
        sign = torch.where(b >= 0, torch.ones_like(b), -torch.ones_like(b))
        lam = -c / (b + sign * root)
        x_new = x_tilde + lam * x
        ok = (disc >= 0) & torch.isfinite(x_new).all(dim=-1, keepdim=True)
        return x_new, ok.squeeze(-1)

    def geodesic(self, x, v, t):
        t = as_time(t, x)
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            t = t.unsqueeze(-1)
        r = torch.sqrt(_dot(x, x))
        speed = torch.sqrt(_dot(v, v))
        omega = speed / r
        angle = omega * t
        cos, sin = cos_sin(angle)
        # sin(wt) / w = t sin(wt) / (wt), finite as w -> 0
        sin_over_omega = t * sine_ratio(sin, angle)
        x_t = x * cos + v * sin_over_omega
        v_t = v * cos - x * (omega * sin)
        x_t = x_t * (self.radius / torch.sqrt(_dot(x_t, x_t)))
        return x_t, v_t

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.radius / x.norm(dim=-1, keepdim=True))

    def random(self, *size, dtype=None, device=None, generator=None) -> torch.Tensor:
        """Uniform points (normalised Gaussians) of shape ``size``."""
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        z = torch.randn(*size, dtype=dtype, device=device, generator=generator)
        return self.projx(z)
