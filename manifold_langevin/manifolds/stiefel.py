r"""The Stiefel manifold of orthonormal frames, with a k x k SHAKE solve and exact geodesics.

A point is a matrix ``M`` of shape ``(..., n, k)``; every leading index is an independent chain.
Tall or square matrices (``n >= k``) have orthonormal columns, $M^\top M = I_k$; wide ones
(``n < k``) have orthonormal rows, $M M^\top = I_n$. Every method works on the *tall form*
``T`` (``M`` itself, or ``M^T`` when wide) and transposes its result back, so there is one code
path. The metric is the Euclidean one of the embedding throughout.

With ``p = min(n, k)`` and ``T`` of shape ``(N, p)``, ``N = max(n, k)``:

* constraint $g(T) = T^\top T - I_p$ (flattened, ``p*p`` entries, the symmetric pairs
  counted twice, which is harmless for a residual);
* $J v = T^\top V + V^\top T$ and $J^\top \lambda = T (L + L^\top)$ with ``L`` the
  ``p x p`` unflattening of ``lambda``;
* tangent projection $P V = V - T\,\mathrm{sym}(T^\top V)$;
* SHAKE along the old normals $T' = \tilde T + T \Lambda$, ``Lambda`` symmetric, solved in
  ``p x p`` space (see [`Stiefel.shake`][]);
* the exact geodesic of Edelman, Arias & Smith (1998) through one ``2p x 2p`` matrix exponential
  (see [`Stiefel.geodesic`][]).
* a fused RATTLE step (SHAKE plus velocity projection, products shared, no kick projection needed),
  the A sub-step of the samplers (with ``geodesic=False``) and of the optimizer alike through
  [`drift`][manifold_langevin.integrators.substeps.drift] (see [`Stiefel.rattle`][]).

References:
    A. Edelman, T. A. Arias, S. T. Smith, "The geometry of algorithms with orthogonality
    constraints", SIAM J. Matrix Anal. Appl. 20(2), 1998, eq. (2.14).
    B. Leimkuhler, T. Vlaar, T. Pouchon, A. Storkey, "Better Training using Weight-Constrained
    Stochastic Dynamics", ICML 2021 (the o-CoLA SHAKE step).
"""

from __future__ import annotations

import torch

from .base import ConstrainedManifold
from .frames import (
    gram,
    gram_minus_eye,
    identity,
    lyapunov_exact,
    lyapunov_neumann,
    polish,
    scratch_buffer,
    sym,
    transposed,
)
from .stiefel_geodesic import tall_geodesic

__all__ = ["Stiefel"]

# Up to this p the Newton equation K^T D + D K = R is solved exactly (a p^2 x p^2 linear system
# per matrix, negligible next to the N x p products); above it, by a truncated Neumann series.
_EXACT_MAX_P = 8
# SHAKE budgets by dtype: (Newton, plain contraction). Measured on 1000 random tangent steps per
# case with spectral norm s = |X~ - M|_2 (shapes 3x1, 6x3, 10x3, 8x8, 20x8, 64x16, worst case):
#   exact Newton (p <= 8):  float64 to 1e-12 in <= 3 iterations at s = 0.3, <= 5 at s = 0.9;
#                           float32 to its tolerance in <= 2 at s = 0.3, <= 4 at s = 0.9;
#   Neumann Newton (p > 8): float64 <= 5 at s = 0.3, <= 7 at 0.5, <= 10 at 0.7;
#                           float32 <= 2 at s = 0.3, <= 4 at 0.7, <= 7 at 0.9;
#   contraction (99th pct): float64 <= 17 at s = 0.3, <= 29 at 0.5;
#                           float32 <= 6 at s = 0.3, <= 11 at 0.5.
# Near s = 1 a pure rotation reaches the fold of the equation and every method slows down.
_DEFAULT_ITERS = {
    torch.float64: (8, 24),
    torch.float32: (4, 12),
    torch.float16: (3, 8),
    torch.bfloat16: (3, 8),
}
# Iterations of the fused RATTLE step ([`Stiefel.rattle`][]) for p > 8: the contraction in p x p
# space from its second-order start, one p x p x p product each. Measured by
# ``python -m validation.rattle_budget`` (validation/results/rattle_budget.json): iterations
# until every trial (random tangent steps of spectral size s; a normal part changes nothing) is
# within the tolerance, at s = 0.1 / 0.2 / 0.3 / 0.5:
#   float32: 1024 x 1024 and 4608 x 512: 0 / 1 / 1 / 2;  256 x 256 and 512 x 128: 0-1 / 1 / 2 / 3;
#            near-square 130 x 128: 1 / 2 / 3 / 6;  20 x 10: 2 / 3 / 4 / 7;  12 x 10: 2 / 3 / 5 / 9;
#   float64: 1024 x 1024: 3 / 5 / 6 / 10;  512 x 128: 6 / 8 / 10 / 15;
#            near-square 130 x 128 and 260 x 256: 7 / 10 / 14-15 / 27-28;
#            20 x 10: 7 / 10 / 13 / 21;  12 x 10: 7 / 11 / 16 / 30.
# Near-square frames are the slowest. Below p = 128 the p x p x p products are negligible next to
# the N x p x p ones and to the per-call overhead, and the budgets are generous (float32 s = 0.5,
# float64 s = 0.3); from p = 128 on, each iteration costs as much as a sixth of the rest of a
# square step, and the budget covers s = 0.2 for every shape (0.3 for square and tall frames in
# float32). Half precisions are not measured and keep the budgets of the earlier, weaker start
# (one iteration more than float32's then). ``max_iter`` overrides all of them.
_RATTLE_ITERS = {  # dtype: (p < 128, p >= 128)
    torch.float64: (22, 10),
    torch.float32: (9, 2),
    torch.float16: (6, 3),
    torch.bfloat16: (6, 3),
}
_RATTLE_LARGE_P = 128


def _check_matrix(x: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"Stiefel points are matrices (..., n, k), got shape {tuple(x.shape)}")


def _is_wide(x: torch.Tensor) -> bool:
    # shapes are Python ints: no host sync
    _check_matrix(x)
    return x.shape[-2] < x.shape[-1]


def _tall(x: torch.Tensor, wide: bool) -> torch.Tensor:
    return x.mT if wide else x


class Stiefel(ConstrainedManifold):
    r"""Orthonormal frames $\{M \in \mathbb{R}^{n\times k} : M^\top M = I_k\}$ (``n >= k``).

    Wide matrices (``n < k``) are held to $M M^\top = I_n$ instead (orthonormal rows, as in
    the paper's o-CoLA for wide weight matrices). Points have shape ``(..., n, k)`` with any
    leading batch dimensions; each matrix is an independent chain. Euclidean metric of
    $\mathbb{R}^{n\times k}$, so ``egrad2rgrad`` is [`proju`][] and the invariant
    measure of the Langevin dynamics is ``exp(-U/tau)`` times the Haar (surface) measure.

    Below ``T`` is the tall form of a point (``M``, or ``M^T`` when wide), of shape ``(N, p)``
    with ``N = max(n, k)``, ``p = min(n, k)``.

    Args:
        tol: SHAKE tolerance on [`residual_norm`][]; ``None`` uses
            [`default_tolerance`][manifold_langevin.manifolds.base.default_tolerance] for the dtype
            and ``N``.
        max_iter: SHAKE iteration budget. ``None`` (default) picks it by dtype: for Newton 8 in
            float64 and 4 in float32 (3 in half precision), for the contraction 24 and 12.
            Newton then reaches the tolerance for spectral step sizes ``|X~ - M|_2`` up to 0.9
            when ``p = min(n, k) <= 8``; above, up to 0.4 (float64) / 0.5 (float32) for
            near-square frames, the slowest, and 0.45-0.7 / 0.6-0.7 for tall and square ones
            (``python -m validation.shake_reach``, 200 random steps per case); the contraction
            up to about 0.35 (float64) / 0.5 (float32). Larger steps are flagged as failed.
            With ``None`` the attribute ``max_iter`` holds the float64 budget.
        newton: ``True`` (default) for Newton's method on the multipliers; ``False`` for the
            plain contraction ``Lambda <- Lambda - F(Lambda)/2`` (cheaper per iteration, 3-4
            times as many iterations).

    Examples:
        >>> st = Stiefel()
        >>> m = st.random(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> bool(st.residual_norm(m).max() < 1e-14)
        True
        >>> v = st.proju(m, torch.ones_like(m))
        >>> m1, ok = st.shake(m, m + 0.1 * v)
        >>> bool(ok.all()), bool(st.residual_norm(m1).max() <= st.tolerance(m))
        (True, True)
    """

    ndim = 2
    name = "Stiefel"
    has_geodesic = True
    rattle_absorbs_normal = True  # the fused step's Lambda_0 (see rattle)
    cheap_geodesic = False  # two matrix exponentials against a handful of products
    flags_nonfinite = True  # a NaN anywhere reaches the residual that the flags test
    constant_gram = True  # the Gram matrix of T^T T - I is a fixed function of T^T T = I

    def __init__(
        self,
        *,
        tol: float | None = None,
        max_iter: int | None = None,
        newton: bool = True,
    ):
        if not isinstance(newton, bool):  # its own solvers: Newton's or the plain contraction
            raise ValueError(f"Stiefel takes newton=True or False, got {newton!r}")
        if max_iter is None:
            default = _DEFAULT_ITERS[torch.float64][not newton]
        super().__init__(tol=tol, max_iter=default if max_iter is None else max_iter, newton=newton)
        self._auto_iter = max_iter is None

    def extra_repr(self) -> str:
        budget = "auto" if self._auto_iter else str(self.max_iter)
        return f"max_iter={budget}, newton={self.newton}"

    def _iters(self, x: torch.Tensor, max_iter: int | None) -> int:
        if max_iter is not None:
            return int(max_iter)
        if self._auto_iter and x.dtype in _DEFAULT_ITERS:
            return _DEFAULT_ITERS[x.dtype][not self.newton]
        return self.max_iter

    def _rattle_iters(self, x: torch.Tensor, max_iter: int | None) -> int:
        if max_iter is not None:
            return int(max_iter)
        if not self._auto_iter:
            return self.max_iter
        p = min(x.shape[-2:])
        if self.newton and p <= _EXACT_MAX_P:
            return _DEFAULT_ITERS.get(x.dtype, _DEFAULT_ITERS[torch.float64])[0]
        budget = _RATTLE_ITERS.get(x.dtype, _RATTLE_ITERS[torch.float64])
        return budget[p >= _RATTLE_LARGE_P]

    # ------------------------------------------------------------------ constraint view
    def constraint(self, x: torch.Tensor) -> torch.Tensor:
        r"""Residual $g = T^\top T - I_p$, flattened.

        Args:
            x: points, shape ``(..., n, k)``.

        Returns:
            Shape ``(..., p*p)``, ``p = min(n, k)``.
        """
        t = _tall(x, _is_wide(x))
        return (t.mT @ t - identity(t.shape[-1], t)).flatten(-2)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``Dg(x)``, shape ``(..., p*p, n*k)``, built from [`jvp`][] (small problems)."""
        n, k = x.shape[-2:]
        basis = torch.eye(n * k, dtype=x.dtype, device=x.device).reshape(n * k, n, k)
        return self.jvp(x.unsqueeze(-3), basis).mT

    def jvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r"""Derivative of the constraint: $J v = T^\top V + V^\top T$, flattened.

        Args:
            x: points, shape ``(..., n, k)``.
            v: ambient vectors, same shape.

        Returns:
            Shape ``(..., p*p)``.
        """
        wide = _is_wide(x)
        t, vt = _tall(x, wide), _tall(v, wide)
        a = t.mT @ vt
        return (a + a.mT).flatten(-2)

    def vjp(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        r"""The adjoint of [`jvp`][]: $J^\top \lambda = T (L + L^\top)$.

        ``L`` is ``lam`` unflattened to ``p x p``.

        Args:
            x: points, shape ``(..., n, k)``.
            lam: multipliers, shape ``(..., p*p)``.

        Returns:
            Shape ``(..., n, k)`` (transposed back for wide points).
        """
        wide = _is_wide(x)
        t = _tall(x, wide)
        p = t.shape[-1]
        ell = lam.unflatten(-1, (p, p))
        return _tall(t @ (ell + ell.mT), wide)

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Tangent (RATTLE) projection $P U = U - T\,\mathrm{sym}(T^\top U)$.

        This is the orthogonal projection onto $\ker J$ when $T^\top T = I$.

        Args:
            x: points, shape ``(..., n, k)``.
            u: ambient vectors, same shape (broadcasting allowed).

        Returns:
            Tangent vectors at ``x``, shape of ``u``.
        """
        wide = _is_wide(x)
        t, ut = _tall(x, wide), _tall(u, wide)
        return _tall(ut - t @ sym(t.mT @ ut), wide)

    def residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-matrix violation $\max_{ij} |(T^\top T - I)_{ij}|$, shape ``(...)``."""
        t = _tall(x, _is_wide(x))
        return (t.mT @ t - identity(t.shape[-1], t)).abs().amax(dim=(-2, -1))

    def _inner_size(self, x: torch.Tensor) -> int:
        # each entry of T^T T is a sum over the N rows of the tall form
        return max(x.shape[-2], x.shape[-1])

    # ------------------------------------------------------------------ SHAKE
    def shake(
        self, x: torch.Tensor, x_tilde: torch.Tensor, *, max_iter: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""SHAKE along the old normals: $T' = \tilde T + T \Lambda$, $T'^\top T' = I$.

        ``Lambda`` is symmetric ``p x p``. With the actual Gram matrix $A = T^\top T$ (not
        assumed to be ``I``, so float32 round-off in ``x`` is corrected rather than accumulated),
        $B = T^\top \tilde T$ and $C = \tilde T^\top \tilde T - I$, the condition is

        $$
        F(\Lambda) = \Lambda A \Lambda + B^\top \Lambda + \Lambda B + C = 0.
        $$

        Newton's step solves the Lyapunov-type equation $K^\top D + D K = -F(\Lambda)$,
        $K = B + A\Lambda = I + E$, then $\Lambda \leftarrow \Lambda + D$:

        * ``p <= 8``: exactly, as a ``p^2 x p^2`` linear system per matrix (``solve_ex``, no
          sync). Plain Newton: quadratic convergence, 3-5 iterations up to ``|X~ - M|_2 = 0.9``.
        * ``p > 8``: with $\mathcal E(D) = (E^\top D + D E)/2$ the operator is
          $2(\mathcal I + \mathcal E)$, applied by the truncated Neumann series
          $D = \sum_{j=0}^{2} (-\mathcal E)^j (-F/2)$. ``E``'s skew part is the rotational
          part of the step, its symmetric part is ``O(step^2)``, so each iteration shrinks the
          error by about $|E|^3$ plus Newton's quadratic term; two ``p x p`` products per
          term.
        * ``newton=False``: the plain contraction $\Lambda \leftarrow \Lambda -
          F(\Lambda)/2$ (rate about $|E|$; the released o-CoLA scripts' iteration).

        All iteration work is ``p x p``. The ``N x p`` products are ``A``, ``B``, ``C``, the
        update ``T Lambda`` and the residual check of ``T'``. For a square ``p x p`` matrix with
        ``p > 8`` a solve costs ``4 * iters + 3`` products of size ``p^3`` (19 with float32's
        default 4 iterations, 35 with float64's 8), or ``2 * iters + 5`` for the contraction.

        A fixed number of iterations is run (no data-dependent exit, so no host sync). A step
        that is too large for the curvature has no solution; its iterates diverge or stall, the
        residual stays large or non-finite and that matrix is flagged. Matrices never mix.

        Args:
            x: the old points, shape ``(..., n, k)``, on the manifold to tolerance.
            x_tilde: unconstrained updates, same shape.
            max_iter: iteration budget (default: the instance's, see the class docstring).

        Returns:
            ``(x_new, converged)``: ``x_new`` of the shape of ``x``; ``converged`` boolean of the
            batch shape, ``True`` where the residual of ``x_new`` itself is finite and at most
            [`tolerance`][manifold_langevin.manifolds.ConstrainedManifold.tolerance]. Where
            ``False``, ``x_new`` is garbage (maybe NaN) to be discarded.
        """
        iters = self._iters(x, max_iter)
        wide = _is_wide(x)
        t, tt = _tall(x, wide), _tall(x_tilde, wide)
        p = t.shape[-1]
        eye = identity(p, t)
        a = sym(t.mT @ t)
        b = t.mT @ tt
        c = gram_minus_eye(tt)
        bt = b.mT
        lam = None
        for _ in range(iters):
            if lam is None:
                # Lambda = 0: F = C and K = B (skips two products with a zero matrix)
                f, e = c, b - eye
            else:
                la = lam @ a
                g = (bt + 0.5 * la) @ lam  # F = G + G^T + C, exactly symmetric
                f = g + g.mT + c
                e = b + la.mT - eye  # K - I with K = B + A Lambda  ((Lambda A)^T = A Lambda)
            if not self.newton:
                step = -0.5 * f
            elif p <= _EXACT_MAX_P:
                step = lyapunov_exact(e + eye, -f)
            else:
                step = lyapunov_neumann(e, -f)
            lam = step if lam is None else lam + step
        x_new = tt + t @ lam
        res = self.residual_norm(x_new)
        converged = torch.isfinite(res) & (res <= self.tolerance(x))
        return _tall(x_new, wide), converged

    # ------------------------------------------------------------------ RATTLE
    def rattle(
        self,
        x: torch.Tensor,
        p: torch.Tensor,
        dt: float,
        *,
        scale: float = 1.0,
        max_iter: int | None = None,
        scratch: dict | None = None,
        project: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""One RATTLE step of size ``dt``, fused: SHAKE, then the projected velocity.

        The same map as ``x' = shake(x, x + dt p)``, ``p' = proju(x', (x' - x) / dt)`` (times
        ``scale``), with the products shared between the two and the multiplier solved in
        ``p x p`` space. ``p`` need not be tangent: adding a normal vector $T\Sigma$
        (``Sigma`` symmetric) to ``dt p`` only shifts the multiplier by ``-Sigma``, so ``x'`` and
        ``p'`` depend on ``p`` through its tangent part alone, and a kick
        $P(x)(p + hF)$ followed by this step may skip its projection.

        With ``T`` the tall form of ``x``, ``U`` that of ``p``, $\tilde T = T + \delta U$,
        $A = T^\top T$, $B = T^\top \tilde T$ and
        $C = \tilde T^\top \tilde T - I$, the SHAKE condition for
        $T' = \tilde T + T\Lambda$ is

        $$
        F(\Lambda) = \Lambda A \Lambda + B^\top \Lambda + \Lambda B + C = 0.
        $$

        It is solved by the contraction $\Lambda \leftarrow \Lambda - F(\Lambda)/2$ (the
        released scripts' iteration, here on ``p x p`` matrices: one product each, with
        $\Lambda A \Lambda$ taken as $\Lambda^2$, a change of
        $\Lambda (A - I) \Lambda$, far below the tolerance). ``A`` is never formed: it
        enters ``F`` only through that term. The start is correct to second order in the step,
        for any normal part: with $\Sigma_\delta = \mathrm{sym}(B) - I$ (the normal part
        of $\delta U$ plus the residual $A - I$) and
        $W = \mathrm{skew}(B)$ (its rotational part),

        $$
        \Lambda_0 = -C/2 + \mathrm{sym}\big(\Sigma_\delta (\Sigma_\delta/2 + W)\big),
        $$

        where $-C/2$ alone is the second-order solution of a tangent step and the product
        removes the second-order terms a normal part adds to it. Since the iteration is the same
        in the multiplier shifted by a normal part, the iteration count then depends on the
        tangent part alone (measured: identical with and without a normal part); the error
        shrinks by about $\delta |\mathrm{skew}(T^\top U)|$ per iteration. For ``p <= 8``
        (and ``newton=True``) the iteration is Newton's instead, with the exact ``p^2 x p^2``
        Lyapunov solve of [`shake`][]. The budget is fixed (no host sync), chosen from
        measurements (``python -m validation.rattle_budget``; see ``_RATTLE_ITERS``): in
        float32 the tolerance is reached for random steps up to a spectral size
        $|\delta P U|_2$ of 0.2 for ``p >= 128`` (2 iterations; 0.3 unless the frame is
        near-square) and 0.5 below (9), in float64 up to 0.2 for ``p >= 128`` (10) and 0.3 below
        (22); ``max_iter`` (here or in the constructor) overrides it. Larger steps are flagged
        (for ``p > 8`` this contraction reaches less far than [`shake`][]'s Newton
        iteration, which converges up to a spectral step of 0.4 to 0.7 in float64 and 0.5 to
        0.7 in float32 (see the class docstring): a sampler that takes RATTLE steps that large
        should raise ``max_iter`` or keep the default exact geodesic). Convergence is judged on
        the residual of ``x'`` itself, computed directly.

        The velocity is $p' = (d - x'\,\mathrm{sym}(M))/\delta$ with $d = x' - T$
        and $M = x'^\top d$. From ``p >= 128`` on, ``M`` is assembled as
        $x'^\top x' - B^\top - \Lambda$ (the residual's product is reused, and
        $\Lambda A$ is taken as $\Lambda$) instead of being multiplied out: an
        error along the normals $x'\,\mathrm{sym}(\cdot)$ of order
        $\varepsilon\sqrt N/\delta$, which no later RATTLE step sees (see above).

        Cost: ``B``, ``C``, ``x'``, the residual and the projection are five ``N x p x p``
        products (six below ``p = 128``; four with ``project=False``); the start and each
        iteration add one ``p x p x p`` product: 8 products for a square ``1024 x 1024`` float32
        matrix, 7 without the projection (SHAKE followed by [`proju`][] takes 23 with Newton
        and 25 with the released scripts' iteration). The two Gram matrices ``C`` and the
        residual are formed from their upper column blocks (`gram`: 10/16 of a product's
        flops from ``p = 512`` on, 3/4 from ``p = 256``). Large transposes go through
        `transposed`.

        Args:
            x: points, shape ``(..., n, k)``, on the manifold to tolerance.
            p: velocities (any ambient vectors), same shape.
            dt: the step.
            scale: factor applied to the returned velocity (e.g. a friction damping).
            max_iter: iteration budget.
            scratch: optional dict, owned by the caller, in which the ``p x p`` temporaries are
                kept from one call to the next (on CPU a fresh multi-megabyte buffer costs page
                faults worth several elementwise passes). The results never alias it.
            project: ``False`` returns the velocity ``scale * (x_new - x) / dt`` without its
                tangent projection, saving the projection's product (two below ``p = 128``).
                Its tangent part is the RATTLE velocity; its normal part is
                $O(\delta |p|^2)$ and harmless to a caller whose next use of it is another
                RATTLE step (which sees only the tangent part, see above) or a linear map such as
                the O step: CoLA does this.

        Returns:
            ``(x_new, p_new, converged)`` as [`shake`][] returns them; ``p_new`` is
            ``scale * P(x_new)((x_new - x) / dt)`` (without ``P`` if ``project=False``).
        """
        _check_matrix(x)
        iters = self._rattle_iters(x, max_iter)
        wide = _is_wide(x)
        batch = x.shape[:-2]
        t, u = _tall(x, wide), _tall(p, wide)
        big, k = t.shape[-2:]
        t = t.reshape(-1, big, k)
        u = u.reshape(-1, big, k)
        exact = self.newton and k <= _EXACT_MAX_P

        def buf(name):
            return scratch_buffer(scratch, name, (t.shape[0], k, k), t)

        # T~ = T + dt U: it becomes x' in place below (the one N x p buffer returned)
        x_new = torch.add(t, u, alpha=dt)
        b = torch.bmm(t.mT, x_new, out=buf("b"))  # B = T^T T~
        tmp = buf("tmp")
        c = gram(x_new, buf("c"), tmp)  # C = T~^T T~ - I, exactly symmetric
        c.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        bt = transposed(b, out=buf("bt"))
        # Lambda_0 = -C/2 + sym(Sd (Sd/2 + W)) with Sd = sym(B) - I, W = skew(B)
        sd = torch.add(b, bt, out=tmp).mul_(0.5)
        sd.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        h = torch.add(b, bt, alpha=-1 / 3, out=buf("h")).mul_(0.75)  # (3B - B^T)/4
        h.diagonal(dim1=-2, dim2=-1).sub_(0.5)  # Sd/2 + W
        g = torch.bmm(sd, h, out=buf("g"))
        lam = torch.add(g, transposed(g, out=tmp), out=buf("lam")).mul_(0.5)
        lam.sub_(c, alpha=0.5)
        for _ in range(iters):
            torch.add(bt, lam, alpha=0.5, out=h)
            torch.baddbmm(c, h, lam, beta=0.5, out=g)
            f = g.add_(transposed(g, out=tmp))  # F = G + G^T + C, G = (B^T + Lambda/2) Lambda
            if exact:  # Newton: K^T D + D K = -F with K = B + A Lambda (A taken as I)
                lam.add_(lyapunov_exact(b + lam, -f))
            else:
                lam.sub_(f, alpha=0.5)
        x_new.baddbmm_(t, lam)  # x' = T~ + T Lambda
        d = x_new - t
        r = gram(x_new, h)
        if not project:
            v = d.mul_(scale / dt)
        else:
            if k >= _RATTLE_LARGE_P:
                # M = x'^T (x' - T) = x'^T x' - B^T - Lambda A, with Lambda A taken as Lambda
                m = torch.sub(r, bt, out=g).sub_(lam)
            else:
                m = torch.bmm(x_new.mT, d, out=g)
            m.add_(transposed(m, out=tmp))
            v = d.baddbmm_(x_new, m, beta=scale / dt, alpha=-0.5 * scale / dt)
        r.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        res = r.abs_().amax(dim=(-2, -1))
        converged = torch.isfinite(res) & (res <= self.tolerance(x))
        shape = (*batch, big, k)
        x_new, v = x_new.reshape(shape), v.reshape(shape)
        return _tall(x_new, wide), _tall(v, wide), converged.reshape(batch)

    # ------------------------------------------------------------------ geodesic
    def geodesic(
        self, x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Exact geodesic of the embedded (Euclidean) metric for time ``t``.

        Edelman, Arias & Smith (1998), eq. (2.14): with $A = T^\top V$ (skew for tangent
        ``V``), $S = V^\top V$ and the ``2p x 2p`` block
        $\mathcal A = \begin{pmatrix} A & -S \\ I & A \end{pmatrix}$,

        $$
        T(t) = [T, V]\, e^{t\mathcal A} \begin{pmatrix} I \\ 0 \end{pmatrix} e^{-tA},
        \qquad
        V(t) = \dot T(t) = [T, V]\, e^{t\mathcal A} \begin{pmatrix} 0 \\ I \end{pmatrix}
        e^{-tA},
        $$

        the second because $\mathcal A \binom{I}{0} - \binom{I}{0} A = \binom{0}{I}$.
        The flow preserves $|V|$, tangency and the constraint, and ``t -> -t`` reverses it.
        Only ``A``'s skew part is used, and the result gets one Newton-Schulz polar step
        $T \leftarrow T (3I - T^\top T)/2$, a tangent projection of ``V(t)`` and a
        rescaling to $|V(t)| = |V|$: round-off-level corrections that keep float32 from
        drifting over long runs.

        The exponential is taken of the similar block
        $D^{-1}\mathcal A D = \begin{pmatrix} A & -S/c \\ cI & A \end{pmatrix}$,
        $D = \mathrm{diag}(I, I/c)$, $c = |V|$, whose blocks are of the size of $|V|$ rather
        than $|V|^2$ (so $[T, V] e^{t\mathcal A} = [T, V/c]\, e^{tD^{-1}\mathcal A D}
        \mathrm{diag}(I, cI)$): fewer squarings for the same flow.

        Square matrices ($n = p$, the orthogonal group) take the same flow in its short form:
        $V = T A$, $T(t) = T e^{tA}$, $V(t) = T(t) A$. The ``p x p`` skew exponentials are in
        closed form for $p \le 3$ (Rodrigues' formula for SO(3), see
        [`expm_skew`][manifold_langevin.manifolds.frames.expm_skew]).

        Frames of at most three columns (``p <= 3``: SO(2), SO(3), V(n, 2), V(n, 3), ...),
        from 256 matrices on (384 square ones; CPU) or at any count (other devices), are
        computed with the
        matrices stored entries first (see
        [`stacked`][manifold_langevin.manifolds.stacked]): every small product becomes a few
        multiply-adds vectorised over the chains, and the ``2p x 2p`` exponential is a
        degree-19 Taylor polynomial with scaling and squaring chosen per matrix on the device
        ([`stacked.expm`][manifold_langevin.manifolds.stacked.expm]; exact to rounding for
        $\|tD^{-1}\mathcal A D\|_1 \le 80$, which holds whenever $t|V| \le 23$ since that
        norm is at most $2\sqrt{p}\, t|V|$: three and a half turns per call). No host
        synchronisation, also on CUDA, so the sampling loop can be captured in a CUDA graph.
        Wider frames, and fewer matrices on CPU (where the stacked layout's extra kernel launches
        cost more than its vectorisation saves), use torch's batched products and
        ``torch.linalg.matrix_exp``, which copies its norms to the host on CUDA to choose a
        Taylor degree (one synchronisation per call, inside torch). The two layouts give the
        same flow to rounding.

        Cost: a ``2p x 2p`` and a ``p x p`` exponential and about ten ``N x p x p`` products,
        several times a RATTLE step's cost (measured on the performance page).

        Args:
            x: points, shape ``(..., n, k)``.
            v: tangent vectors at ``x``, same shape.
            t: time, a float or a tensor broadcastable to the batch shape.

        Returns:
            ``(x_t, v_t)``, each of the shape of ``x`` (broadcast with ``t``'s batch shape).
        """
        wide = _is_wide(x)
        x_t, v_t = tall_geodesic(_tall(x, wide), _tall(v, wide), t)
        return _tall(x_t, wide), _tall(v_t, wide)

    # ------------------------------------------------------------------ geoopt interface
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        r"""Nearest point: the polar factor $U V^\top$ of the SVD $x = U \Sigma V^\top$.

        Uses an SVD (which may synchronise on some devices); meant for initialisation and
        `geoopt.optim.RiemannianSGD.stabilize`, not for the sampling hot path.
        """
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        return u @ vh

    def random(self, *size, dtype=None, device=None, generator=None) -> torch.Tensor:
        """Haar-distributed points of shape ``size = (..., n, k)``.

        QR of a standard Gaussian in tall form with the signs of ``diag(R)`` made positive (this
        makes ``Q`` exactly Haar), then one Newton-Schulz polar step to bring float32 round-off
        down (it commutes with rotations, so it keeps the Haar law). Wide shapes get the
        transpose of the tall factor.

        Args:
            *size: the shape, as integers or one tuple; at least two dimensions.
            dtype: floating dtype (default: torch's default dtype).
            device: device.
            generator: optional ``torch.Generator``.
        """
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        if len(size) < 2:
            raise ValueError(f"Stiefel points need at least 2 dimensions, got size {size}")
        *batch, n, k = size
        wide = n < k
        rows, cols = (k, n) if wide else (n, k)
        z = torch.randn(*batch, rows, cols, dtype=dtype, device=device, generator=generator)
        q, r = torch.linalg.qr(z)
        d = torch.diagonal(r, dim1=-2, dim2=-1)
        q = q * torch.where(d < 0, -1.0, 1.0).to(q.dtype).unsqueeze(-2)
        q = polish(q)
        return q.mT.contiguous() if wide else q
