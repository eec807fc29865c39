"""Matrix kernels of the Stiefel manifold's solves: symmetric parts, Gram matrices from their
upper blocks, fast transposes, reusable buffers, the Newton-Schulz polish, the Lyapunov solves
of the multiplier equation and the exponential of small skew matrices. Batched over leading
dimensions; shapes are Python ints (no host sync)."""

from __future__ import annotations

import torch

from .elementary import cos_sin, sine_ratio

__all__ = [
    "GRAM_BLOCKS",
    "NEUMANN_TERMS",
    "expm_skew",
    "gram",
    "gram_minus_eye",
    "identity",
    "lyapunov_exact",
    "lyapunov_neumann",
    "polish",
    "scratch_buffer",
    "skew",
    "sym",
    "transposed",
]

# Neumann terms of that series (the measured optimum in iterations x matmuls is flat in 1..4).
NEUMANN_TERMS = 2


def transposed(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a.mT`` as a contiguous tensor, fast on CPU.

    An elementwise op that reads a large matrix transposed (``a + a.mT``) walks memory with a
    stride of a whole row; on CPU that costs about 70 times a contiguous add for 1024 x 1024
    (8 ms against 0.1 ms), while the blocked 2-D transpose behind ``Tensor.copy_`` costs 0.5 ms.
    So large matrices are transposed one 2-D copy at a time.
    """
    n, k = a.shape[-2:]
    if out is None:
        out = a.new_empty((*a.shape[:-2], k, n))
    if a.device.type != "cpu" or n * k < 4096:
        return out.copy_(a.mT)
    for dst, src in zip(out.reshape(-1, k, n), a.reshape(-1, n, k)):
        dst.copy_(src.mT)
    return out


def scratch_buffer(scratch: dict | None, name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer, kept in ``scratch`` (keyed by name, shape, dtype, device)."""
    if scratch is None:
        return like.new_empty(shape)
    key = (name, tuple(shape), like.dtype, like.device)
    out = scratch.get(key)
    if out is None:
        out = scratch[key] = like.new_empty(shape)
    return out


#: ``(smallest p, blocks)``: a Gram matrix ``x^T x`` of a frame this wide is formed from the
#: upper triangle of ``blocks x blocks`` column blocks (the lower blocks are transposed copies):
#: ``b (b + 1) / 2`` block products, 10/16 of the flops for 4 blocks. Measured by
#: ``python -m validation.bench_gram`` (validation/results/bench_gram.json; CPU, float32, one
#: thread), against one product: 4 blocks 0.72-0.74x at 1024 x 1024 and 4608 x 512, 0.78-0.80x
#: at 512 x 512; 2 blocks 0.90-0.93x at 256 x 256; slower below p = 256 (1.2-1.4x at 128 x 128).
#: CPU only: on a GPU the blocks' extra kernel launches (about 10 us of host time each) cost more
#: than the flops they save (one 1024 x 1024 float32 product takes 89 us on an H200).
GRAM_BLOCKS = ((512, 4), (256, 2))


def gram(
    x: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor | None = None, blocks: int | None = None
) -> torch.Tensor:
    """``x^T x`` for ``(B, N, p)`` stacks, into ``out`` (``(B, p, p)``), using its symmetry.

    With ``tmp`` (a ``(B, p, p)`` buffer) the result is exactly symmetric (blocked GEMMs need not
    round an entry and its mirror image alike); without it only up to rounding. Writes into
    buffers, so it is not differentiable: the fused RATTLE step runs without autograd, while
    `gram_minus_eye` and [`Stiefel.residual_norm`][] stay differentiable. ``blocks``
    overrides `GRAM_BLOCKS` (for ``validation/bench_gram.py``); off the CPU the default
    is one block."""
    p = x.shape[-1]
    if blocks is None:
        on_cpu = x.device.type == "cpu"
        blocks = next((b for p_min, b in GRAM_BLOCKS if on_cpu and p >= p_min), 1)
    if blocks == 1:
        torch.bmm(x.mT, x, out=out)
        if tmp is not None:
            out.add_(transposed(out, out=tmp)).mul_(0.5)
        return out
    cuts = [p * i // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        rows = slice(cuts[i], cuts[i + 1])
        xi = x[..., rows]
        for j in range(i, blocks):
            cols = slice(cuts[j], cuts[j + 1])
            # (a product into the block view itself would be a graph break under dynamo)
            blk = out[..., rows, cols]
            blk.copy_(torch.bmm(xi.mT, x[..., cols]))
            if j > i:
                out[..., cols, rows].copy_(blk.mT)
            elif tmp is not None:
                blk.add_(blk.mT.clone()).mul_(0.5)
    return out


def sym(a: torch.Tensor) -> torch.Tensor:
    return (a + transposed(a)).mul_(0.5)


def skew(a: torch.Tensor) -> torch.Tensor:
    return (a - transposed(a)).mul_(0.5)


def identity(p: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(p, dtype=like.dtype, device=like.device)


def expm_skew(a: torch.Tensor, stacked: bool = False) -> torch.Tensor:
    r"""$e^{a}$ of skew-symmetric ``(..., p, p)`` matrices: closed forms for $p \le 3$.

    - $p = 1$: $a = 0$, $e^a = 1$.
    - $p = 2$: $a = \theta J$ with $J$ the quarter turn, $e^a = \cos\theta\, I + \sin\theta\, J$.
    - $p = 3$ (Rodrigues): with the axial vector $\omega$ of $a$ ($a u = \omega \times u$) and
      $\theta = |\omega|$, $e^a = I + \frac{\sin\theta}{\theta} a +
      \frac{1 - \cos\theta}{\theta^2} a^2$, $a^2 = \omega\omega^\top - \theta^2 I$; the two
      coefficients are written as ratios of sines ($\sin\theta/\theta$ and
      $(1 - \cos\theta)/\theta^2 = \tfrac12 (\sin(\theta/2) / (\theta/2))^2$, see
      [`sine_ratio`][manifold_langevin.manifolds.elementary.sine_ratio]), with no cancellation
      as $\theta \to 0$.
    - $p \ge 4$: ``torch.linalg.matrix_exp``.

    Elementwise work on ``(...,)`` tensors for $p \le 3$ (no batched small products, no host
    reads); only $a$'s strictly lower triangle is read, so it must be skew already. With
    ``stacked=True`` the matrices are stored entries first, ``(p, p, B)`` (see
    [`stacked`][manifold_langevin.manifolds.stacked]), and so is the result.
    """
    p = a.shape[1] if stacked else a.shape[-1]
    if p == 1:
        return torch.ones_like(a)
    if p > 3:
        if stacked:
            return torch.linalg.matrix_exp(a.permute(2, 0, 1)).permute(1, 2, 0).contiguous()
        return torch.linalg.matrix_exp(a)

    def entry(i: int, j: int) -> torch.Tensor:
        return a[i, j] if stacked else a[..., i, j]

    if p == 2:
        theta = entry(1, 0)
        c, s = cos_sin(theta)
        rows = ((c, -s), (s, c))
    else:
        w1, w2, w3 = entry(2, 1), entry(0, 2), entry(1, 0)
        theta2 = w1 * w1 + w2 * w2 + w3 * w3
        theta = torch.sqrt(theta2)
        c1 = sine_ratio(torch.sin(theta), theta)
        half_theta = 0.5 * theta
        half = sine_ratio(torch.sin(half_theta), half_theta)
        c2 = 0.5 * half * half
        d = 1.0 - c2 * theta2  # the diagonal: 1 + c2 (w_i^2 - theta^2) = 1 - c2 theta^2 + c2 w_i^2
        rows = (
            (d + c2 * w1 * w1, c2 * w1 * w2 - c1 * w3, c2 * w1 * w3 + c1 * w2),
            (c2 * w2 * w1 + c1 * w3, d + c2 * w2 * w2, c2 * w2 * w3 - c1 * w1),
            (c2 * w3 * w1 - c1 * w2, c2 * w3 * w2 + c1 * w1, d + c2 * w3 * w3),
        )
    if stacked:
        return torch.stack([torch.stack(r, 0) for r in rows], 0)
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def gram_minus_eye(t: torch.Tensor) -> torch.Tensor:
    """``sym(T^T T) - I``: symmetrised because blocked GEMMs need not round both halves alike."""
    return sym(t.mT @ t) - identity(t.shape[-1], t)


def polish(t: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz polar step ``T (3I - T^T T) / 2``: residual ``e -> O(e^2)``."""
    return t - 0.5 * (t @ gram_minus_eye(t))


def lyapunov_exact(k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Solve ``K^T D + D K = R`` exactly by vectorisation (``p^2 x p^2`` system, small ``p``)."""
    p = k.shape[-1]
    kt = k.mT
    eye = identity(p, k)
    # row-major vec: vec(K^T D) = (K^T kron I) vec(D), vec(D K) = (I kron K^T) vec(D)
    op = torch.einsum("...ac,bd->...abcd", kt, eye) + torch.einsum("ac,...bd->...abcd", eye, kt)
    op = op.reshape(*op.shape[:-4], p * p, p * p)
    rhs = r.reshape(*r.shape[:-2], p * p, 1)
    # LU has no half-precision kernels: solve in at least float32
    work = torch.promote_types(op.dtype, torch.float32)
    # solve_ex: no host sync; a singular system (a failing matrix) gives non-finite values there
    d = torch.linalg.solve_ex(op.to(work), rhs.to(work))[0].to(r.dtype)
    return sym(d.reshape(r.shape))


def lyapunov_neumann(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``K^T D + D K = R`` with ``K = I + E``: truncated Neumann series of ``(2I + 2E~)^{-1} R``."""
    step = 0.5 * r
    term = step
    for _ in range(NEUMANN_TERMS):
        w = e.mT @ term
        term = -0.5 * (w + w.mT)
        step = step + term
    return step
