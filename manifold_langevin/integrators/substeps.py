r"""The B, A and O sub-steps, written once against the manifold interface.

Every scheme of this package, the samplers and the :mod:`manifold_langevin.optim` optimizer alike,
is a composition of these three maps (unit mass, Euclidean metric, :math:`P(x)` the tangent
projection of the manifold):

* **B** (kick): :math:`p \leftarrow P(x)\,(p + h F(x))`;
* **A** (constrained drift): the exact geodesic flow where the manifold has one, else
  :math:`K` RATTLE sub-steps of size :math:`h/K`: SHAKE
  :math:`x' = x + (h/K) p + J(x)^T \lambda` with :math:`g(x') = 0`, then
  :math:`p' = P(x')\,(x' - x)/(h/K)` (the manifold's ``rattle`` method, fused for Stiefel);
* **O** (exact Ornstein-Uhlenbeck): :math:`p \leftarrow c_1 p + c_2 P(x) R`, with
  :math:`c_1 = e^{-\gamma h}`, :math:`c_2 = \sqrt{\tau (1 - c_1^2)}` and :math:`R` standard normal.

The overdamped schemes add one more map:

* **E** (projected Euler-Maruyama): :math:`x' = x + h F(x) + \sqrt{2 h \tau} R + J(x)^T \lambda`
  with :math:`g(x') = 0` (SHAKE), or the geodesic from :math:`x` with initial velocity
  :math:`P(x)(h F + \sqrt{2 h \tau} R)` for unit time.
"""

from __future__ import annotations

import math

import torch

from ..manifolds.base import ConstrainedManifold
from ..noise import standard_normal

__all__ = ["drift", "euler", "kick", "ornstein_uhlenbeck", "ou_coefficients"]


def kick(
    manifold: ConstrainedManifold, x: torch.Tensor, p: torch.Tensor, force: torch.Tensor, h: float
) -> torch.Tensor:
    """B: ``p <- P(x) (p + h F)``."""
    return manifold.proju(x, p + h * force)


def drift(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    p: torch.Tensor,
    h: float,
    *,
    substeps: int = 1,
    geodesic: bool = True,
    scale: float = 1.0,
    scratch: dict | None = None,
    project: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A: move ``(x, p)`` for time ``h`` along the constrained free flow.

    Args:
        manifold: the constraint set.
        x: positions ``(..., *event)``; ``p``: tangent momenta, same shape (with RATTLE, only
            the tangent part of ``p`` matters).
        h: time step.
        substeps: number ``K`` of RATTLE sub-steps when no exact geodesic is used (g-BAOAB):
            ``K`` calls of :meth:`~manifold_langevin.manifolds.base.ConstrainedManifold.rattle`.
        geodesic: use the manifold's closed-form geodesic when it has one.
        scale: factor applied to the returned momentum (a damping folded into the last step).
        scratch: reusable buffers, passed on to ``manifold.rattle``.
        project: ``False`` leaves RATTLE's velocities unprojected (``manifold.rattle``'s
            ``project``; a geodesic's velocity is tangent anyway): only for callers whose next
            use of ``p'`` sees its tangent part alone.

    Returns:
        ``(x', p', ok)`` with ``ok`` a per-chain boolean: every SHAKE solve converged (for a
        geodesic: the result is within the tolerance, see :func:`_on_manifold`). Chains with
        ``ok == False`` hold garbage and must be discarded by the caller.
    """
    if geodesic and manifold.has_geodesic:
        x_new, p_new = manifold.geodesic(x, p, h)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            p_new = scale * p_new
        return x_new, p_new, _on_manifold(manifold, x_new)
    dt = h / substeps
    ok = None
    for k in range(substeps):
        last = k == substeps - 1
        x, p, ok_k = manifold.rattle(
            x, p, dt, scale=scale if last else 1.0, scratch=scratch, project=project
        )
        ok = ok_k if ok is None else ok & ok_k
    return x, p, ok


def ou_coefficients(friction: float, temperature: float, h: float) -> tuple[float, float]:
    """``(c1, c2) = (exp(-gamma h), sqrt(tau (1 - c1^2)))``; ``friction = inf`` gives ``c1 = 0``."""
    c1 = 0.0 if math.isinf(friction) else math.exp(-friction * h)
    return c1, math.sqrt(temperature * (1.0 - c1 * c1))


def ornstein_uhlenbeck(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    p: torch.Tensor,
    c1: float,
    c2: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """O: ``p <- c1 p + c2 P(x) R`` (``p`` already tangent); no noise is drawn if ``c2 == 0``."""
    if c2 == 0.0:
        return c1 * p
    return c1 * p + c2 * manifold.random_normal_tangent(x, generator)


def euler(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    force: torch.Tensor,
    h: float,
    temperature: float,
    generator: torch.Generator | None = None,
    *,
    geodesic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """E: one projected Euler-Maruyama step; returns ``(x', ok)`` as :func:`drift` does."""
    v = h * force
    if temperature > 0:
        v = v + math.sqrt(2.0 * h * temperature) * standard_normal(x, generator)
    v = manifold.proju(x, v)
    if geodesic and manifold.has_geodesic:
        x_new = manifold.geodesic(x, v, 1.0)[0]
        return x_new, _on_manifold(manifold, x_new)
    return manifold.shake(x, x + v)


def _on_manifold(manifold: ConstrainedManifold, x: torch.Tensor) -> torch.Tensor:
    """Per-chain flag: the residual of a closed-form flow's result is within the tolerance.

    A closed form is exact only up to rounding, which grows with the distance travelled: the
    Stiefel geodesic (two matrix exponentials) leaves the manifold by far more than the
    tolerance in float32 once ``|t A|`` is large (a huge step or velocity), and finite garbage
    would otherwise be accepted. Spheres and circles renormalise, so for them this only catches
    NaN/Inf. Costs one residual (one ``N x p x p`` product for Stiefel)."""
    return manifold.residual_norm(x) <= manifold.tolerance(x)
