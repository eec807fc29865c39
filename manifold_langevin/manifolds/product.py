"""Cartesian products of vector manifolds, each factor keeping its own closed forms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .adapters import as_manifold
from .base import ConstrainedManifold

__all__ = ["Product"]


class Product(ConstrainedManifold):
    """Cartesian product of vector manifolds, points concatenated on the last dimension.

    Each factor keeps its own closed forms: constraint residuals are concatenated, projections,
    SHAKE solves and geodesics act block by block (the blocks share no variables), and a chain has
    converged when every block has.

    Args:
        manifolds: the factors (each with one event dimension).
        dims: ambient dimension of each factor.

    Examples:
        >>> from manifold_langevin.manifolds import Sphere
        >>> torus = Product([Sphere(), Sphere()], dims=[2, 2])  # flat torus in R^4
        >>> torus.random(5, 4).shape
        torch.Size([5, 4])
    """

    name = "Product"

    def __init__(self, manifolds: Sequence[ConstrainedManifold], dims: Sequence[int]):
        super().__init__(max_iter=1)
        factors = [as_manifold(m) for m in manifolds]
        if len(factors) != len(dims) or not factors:
            raise ValueError("give one ambient dimension per factor (and at least one factor)")
        for m in factors:
            if m.ndim != 1:
                raise ValueError(
                    f"Product takes vector manifolds (ndim=1); {m!r} has ndim={m.ndim}"
                )
        self.factors = torch.nn.ModuleList(factors)
        self.dims = [int(d) for d in dims]
        self.has_geodesic = all(m.has_geodesic for m in factors)
        self.cheap_geodesic = all(m.cheap_geodesic for m in factors)
        self.constant_gram = all(m.constant_gram for m in factors)

    def _split(self, x):
        if x.shape[-1] != sum(self.dims):
            raise ValueError(
                f"Product expects a last dimension of {sum(self.dims)}, got {x.shape[-1]}"
            )
        return torch.split(x, self.dims, dim=-1)

    def _map(self, fn, *tensors):
        parts = zip(self.factors, *(self._split(t) for t in tensors))
        return [fn(m, *args) for m, *args in parts]

    def constraint(self, x):
        return torch.cat(self._map(lambda m, a: m.constraint(a), x), dim=-1)

    def jvp(self, x, v):
        return torch.cat(self._map(lambda m, a, b: m.jvp(a, b), x, v), dim=-1)

    def vjp(self, x, lam):
        sizes = [m.constraint(a).shape[-1] for m, a in zip(self.factors, self._split(x))]
        lams = torch.split(lam, sizes, dim=-1)
        parts = [m.vjp(a, lm) for m, a, lm in zip(self.factors, self._split(x), lams)]
        return torch.cat(parts, dim=-1)

    def proju(self, x, u):
        return torch.cat(self._map(lambda m, a, b: m.proju(a, b), x, u), dim=-1)

    def log_det_gram(self, x):
        # the factors share no variables: J is block diagonal
        return torch.stack(self._map(lambda m, a: m.log_det_gram(a), x), dim=-1).sum(dim=-1)

    def gram_rank_deficiency(self, x):
        parts = self._map(lambda m, a: m.gram_rank_deficiency(a), x)
        return torch.stack(parts, dim=-1).any(dim=-1)

    def residual_norm(self, x):
        parts = self._map(lambda m, a: m.residual_norm(a), x)
        return torch.stack(parts, dim=-1).amax(dim=-1)

    def tolerance(self, x):
        return max(m.tolerance(a) for m, a in zip(self.factors, self._split(x)))

    def shake(self, x, x_tilde, *, max_iter=None):
        parts = self._map(lambda m, a, b: m.shake(a, b, max_iter=max_iter), x, x_tilde)
        x_new = torch.cat([p[0] for p in parts], dim=-1)
        ok = torch.stack([p[1] for p in parts], dim=-1).all(dim=-1)
        return x_new, ok

    def geodesic(self, x, v, t):
        parts = self._map(lambda m, a, b: m.geodesic(a, b, t), x, v)
        return torch.cat([p[0] for p in parts], dim=-1), torch.cat([p[1] for p in parts], dim=-1)

    def projx(self, x):
        return torch.cat(self._map(lambda m, a: m.projx(a), x), dim=-1)

    def random(self, *size, dtype=None, device=None, generator=None):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        batch = tuple(size[:-1])
        parts = [
            m.random(*batch, d, dtype=dtype, device=device, generator=generator)
            for m, d in zip(self.factors, self.dims)
        ]
        return torch.cat(parts, dim=-1)
