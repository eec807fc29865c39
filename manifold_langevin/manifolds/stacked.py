r"""Stacks of small matrices stored entries first: shape ``(rows, cols, B)``, the stack last.

A batched product of ``10^4`` small matrices (``torch.bmm`` of ``(B, 6, 6)`` stacks) runs one
scalar loop per matrix on CPU; stored entries first, the same product is ``k`` fused
multiply-adds of whole ``(rows, cols, B)`` slabs, each vectorised over the stack: 3.7 times
faster for ``6 x 6`` products at ``B = 10^4`` (one CPU thread, float64;
``python -m validation.bench_stiefel_geodesic``). The exponential here is
built from those products, so it needs no ``torch.linalg.matrix_exp`` (which runs a general
algorithm per matrix and, on CUDA, copies its norms to the host). Shapes are Python ints; no
host reads. Used by the Stiefel manifold's exact geodesic for frames of at most three columns.
"""

from __future__ import annotations

import math

import torch

from . import frames

__all__ = [
    "EXPM_DEGREE",
    "EXPM_MAX_SQUARINGS",
    "EXPM_THETA",
    "TMM_LOOP_MAX_ROWS",
    "addmm",
    "blocks",
    "cat_cols",
    "cols",
    "expm",
    "expm_skew",
    "from_stacked",
    "identity",
    "mm",
    "norm",
    "polish",
    "rows",
    "skew",
    "sym",
    "tmm",
    "to_stacked",
    "transpose",
]

#: Degree of the Taylor polynomial of `expm`, evaluated by Paterson and Stockmeyer's scheme in
#: blocks of four powers: ``X^2, X^3, X^4`` and four Horner steps in ``X^4``, 7 products (the
#: scheme needs a degree ``4q + 3``).
EXPM_DEGREE = 19
#: 1-norm up to which that polynomial is the exponential to float64 rounding: for
#: ``|X|_1 <= theta`` the neglected terms sum to at most ``theta^20 / 20! (1 + theta / 21 + ...)
#: = 3.8e-17`` in norm at ``theta = 1.25``, against ``|e^X| >= e^-theta = 0.29``: about the
#: rounding unit (1.1e-16).
EXPM_THETA = 1.25
#: Squarings at most: a matrix of 1-norm ``nu`` is scaled by ``2^-s`` with the least ``s`` that
#: brings it under `EXPM_THETA`, and ``s`` is capped here (``nu <= 1.25 * 2^6 = 80`` exact to
#: rounding; beyond that the truncation error grows as ``(nu / 80)^20`` times the rounding
#: unit). The squarings are done for every matrix, masked where ``s`` is smaller: the work is
#: the same for all, so no host read decides it.
EXPM_MAX_SQUARINGS = 6


def to_stacked(x: torch.Tensor) -> torch.Tensor:
    """``(..., r, c)`` matrices as one contiguous ``(r, c, B)`` stack, ``B`` the flattened batch."""
    r, c = x.shape[-2:]
    return x.reshape(-1, r, c).permute(1, 2, 0).contiguous()


def from_stacked(y: torch.Tensor, batch: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The inverse of `to_stacked`: ``(r, c, B)`` back to contiguous ``(*batch, r, c)``."""
    r, c = y.shape[:2]
    return y.permute(2, 0, 1).reshape(*batch, r, c)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Products ``a_i b_i`` of stacks ``(r, k, B)`` and ``(k, c, B)``: ``k`` multiply-adds,
    into ``out`` if given (a ``(r, c, B)`` tensor that is neither ``a`` nor ``b``)."""
    out = torch.mul(a[:, 0, None, :], b[None, 0, :, :], out=out)
    for j in range(1, a.shape[1]):
        out.addcmul_(a[:, j, None, :], b[None, j, :, :])
    return out


def addmm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out += a_i b_i`` in place (``out`` is neither ``a`` nor ``b``)."""
    for j in range(a.shape[1]):
        out.addcmul_(a[:, j, None, :], b[None, j, :, :])
    return out


#: `tmm` sums the products of up to this many rows one row at a time (no temporary larger
#: than the result); longer frames, as one broadcast product and a sum.
TMM_LOOP_MAX_ROWS = 32


def tmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Products ``a_i^T b_i`` of stacks ``(n, r, B)`` and ``(n, c, B)``, summed over the ``n``
    rows (``n`` may be large: a tall frame's length)."""
    n = a.shape[0]
    if n > TMM_LOOP_MAX_ROWS:
        return (a[:, :, None, :] * b[:, None, :, :]).sum(0)
    out = a[0, :, None, :] * b[0, None, :, :]
    for i in range(1, n):
        out.addcmul_(a[i, :, None, :], b[i, None, :, :])
    return out


def transpose(a: torch.Tensor) -> torch.Tensor:
    """``a_i^T`` of each matrix of a stack (a view)."""
    return a.transpose(0, 1)


def sym(a: torch.Tensor) -> torch.Tensor:
    return (a + transpose(a)).mul_(0.5)


def skew(a: torch.Tensor) -> torch.Tensor:
    return (a - transpose(a)).mul_(0.5)


def identity(p: int, like: torch.Tensor) -> torch.Tensor:
    """The ``p x p`` identity as a ``(p, p, 1)`` stack that broadcasts against any ``B``."""
    return torch.eye(p, dtype=like.dtype, device=like.device)[:, :, None]


def norm(a: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix, ``(B,)``: a per-matrix scalar that broadcasts against
    the stack. Summed over the entries one slab at a time (``vector_norm`` over the two
    leading dimensions reduces with a stride of ``B``, much slower on CPU)."""
    return (a * a).sum(0).sum(0).sqrt_()


def rows(a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of each matrix (a view)."""
    return a[start:stop]


def cols(a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Columns ``start:stop`` of each matrix (a view)."""
    return a[:, start:stop]


def cat_cols(parts: list[torch.Tensor]) -> torch.Tensor:
    """Matrices side by side, ``[a_1, a_2, ...]``."""
    return torch.cat(parts, dim=1)


def blocks(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """The block matrix of a list of block rows."""
    return torch.cat([torch.cat(r, dim=1) for r in rows], dim=0)


def polish(t: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz polar step ``T (3I - T^T T) / 2`` of each frame (the batched
    layout's ``frames.polish``)."""
    g = sym(tmm(t, t))
    g.diagonal(0, 0, 1).sub_(1.0)
    # t - (t g) / 2 written as t + t (-g / 2): the same numbers (halving and negating are
    # exact), one temporary fewer
    return mm(t, g.mul_(-0.5)).add_(t)


def expm_skew(a: torch.Tensor) -> torch.Tensor:
    """[`frames.expm_skew`][manifold_langevin.manifolds.frames.expm_skew] of a stack of skew
    matrices (closed forms for ``p <= 3``)."""
    return frames.expm_skew(a, stacked=True)


def expm(x: torch.Tensor) -> torch.Tensor:
    r"""$e^{X_i}$ of each matrix of a ``(m, m, B)`` stack: scaling, Taylor, squaring.

    Each matrix is scaled by $2^{-s_i}$, $s_i = \lceil \log_2(\|X_i\|_1 / \theta) \rceil$
    clipped to ``[0, EXPM_MAX_SQUARINGS]``, so that the degree-`EXPM_DEGREE` Taylor
    polynomial is its exponential to rounding; then squared $s_i$ times (all matrices go through
    `EXPM_MAX_SQUARINGS` masked squarings). Non-finite entries give non-finite results.
    """
    nu = x.abs().sum(0).amax(0)  # the 1-norm (largest column sum) of each matrix, (B,)
    s = torch.log2(nu * (1.0 / EXPM_THETA)).ceil_().clamp_(0, EXPM_MAX_SQUARINGS)
    x = x * torch.exp2(-s)
    x2 = mm(x, x)
    x3 = mm(x2, x)
    x4 = mm(x2, x2)
    coef = [1.0 / math.factorial(k) for k in range(EXPM_DEGREE + 1)]

    def add_block(out: torch.Tensor, j: int) -> torch.Tensor:  # out += sum_{i<4} c_{4j+i} X^i
        out.add_(x3, alpha=coef[4 * j + 3]).add_(x2, alpha=coef[4 * j + 2])
        out.add_(x, alpha=coef[4 * j + 1]).diagonal(0, 0, 1).add_(coef[4 * j])
        return out

    # Two buffers for the whole evaluation: on CPU a fresh multi-megabyte tensor per operation
    # costs more in page faults than the operation itself. Under autograd (``out=`` has no
    # derivative) every product gets a fresh tensor instead.
    reuse = not (x.requires_grad and torch.is_grad_enabled())
    e = add_block(torch.zeros_like(x), EXPM_DEGREE // 4)
    other = torch.empty_like(x) if reuse else None
    for j in range(EXPM_DEGREE // 4 - 1, -1, -1):
        f = add_block(mm(x4, e, out=other), j)
        e, other = f, (e if reuse else None)
    for k in range(EXPM_MAX_SQUARINGS):
        # e^2 where s > k, else e: a lerp with a 0/1 weight (exact at both ends), faster on CPU
        # than torch.where
        w = (s > k).to(e.dtype)
        e = e.lerp_(mm(e, e, out=other), w) if reuse else torch.lerp(e, mm(e, e), w)
    return e
