"""Any user constraint ``g(x) = 0``, with Jacobians from autograd."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import ConstrainedManifold

__all__ = ["ImplicitManifold"]


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

    (or quasi-Newton with ``J(x) J(x)^T`` frozen, ``newton=False``) for a fixed ``max_iter`` without
    host synchronisation; a chain converged when ``max_i |g_i| <= tol`` at the end.

    Args:
        g: the constraint function.
        tol: absolute tolerance on ``max_i |g_i(x)|`` (default by dtype: 1e-12 in float64, about
            1e-6 in float32).
        max_iter: Newton iterations per solve.
        newton: Newton (default) or quasi-Newton iterations.

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
        newton: bool = True,
    ):
        super().__init__(tol=tol, max_iter=max_iter, newton=newton)
        if not callable(g):
            raise TypeError(f"g must be callable, got {type(g).__name__}")
        self.g = g

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
        # g acts row by row, so row i of every chain's Jacobian is the gradient of sum_chains g_i:
        # m reverse passes, cheaper than torch.func's vmap(jacrev) for the small m of constraints
        with torch.enable_grad():
            xg = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            out = self.constraint(xg)
            m = out.shape[-1]
            if not out.requires_grad:
                raise ValueError("g does not depend on x through torch operations")
            rows = [
                torch.autograd.grad(
                    out[..., i].sum(),
                    xg,
                    retain_graph=create_graph or i < m - 1,
                    create_graph=create_graph,
                )[0]
                for i in range(m)
            ]
        return torch.stack(rows, dim=-2)

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
