"""Where the integrators' Gaussian noise comes from: a ``torch.Generator`` or a noise source.

Every stochastic sub-step draws its standard normals through [`standard_normal`][], so a step
accepts, in place of a ``torch.Generator``, any *noise source*: a callable ``like -> Tensor`` that
returns i.i.d. ``N(0, 1)`` entries shaped like ``like`` (same dtype and device). That is how two
chains share random numbers: [`CoupledNoise`][] drives a coarse chain (step ``h``) and a fine
chain (step ``h/2``) with the same Brownian increments, so that the *difference* of their averages
has a far smaller variance than either average (the weak-order study relies on it), and
[`NoiseTape`][] records a step's draws so that a retry of some of its points replays exactly
the normals they had (the optimizer's retries with more sub-steps rely on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["CoupledNoise", "NoiseSource", "NoiseTape", "in_layout_of", "standard_normal"]

#: ``like -> Tensor`` of i.i.d. standard normals shaped like ``like``
NoiseSource = Callable[[torch.Tensor], torch.Tensor]


def standard_normal(like: torch.Tensor, generator=None) -> torch.Tensor:
    """I.i.d. ``N(0, 1)`` entries shaped like ``like``.

    Args:
        like: the shape, dtype and device to match.
        generator: a ``torch.Generator`` (``None``: torch's global one) or a noise source.
    """
    if generator is None or isinstance(generator, torch.Generator):
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return in_layout_of(like, z)
    z = generator(like)
    if z.shape != like.shape:
        raise ValueError(
            f"the noise source returned shape {tuple(z.shape)}, not {tuple(like.shape)}"
        )
    return z


def in_layout_of(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t``'s values (``t`` shaped like ``like``) in ``like``'s memory layout where ``like`` is
    not contiguous (the samplers store short points chain-minor on CPU), ``t`` itself elsewhere:
    results that combine the noise or the force with the state then keep one layout, which
    elementwise kernels, eager or compiled, run fastest on. For the noise, the draw itself is the
    contiguous one, so the stream does not depend on the layout."""
    if like.is_contiguous() or t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


class CoupledNoise:
    """Common random numbers for a coarse chain (step ``h``) and a fine chain (step ``h / 2``).

    Per coarse step, advance the fine chain twice with [`fine`][] ``(0)`` and ``(1)``, then the
    coarse chain once with [`coarse`][]. The fine steps draw fresh normals from ``generator`` and
    record them; the coarse step's ``j``-th draw is ``(a_j + b_j) / sqrt(2)`` where ``a_j`` and
    ``b_j`` are the ``j``-th draws of the first and second fine step. Each chain therefore sees
    exactly i.i.d. standard normals (its law is untouched), and for a scheme with one O-step per
    step the coarse noise is the sum of the fine Brownian increments (the synchronous coupling of
    multilevel Monte Carlo).

    Examples:
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


class NoiseTape:
    """A noise source that keeps its draws, so that a retry of some of the points replays
    exactly the normals they had in the first attempt.

    It draws what ``standard_normal(like, generator)`` would, so a step reads the same stream
    through it as straight from the generator.

    Examples:
        >>> tape = NoiseTape(torch.Generator().manual_seed(0))
        >>> z = tape(torch.empty(4, 3))
        >>> torch.equal(tape.replay(torch.tensor([2, 0]), ndim=1)(torch.empty(2, 3)), z[[2, 0]])
        True
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.draws: list[torch.Tensor] = []

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)
        self.draws.append(z)
        return z

    def replay(self, rows: torch.Tensor, ndim: int) -> NoiseSource:
        """A noise source returning the recorded draws at the flat batch indices ``rows`` (of
        points with ``ndim`` event dimensions), in the order they were drawn."""
        draws = iter(self.draws)

        def source(like: torch.Tensor) -> torch.Tensor:
            z = next(draws)
            return z.reshape(-1, *z.shape[z.dim() - ndim :])[rows].reshape(like.shape)

        return source
