"""The B, A, O and E maps in Euclidean space, in place on lists of tensors.

The same maps as [`substeps`][manifold_langevin.integrators.substeps] on
[`Euclidean`][manifold_langevin.Euclidean] (no constraint: the projection is the identity and
the A step a straight line), written with ``torch._foreach_*`` operations that update many
tensors of different shapes in a few kernel launches: the optimizer's path for unconstrained
parameters (biases, unconstrained layers), where the generic maps would cost one launch per
tensor and per operation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["baoa_step_euclidean_", "euler_euclidean_"]


def _normals(tensors: list[torch.Tensor], generator) -> list[torch.Tensor]:
    return [
        torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device) for t in tensors
    ]


def baoa_step_euclidean_(xs, ps, grads, kick_h, h, c1, c2, generator, fuse) -> None:
    """[`baoa_step`][manifold_langevin.integrators.substeps.baoa_step] with ``P = I``, in place:
    ``p += -kick_h grad``, then ``A(h/2) O(h) A(h/2)`` (with ``fuse`` and ``c2 == 0``, one
    straight move of time ``(1 + c1) h / 2`` and the damping).

    Args:
        xs: positions (a list of tensors, updated in place).
        ps: momenta (updated in place).
        grads: loss gradients.
        kick_h: kick time.
        h: step.
        c1: the O step's damping for the whole step.
        c2: the O step's noise scale.
        fuse: with ``c2 == 0``, one move for ``A O A``.
        generator: the noise generator (unused when ``c2 == 0``).
    """
    torch._foreach_add_(ps, grads, alpha=-kick_h)
    if c2 == 0.0 and fuse:
        torch._foreach_add_(xs, ps, alpha=0.5 * (1.0 + c1) * h)
        torch._foreach_mul_(ps, c1)
        return
    torch._foreach_add_(xs, ps, alpha=0.5 * h)
    torch._foreach_mul_(ps, c1)
    if c2 != 0.0:  # as the generic O step, draw no noise that would be scaled by zero
        torch._foreach_add_(ps, _normals(ps, generator), alpha=c2)
    torch._foreach_add_(xs, ps, alpha=0.5 * h)


def euler_euclidean_(xs, grads, h, temperature, generator) -> None:
    """[`euler`][manifold_langevin.integrators.substeps.euler] with ``P = I``, in place
    (stochastic gradient Langevin dynamics): ``x += -h grad + sqrt(2 h tau) R``."""
    torch._foreach_add_(xs, grads, alpha=-h)
    if temperature > 0:
        torch._foreach_add_(xs, _normals(xs, generator), alpha=math.sqrt(2.0 * h * temperature))
