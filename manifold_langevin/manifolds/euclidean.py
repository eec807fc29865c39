"""The unconstrained space ``R^n``: no constraint, SHAKE the identity, the geodesic a line."""

from __future__ import annotations

import torch

from .base import ConstrainedManifold, as_time

__all__ = ["Euclidean"]


class Euclidean(ConstrainedManifold):
    """``R^n`` with no constraint (``m = 0``): SHAKE is the identity and the geodesic a line.

    Useful for unconstrained blocks of a [`Product`][] and as the adapter of
    ``geoopt.Euclidean``.
    """

    name = "Euclidean"
    has_geodesic = True
    constant_gram = True  # no constraint: an empty Gram matrix

    def __init__(self, ndim: int = 1):
        super().__init__(max_iter=1)
        self.ndim = int(ndim)

    def constraint(self, x):
        return x.new_zeros(*x.shape[: x.dim() - self.ndim], 0)

    def jvp(self, x, v):
        return self.constraint(x)

    def vjp(self, x, lam):
        return torch.zeros_like(x)

    def proju(self, x, u):
        return u

    def residual_norm(self, x):
        return x.new_zeros(x.shape[: x.dim() - self.ndim])

    def shake(self, x, x_tilde, *, max_iter=None):
        return x_tilde, torch.ones(
            x.shape[: x.dim() - self.ndim], dtype=torch.bool, device=x.device
        )

    def geodesic(self, x, v, t):
        t = as_time(t, x)
        if isinstance(t, torch.Tensor):
            t = t.reshape(t.shape + (1,) * self.ndim)
        return x + v * t, v

    def projx(self, x):
        return x

    def random(self, *size, dtype=None, device=None, generator=None):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        return torch.randn(*size, dtype=dtype, device=device, generator=generator)
