r"""Metropolis-adjusted constrained Hamiltonian Monte Carlo: HMC and generalised HMC.

The proposal is ``n_leapfrog`` leapfrog steps $B_{h/2} A_h B_{h/2}$ on the cotangent bundle of
$\Sigma$, built from the same sub-steps as the Langevin schemes
([`kick`][manifold_langevin.integrators.substeps.kick] and
[`drift`][manifold_langevin.integrators.substeps.drift]: RATTLE, or the exact geodesic where the
manifold has one). With $H(x, p) = U(x) + |p|^2/2$ and a tangent momentum, the proposal is
accepted with probability $\min(1, e^{-\Delta H/\tau})$, per chain and on the device.

RATTLE is symplectic and time-reversible only where its SHAKE solves pick the same root forwards
and backwards; elsewhere (large steps on a curved set, where SHAKE can have two solutions) the
map is not an involution and the Metropolis test alone is biased. So, following Zappa,
Holmes-Cerfon and Goodman (Comm. Pure Appl. Math. 71, 2018) and Lelièvre, Rousset and Stoltz
(Numer. Math. 143, 2019), every proposal is integrated back from $(x', -p')$ and rejected unless it
returns to $x$ within ``reverse_tol``; a SHAKE solve that does not converge, forwards or
backwards, is a rejection, never a NaN. Exact geodesic A steps are reversible to rounding, so the
check is off for them by default.

``friction=None`` refreshes the momentum from the tangent Gaussian $N(0, \tau P(x))$ before every
proposal (HMC). ``friction=gamma`` is generalised HMC (Horowitz, Phys. Lett. B 268, 1991): a
partial refresh $p \leftarrow e^{-\gamma h/2} p + \sqrt{\tau(1 - e^{-\gamma h})}\,P(x)R$ (the O
step of time $h/2$) before and after the proposal, and the momentum flipped on rejection; with
``n_leapfrog=1`` that is a Metropolis-adjusted OBABO. Both leave
$\exp(-U/\tau)\,d\sigma_\Sigma$ (or the conditional measure, with ``measure="conditional"``)
exactly invariant at every step size: the averages carry no step-size bias, only a Monte Carlo
error that grows as the acceptance rate falls.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int, check_positive
from ..errors import NonFiniteError
from ..noise import standard_normal
from .base import Dynamics, State, chain_mask, select_points
from .substeps import drift, kick, ornstein_uhlenbeck, ou_coefficients, ou_update

__all__ = ["HMCKernel"]


class HMCKernel(Dynamics):
    r"""Constrained HMC (``friction=None``) or generalised HMC (``friction=gamma``), exact for
    the target at every step size.

    One step per iteration: a momentum refresh (full or partial), ``n_leapfrog`` leapfrog steps
    of size ``h``, the reversibility check, the Metropolis test on
    $\Delta H / \tau$, the state kept where the proposal is rejected (its momentum flipped for
    generalised HMC), and the second partial refresh. The step's flags and counts are in
    ``State.info``: ``accepted``, ``shake_failed`` (a forward solve did not converge),
    ``reverse_failed`` (the forward proposal was fine, but integrating back from it did not
    converge or did not return to the start) (booleans per chain),
    ``accept_prob`` ($\min(1, e^{-\Delta H/\tau})$, 0 where the proposal failed) and
    ``energy_error`` ($\Delta H$; NaN where the proposal failed).

    Args:
        manifold: the constraint set.
        potential: $U(x)$, one energy per chain (needed for the Metropolis test; ``None``:
            $U = 0$).
        step_size: the leapfrog step $h > 0$.
        n_leapfrog: leapfrog steps per proposal.
        friction: ``None`` (full momentum refresh: HMC) or $\gamma \ge 0$ (partial refresh of
            time $h/2$ before and after the proposal, momentum flip on rejection).
        temperature: $\tau > 0$.
        substeps: RATTLE sub-steps per A step where no geodesic is used.
        geodesic: ``None`` uses the closed-form geodesic when the manifold has one; ``False``
            forces RATTLE.
        reverse_check: integrate every proposal back and reject it unless it returns to its
            start; ``None``: on for RATTLE A steps, off for exact geodesics (reversible).
        reverse_tol: the largest distance (max-norm over a point's entries) between the start
            and the back-integrated point of an accepted proposal; default 100 times the SHAKE
            tolerance, so that a solve converged to the tolerance passes and a different root
            (a distance of the order of the step) does not.
        force: optional explicit $-\nabla U$ (the potential is still needed for the test).
        measure: ``"surface"`` (default) or ``"conditional"`` (see
            [`Dynamics`][manifold_langevin.integrators.base.Dynamics]).
        adapt_step_size: tune the step during the burn-in of
            [`sample`][manifold_langevin.sampling.sample] by dual averaging
            ([`DualAveraging`][manifold_langevin.sampling.adaptation.DualAveraging]), starting
            from ``step_size``, then freeze it; the result reports the step used
            (``SampleResult.step_size``). Needs ``burn_in > 0``.
        target_accept: the mean acceptance probability the adaptation aims at. Default 0.65
            for HMC: for a product target in dimension $d$ the cost per effective sample is
            least near an acceptance of 0.651 as $d \to \infty$ (Beskos, Pillai, Roberts,
            Sanz-Serna and Stuart, Bernoulli 19, 2013), and it varies little between 0.6 and
            0.8. Default 0.9 for generalised HMC: each rejection reverses the momentum and so
            undoes the persistent motion that partial refreshment buys, which pays for shorter
            steps with fewer rejections.
    """

    def __init__(
        self,
        manifold,
        potential=None,
        *,
        step_size: float,
        n_leapfrog: int = 1,
        friction: float | None = None,
        temperature: float = 1.0,
        substeps: int = 1,
        geodesic: bool | None = None,
        reverse_check: bool | None = None,
        reverse_tol: float | None = None,
        force=None,
        measure: str = "surface",
        adapt_step_size: bool = False,
        target_accept: float | None = None,
    ):
        super().__init__(
            manifold,
            potential,
            force=force,
            step_size=step_size,
            temperature=temperature,
            measure=measure,
        )
        if self.temperature == 0:
            raise ValueError("HMC needs temperature > 0 (the Metropolis test divides by it)")
        if potential is None and force is not None:
            raise ValueError("HMC needs the potential's values for the Metropolis test")
        self.n_leapfrog = check_int("n_leapfrog", n_leapfrog)
        self.friction = (
            None if friction is None else check_positive("friction", friction, allow_zero=True)
        )
        self.substeps = check_int("substeps", substeps)
        if geodesic not in (None, True, False):
            raise ValueError(f"geodesic must be None, True or False, got {geodesic!r}")
        if reverse_check not in (None, True, False):
            raise ValueError(f"reverse_check must be None, True or False, got {reverse_check!r}")
        self.use_geodesic = self.manifold.has_geodesic and geodesic is not False
        self.reverse_check = (not self.use_geodesic) if reverse_check is None else reverse_check
        self.reverse_tol = (
            None if reverse_tol is None else check_positive("reverse_tol", reverse_tol)
        )
        self.order = 0  # exact: no step-size bias to have an order
        if adapt_step_size not in (True, False):
            raise ValueError(f"adapt_step_size must be True or False, got {adapt_step_size!r}")
        self.adapt_step_size = adapt_step_size
        if target_accept is None:
            target_accept = 0.65 if self.friction is None else 0.9
        if not (isinstance(target_accept, (int, float)) and 0.0 < target_accept < 1.0):
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.target_accept = float(target_accept)
        if self.friction is not None:
            self._c1, self._c2 = ou_coefficients(
                self.friction, self.temperature, 0.5 * self.step_size
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.manifold!r}, step_size={self.step_size}, "
            f"n_leapfrog={self.n_leapfrog}, friction={self.friction}, "
            f"temperature={self.temperature})"
        )

    # ------------------------------------------------------------------ pieces
    def maxwell(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Tangent momenta from the Gaussian $N(0, \\tau P(x))$."""
        return self.temperature**0.5 * self.manifold.random_normal_tangent(x, generator)

    def leapfrog(self, x, p, f, step_size=None):
        """``n_leapfrog`` steps ``B(h/2) A(h) B(h/2)`` from ``(x, p)`` with force ``f`` at ``x``;
        returns ``(x', p', f', converged)``. ``step_size`` (a number or a 0-d tensor) overrides
        ``h``."""
        m = self.manifold
        h = self.step_size if step_size is None else step_size
        ok = None
        for _ in range(self.n_leapfrog):
            p = kick(m, x, p, f, 0.5 * h)
            x, p, ok_a = drift(m, x, p, h, substeps=self.substeps, geodesic=self.use_geodesic)
            ok = ok_a if ok is None else ok & ok_a
            f = self.force(x)
            p = kick(m, x, p, f, 0.5 * h)
        return x, p, f, ok

    def hamiltonian(self, x, p):
        """$H = U(x) + |p|^2 / 2$ per chain (with the Fixman term for the conditional measure)."""
        nd = self.manifold.ndim
        kinetic = 0.5 * (p * p).sum(dim=tuple(range(-nd, 0))) if nd else 0.5 * p * p
        return self.energy(x) + kinetic

    def _tol(self, x) -> float:
        return (
            self.reverse_tol if self.reverse_tol is not None else 100 * self.manifold.tolerance(x)
        )

    # ------------------------------------------------------------------ protocol
    def init(self, x0, *, p0=None, generator=None, project: bool = False) -> State:
        """Start state: ``x0`` checked (or projected); ``p0`` projected or drawn."""
        x0 = self.check_start(x0, project=project)
        self._check_generator(generator, x0)
        f0 = self._initial_force(x0)
        self.energy(x0)  # fails early, naming the problem, if the energy is unknown
        if p0 is None:
            p0 = self.maxwell(x0, generator)
        else:
            p0 = torch.as_tensor(p0, dtype=x0.dtype, device=x0.device)
            if p0.shape != x0.shape:
                raise ValueError(
                    f"p0 must be shaped like x0 {tuple(x0.shape)}, got {tuple(p0.shape)}"
                )
            if not bool(torch.isfinite(p0).all()):
                raise NonFiniteError("p0 contains NaN/Inf", step=None)
            p0 = self.manifold.proju(x0, p0)
        return State(x0, p0, f0)

    def _refresh(self, x, p, step_size, generator):
        """The partial refresh (O step of time ``h/2``); with a tensor ``step_size`` (adaptation)
        its coefficients are tensors too, so nothing branches on their values."""
        if step_size is None or self.friction == 0.0:
            return ornstein_uhlenbeck(self.manifold, x, p, self._c1, self._c2, generator)
        c1, c2 = ou_coefficients(self.friction, self.temperature, 0.5 * step_size)
        return ou_update(p, c1, c2, self.manifold.random_normal_tangent(x, generator))

    def step(self, state: State, generator=None, step_size=None):
        """One refresh-propose-test iteration for every chain: ``(state, converged, finite)``
        with ``converged`` the SHAKE flags of the proposal (forwards and backwards) and the
        step's flags in ``state.info``. ``step_size`` (a number or a 0-d tensor, as the
        adaptation passes it) overrides ``h`` for this step."""
        m, tau = self.manifold, self.temperature
        x0, f0 = state.x, state.force
        if self.friction is None:
            p0 = self.maxwell(x0, generator)
        else:
            p0 = self._refresh(x0, state.p, step_size, generator)
        x1, p1, f1, ok_forward = self.leapfrog(x0, p0, f0, step_size)
        finite = self._finite(x1, p1, f1)
        if self.reverse_check:
            xb, _, _, ok_back = self.leapfrog(x1, -p1, f1, step_size)
            nd = m.ndim
            dist = (xb - x0).abs().amax(dim=tuple(range(-nd, 0))) if nd else (xb - x0).abs()
            back = ok_back & (dist <= self._tol(x0))
            ok = ok_forward & ok_back
        else:
            back, ok = torch.ones_like(ok_forward), ok_forward
        d_h = self.hamiltonian(x1, p1) - self.hamiltonian(x0, p0)
        # a uniform from a normal draw (its CDF), so that any noise source serves
        z = standard_normal(d_h, generator)
        log_u = torch.log(0.5 * torch.erfc(-z / math.sqrt(2.0)))
        valid = ok & finite & back & torch.isfinite(d_h)
        accept = valid & (log_u <= -d_h / tau)
        keep = chain_mask(accept, x0)
        x = select_points(m, keep, x1, x0)
        f = torch.where(keep, f1, f0)
        p = torch.where(keep, p1, -p0 if self.friction is not None else p0)
        if self.friction is not None:
            p = self._refresh(x, p, step_size, generator)
        info = {
            "accepted": accept,
            "accept_prob": torch.where(
                valid, torch.exp(torch.clamp(-d_h / tau, max=0.0)), torch.zeros_like(d_h)
            ),
            "reverse_failed": ok_forward & finite & ~back,
            "shake_failed": ~ok_forward,
            "energy_error": torch.where(valid, d_h, torch.full_like(d_h, math.nan)),
        }
        return State(x, p, f, info=info), ok, torch.ones_like(finite)
