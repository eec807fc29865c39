r"""Underdamped constrained Langevin dynamics: BAOAB, ABOBA, OBABO and g-BAOAB."""

from __future__ import annotations

import torch

from .._checks import check_int, check_positive
from ..errors import NonFiniteError
from .base import Dynamics, State, chain_mask, select_points
from .schemes import parse_scheme, scheme_order
from .substeps import damped_drift, drift, kick, ornstein_uhlenbeck, ou_coefficients

__all__ = ["LangevinIntegrator"]


class LangevinIntegrator(Dynamics):
    r"""Constrained underdamped Langevin dynamics (unit mass, Euclidean metric).

    Solves, on $\Sigma = \{g = 0\}$,

    $$
    dx = p\,dt, \qquad
    dp = -\nabla U(x)\,dt - \gamma p\,dt + \sqrt{2\gamma\tau}\,dW + \nabla g(x)\,d\lambda,
    $$

    with $g(x) = 0$ and $J(x) p = 0$, whose invariant measure is $\exp(-U/\tau)$ times the
    *surface* (Hausdorff) measure of $\Sigma$ (not the conditional measure, which carries an
    extra $\det(J J^\top)^{-1/2}$), times a Gaussian on the tangent momenta.

    The scheme is a word in the sub-steps of
    [`substeps`][manifold_langevin.integrators.substeps]; each letter's total time is $h$,
    e.g. BAOAB = $B_{h/2} A_{h/2} O_h A_{h/2} B_{h/2}$:

    $$
    \begin{aligned}
    p &\leftarrow P(x)\,(p + \tfrac h2 F(x)) \\
    (x, p) &\leftarrow \Phi^A_{h/2}(x, p) \\
    p &\leftarrow e^{-\gamma h} p + \sqrt{\tau(1 - e^{-2\gamma h})}\,P(x) R \\
    (x, p) &\leftarrow \Phi^A_{h/2}(x, p) \\
    p &\leftarrow P(x)\,(p + \tfrac h2 F(x))
    \end{aligned}
    $$

    where $\Phi^A$ is the exact geodesic flow when the manifold has one (sphere, circles,
    Stiefel) and otherwise ``substeps`` RATTLE steps (g-BAOAB). One force evaluation per step.
    BAOAB, ABOBA and OBABO have weak order 2 for configurational averages (the attribute
    ``order``, from the scheme registry
    [`SCHEMES`][manifold_langevin.integrators.schemes.SCHEMES]; measured by the weak-order
    study of [`manifold_langevin.testing`][manifold_langevin.testing]). References:
    T. Lelièvre, M. Rousset, G. Stoltz, Math. Comp. 81 (2012) (constrained Langevin dynamics and
    their invariant measure); B. Leimkuhler, C. Matthews, Proc. R. Soc. A 472, 20160138 (2016)
    (constrained BAOAB and g-BAOAB); B. Leimkuhler, T. Vlaar, T. Pouchon, A. Storkey, ICML 2021
    (their use for training neural networks).

    Failures: a chain whose SHAKE solve fails in a step (the tangential move is too large for the
    curvature) is left where it was and its momentum is redrawn from the tangent Gaussian at
    temperature $\tau$ (zero at $\tau = 0$); the step is counted as a failure. This is a valid
    Gibbs move on $p$ but its trigger depends on the state, so it biases averages by an amount
    of the order of the failure rate, which the sampler reports. A closed-form flow fails only
    when rounding takes its result off the manifold (a step far too large, e.g. $|h p|$ of
    tens in float32 on Stiefel); the chain is then left where it was with its momentum (no draw,
    so the noise stream is unchanged) and the step is counted as a failure.

    Args:
        manifold: the constraint set (ours or a plain geoopt Sphere/Stiefel/Euclidean).
        potential: $U(x)$, one energy per chain (``None``: $U = 0$).
        step_size: $h > 0$.
        friction: $\gamma \ge 0$ (``0``: constrained Hamiltonian dynamics by RATTLE; ``inf``:
            the momentum is redrawn at every O step).
        temperature: $\tau \ge 0$.
        scheme: ``"BAOAB"`` (default), ``"ABOBA"``, ``"OBABO"`` or any word in A, B and O.
        substeps: RATTLE sub-steps $K$ per A step when no exact geodesic is used.
        geodesic: ``None`` uses the closed-form geodesic when the manifold has one; ``False``
            forces RATTLE.
        fuse: where the O step between two A steps draws no noise ($\tau = 0$, or
            $\gamma = 0$), evaluate ``A O A`` as one A step followed by the damping
            ([`damped_drift`][manifold_langevin.integrators.substeps.damped_drift]): the same
            map for geodesic flows, one SHAKE solve instead of two with RATTLE (the two agree to
            $O(h^3)$ per step). Off by default.
        force: optional explicit $-\nabla U$.
        measure: ``"surface"`` (default) or ``"conditional"`` (adds the Fixman term
            $\tfrac\tau2 \log\det(J J^\top)$ to the potential; see
            [`Dynamics`][manifold_langevin.integrators.base.Dynamics]).
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
        fuse: bool = False,
        force=None,
        measure: str = "surface",
    ):
        super().__init__(
            manifold,
            potential,
            force=force,
            step_size=step_size,
            temperature=temperature,
            measure=measure,
        )
        self.friction = check_positive("friction", friction, allow_zero=True, allow_inf=True)
        self.substeps = check_int("substeps", substeps)
        if geodesic not in (None, True, False):
            raise ValueError(f"geodesic must be None, True or False, got {geodesic!r}")
        if fuse not in (True, False):
            raise ValueError(f"fuse must be True or False, got {fuse!r}")
        self.scheme = scheme.upper() if isinstance(scheme, str) else scheme
        plan = parse_scheme(scheme)
        self.order = scheme_order(self.scheme)
        self.use_geodesic = self.manifold.has_geodesic and geodesic is not False
        self.fuse = bool(fuse)
        self._plan = []
        for letter, frac in plan:
            h = frac * self.step_size
            c1, c2 = ou_coefficients(self.friction, self.temperature, h)
            self._plan.append((letter, h, c1, c2))
        if self.fuse:
            self._plan = _fuse_noiseless(self._plan)
        # only RATTLE can fail; a redraw then needs noise, which costs nothing when tau = 0
        self._can_fail = not self.use_geodesic

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.manifold!r}, scheme={self.scheme}, "
            f"step_size={self.step_size}, friction={self.friction}, "
            f"temperature={self.temperature}, substeps={self.substeps})"
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
            elif letter in "AF":
                kw = {"substeps": self.substeps, "geodesic": self.use_geodesic}
                if letter == "A":
                    x, p, ok_a = drift(m, x, p, h, **kw)
                else:  # a fused A O A with a noiseless O: h is the step, c1 the damping
                    x, p, ok_a = damped_drift(m, x, p, h, c1, **kw)
                ok = ok_a if ok is None else ok & ok_a
                f = None
            else:
                p = ornstein_uhlenbeck(m, x, p, c1, c2, generator)
        if f is None:
            f = self.force(x)
        finite = self._finite(x, p, f)
        keep = chain_mask(~(ok & finite), x)
        p_back = self.maxwell(state.x, generator) if self._can_fail else state.p
        new = State(
            select_points(m, keep, state.x, x),
            torch.where(keep, p_back, p),
            torch.where(keep, state.force, f),
        )
        return new, ok, finite


def _fuse_noiseless(plan: list[tuple]) -> list[tuple]:
    """``A(a) O A(b)`` with a noiseless O and ``a = b`` becomes one fused letter ``F`` of total
    step ``2a`` (the O's damping ``c1`` kept), as in
    [`damped_drift`][manifold_langevin.integrators.substeps.damped_drift]."""
    out, i = [], 0
    while i < len(plan):
        window = plan[i : i + 3]
        letters = "".join(item[0] for item in window)
        if letters == "AOA" and window[1][3] == 0.0 and window[0][1] == window[2][1]:
            c1 = window[1][2]
            out.append(("F", 2.0 * window[0][1], c1, 0.0))
            i += 3
        else:
            out.append(plan[i])
            i += 1
    return out
