"""A CoLA step for one bucket of parameters: the integrators' maps applied to parameter tensors.

Nothing here writes an update formula: a bucket of constrained matrices or vectors goes through
[`baoa_step`][manifold_langevin.integrators.substeps.baoa_step] or
[`euler`][manifold_langevin.integrators.substeps.euler], a bucket of circle-constrained weights
through their component forms in
[`circle_substeps`][manifold_langevin.integrators.circle_substeps], and unconstrained tensors
through [`euclidean_substeps`][manifold_langevin.integrators.euclidean_substeps]. What is here
is the bookkeeping around them: stacking the tensors of a bucket, drawing the noise, keeping the
old values where an update failed, counting rejections, and deferring the writes when the
failure policy needs to look first.

Each update returns ``(commit, ok)``: ``commit()`` writes the new values (some updates write at
once and return a no-op), ``ok`` is a device-side flag per matrix (per tensor for circles in the
``"mask"`` mode; ``None`` when nothing can fail).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._compiling import is_compiling
from .._host_reads import host_reads_free
from ..integrators.base import finite_chains
from ..integrators.circle_substeps import baoa_step_circles, euler_circles
from ..integrators.euclidean_substeps import baoa_step_euclidean_, euler_euclidean_
from ..integrators.substeps import baoa_step, euler, ou_coefficients
from ..manifolds.base import finite_entries
from ..noise import NoiseTape
from .buckets import CHUNK, Bucket, FlatView, gather, select_into
from .params import uses_geodesic
from .policies import subdivide

__all__ = [
    "circle_update",
    "circle_update_",
    "compiled_circle_update_",
    "update_circles",
    "update_free",
    "update_manifold",
]


def _numbers(group: dict) -> tuple[float, float, float, float, float, bool]:
    h = float(group["lr"])
    tau = float(group["temperature"])
    c1, c2 = ou_coefficients(float(group["friction"]), tau, h)
    return h, tau, c1, c2, group["scheme"] == "ud", bool(group["fuse"])


# ---------------------------------------------------------------------------- manifolds
def update_manifold(b: Bucket, gen, *, on_failure: str, scratch: dict):
    """A bucket of points on a manifold (stacked as one batch of chains)."""
    group = b.group
    h, tau, c1, c2, ud, fuse = _numbers(group)
    params = [e.param for e in b.entries]
    grads = [e.grad for e in b.entries]
    counters = [e.state["n_rejected"] for e in b.entries]
    m, shape = b.manifold, b.shape
    geo = uses_geodesic(group, m)
    x0, g = gather(params, shape), gather(grads, shape)
    # only RATTLE A steps are subdivided (a closed-form flow fails only where rounding swamps
    # it, which sub-steps do not cure; "od" has no A step)
    retry = on_failure == "subdivide" and ud and not geo
    moms, p0 = None, None
    if ud:
        moms = [e.state["momentum_buffer"] for e in b.entries]
        p0 = gather(moms, shape)
        substeps = int(group["substeps"])
        # a retry must see the normals of the first attempt: record them
        noise = NoiseTape(gen) if retry and c2 > 0 else gen

        def run(x0, p0, g, noise, substeps, scratch=None):
            # the gradient is passed with a negated kick time (the force is -grad)
            return baoa_step(m, x0, p0, g, -b.kick_h, h, c1, c2, noise, geodesic=geo,
                             substeps=substeps, fuse=fuse, scratch=scratch)  # fmt: skip

        x, p, ok = run(x0, p0, g, noise, substeps, scratch)
    else:
        x, ok = euler(m, x0, -g, h, tau, gen, geodesic=geo)
        p = None
    if geo or not m.flags_nonfinite:
        # a closed-form flow reports only its residual, not the momentum's
        ok = ok & finite_chains(m.ndim, x) if p is None else ok & finite_chains(m.ndim, x, p)
    if retry:

        def retry_failed():
            nonlocal x, p, ok
            x, p, ok = subdivide(m, (x0, p0, g), (x, p, ok), run, noise, substeps)

        b.retry = retry_failed

    def commit():
        keep = ok.reshape(ok.shape + (1,) * m.ndim)
        select_into(params, keep, x, x0)
        if ud:
            select_into(moms, keep, p, 0.0)
        if len(params) == 1:
            counters[0].add_((~ok).sum())
        else:
            bad = (~ok).reshape(len(params), -1).sum(dim=1)
            torch._foreach_add_(counters, list(bad.unbind(0)))

    return commit, ok


# ---------------------------------------------------------------------------- circles
def circle_noise(w: torch.Tensor, generator, ud: bool) -> torch.Tensor:
    """Standard normals for the circles of the flat tensor ``w``: one per circle (shape
    ``(n,)``) for the O step of ``"ud"``, whose noise is a tangent vector
    ([`circle_tangent_normal`][manifold_langevin.manifolds.circles.circle_tangent_normal]);
    ``(2, n)`` for ``(w, xi)`` of the Euler step of ``"od"``."""
    shape = w.shape if ud else (2, *w.shape)
    return torch.randn(shape, generator=generator, dtype=w.dtype, device=w.device)


def circle_update(state, grad, noise, ud, fuse, mask, exact, kick_h, h, c1, c2, tau, radius):
    """New values of one flat circle tensor: ``state`` is ``(w, xi, omega)`` (``"ud"``, with
    the angular velocities ``omega``) or ``(w, xi)``; returns ``(new state, number of rejected
    entries or None)``. With ``mask`` an entry whose update is not finite keeps its point and
    gets zero angular velocity. ``exact``: renormalise onto the radius exactly (the points are
    not on its circle to rounding: the radius changed)."""
    if ud:
        new = baoa_step_circles(*state, grad, kick_h, h, c1, c2, radius, noise, fuse,
                                exact=exact)  # fmt: skip
    else:
        new = euler_circles(*state, grad, h, tau, radius, noise)
    if not mask:
        return new, None
    # (the eager in-place path holds the same entries in float arithmetic, see
    # circle_update_; compiled, this selection fuses into the update's loop)
    ok = finite_entries(*new)
    return _keep_finite(state, new, ok), (~ok).sum()


def _any_nonfinite(theta: torch.Tensor) -> bool:
    """Whether an angle of the chunk may be NaN/Inf, from their sum (one host read): a sum is
    finite only if every term is. A sum that overflows from finite terms answers ``True`` too,
    and the selection then holds nothing (half precisions are summed in float32)."""
    wide = torch.float32 if theta.dtype in (torch.float16, torch.bfloat16) else None
    return not math.isfinite(float(theta.sum(dtype=wide)))


def _held_count(held: torch.Tensor) -> torch.Tensor:
    """The number of held entries of a 0/1 indicator, as an integer 0-d tensor (a float sum
    of ones: exact up to 2^24 held entries; half precisions are summed in float32)."""
    wide = torch.float32 if held.dtype in (torch.float16, torch.bfloat16) else None
    return held.sum(dtype=wide).to(torch.int64)


def _keep_finite(state, new, ok):
    """Entry by entry: ``new`` where ``ok``; elsewhere the old point ``(w, xi)`` and zero
    angular velocity."""
    return [torch.where(ok, n, old if i < 2 else 0.0) for i, (old, n) in enumerate(zip(state, new))]


def circle_update_(state, grad, noise, ud, fuse, mask, exact, *numbers):
    """[`circle_update`][] written into ``state`` (in place); returns the rejection count
    (``None`` outside the ``"mask"`` mode, and on CPU for a chunk whose angles were all finite).

    This is the function ``CoLA(compile=True)`` hands to ``torch.compile``: the whole update of a
    tensor becomes one loop over memory (14 elementwise passes in eager mode). It is then
    called with the numbers ``(kick_h, h, c1, c2, tau, radius)`` as 0-d tensors: with Python
    floats dynamo would either recompile for every new value (an lr schedule) or, for arguments
    that torch ops take as a ``Scalar`` (``clamp``'s bounds, ``add``'s ``alpha``), bake the first
    value into the kernel without a guard."""
    if ud and not mask and not is_compiling():
        # eager: the step writes into the state itself (fewer passes; a compiled loop fuses
        # the copies anyway)
        kick_h, h, c1, c2, _, radius = numbers
        baoa_step_circles(*state, grad, kick_h, h, c1, c2, radius, noise, fuse, True, exact)
        return None
    if mask and ud and not is_compiling():
        # eager: the in-place step holds the non-finite entries itself, in float arithmetic
        # (on CPU comparisons and torch.where cost several times an add): the entries that
        # circle_update's selection rejects, with the same old values, in a few cheap passes;
        # where reading a value is free (on CPU: host_reads_free), only in a chunk whose angles
        # are not all finite; on an accelerator in every chunk, reading nothing
        kick_h, h, c1, c2, _, radius = numbers
        hold = _any_nonfinite if host_reads_free(grad) else True
        *_, held = baoa_step_circles(*state, grad, kick_h, h, c1, c2, radius, noise, fuse,
                                     True, exact, hold=hold)  # fmt: skip
        return None if held is None else _held_count(held)
    new, bad = circle_update(state, grad, noise, ud, fuse, mask, exact, *numbers)
    for t, n in zip(state, new):
        t.copy_(n)
    return bad


_COMPILED: dict = {}


def compiled_circle_update_():
    """``torch.compile(circle_update_)``, built once per process (sizes are dynamic)."""
    fn = _COMPILED.get("circle")
    if fn is None:
        fn = _COMPILED["circle"] = torch.compile(circle_update_, dynamic=True)
    return fn


def update_circles(b: Bucket, gen, *, mask: bool, defer: bool, compiled: Callable | None):
    """A bucket of circle-constrained tensors, tensor by tensor: eagerly in cache-sized chunks,
    or one compiled loop per tensor. ``compiled(flats, grad, noise, flags, numbers)`` runs the
    compiled update and returns the rejection count, or ``None`` to fall back to the eager one
    (``None``: eager only). Written at once unless ``defer``."""
    group = b.group
    h, tau, c1, c2, ud, fuse = _numbers(group)
    params = [e.param for e in b.entries]
    grads = [e.grad for e in b.entries]
    counters = [e.state["n_rejected"] for e in b.entries]
    radius = float(group["radius"])
    noisy = c2 > 0 if ud else tau > 0
    keys = ("xi", "angular_velocity") if ud else ("xi",)
    numbers = (b.kick_h, h, c1, c2, tau, radius)
    pending, oks, views_all = [], [], []
    for i, e in enumerate(b.entries):
        # the radius the point is on (a Python number: no sync); after a change of the group's
        # radius the first step renormalises exactly
        exact = e.state.get("radius", radius) != radius
        views = [FlatView(t) for t in [params[i]] + [e.state[k] for k in keys]]
        views_all.append(views)
        flats = [v.flat for v in views]
        g = grads[i].reshape(-1)
        bad = None
        if compiled is not None and not defer:
            z = circle_noise(g, gen, ud) if noisy else None
            bad = compiled(flats, g, z, (ud, fuse, mask, exact), numbers)
        if bad is None:
            bads = []
            chunk = CHUNK if g.device.type == "cpu" else max(g.numel(), 1)
            for a in range(0, g.numel(), chunk):
                piece = [f[a : a + chunk] for f in flats]
                gp = g[a : a + chunk]
                z = circle_noise(gp, gen, ud) if noisy else None
                if defer:
                    new, nb = circle_update(piece, gp, z, ud, fuse, mask, exact, *numbers)
                    pending.append((piece, new))
                else:
                    nb = circle_update_(piece, gp, z, ud, fuse, mask, exact, *numbers)
                bads.append(nb)
            bads = [nb for nb in bads if nb is not None]  # None: nothing held there
            bad = torch.stack(bads).sum() if mask and bads else None
        if mask and bad is not None:
            counters[i].add_(bad)
            oks.append(bad == 0)

    def commit():
        for piece, new in pending:
            for t, n in zip(piece, new):
                t.copy_(n)
        for views in views_all:
            for v in views:
                v.flush()
        for e in b.entries:
            e.state["radius"] = radius

    ok = torch.stack(oks) if oks else None
    if not defer:
        commit()
        return (lambda: None), ok
    return commit, ok


# ---------------------------------------------------------------------------- unconstrained
def update_free(b: Bucket, gen, *, mask: bool):
    """A bucket of unconstrained tensors (``torch._foreach_*``, in place at commit)."""
    h, tau, c1, c2, ud, fuse = _numbers(b.group)
    params = [e.param for e in b.entries]
    grads = [e.grad for e in b.entries]

    def commit():
        if mask:
            _free_masked(b, params, grads, ud, h, c1, c2, tau, gen, fuse)
        elif ud:
            moms = [e.state["momentum_buffer"] for e in b.entries]
            baoa_step_euclidean_(params, moms, grads, b.kick_h, h, c1, c2, gen, fuse)
        else:
            euler_euclidean_(params, grads, h, tau, gen)

    return commit, None


def _free_masked(b, params, grads, ud, h, c1, c2, tau, gen, fuse):
    """The unconstrained update on copies; entries whose result is not finite keep their value
    (and get zero momentum) and are counted as rejections."""
    counters = [e.state["n_rejected"] for e in b.entries]
    xs = [p.clone() for p in params]
    moms = [e.state["momentum_buffer"] for e in b.entries] if ud else []
    ps = [q.clone() for q in moms]
    if ud:
        baoa_step_euclidean_(xs, ps, grads, b.kick_h, h, c1, c2, gen, fuse)
    else:
        euler_euclidean_(xs, grads, h, tau, gen)
    for i, x in enumerate(xs):
        ok = finite_entries(x, ps[i]) if ud else finite_entries(x)
        if ud:
            moms[i].copy_(torch.where(ok, ps[i], 0.0))
        params[i].copy_(torch.where(ok, x, params[i]))
        counters[i].add_((~ok).sum())
