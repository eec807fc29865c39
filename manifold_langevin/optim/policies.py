"""What CoLA does when a step cannot be trusted: non-finite gradients, parameters off their
set at the first step, and constraint solves that failed.

Each policy costs at most a fixed number of host reads per step, and none is paid in the
sync-free mode (``on_nonfinite="mask"``, ``on_failure="reject"``): there the flags stay on the
device and select between new and old values.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError, OffManifoldError, ShakeError
from ..integrators.base import check_on_manifold, finite_chains
from ..integrators.substeps import baoa_step, euler, ou_coefficients
from ..noise import NoiseTape
from .params import uses_geodesic

__all__ = [
    "CIRCLE_START_EPS",
    "SUBDIVIDE_MAX",
    "check_converged",
    "check_gradients",
    "check_start",
    "retry_failed",
    "subdivide",
]

#: ``on_failure="subdivide"`` retries a failed A step with 2, 4, ... up to this many times the
#: group's ``substeps``
SUBDIVIDE_MAX = 16
#: a circle-constrained weight passes the start check up to ``|w| <= r (1 + this * eps)``: its
#: auxiliary ``xi = sqrt(r^2 - w^2)`` is derived, so only ``|w| <= r`` up to rounding matters
CIRCLE_START_EPS = 8.0


def check_gradients(entries) -> object:
    """Whether every gradient of ``entries`` is finite: ``True``, or the first entry whose
    gradient holds a NaN/Inf. One host read when all are finite (a 2-norm per tensor, the
    cheapest reduction that sees every NaN/Inf); a non-finite norm is confirmed entry by entry,
    since the norm of huge finite entries can overflow."""
    by_kind: dict = {}
    for i, e in enumerate(entries):
        by_kind.setdefault((e.grad.device, e.grad.dtype), []).append(i)
    norms: list = [None] * len(entries)
    flags = {}
    for (device, dtype), idx in by_kind.items():
        grads = [entries[i].grad for i in idx]
        # the 2-norm in the gradient's own precision (half precisions: float32): the max-norm
        # and float64 norms are several times slower on CPU
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        out = torch._foreach_norm(grads, 2, dtype=wide)
        for i, n in zip(idx, out):
            norms[i] = n
        flags.setdefault(device, []).append(torch.isfinite(torch.stack(out)).all())
    ok = True
    for parts in flags.values():
        ok = ok and bool(torch.stack(parts).all())  # the one host read of the strict mode
    if ok:
        return True
    suspects = [e for e, n in zip(entries, norms) if not bool(torch.isfinite(n))]
    bad = next((e for e in suspects if not bool(torch.isfinite(e.grad).all())), None)
    return True if bad is None else bad  # None: the norm overflowed, every entry is finite


def raise_nonfinite(bad) -> None:
    """Raise [`NonFiniteError`][manifold_langevin.NonFiniteError] for the entry ``bad``."""
    raise NonFiniteError(
        f"the gradient of parameter {bad.name} contains NaN/Inf; parameters, optimizer state "
        "and noise generators were left unchanged (use on_nonfinite='skip' to skip such steps)",
        step=bad.state.get("step", 0),
    )


def check_start(fresh) -> None:
    """Check every new constrained parameter (``fresh``: ``[(group, entry)]``) against its set,
    with the samplers' start criterion
    ([`check_on_manifold`][manifold_langevin.integrators.base.check_on_manifold]) for manifold
    kinds and ``|w| <= r`` up to rounding for circle weights; one host read.

    Raises:
        OffManifoldError: naming the first parameter off its set, with its residual.
    """
    rows = []
    for group, e in fresh:
        p = e.param.detach()
        if e.kind == "circle":
            r = float(group["radius"])
            res = ((p.abs() - r) / r).amax() if p.numel() else p.new_zeros(())
            lim = CIRCLE_START_EPS * torch.finfo(p.dtype).eps
            what = "(max |w| - radius) / radius"
            hint = "clip or rescale the weights into [-radius, radius]"
            rows.append((e, res, lim, ~(res.double() <= lim), what, hint))
        elif e.kind == "manifold":
            res, lim, bad = check_on_manifold(e.manifold, p.reshape(e.shape))
            hint = "project it first (constrained_groups(..., init=True) does)"
            rows.append((e, res, lim, bad, "constraint residual", hint))
    if not rows:
        return
    by_device = {}
    for _, res, _, bad, _, _ in rows:
        by_device.setdefault(res.device, []).append(bad)
    bad_any = None
    for flags in by_device.values():
        f = torch.stack(flags).any().cpu()
        bad_any = f if bad_any is None else bad_any | f
    if not bool(bad_any):
        return
    for e, res, lim, _, what, hint in rows:
        value = float(res)
        if not value <= lim:
            raise OffManifoldError(
                f"parameter {e.name} is off its constraint set at the first step: {what} "
                f"{value:.3g} exceeds {lim:.3g}; {hint}",
                residual=value,
                tolerance=lim,
            )


def subdivide(m, start, new, run, noise, substeps):
    """Re-run the failed points of a bucket with ``2, 4, ...`` up to
    [`SUBDIVIDE_MAX`][manifold_langevin.optim.policies.SUBDIVIDE_MAX] times ``substeps`` RATTLE
    sub-steps per A step, each point keeping the first result that converges.

    ``start`` is ``(x0, p0, grad)`` and ``new`` the first attempt's ``(x, p, ok)``;
    ``run(x0, p0, grad, noise, substeps)`` is the step. A point redone with ``K`` sub-steps gets
    the normals it drew in the first attempt (``noise`` is a
    [`NoiseTape`][manifold_langevin.noise.NoiseTape]), so its result is the one a step with
    ``substeps=K`` would have given, and the generator advances as in any other step. Host
    reads: one per round. Returns the new ``(x, p, ok)``."""
    ndim = m.ndim

    def flat(t):
        return t.reshape(-1, *t.shape[t.dim() - ndim :])

    x0, p0, g = (flat(t) for t in start)
    x, p = flat(new[0]).clone(), flat(new[1]).clone()
    ok = new[2].reshape(-1).clone()
    # a point with a non-finite gradient or momentum fails at any step size
    rows = (~ok & finite_chains(ndim, g, p0)).nonzero().squeeze(-1)
    factor = 2
    while rows.numel() and factor <= SUBDIVIDE_MAX:
        source = noise.replay(rows, ndim) if isinstance(noise, NoiseTape) else noise
        xk, pk, okk = run(x0[rows], p0[rows], g[rows], source, factor * substeps)
        okk = okk & finite_chains(ndim, xk, pk)
        keep = okk.reshape(okk.shape + (1,) * ndim)
        x[rows] = torch.where(keep, xk, x[rows])
        p[rows] = torch.where(keep, pk, p[rows])
        ok[rows] = okk
        rows = rows[~okk]
        factor *= 2
    return x.reshape(new[0].shape), p.reshape(new[1].shape), ok.reshape(new[2].shape)


def retry_failed(checks) -> None:
    """``on_failure="subdivide"``: one host read (did any solve fail?), then the retries of the
    buckets (``checks``: ``[(bucket, ok)]``) that hold a failure."""
    flags = {}
    for b, ok in checks:
        if b.retry is not None:
            flags.setdefault(ok.device, []).append(ok.all())
    if all(bool(torch.stack(parts).all()) for parts in flags.values()):
        return
    for b, ok in checks:
        if b.retry is not None and not bool(ok.all()):
            b.retry()


def check_converged(checks, restore) -> None:
    """``on_failure="raise"``: one host read; on a failure, ``restore()`` (the caller puts its
    noise generators back) and raise.

    Raises:
        ShakeError: naming the first parameter whose update failed, with the residual of the
            rejected proposal (recomputed without noise, for the message only).
    """
    flags = {}
    for _, ok in checks:
        if ok is not None:
            flags.setdefault(ok.device, []).append(ok.all())
    all_ok = True
    for parts in flags.values():
        all_ok = all_ok and bool(torch.stack(parts).all())
    if all_ok:
        return
    restore()
    for b, ok in checks:
        if ok is None or bool(ok.all()):
            continue
        n_bad = int((~ok).sum())
        if b.kind == "manifold":
            per = ok.reshape(len(b.entries), -1).all(dim=1)
            i = int((~per).nonzero()[0, 0])
            e = b.entries[i]
            trial = _trial_residual(b, i)
            tol = b.manifold.tolerance(e.param.detach().reshape(b.shape))
        else:  # circles (mask mode): one flag per tensor
            j = int((~ok).nonzero()[0, 0])
            e, trial, tol = b.entries[j], float("nan"), 0.0
        err = ShakeError(
            f"the constrained update of parameter {e.name} failed (SHAKE did not converge "
            f"or the result is not finite): residual {trial:.3g} against tolerance "
            f"{tol:.3g}; parameters, optimizer state and noise generators "
            "were left unchanged (use on_failure='reject' to keep such matrices and go on, "
            "or a smaller lr)",
            step=e.state["step"],
            n_failures=n_bad,
        )
        err.parameter = e.name
        err.residual = trial
        raise err


def _trial_residual(b, i: int) -> float:
    """Residual of the rejected proposal for entry ``i`` (recomputed: diagnostics only)."""
    e, group = b.entries[i], b.group
    m, shape = b.manifold, b.shape
    h = float(group["lr"])
    x0 = e.param.detach().reshape(1, *shape)
    g = e.grad.reshape(1, *shape)
    geo = uses_geodesic(group, m)
    c1, _ = ou_coefficients(float(group["friction"]), 0.0, h)
    if group["scheme"] == "ud":
        p0 = e.state["momentum_buffer"].reshape(1, *shape)
        x = baoa_step(m, x0, p0, g, -b.kick_h, h, c1, 0.0, None, geodesic=geo,
                      substeps=group["substeps"], fuse=group["fuse"])[0]  # fmt: skip
    else:
        x = euler(m, x0, -g, h, 0.0, None, geodesic=geo)[0]
    return float(m.residual_norm(x).amax())
