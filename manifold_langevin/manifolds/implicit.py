"""Any user constraint ``g(x) = 0``, with Jacobians from autograd (or from the user)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import ConstrainedManifold

__all__ = ["ImplicitManifold"]

BATCHED_ROWS_MAX_CHAINS = 2048
"""Up to this many chains the ``m >= 3`` rows of an autodiff Jacobian come from one batched
reverse pass; beyond, ``m`` plain passes were measured as fast or faster."""


class ImplicitManifold(ConstrainedManifold):
    r"""The level set ``{x in R^n : g(x) = 0}`` of a user function ``g``.

    ``g`` maps points ``(..., n)`` to residuals ``(..., m)`` (a scalar constraint may return
    ``(...,)``); it must act row by row (no mixing of batch entries) and be written in torch
    operations so that autograd can differentiate it. ``J = Dg`` must have full row rank ``m``
    on the level set. The tangent projection solves the ``m x m`` Gram system; SHAKE runs Newton's
    method on the ``m`` multipliers,

    $$
    \lambda_{k+1} = \lambda_k - \big(J(y_k) J(x)^T\big)^{-1} g(y_k), \qquad
    y_k = \tilde x + J(x)^T \lambda_k,
    $$

    (or with the matrix frozen: at the first iterate, ``J(\tilde x) J(x)^T``, ``newton=False``;
    at the ``j``-th after ``j`` Newton iterates, ``newton=j``; at the old point,
    ``J(x) J(x)^T``, ``newton="frozen"``) within a budget of ``max_iter`` iterates. A chain
    stops at the first iterate whose residual ``max_i |g_i|`` is at most ``tol / 4`` (its
    multipliers are held from then on: `STOP_FRACTION`); on CPU, eagerly, the solve ends at the
    first iterate at which every chain has stopped (one read of the largest residual per
    iterate), while on accelerators and under ``torch.compile`` it runs the whole budget without
    host synchronisation, to the same numbers. A chain converged when ``max_i |g_i| <= tol`` at
    the end. A step's points are therefore within a quarter of the tolerance of the level set
    rather than at rounding: a smaller ``tol`` solves further.

    Cost: each Newton iterate evaluates ``g`` once and its Jacobian by reverse passes: one for
    ``m = 1``, ``m`` passes seeded with the unit vectors, or for ``m >= 3`` and up to
    `BATCHED_ROWS_MAX_CHAINS` chains one batched pass over the ``m`` rows (``is_grads_batched``:
    the backward of ``g`` then runs under vmap, and if that fails once the rows come from ``m``
    separate passes from then on).
    The ``m x m`` systems are solved by
    `small_factor` (a reciprocal for ``m = 1``),
    bit for bit as by LAPACK; a matrix used for several solves (the kept iteration matrix of
    the frozen, quasi-Newton and ``newton=k`` iterations, a point's Gram matrix) is
    factorised once. The Jacobian at the point a RATTLE step returns is formed with its
    residual and reused by the projections and the next SHAKE solve from that point. A hand-written
    ``jacobian`` replaces autodiff altogether, often the larger saving for many chains (the
    unit sphere's ``2 x`` took its sampler step at 10^4 chains from 0.47x to 0.58x the speed of
    the closed-form `Sphere` step, ``python -m validation.bench_sampler --side-by-side-only``;
    check it once with [`check_jacobian`][manifold_langevin.ImplicitManifold.check_jacobian]).

    Args:
        g: the constraint function.
        tol: absolute tolerance on ``max_i |g_i(x)|`` (default by dtype: 1e-12 in float64, about
            1e-6 in float32).
        max_iter: the budget of iterations per solve.
        newton: the iteration.
            ``True`` (default): Newton's, a Jacobian at every iterate.
            An integer ``j >= 1``: Newton's for the first ``j`` iterates, then the ``j``-th
            iterate's matrix kept for the rest of the budget: ``newton=3`` keeps Newton's
            reach on most sets.
            ``False`` (the same as ``1``): quasi-Newton, the Jacobian formed once per solve (at
            the first iterate), then only ``g`` evaluated: cheaper iterations, but linear
            convergence.
            ``"frozen"``: classic SHAKE, the iteration matrix the old point's Gram matrix,
            which the projections factorise anyway, so that a solve forms no Jacobian at all
            (the cheapest; the slowest convergence on curved sets, the same as quasi-Newton's
            on spheres). Within the default budget, on the validation problems' sets (sizes
            of order 1) and molecules (steps in bond lengths), Newton solves every random
            tangent step up to 0.5 to 0.7 (0.1 on the flattest ellipsoid), ``newton=3`` the
            same in float32 and 0.5 where Newton reaches 0.7 in float64, quasi-Newton up
            to 0.05 to 0.2 in float64 and 0.1 to 0.5 in float32, and the frozen matrix up to
            0.01 to 0.1 in float64 and 0.05 to 0.5 in float32
            (``python -m validation.implicit_reach``). A molecular dynamics step moves atoms
            by about a hundredth of a bond, within all of them. Since each chain stops at
            the first iterate within ``tol / 4``, Newton's quadratic convergence stops a
            solve after fewer iterates than the cheaper iterations' linear one, which then
            pay little or nothing: per BAOAB step, timed in turn on the side-by-side
            benchmark's problems (``python -m validation.bench_shake_iterations``),
            ``newton=3``, quasi-Newton and the frozen matrix run the rigid trimer at 0.98x,
            0.93x and 0.93x Newton's steps per second and the 10-bead chain at 1.00x, 1.03x
            and 1.15x.
        jacobian: optional ``Dg``: a callable mapping points ``(..., n)`` to ``(..., m, n)``
            (``(..., 1, n)`` or ``(..., n)`` for a scalar constraint), row by row like ``g``.
            It is trusted as given;
            [`check_jacobian`][manifold_langevin.ImplicitManifold.check_jacobian] compares it
            with autodiff at points of your choice. For the Fixman term
            ([`log_det_gram`][manifold_langevin.ImplicitManifold.log_det_gram], ``measure=
            "conditional"``) it must itself be written in differentiable torch operations.

    Examples:
        >>> ellipse = ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> ellipse.residual_norm(x)
        tensor([0., 0.], dtype=torch.float64)
    """

    ndim = 1
    name = "Implicit"

    def __init__(
        self,
        g: Callable[[torch.Tensor], torch.Tensor],
        *,
        tol: float | None = None,
        max_iter: int = 6,
        newton: bool | int | str = True,
        jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(tol=tol, max_iter=max_iter, newton=newton)
        if not callable(g):
            raise TypeError(f"g must be callable, got {type(g).__name__}")
        if jacobian is not None and not callable(jacobian):
            raise TypeError(f"jacobian must be callable or None, got {type(jacobian).__name__}")
        self.g = g
        self.user_jacobian = jacobian
        # cleared for good the first time g cannot be differentiated under vmap
        self._batched_rows = True

    def extra_repr(self) -> str:
        return getattr(self.g, "__name__", "g")

    def constraint(self, x: torch.Tensor) -> torch.Tensor:
        out = self.g(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"g must return a tensor (..., m), got {type(out).__name__}")
        if out.dim() == x.dim() - 1:
            out = out.unsqueeze(-1)
        if out.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"g must map (..., n) to (..., m); for input {tuple(x.shape)} it returned "
                f"{tuple(out.shape)}"
            )
        return out

    def jacobian(self, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """``Dg(x)``, shape ``(..., m, n)``; ``create_graph=True`` keeps it differentiable in
        ``x`` (for the gradient of the Fixman term [`log_det_gram`][])."""
        if self.user_jacobian is not None:
            return self._user_jacobian(x)
        return self._autodiff(x, create_graph)[1]

    def _value_and_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.user_jacobian is not None:
            g = self.constraint(x)
            return g, self._user_jacobian(x, g.shape[-1])
        g, jac = self._autodiff(x, False)
        return g.detach(), jac

    def _user_jacobian(self, x: torch.Tensor, m: int | None = None) -> torch.Tensor:
        """The user's ``Dg(x)`` as ``(..., m, n)`` (shape checks on Python ints only)."""
        jac = self.user_jacobian(x)
        if not isinstance(jac, torch.Tensor):
            raise TypeError(f"jacobian must return a tensor (..., m, n), got {type(jac).__name__}")
        if jac.dim() == x.dim() and (m is None or m == 1):
            jac = jac.unsqueeze(-2)  # a scalar constraint's gradient (..., n)
        rows = jac.shape[-2] if m is None and jac.dim() == x.dim() + 1 else m
        if jac.shape != (*x.shape[:-1], rows, x.shape[-1]):
            raise ValueError(
                f"jacobian must map (..., n) to (..., m, n) with m the number of constraints; "
                f"for input {tuple(x.shape)} it returned {tuple(jac.shape)}"
                + ("" if m is None else f" (g returned m = {m})")
            )
        return jac

    def _autodiff(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x), Dg(x))`` from one evaluation of ``g``."""
        # g acts row by row, so row i of every chain's Jacobian is the gradient of sum_chains g_i:
        # one reverse pass per row, or all m at once with is_grads_batched (vmap over the
        # backward pass), both far cheaper than torch.func's vmap(jacrev) for small m
        with torch.enable_grad():
            xg = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            out = self.constraint(xg)
            m = out.shape[-1]
            if not out.requires_grad:
                raise ValueError("g does not depend on x through torch operations")
            # for m >= 3, one batched pass is cheaper up to a few thousand chains (measured;
            # for m = 2 the two passes are as fast)
            if m > 2 and self._batched_rows and out.numel() <= m * BATCHED_ROWS_MAX_CHAINS:
                eye = torch.eye(m, dtype=out.dtype, device=out.device)
                seeds = eye.reshape(m, *(1,) * (out.dim() - 1), m).expand(m, *out.shape)
                try:
                    (grads,) = torch.autograd.grad(
                        out,
                        xg,
                        seeds,
                        retain_graph=create_graph,
                        create_graph=create_graph,
                        is_grads_batched=True,
                    )
                    return out, grads.movedim(0, -2)
                except (RuntimeError, NotImplementedError):
                    self._batched_rows = False  # some op of g has no batching rule
            # the seed of row i is the one-hot e_i in every chain: what the backward of
            # out[..., i].sum() would feed g's graph, without the select and sum nodes
            if m == 1:
                (grad,) = torch.autograd.grad(
                    out,
                    xg,
                    torch.ones_like(out),
                    retain_graph=create_graph,
                    create_graph=create_graph,
                )
                return out, grad.unsqueeze(-2)
            eye = torch.eye(m, dtype=out.dtype, device=out.device)
            rows = [
                torch.autograd.grad(
                    out,
                    xg,
                    eye[i].expand(out.shape),
                    retain_graph=create_graph or i < m - 1,
                    create_graph=create_graph,
                )[0]
                for i in range(m)
            ]
        return out, torch.stack(rows, dim=-2)

    def check_jacobian(
        self, x: torch.Tensor, *, rtol: float = 1e-6, atol: float | None = None
    ) -> float:
        """Compare the user's ``jacobian`` with autodiff of ``g`` at the points ``x``.

        A setup check (it reads the result on the host): raises ``ValueError`` naming the worst
        entry if some entry differs by more than ``atol + rtol |J|`` (``atol`` defaults to
        ``rtol`` times the largest autodiff entry). Returns the largest absolute difference.
        Without a user ``jacobian`` there is nothing to check (returns 0.0).
        """
        if self.user_jacobian is None:
            return 0.0
        auto = self._autodiff(x, False)[1]
        user = self.jacobian(x).detach()
        diff = (user - auto).abs()
        scale = float(auto.abs().amax()) if auto.numel() else 0.0
        limit = (rtol * scale if atol is None else atol) + rtol * auto.abs()
        bad = diff > limit
        if bool(bad.any()) or not bool(torch.isfinite(user).all()):
            worst = float(torch.nan_to_num(diff, nan=math.inf).amax())
            raise ValueError(
                f"the user jacobian differs from autodiff of g by up to {worst:.3g} at the given "
                f"points (tolerance {rtol:g} relative); check its rows (one per constraint) and "
                "columns (one per coordinate)"
            )
        return float(diff.amax()) if diff.numel() else 0.0

    def log_det_gram(self, x: torch.Tensor) -> torch.Tensor:
        """``log det(J J^T)`` per chain, differentiable in ``x`` (autodiff through the
        Jacobian) when ``x`` requires a gradient: the Fixman term of the conditional measure."""
        jac = self.jacobian(x, create_graph=x.requires_grad)
        return torch.linalg.slogdet(jac @ jac.transpose(-1, -2))[1]

    def random(self, *size, dtype=None, device=None, generator=None) -> torch.Tensor:
        """Gaussian points projected onto the level set (not uniform on it); failed rows are NaN."""
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        z = torch.randn(*size, dtype=dtype, device=device, generator=generator)
        y, ok = self.shake(z, z, max_iter=max(self.max_iter, 50))
        return torch.where(ok.unsqueeze(-1), y, torch.full_like(y, float("nan")))
