r"""Underdamped constrained Langevin dynamics: BAOAB, ABOBA, OBABO and g-BAOAB."""

from __future__ import annotations

import torch

from .._checks import check_int
from ..errors import NonFiniteError
from .dynamics import Dynamics, State, check_positive
from .schemes import SCHEMES, parse_scheme
from .substeps import drift, kick, ornstein_uhlenbeck, ou_coefficients

__all__ = ["Langevin"]


class Langevin(Dynamics):
    r"""Constrained underdamped Langevin dynamics (unit mass, Euclidean metric).

    Solves, on :math:`\Sigma = \{g = 0\}`,

    .. math::
        dx = p\,dt, \qquad
        dp = -\nabla U(x)\,dt - \gamma p\,dt + \sqrt{2\gamma\tau}\,dW + \nabla g(x)\,d\lambda,

    with :math:`g(x) = 0` and :math:`J(x) p = 0`, whose invariant measure is
    :math:`\exp(-U/\tau)` times the *surface* (Hausdorff) measure of :math:`\Sigma` (not the
    conditional measure, which carries an extra :math:`\det(J J^T)^{-1/2}`), times a Gaussian on the
    tangent momenta.

    The scheme is a word in the sub-steps of :mod:`manifold_langevin.integrators.substeps`; each
    letter's total time is :math:`h`, e.g. BAOAB = :math:`B_{h/2} A_{h/2} O_h A_{h/2} B_{h/2}`:

    .. math::
        p &\leftarrow P(x)\,(p + \tfrac h2 F(x)) \\
        (x, p) &\leftarrow \Phi^A_{h/2}(x, p) \\
        p &\leftarrow e^{-\gamma h} p + \sqrt{\tau(1 - e^{-2\gamma h})}\,P(x) R \\
        (x, p) &\leftarrow \Phi^A_{h/2}(x, p) \\
        p &\leftarrow P(x)\,(p + \tfrac h2 F(x))

    where :math:`\Phi^A` is the exact geodesic flow when the manifold has one (sphere, circles,
    Stiefel) and otherwise ``substeps`` RATTLE steps (g-BAOAB). One force evaluation per step.
    BAOAB, ABOBA and OBABO have weak order 2 for configurational averages (the attribute
    ``order``; measured by ``python -m validation.weak_order``). References: T. Lelièvre,
    M. Rousset, G. Stoltz, Math. Comp. 81 (2012) (constrained Langevin dynamics and their
    invariant measure); B. Leimkuhler, C. Matthews, Proc. R. Soc. A 472, 20160138 (2016)
    (constrained BAOAB and g-BAOAB); B. Leimkuhler, T. Vlaar, T. Pouchon, A. Storkey, ICML 2021
    (their use for training neural networks).

    Failures: a chain whose SHAKE solve fails in a step (the tangential move is too large for the
    curvature) is left where it was and its momentum is redrawn from the tangent Gaussian at
    temperature ``tau`` (zero at ``tau = 0``); the step is counted as a failure. This is a valid
    Gibbs move on ``p`` but its trigger depends on the state, so it biases averages by an amount of
    the order of the failure rate, which :meth:`sample` reports. A closed-form flow fails only
    when rounding takes its result off the manifold (a step far too large, e.g. ``|h p|`` of
    tens in float32 on Stiefel); the chain is then left where it was with its momentum (no draw,
    so the noise stream is unchanged) and the step is counted as a failure.

    Args:
        manifold: the constraint set (ours or a plain geoopt Sphere/Stiefel/Euclidean).
        potential: ``U(x)``, one energy per chain (``None``: ``U = 0``).
        step_size: ``h > 0``.
        friction: ``gamma >= 0`` (``0``: constrained Hamiltonian dynamics by RATTLE).
        temperature: ``tau >= 0``.
        scheme: ``"BAOAB"`` (default), ``"ABOBA"`` or ``"OBABO"``.
        substeps: RATTLE sub-steps ``K`` per A step when no exact geodesic is used.
        geodesic: ``None`` uses the closed-form geodesic when the manifold has one; ``False``
            forces RATTLE.
        force: optional explicit ``-grad U``.

    Example:
        >>> import manifold_langevin as ml
        >>> sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2],
        ...                       step_size=0.1, friction=1.0)
        >>> x0 = torch.nn.functional.normalize(torch.ones(64, 3, dtype=torch.float64), dim=-1)
        >>> out = sampler.sample(x0, n_steps=200, observables={"z": lambda x: x[..., 2]},
        ...                      generator=torch.Generator().manual_seed(0))
        >>> out.max_residual < 1e-12
        True
    """

    def __init__(
        self,
        manifold,
        potential=None,
        *,
        step_size: float,
        friction: float = 1.0,
        temperature: float = 1.0,
        scheme: str = "BAOAB",
        substeps: int = 1,
        geodesic: bool | None = None,
        force=None,
    ):
        super().__init__(
            manifold, potential, force=force, step_size=step_size, temperature=temperature
        )
        self.friction = check_positive("friction", friction, allow_zero=True, allow_inf=True)
        self.substeps = check_int("substeps", substeps)
        if geodesic not in (None, True, False):
            raise ValueError(f"geodesic must be None, True or False, got {geodesic!r}")
        self.scheme = scheme.upper() if isinstance(scheme, str) else scheme
        plan = parse_scheme(scheme)
        self.order = SCHEMES.get(self.scheme, 1)
        self.use_geodesic = self.manifold.has_geodesic and geodesic is not False
        self._plan = []
        for letter, frac in plan:
            h = frac * self.step_size
            c1, c2 = ou_coefficients(self.friction, self.temperature, h)
            self._plan.append((letter, h, c1, c2))
        # only RATTLE can fail; a redraw then needs noise, which costs nothing when tau = 0
        self._can_fail = not self.use_geodesic

    def __repr__(self) -> str:
        return (
            f"Langevin({self.manifold!r}, scheme={self.scheme}, step_size={self.step_size}, "
            f"friction={self.friction}, temperature={self.temperature}, substeps={self.substeps})"
        )

    def maxwell(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Tangent momenta from the Gaussian ``N(0, tau P(x))`` (zeros at ``tau = 0``)."""
        if self.temperature == 0:
            return torch.zeros_like(x)
        return self.temperature**0.5 * self.manifold.random_normal_tangent(x, generator)

    def init(self, x0, *, p0=None, generator=None, project: bool = False) -> State:
        """Start state: ``x0`` checked (or projected), ``p0`` projected or drawn from Maxwell."""
        x0 = self.check_start(x0, project=project)
        self._check_generator(generator, x0)
        f0 = self._initial_force(x0)
        if p0 is None:
            p0 = self.maxwell(x0, generator)
        else:
            if torch.is_tensor(p0) and p0.is_complex():
                raise TypeError(f"p0 must be real, got {p0.dtype}")
            p0 = torch.as_tensor(p0, dtype=x0.dtype, device=x0.device)
            if p0.shape != x0.shape:
                raise ValueError(
                    f"p0 must be shaped like x0 {tuple(x0.shape)}, got {tuple(p0.shape)}"
                )
            if not bool(torch.isfinite(p0).all()):
                raise NonFiniteError("p0 contains NaN/Inf", step=None)
            p0 = self.manifold.proju(x0, p0)
        return State(x0, p0, f0)

    def step(self, state: State, generator=None):
        m = self.manifold
        x, p, f = state.x, state.p, state.force
        ok = None
        for letter, h, c1, c2 in self._plan:
            if letter == "B":
                if f is None:
                    f = self.force(x)
                p = kick(m, x, p, f, h)
            elif letter == "A":
                x, p, ok_a = drift(m, x, p, h, substeps=self.substeps, geodesic=self.use_geodesic)
                ok = ok_a if ok is None else ok & ok_a
                f = None
            else:
                p = ornstein_uhlenbeck(m, x, p, c1, c2, generator)
        if f is None:
            f = self.force(x)
        finite = self._finite(x, p, f)
        keep = self._mask(~(ok & finite), x)
        p_back = self.maxwell(state.x, generator) if self._can_fail else state.p
        new = State(
            torch.where(keep, state.x, x),
            torch.where(keep, p_back, p),
            torch.where(keep, state.force, f),
        )
        return new, ok, finite
