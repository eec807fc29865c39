r"""The B, A and O sub-steps, written once against the manifold interface.

Every scheme of this package, the samplers and the
[`manifold_langevin.optim`][manifold_langevin.optim] optimizer alike, is a composition of these
three maps (unit mass, Euclidean metric, $P(x)$ the tangent projection of the manifold):

* **B** (kick): $p \leftarrow P(x)\,(p + h F(x))$;
* **A** (constrained drift): the exact geodesic flow where the manifold has one, else
  $K$ RATTLE sub-steps of size $h/K$: SHAKE
  $x' = x + (h/K) p + J(x)^T \lambda$ with $g(x') = 0$, then
  $p' = P(x')\,(x' - x)/(h/K)$ (the manifold's ``rattle`` method, fused for Stiefel);
* **O** (exact Ornstein-Uhlenbeck): $p \leftarrow c_1 p + c_2 P(x) R$, with
  $c_1 = e^{-\gamma h}$, $c_2 = \sqrt{\tau (1 - c_1^2)}$ and $R$ standard normal.

The overdamped schemes add one more map:

* **E** (projected Euler-Maruyama): $x' = x + h F(x) + \sqrt{2 h \tau} R + J(x)^T \lambda$
  with $g(x') = 0$ (SHAKE), or the geodesic from $x$ with initial velocity
  $P(x)(h F + \sqrt{2 h \tau} R)$ for unit time.
"""

from __future__ import annotations

import math

import torch

from ..manifolds.base import ConstrainedManifold
from ..noise import standard_normal

__all__ = [
    "baoa_step",
    "damped_drift",
    "drift",
    "euler",
    "kick",
    "ornstein_uhlenbeck",
    "ou_coefficients",
    "ou_update",
]


def kick(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    p: torch.Tensor,
    force: torch.Tensor,
    h: float,
    *,
    project: bool = True,
) -> torch.Tensor:
    """B: ``p <- P(x) (p + h F)``.

    ``project=False`` leaves the projection out (``p + h F``): for a caller whose next use of
    the momentum sees only its tangent part (a RATTLE step on a manifold that absorbs a normal
    part exactly, see ``rattle_absorbs_normal``). A gradient may be passed as ``force`` with a
    negated ``h``, which saves forming ``-grad``."""
    if project:
        return manifold.proju(x, p + h * force)
    return torch.add(p, force, alpha=h)


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
            ``K`` calls of [`rattle`][manifold_langevin.manifolds.base.ConstrainedManifold.rattle].
        geodesic: use the manifold's closed-form geodesic when it has one.
        scale: factor applied to the returned momentum (a damping folded into the last step).
        scratch: reusable buffers, passed on to ``manifold.rattle``.
        project: ``False`` leaves RATTLE's velocities unprojected (``manifold.rattle``'s
            ``project``; a geodesic's velocity is tangent anyway): only for callers whose next
            use of ``p'`` sees its tangent part alone.

    Returns:
        ``(x', p', ok)`` with ``ok`` a per-chain boolean: every SHAKE solve converged (for a
        geodesic: the result is within the tolerance, see `_on_manifold`). Chains with
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


def damped_drift(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    p: torch.Tensor,
    h: float,
    c1: float,
    **drift_options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A(h/2) O A(h/2)`` with a noiseless O (``p <- c1 p``) as one A step.

    The free flow with velocity ``c1 p`` for time ``t`` equals the flow with velocity ``p`` for
    time ``c1 t`` with the velocity then scaled by ``c1``, so the composition is one flow of time
    ``(1 + c1) h / 2`` followed by the damping: exact for a geodesic flow; with RATTLE one SHAKE
    solve instead of two, the two agreeing to ``O(h^3)`` per step. ``drift_options`` are
    [`drift`][]'s keywords. Returns ``(x', p', ok)`` as [`drift`][] does."""
    return drift(manifold, x, p, 0.5 * (1.0 + c1) * h, scale=c1, **drift_options)


def ou_coefficients(friction: float, temperature: float, h):
    """``(c1, c2) = (exp(-gamma h), sqrt(tau (1 - c1^2)))``; ``friction = inf`` gives ``c1 = 0``.

    ``h`` may be a 0-d tensor (a step size adapted on the device): the coefficients are then
    tensors, computed without reading ``h`` on the host."""
    if isinstance(h, torch.Tensor):
        c1 = torch.exp(-friction * h)  # exp(-inf) = 0 for friction = inf
        return c1, torch.sqrt(temperature * (1.0 - c1 * c1))
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
        return ou_update(p, c1, c2, None)
    return ou_update(p, c1, c2, manifold.random_normal_tangent(x, generator))


def ou_update(p, c1, c2, tangent_normal):
    """The O map given its noise: ``c1 p + c2 R`` with ``R`` a standard normal tangent vector
    (``None``: no noise, ``c1 p``). Numbers may be 0-d tensors (compiled callers); nothing
    branches on their values."""
    if tangent_normal is None:
        return c1 * p
    return c1 * p + c2 * tangent_normal


def baoa_step(
    manifold: ConstrainedManifold,
    x: torch.Tensor,
    p: torch.Tensor,
    force: torch.Tensor,
    kick_h: float,
    h: float,
    c1: float,
    c2: float,
    generator=None,
    *,
    geodesic: bool,
    substeps: int = 1,
    fuse: bool = True,
    scratch: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B(kick_h) A(h/2) O(h) A(h/2)``: a BAOAB step whose closing half kick is carried into
    the next step's B, the optimizer's form (one gradient per step, evaluated by the caller at
    the current point; ``kick_h`` is the pending ``h/2`` plus this step's ``h/2``).

    Where the A steps are RATTLE steps on a manifold that absorbs a normal momentum exactly
    (``rattle_absorbs_normal``), the projections are left out: a RATTLE step depends on the
    momentum only through its tangent part, so B followed by A is the same map without the
    kick's projection, and the momentum RATTLE returns may keep its normal part too (the O step
    is linear and the next step's kick and RATTLE step see only the tangent part). With
    ``fuse`` and ``c2 == 0`` the ``A O A`` part is [`damped_drift`][].

    Args:
        force: the force, or the gradient with a negated ``kick_h`` (see [`kick`][]).
        geodesic: use the manifold's closed-form geodesic (ignored when it has none).
        c1: the O step's damping ``exp(-gamma h)`` for the whole step ``h``
            ([`ou_coefficients`][]).
        c2: the O step's noise scale ``sqrt(tau (1 - c1^2))``.

    Returns:
        ``(x', p', ok)`` as [`drift`][] returns them.
    """
    geodesic = geodesic and manifold.has_geodesic
    lazy = not geodesic and manifold.rattle_absorbs_normal
    p = kick(manifold, x, p, force, kick_h, project=not lazy)
    kw = {"substeps": substeps, "geodesic": geodesic, "scratch": scratch, "project": not lazy}
    if c2 == 0.0 and fuse:
        return damped_drift(manifold, x, p, h, c1, **kw)
    x, p, ok = drift(manifold, x, p, 0.5 * h, **kw)
    p = ornstein_uhlenbeck(manifold, x, p, c1, c2, generator)
    x, p, ok2 = drift(manifold, x, p, 0.5 * h, **kw)
    return x, p, ok & ok2


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
    """E: one projected Euler-Maruyama step; returns ``(x', ok)`` as [`drift`][] does."""
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
