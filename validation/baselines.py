r"""Comparison baselines of the benchmarks: other people's algorithms, kept out of the library.

* :class:`PaperStiefel`: :class:`manifold_langevin.Stiefel` with the SHAKE solve of the released
  o-CoLA scripts (Leimkuhler, Vlaar, Pouchon, Storkey, ICML 2021): a fixed number of iterations
  of :math:`Y \leftarrow Y - \tfrac12 T (Y^\top Y - I)` on the ``N x p`` matrices, with no
  tolerance-based exit, and RATTLE as projection, that SHAKE and a second projection.
  ``validation/bench_optim.py`` times CoLA with it (method ``paper``) against CoLA with the
  library's own solve, so that the two share everything but the solve.
"""

from __future__ import annotations

import torch

import manifold_langevin as ml

__all__ = ["PAPER_ITERS", "PaperStiefel"]

#: iterations of the released scripts' SHAKE
PAPER_ITERS = 10


def _tall(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The tall form of a point (``M``, or ``M^T`` when wide) and whether it was wide."""
    wide = x.shape[-2] < x.shape[-1]
    return (x.mT if wide else x), wide


class PaperStiefel(ml.Stiefel):
    r"""The Stiefel manifold with the released o-CoLA scripts' SHAKE and RATTLE.

    Everything but :meth:`shake` and :meth:`rattle` is :class:`manifold_langevin.Stiefel`'s.
    With ``T`` the tall form of the old point (shape ``(N, p)``, ``N = max(n, k)``) and
    ``Y = T~`` that of the unconstrained update, :meth:`shake` runs exactly ``max_iter``
    iterations of

    .. math::  Y \leftarrow Y - \tfrac12\, T\,(Y^\top Y - I_p)

    (two ``N x p x p`` products each), with no tolerance-based exit. The final residual is
    still checked against :meth:`tolerance`, so a diverged solve is flagged rather than
    written. :meth:`rattle` is the released step's sequence: project the velocity, SHAKE,
    project the new velocity (it always projects; ``project`` and ``scratch`` are ignored).

    Args:
        tol: tolerance of the final check (``None``: the library's default for the dtype).
        max_iter: the fixed number of iterations (default :data:`PAPER_ITERS`, the scripts').

    Example:
        >>> st = PaperStiefel()
        >>> m = st.random(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> m1, ok = st.shake(m, m + 0.05 * st.proju(m, torch.ones_like(m)))
        >>> bool(ok), bool(st.residual_norm(m1) <= st.tolerance(m))
        (True, True)
    """

    def __init__(self, *, tol: float | None = None, max_iter: int = PAPER_ITERS):
        super().__init__(tol=tol, max_iter=max_iter)

    def extra_repr(self) -> str:
        return f"max_iter={self.max_iter}, the released o-CoLA SHAKE"

    def shake(
        self, x: torch.Tensor, x_tilde: torch.Tensor, *, max_iter: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``max_iter`` iterations of the released scripts' SHAKE from ``x_tilde``.

        Returns:
            ``(x_new, converged)``, as :meth:`manifold_langevin.Stiefel.shake` returns them.
        """
        iters = self.max_iter if max_iter is None else int(max_iter)
        t, wide = _tall(x)
        tt, _ = _tall(x_tilde)
        big, p = t.shape[-2:]
        t3 = t.reshape(-1, big, p)
        y = tt.reshape(-1, big, p)
        for _ in range(iters):
            g = y.mT @ y
            g.diagonal(dim1=-2, dim2=-1).sub_(1.0)
            y = torch.baddbmm(y, t3, g, alpha=-0.5)
        y = y.reshape(tt.shape)
        res = self.residual_norm(y)
        converged = torch.isfinite(res) & (res <= self.tolerance(x))
        return (y.mT if wide else y), converged

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
        """The released RATTLE step: project ``p``, SHAKE from ``x + dt p``, project the new
        velocity ``(x_new - x) / dt`` (times ``scale``).

        Returns:
            ``(x_new, p_new, converged)``.
        """
        if x.dim() < 2:
            raise ValueError(f"Stiefel points are matrices (..., n, k), got shape {tuple(x.shape)}")
        x_new, ok = self.shake(x, x + dt * self.proju(x, p), max_iter=max_iter)
        return x_new, scale * self.proju(x_new, (x_new - x) / dt), ok
