"""The exact geodesic of the Stiefel manifold (the embedded metric), for tall frames.

The flow of [`Stiefel.geodesic`][manifold_langevin.Stiefel.geodesic] (Edelman, Arias & Smith
1998, eq. 2.14, with the block rescaled by ``|V|``) is written once, `_geodesic_flow`, over the
kernels of one of two layouts: torch's batched one (`_BatchMajor`: ``bmm`` and
``torch.linalg.matrix_exp``) and the entries-first stacks of
[`stacked`][manifold_langevin.manifolds.stacked]. `tall_geodesic` broadcasts its inputs and
picks the layout by the frame's width, the number of matrices and the device (Python values:
no host reads).
"""

from __future__ import annotations

import math

import torch

from . import stacked
from .base import as_time
from .frames import expm_skew, identity, polish, skew, sym

__all__ = ["tall_geodesic"]

#: Frames of at most this many columns take their geodesic in the entries-first layout of
#: [`stacked`][manifold_langevin.manifolds.stacked] (products as multiply-adds over the stack,
#: the exponential built from them); wider ones in torch's batched layout with
#: ``torch.linalg.matrix_exp``. Measured by ``python -m validation.bench_sampler``: V(10, 3)
#: and SO(3) (see the performance page).
_STACKED_MAX_P = 3
#: ... and on CPU only from this many matrices on (tall and wide frames; square ones from
#: `_STACKED_MIN_SQUARE`): the stacked geodesic launches several times as many kernels as the
#: batched one, which costs more than it saves below. BAOAB step, float64, one thread, stacked
#: against batched time (``python -m validation.bench_stiefel_geodesic``): V(10, 3) 2.51x at
#: 1 chain, 1.26x at 150, 0.98x at 250, 0.80x at 400, 0.46x at 10^4; SO(3) 1.29x, 1.14x, 1.05x,
#: 0.98x, 0.77x. Off the CPU the stacked layout is always taken: it has no host
#: synchronisation (matrix_exp has one).
_STACKED_MIN_MATRICES = 256
_STACKED_MIN_SQUARE = 384
#: On CPU the stacked geodesic runs in pieces of this many matrices, so that its temporaries
#: stay in the caches (``python -m validation.bench_stiefel_geodesic``, float64, one thread,
#: 10^5 matrices): V(10, 3) 461 ms in one piece, 225 ms in pieces of 8192 (4096: 229 ms, 2048:
#: 268 ms); SO(3) 17.0 ms in one piece, 17.6 ms in pieces of 8192.
_STACKED_CHUNK = 8192


class _BatchMajor:
    """The kernels the geodesic is written with, for ``(..., r, c)`` matrices: torch's batched
    products and ``torch.linalg.matrix_exp``. [`stacked`][manifold_langevin.manifolds.stacked]
    has the same functions for ``(r, c, B)`` stacks. Per-matrix scalars are ``(..., 1, 1)``."""

    mm = staticmethod(torch.matmul)
    sym = staticmethod(sym)
    skew = staticmethod(skew)
    identity = staticmethod(identity)
    polish = staticmethod(polish)
    expm = staticmethod(torch.linalg.matrix_exp)
    expm_skew = staticmethod(expm_skew)

    @staticmethod
    def tmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.mT @ b

    @staticmethod
    def norm(a: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(a, keepdim=True)

    @staticmethod
    def addmm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return out.add_(a @ b)

    @staticmethod
    def rows(a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return a[..., start:stop, :]

    @staticmethod
    def cols(a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return a[..., start:stop]

    @staticmethod
    def cat_cols(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=-1)

    @staticmethod
    def blocks(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.cat([torch.cat(r, dim=-1) for r in rows], dim=-2)


def _geodesic_flow(
    k, m: torch.Tensor, v: torch.Tensor, time, n: int, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The geodesic of [`Stiefel.geodesic`][manifold_langevin.Stiefel.geodesic] for tall
    ``n x p`` frames, written once with the kernels ``k`` of one layout (`_BatchMajor` or the
    module
    [`stacked`][manifold_langevin.manifolds.stacked]); ``time`` is a float or a per-matrix
    scalar of that layout."""
    a = k.skew(k.tmm(m, v))
    if n == p:
        # square (O(p)): V = T A, the flow is T e^{tA} with V(t) = T(t) A; A is exact, so
        # V(t) is tangent at the polished T(t) and |V(t)| = |A| = |V| to rounding
        x_t = k.polish(k.mm(m, k.expm_skew(time * a)))
        return x_t, k.mm(x_t, a)
    s = k.sym(k.tmm(v, v))
    speed = k.norm(v)
    c = torch.where(speed > 0, speed, 1.0)
    # with the block M = [[A, -S], [I, A]] and D = diag(I, I/c), c = |V|:
    # [T, V] e^{tM} = [T, V/c] e^{tM'} diag(I, cI), M' = D^-1 M D = [[A, -S/c], [cI, A]], whose
    # blocks are of the size of |V|, not |V|^2: the exponential needs fewer squarings
    block = k.blocks([[a, -s / c], [c * k.identity(p, m), a]])
    e = k.expm(block.mul_(time))
    r = k.expm_skew(-time * a)
    # [T(t), V(t)/c] = [T, V/c] [E_:p r, E_p: r] = T G_top + V (G_bottom / c), G = e [r 0; 0 r]
    g = k.cat_cols([k.mm(k.cols(e, 0, p), r), k.mm(k.cols(e, p, 2 * p), r)])
    xv = k.addmm(k.mm(m, k.rows(g, 0, p)), v, k.rows(g, p, 2 * p) / c)
    v_t = k.cols(xv, p, 2 * p).mul_(c)  # in place before anything reads xv
    x_t = k.polish(k.cols(xv, 0, p))
    v_t = v_t - k.mm(x_t, k.sym(k.tmm(x_t, v_t)))
    # the exact flow conserves |V|; the exponential's truncation error does not (matrix_exp:
    # a systematic gain of about 2 ulps per step, 0.2% after 10^4 float32 steps), so restore it
    speed1 = k.norm(v_t)
    ratio = torch.where(speed1 > 0, speed / speed1.clamp_min(torch.finfo(m.dtype).tiny), 1.0)
    return x_t, v_t * ratio


def _stacked_geodesic(
    m: torch.Tensor, v: torch.Tensor, time, batch: torch.Size, on_cpu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_geodesic_flow` in the stacked layout for ``(*batch, n, p)`` frames (broadcast already),
    in pieces of `_STACKED_CHUNK` matrices on CPU (eager). Every operation is per matrix, so
    the pieces give the same numbers as one call."""
    n, p = m.shape[-2:]
    m, v = m.reshape(-1, n, p), v.reshape(-1, n, p)
    if isinstance(time, torch.Tensor):
        time = time.reshape(-1)
    count = m.shape[0]
    chunk = _STACKED_CHUNK if on_cpu and not torch.compiler.is_compiling() else count
    if count <= chunk:
        x_t, v_t = _geodesic_flow(stacked, stacked.to_stacked(m), stacked.to_stacked(v), time, n, p)
        return stacked.from_stacked(x_t, batch), stacked.from_stacked(v_t, batch)
    x_out, v_out = torch.empty_like(m), torch.empty_like(v)
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        t = time[part] if isinstance(time, torch.Tensor) else time
        x_t, v_t = _geodesic_flow(
            stacked, stacked.to_stacked(m[part]), stacked.to_stacked(v[part]), t, n, p
        )
        x_out[part] = x_t.permute(2, 0, 1)
        v_out[part] = v_t.permute(2, 0, 1)
    return x_out.reshape(*batch, n, p), v_out.reshape(*batch, n, p)


def tall_geodesic(
    m: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The geodesic from tall frames ``m`` (``(..., n, p)``, ``n >= p``) with tangent velocities
    ``v`` for time ``t`` (a float or a tensor broadcastable to the batch shape): ``(x_t, v_t)``
    of the broadcast batch shape."""
    n, p = m.shape[-2:]
    time = as_time(t, m)
    shapes = [m.shape[:-2], v.shape[:-2]]
    if isinstance(time, torch.Tensor):
        shapes.append(time.shape)
    batch = torch.broadcast_shapes(*shapes)
    m, v = m.expand(*batch, n, p), v.expand(*batch, n, p)
    if isinstance(time, torch.Tensor):
        time = time.expand(batch)
    matrices = math.prod(batch)
    on_cpu = m.device.type == "cpu"
    minimum = _STACKED_MIN_SQUARE if n == p else _STACKED_MIN_MATRICES
    if p > _STACKED_MAX_P or (on_cpu and matrices < minimum):
        if isinstance(time, torch.Tensor):
            time = time[..., None, None]
        return _geodesic_flow(_BatchMajor, m, v, time, n, p)
    return _stacked_geodesic(m, v, time, batch, on_cpu)
