"""Batched small linear algebra of the generic constraint path: the ``m x m`` systems of SHAKE
and the tangent projection (a reusable factorisation and its solves, bit for bit LAPACK's), the
products with a Jacobian of a few rows (``J v``, ``J J^T``, ``J^T lam``) and the sums of short
rows. Each picks, by measured size rules, between one batched torch call and a few elementwise
passes over whole columns, with the same bits either way.
"""

from __future__ import annotations

import torch

from .._compiling import is_compiling

__all__ = [
    "COMBINATION_MAX_COLUMNS",
    "COMBINATION_MIN_ENTRIES",
    "LU2_MIN_BATCH",
    "SHORT_ROW_MAX",
    "TINY_PRODUCT_MAX_MACS",
    "factor_solve",
    "normal_combination",
    "row_product",
    "row_sum",
    "select_factor",
    "small_factor",
    "small_solve",
]


SHORT_ROW_MAX = 4
"""Rows of at most this many entries are summed by `row_sum` as a chain of slice additions:
torch's CPU reduction over a short last dimension costs 5 to 15 times an elementwise pass
(measured on ``(10^4, 3)`` float64: 145 us against 9 us for a product)."""


def row_sum(t: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Sum over the last dimension; ``((t_0 + t_1) + t_2) + ...`` for short rows (the order
    torch's CPU reduction adds them in: the same bits, tested), ``t.sum(-1)`` otherwise."""
    n = t.shape[-1]
    if not 1 < n <= SHORT_ROW_MAX:
        return t.sum(dim=-1, keepdim=keepdim)
    k = slice(0, 1) if keepdim else 0
    out = t[..., k]
    for i in range(1, n):
        out = out + t[..., slice(i, i + 1) if keepdim else i]
    return out


LU2_MIN_BATCH = 1024
"""From this many ``2 x 2`` systems on,
`small_factor` solves them by elementwise
operations; below, the per-kernel overhead of its dozen operations costs more than one batched
LAPACK call (both give the same bits)."""


def _lu_2(mat: torch.Tensor):
    # LU with partial pivoting, written out: the same operations, in the same order, as
    # LAPACK's getrf/getrs on a 2 x 2 matrix (the multiplier by a division, the two back
    # substitutions by reciprocals), hence the same bits as torch.linalg.solve
    a, b = mat[..., 0, 0], mat[..., 0, 1]
    c, d = mat[..., 1, 0], mat[..., 1, 1]
    swap = c.abs() > a.abs()
    piv, low = torch.where(swap, c, a), torch.where(swap, a, c)
    top, bot = torch.where(swap, d, b), torch.where(swap, b, d)
    mult = low / piv
    u22 = bot - mult * top
    return ("lu2", swap, mult, top, torch.reciprocal(piv), torch.reciprocal(u22))


def _solve_lu_2(factor, rhs: torch.Tensor) -> torch.Tensor:
    _, swap, mult, top, r_piv, r_u22 = factor
    r0, r1 = rhs[..., 0, :], rhs[..., 1, :]
    sw = swap.unsqueeze(-1)
    s0, s1 = torch.where(sw, r1, r0), torch.where(sw, r0, r1)
    x1 = (s1 - mult.unsqueeze(-1) * s0) * r_u22.unsqueeze(-1)
    x0 = (s0 - top.unsqueeze(-1) * x1) * r_piv.unsqueeze(-1)
    return torch.stack([x0, x1], dim=-2)


def small_factor(mat: torch.Tensor):
    r"""A reusable factorisation of batched ``m x m`` matrices ``(..., m, m)`` for
    `factor_solve`: every variant returns
    bit for bit what `torch.linalg.solve_ex` returns (on the CPU kernels it was checked on),
    only faster for tiny systems, whose cost in LAPACK is per-matrix overhead.

    * ``m = 1``: the reciprocal; a solve is one product, which is what LAPACK's LU solve of a
      $1 \times 1$ system computes;
    * ``m = 2`` and at least `LU2_MIN_BATCH`
      matrices: LU with partial pivoting written out in elementwise operations, in LAPACK's
      order (the multiplier by a division, the back substitutions by reciprocals);
    * otherwise LAPACK's LU factorisation (``torch.linalg.lu_factor_ex``), which each solve
      reuses (``torch.linalg.lu_solve``): ``solve_ex`` is these two calls, so the bits are
      the same, and a matrix solved several times (the frozen and quasi-Newton SHAKE
      iterations, the projections at a cached point) is factorised once. The factorisation
      is more than half of each solve's time for 4,000 ``9 x 9`` systems
      (``python -m validation.bench_constraint_algebra``). A closed-form inverse for
      ``m = 3`` was measured slower than LAPACK at every batch size, and rounds differently.

    A singular matrix gives Inf/NaN (no error is raised, no host synchronisation)."""
    m = mat.shape[-1]
    if m == 1:
        return torch.reciprocal(mat)
    if m == 2 and mat.numel() >= 4 * LU2_MIN_BATCH:
        return _lu_2(mat)
    lu, pivots, _ = torch.linalg.lu_factor_ex(mat)
    return ("lu", lu, pivots)


def factor_solve(factor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve with a `small_factor`: ``rhs``
    is ``(..., m, k)``."""
    if isinstance(factor, tuple):
        if factor[0] == "lu2":
            return _solve_lu_2(factor, rhs)
        return torch.linalg.lu_solve(factor[1], factor[2], rhs)
    return rhs * factor


TINY_PRODUCT_MAX_MACS = 400
"""Batched products needing fewer multiply-adds than this per matrix are the ones torch's CPU
``bmm`` computes with a plain loop (each entry a sum in index order); under ``torch.compile``
`row_product` writes them out
elementwise so that they fuse into the step's loop instead of calling ``bmm``."""


def row_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` ``(..., m, N)`` and ``b`` ``(..., N, k)``.

    * ``m = k = 1`` and short rows (``N <=`` ``SHORT_ROW_MAX``): the dot product per chain as a
      [`row_sum`][manifold_langevin.manifolds.small_systems.row_sum] of the elementwise product (a
      batched matmul of 10^4 one-by-three times three-by-one matrices costs several times more);
    * under ``torch.compile``, fewer than `TINY_PRODUCT_MAX_MACS` multiply-adds per matrix:
      the ``N`` broadcast products added in index order, the order (and so the bits) of the
      plain loop ``bmm`` runs at these sizes; they fuse into the compiled loop, where a ``bmm``
      stays an external call (the rigid trimer's compiled step at 4,000 molecules, float64:
      5.9 ms against 6.7 ms). Eagerly the ``2 N - 1`` small kernels cost several times the
      ``bmm`` (measured), so eager runs keep it;
    * otherwise ``a @ b``."""
    m, n, k = a.shape[-2], a.shape[-1], b.shape[-1]
    if m == 1 and k == 1 and 1 < n <= SHORT_ROW_MAX:
        return row_sum(a.squeeze(-2) * b.squeeze(-1), keepdim=True).unsqueeze(-1)
    if m * n * k < TINY_PRODUCT_MAX_MACS and is_compiling():
        out = a[..., :, 0:1] * b[..., 0:1, :]
        for i in range(1, n):
            out = out + a[..., :, i : i + 1] * b[..., i : i + 1, :]
        return out
    return a @ b


COMBINATION_MIN_ENTRIES = 1000
"""Eagerly, `normal_combination` adds the ``m`` columns' broadcast products when each of them
covers at least ``m`` times this many entries (chains times ``N``); below, its ``2 m - 1``
small kernels cost more than one batched matmul (``python -m
validation.bench_constraint_algebra``: for ``m = 9``, ``N = 30``, the column sum takes 0.6 times the
batched matmul's time at 4,000 chains and 3 to 10 times it at 1 to 30 chains)."""

COMBINATION_MAX_COLUMNS = 16
"""`normal_combination` multiplies by more columns than this with one batched matmul."""


def normal_combination(jac_t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``J^T lam`` for ``jac_t = J^T`` ``(..., N, m)`` and ``lam`` ``(..., m, 1)``, with the
    batched matmul's bits either way (its order of additions, tested):

    * the columns' broadcast products added in order, ``(J_0 lam_0 + J_1 lam_1) + ...``: on
      CPU for at most `COMBINATION_MAX_COLUMNS` columns of at least
      `COMBINATION_MIN_ENTRIES` ``m`` entries each (torch multiplies such tiny matrices
      with a plain loop, slower than vectorised passes over whole columns); under
      ``torch.compile`` and on other devices for ``m <=`` ``SHORT_ROW_MAX`` at any size
      (compiled, the products fuse into the step's loop). Eagerly and outside autograd the
      products go through one buffer and the sum accumulates in place (no fresh tensor per
      column);
    * otherwise the batched matmul ``jac_t @ lam``."""
    shape = jac_t.shape
    n, m = shape[-2], shape[-1]
    if m == 1:
        return jac_t * lam
    # cheap tests first: at a few chains this choice is a visible part of the call. The
    # entries of the broadcast result: the larger operand's (one side is a single chain or
    # both agree; torch.broadcast_shapes costs more than a small product)
    if jac_t.is_cpu and not is_compiling():
        entries = max(jac_t.numel(), lam.numel() * n)
        columns = m <= COMBINATION_MAX_COLUMNS and entries >= COMBINATION_MIN_ENTRIES * m * m
    else:  # compiled the columns fuse; on a GPU each column is a launch, the matmul one
        columns = m <= SHORT_ROW_MAX
    if not columns:
        return jac_t @ lam
    out = jac_t[..., 0:1] * lam[..., 0:1, :]
    if is_compiling() or (torch.is_grad_enabled() and (jac_t.requires_grad or lam.requires_grad)):
        for i in range(1, m):
            out = out + jac_t[..., i : i + 1] * lam[..., i : i + 1, :]
        return out
    # eagerly, into one product buffer and the sum (the same two roundings per column): fresh
    # CPU tensors of this size cost page faults that can exceed the arithmetic
    prod = torch.empty_like(out)
    for i in range(1, m):
        out.add_(torch.mul(jac_t[..., i : i + 1], lam[..., i : i + 1, :], out=prod))
    return out


def select_factor(pick, fa, fb):
    """The chain-wise selection ``pick`` of two `small_factor` results of one kind (``None``
    unless both are there): every variant is per-chain arrays, so selecting them gives the
    factor of the selected matrices, bit for bit."""
    if fa is None or fb is None:
        return None
    if isinstance(fa, torch.Tensor) and isinstance(fb, torch.Tensor):
        return pick(fa, fb)
    if isinstance(fa, tuple) and isinstance(fb, tuple) and fa[0] == fb[0]:
        return (fa[0], *(pick(u, v) for u, v in zip(fa[1:], fb[1:])))
    return None


def small_solve(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``mat^{-1} rhs`` for batched ``m x m`` systems (``rhs`` is ``(..., m, k)``), bit for bit
    `torch.linalg.solve_ex`, by `small_factor`."""
    return factor_solve(small_factor(mat), rhs)
