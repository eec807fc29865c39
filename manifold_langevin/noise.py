"""Where the integrators' Gaussian noise comes from: a ``torch.Generator`` or a noise source.

Every stochastic sub-step draws its standard normals through :func:`standard_normal`, so a step
accepts, in place of a ``torch.Generator``, any *noise source*: a callable ``like -> Tensor`` that
returns i.i.d. ``N(0, 1)`` entries shaped like ``like`` (same dtype and device). That is how two
chains share random numbers: :class:`CoupledNoise` drives a coarse chain (step ``h``) and a fine
chain (step ``h/2``) with the same Brownian increments, so that the *difference* of their averages
has a far smaller variance than either average (the weak-order study relies on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["CoupledNoise", "NoiseSource", "standard_normal"]

#: ``like -> Tensor`` of i.i.d. standard normals shaped like ``like``
NoiseSource = Callable[[torch.Tensor], torch.Tensor]


def standard_normal(like: torch.Tensor, generator=None) -> torch.Tensor:
    """I.i.d. ``N(0, 1)`` entries shaped like ``like``.

    Args:
        like: the shape, dtype and device to match.
        generator: a ``torch.Generator`` (``None``: torch's global one) or a noise source.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    z = generator(like)
    if z.shape != like.shape:
        raise ValueError(
            f"the noise source returned shape {tuple(z.shape)}, not {tuple(like.shape)}"
        )
    return z


class CoupledNoise:
    """Common random numbers for a coarse chain (step ``h``) and a fine chain (step ``h / 2``).

    Per coarse step, advance the fine chain twice with :meth:`fine` ``(0)`` and ``(1)``, then the
    coarse chain once with :meth:`coarse`. The fine steps draw fresh normals from ``generator`` and
    record them; the coarse step's ``j``-th draw is ``(a_j + b_j) / sqrt(2)`` where ``a_j`` and
    ``b_j`` are the ``j``-th draws of the first and second fine step. Each chain therefore sees
    exactly i.i.d. standard normals (its law is untouched), and for a scheme with one O-step per
    step the coarse noise is the sum of the fine Brownian increments (the synchronous coupling of
    multilevel Monte Carlo).

    Example:
        >>> import torch, manifold_langevin as ml
        >>> noise = CoupledNoise(torch.Generator().manual_seed(0))
        >>> a, b = noise.fine(0)(torch.empty(3)), noise.fine(1)(torch.empty(3))
        >>> torch.allclose(noise.coarse()(torch.empty(3)), (a + b) / 2**0.5)
        True
    """

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator
        self._draws: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    def fine(self, k: int) -> NoiseSource:
        """The noise source of the ``k``-th (0 or 1) fine step of this coarse step."""
        if k not in (0, 1):
            raise ValueError(f"a coarse step holds fine steps 0 and 1, got {k!r}")
        record = self._draws[k]
        record.clear()

        def draw(like: torch.Tensor) -> torch.Tensor:
            z = standard_normal(like, self.generator)
            record.append(z)
            return z

        return draw

    def coarse(self) -> NoiseSource:
        """The noise source of the coarse step (after both fine steps)."""
        first, second = self._draws
        if len(first) != len(second):
            raise RuntimeError(
                f"the fine steps drew {len(first)} and {len(second)} tensors; they must match"
            )
        pairs = iter(list(zip(first, second)))
        scale = 1.0 / math.sqrt(2.0)

        def draw(like: torch.Tensor) -> torch.Tensor:
            try:
                a, b = next(pairs)
            except StopIteration:
                msg = "the coarse step drew more tensors than the fine steps"
                raise RuntimeError(msg) from None
            if a.shape != like.shape:
                raise ValueError(f"coarse draw shaped {tuple(like.shape)}, fine {tuple(a.shape)}")
            return (a + b) * scale

        return draw
