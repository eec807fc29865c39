"""What every integrator shares: the state, the integrator protocol, the force, the start checks.

An integrator is an object with ``init(x0, ...) -> State`` and
``step(state, generator) -> (state, converged, finite)`` (per-chain flags); the sampling loop
of [`manifold_langevin.sampling`][manifold_langevin.sampling] drives any such object, and the
optimizer checks parameters against the same start criterion
([`check_on_manifold`][manifold_langevin.integrators.base.check_on_manifold]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .._checks import check_positive
from ..errors import NonFiniteError, OffManifoldError, RankDeficientError
from ..manifolds.adapters import as_manifold
from ..manifolds.base import ConstrainedManifold, finite_entries
from ..noise import in_layout_of

__all__ = [
    "CHAIN_MINOR_MAX_EVENT",
    "MEASURES",
    "START_FACTOR",
    "Dynamics",
    "State",
    "chain_mask",
    "chain_minor",
    "check_gram_rank",
    "check_on_manifold",
    "finite_chains",
    "standard_layout",
    "start_limit",
]

MEASURES = ("surface", "conditional")
"""The invariant measures a sampler can target (see ``measure`` of [`Dynamics`][])."""

START_FACTOR = 10.0
"""A start point (or a parameter at its first step) passes the off-manifold check up to this
multiple of its manifold's SHAKE tolerance."""

Potential = Callable[[torch.Tensor], torch.Tensor]


CHAIN_MINOR_MAX_EVENT = 32
"""On CPU, points whose event is one dimension of at most this many entries are stored with the
chains as their fastest-varying dimension (see [`chain_minor`][])."""


def chain_minor(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """``x`` stored with its chains as the fastest-varying dimension: the same values and
    shape ``(*chains, n)``, the event dimension outermost in memory (strides
    ``(..., 1, N)`` for ``N`` chains).

    Only on CPU, for one event dimension of at most `CHAIN_MINOR_MAX_EVENT` entries and more
    than one chain; elsewhere ``x`` itself. Elementwise results keep the layout of their inputs,
    so a whole run stays in it, and a reduction over the short last dimension, as a user's
    potential or constraint writes it (``(x * x).sum(-1)``), then adds whole rows of chains
    instead of a few numbers per chain: on one thread, for 10^4 chains of 3 entries in float64,
    the sum takes 8 us instead of 120 us and the sum with its autograd gradient 61 us instead
    of 211 us (``python -m validation.bench_short_sums``). Sums of up to 4 entries come out bit
    for bit the same; longer ones may round differently (the order of the additions changes).
    A state from ``init`` or ``step`` is in this layout (``view`` may refuse it: ``reshape``
    works); ``sample`` returns its final state in the default one (`standard_layout`).
    """
    if (
        ndim != 1
        or x.device.type != "cpu"
        or x.dim() < 2
        or x.shape[-1] > CHAIN_MINOR_MAX_EVENT
        or x.numel() <= x.shape[-1]
    ):
        return x
    moved = x.movedim(-1, 0)
    if moved.is_contiguous():
        return x
    return moved.contiguous().movedim(0, -1)


def standard_layout(state: State) -> State:
    """``state`` with its tensors in the default (row-major) layout, as results are returned."""
    fix = {}
    for name in ("x", "p", "force"):
        t = getattr(state, name)
        if t is not None and not t.is_contiguous():
            fix[name] = t.contiguous()
    return state.replace(**fix) if fix else state


def chain_mask(flag: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-chain flag reshaped to broadcast against ``like`` (trailing singleton dimensions)."""
    return flag.reshape(flag.shape + (1,) * (like.dim() - flag.dim()))


def select_points(manifold, keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where(keep, a, b)`` for points; through the manifold's
    [`select_points`][manifold_langevin.manifolds.base.ConstrainedManifold.select_points]
    where it has one (the Jacobian at the result then comes from those at ``a`` and ``b``)."""
    if isinstance(manifold, ConstrainedManifold):
        return manifold.select_points(keep, a, b)
    return torch.where(keep, a, b)


def finite_chains(ndim: int, *tensors: torch.Tensor) -> torch.Tensor:
    """Per-chain flag: every entry of every tensor is finite (the event is the last ``ndim``
    dimensions)."""
    dims = tuple(range(-ndim, 0)) if ndim else None
    if all(t.shape == tensors[0].shape for t in tensors):
        f = finite_entries(*tensors)
        return f.all(dim=dims) if dims else f
    out = None
    for t in tensors:
        f = finite_entries(t)
        f = f.all(dim=dims) if dims else f
        out = f if out is None else out & f
    return out


def check_gram_rank(manifold: ConstrainedManifold, x: torch.Tensor) -> None:
    """Raise [`RankDeficientError`][manifold_langevin.errors.RankDeficientError] if the
    constraint Jacobian is rank deficient at some of the points ``x`` (one host read; nothing
    to check where the Gram matrix is constant)."""
    if manifold.constant_gram:
        return
    bad = manifold.gram_rank_deficiency(x)
    if bool(bad.any()):
        chains = [tuple(i) if len(i) > 1 else int(i[0]) for i in bad.nonzero().tolist()]
        raise RankDeficientError(
            f"the constraint Jacobian J is rank deficient at {len(chains)} start point(s) "
            f"(chains {chains[:10]}{'...' if len(chains) > 10 else ''}): J J^T is singular, so "
            "the tangent space and SHAKE are undefined there (constraints that are not "
            "independent, or a point where grad g vanishes); remove the redundant constraint "
            "or start elsewhere",
            chains=chains,
        )


def start_limit(manifold: ConstrainedManifold, x: torch.Tensor) -> float:
    """The largest constraint residual a start point like ``x`` may have:
    [`START_FACTOR`][manifold_langevin.integrators.base.START_FACTOR] times the SHAKE tolerance."""
    return START_FACTOR * manifold.tolerance(x)


def check_on_manifold(manifold: ConstrainedManifold, x: torch.Tensor):
    """``(residual, limit, bad)`` for start points ``x``: the largest residual (a 0-d tensor on
    ``x``'s device), [`start_limit`][] and a 0-d flag, still on the device, that the residual
    exceeds it (NaN included). Reading ``bad`` is the caller's one host synchronisation."""
    res = manifold.residual_norm(x)
    worst = res.amax() if res.numel() else x.new_zeros(())
    limit = start_limit(manifold, x)
    return worst, limit, ~(worst.double() <= limit)


@dataclass(frozen=True)
class State:
    """Integrator state for a batch of chains.

    Attributes:
        x: positions ``(*chains, *event)`` on the manifold (on CPU, short one-dimensional points
            are stored chain-minor: see [`chain_minor`][]).
        p: tangent momenta like ``x`` (``None`` for the overdamped Euler scheme).
        force: ``-grad U(x)``, carried so that each step costs one gradient evaluation.
        info: what the last step reports per chain beyond convergence and finiteness (the
            Metropolis kernel's ``accepted``, ``reverse_failed``, ``shake_failed`` and
            ``energy_error``); ``None`` for the Langevin schemes.
    """

    x: torch.Tensor
    p: torch.Tensor | None
    force: torch.Tensor
    info: dict | None = None

    def replace(self, **changes) -> State:
        return replace(self, **changes)


class Dynamics:
    """Shared base of [`Langevin`][manifold_langevin.Langevin] and
    [`OverdampedLangevin`][manifold_langevin.OverdampedLangevin].

    Args:
        manifold: one of ours, or a plain ``geoopt.Sphere`` / ``geoopt.Stiefel`` /
            ``geoopt.Euclidean``.
        potential: ``U(x)`` returning one energy per chain, shape ``x.shape[:-ndim]``. ``None``
            means ``U = 0`` (the uniform surface measure).
        force: optional ``F(x) = -grad U(x)`` shaped like ``x``; if omitted it comes from autograd.
        step_size: time step ``h > 0``.
        temperature: ``tau >= 0``; the target is ``exp(-U / tau)`` times the surface measure.
        measure: ``"surface"`` (default): ``exp(-U/tau)`` times the surface (Hausdorff) measure
            of the set, what constrained dynamics sample (rigid constraints); ``"conditional"``:
            ``exp(-U/tau)`` times ``det(J J^T)^(-1/2)`` times the surface measure, the
            distribution of unconstrained ``exp(-U/tau)`` conditioned on ``g = 0`` (the limit of
            stiff springs, flexible constraints), sampled by adding the Fixman term
            ``(tau/2) log det(J J^T)`` to the potential. The two coincide where ``det(J J^T)``
            is constant on the set (spheres, circles, Stiefel, linear constraints).
    """

    #: weak order of configurational averages, set by subclasses
    order: int = 0

    def __init__(
        self,
        manifold,
        potential: Potential | None = None,
        *,
        force: Callable[[torch.Tensor], torch.Tensor] | None = None,
        step_size: float,
        temperature: float = 1.0,
        measure: str = "surface",
    ):
        self.manifold = as_manifold(manifold)
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        self.measure = measure
        # the Fixman term matters only where det(J J^T) varies on the set
        self._fixman = measure == "conditional" and not self.manifold.constant_gram
        if potential is not None and not callable(potential):
            raise TypeError("potential must be callable (x -> energies per chain) or None")
        if force is not None and not callable(force):
            raise TypeError("force must be callable (x -> -grad U, shaped like x) or None")
        self.potential = potential
        self._force_fn = force
        self.step_size = check_positive("step_size", step_size)
        self.temperature = check_positive("temperature", temperature, allow_zero=True)

    # ------------------------------------------------------------------ forces
    def chain_shape(self, x: torch.Tensor) -> torch.Size:
        return x.shape[: x.dim() - self.manifold.ndim]

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """The potential of the target measure, one value per chain: ``U(x)``, plus the Fixman
        term ``(tau/2) log det(J J^T)`` for the conditional measure.

        Raises:
            ValueError: there is no potential but a ``force`` (the energy is then unknown).
        """
        if self.potential is None:
            if self._force_fn is not None:
                raise ValueError(
                    "this sampler needs the potential's values (a Metropolis test), not only the "
                    "force: pass potential="
                )
            u = x.new_zeros(self.chain_shape(x))
        else:
            u = self.potential(x)
        if self._fixman:
            u = u + 0.5 * self.temperature * self.manifold.log_det_gram(x)
        return u

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """``-grad`` of [`energy`][]: ``force=`` or autograd of the potential, plus the Fixman
        term's force for the conditional measure (zero when there is no potential)."""
        f = self._potential_force(x)
        if self._fixman:
            f = f + self._fixman_force(x)
        if isinstance(f, torch.Tensor) and f.shape == x.shape:
            # in the points' (chain-minor) layout, so that the kicks combine one layout (a force
            # of another type or shape gets its clear error from the caller's check)
            f = in_layout_of(x, f)
        return f

    def _fixman_force(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.manifold.log_det_gram(xg).sum(), xg)
        return (-0.5 * self.temperature) * grad

    def _potential_force(self, x: torch.Tensor) -> torch.Tensor:
        if self._force_fn is not None:
            return self._force_fn(x)
        if self.potential is None:
            return torch.zeros_like(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = self.potential(xg)
            if not isinstance(u, torch.Tensor):
                raise TypeError(
                    f"potential must return a tensor (one energy per chain), got {type(u).__name__}"
                )
            if not u.requires_grad:
                return torch.zeros_like(x)
            (grad,) = torch.autograd.grad(u.sum(), xg, allow_unused=True)
        return torch.zeros_like(x) if grad is None else -grad

    def _finite(self, *tensors: torch.Tensor) -> torch.Tensor:
        return finite_chains(self.manifold.ndim, *tensors)

    # ------------------------------------------------------------------ start-up
    def check_start(self, x0: torch.Tensor, *, project: bool = False) -> torch.Tensor:
        """Validate (or project) a start point; returns the point to use.

        Raises:
            TypeError: non-floating input.
            ValueError: missing event dimensions.
            OffManifoldError: the constraint residual exceeds 10x the SHAKE tolerance.
        """
        if not isinstance(x0, torch.Tensor):
            x0 = torch.as_tensor(x0)
        if not x0.is_floating_point():
            raise TypeError(f"x0 must be a floating-point tensor, got {x0.dtype}")
        if x0.device.type == "meta":
            raise ValueError("x0 is on the meta device (shapes without values); give real points")
        nd = self.manifold.ndim
        if x0.dim() < nd:
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)} but {self.manifold.name} points have {nd} event "
                "dimension(s)"
            )
        check = getattr(self.manifold, "_check_shape", None)
        if check is not None:
            ok, reason = check(x0.shape, "x0")
            if not ok:
                raise ValueError(reason)
        if x0.numel() == 0:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}: no chains (or empty points)")
        if project:
            x0 = self.manifold.projx(x0)
        residual, limit, bad = check_on_manifold(self.manifold, x0)
        if bool(bad):
            worst = float(residual)
            if project:
                why = (
                    "after projection (a point with no nearest point on the manifold, such as "
                    "the centre of a sphere, or NaN/Inf in x0)"
                )
            elif not torch.isfinite(x0).all():
                why = "(x0 contains NaN/Inf); fix x0"
            else:
                why = f"({START_FACTOR:g}x the SHAKE tolerance); fix x0 or pass project=True"
            raise OffManifoldError(
                f"start point is off the manifold: constraint residual {worst:.3g} exceeds "
                f"{limit:.3g} {why}",
                residual=worst,
                tolerance=limit,
            )
        check_gram_rank(self.manifold, x0)
        return chain_minor(x0, nd)

    def _initial_force(self, x0: torch.Tensor) -> torch.Tensor:
        f0 = self.force(x0)
        if not isinstance(f0, torch.Tensor):
            raise TypeError(f"the force must return a tensor like x, got {type(f0).__name__}")
        if f0.shape != x0.shape:
            raise ValueError(
                f"the force must be shaped like x ({tuple(x0.shape)}), got {tuple(f0.shape)}"
            )
        if self.potential is not None and self._force_fn is None:
            u = self.potential(x0)
            if u.shape != self.chain_shape(x0):
                raise ValueError(
                    f"potential must return one energy per chain, shape "
                    f"{tuple(self.chain_shape(x0))}; got {tuple(u.shape)}"
                )
        if not bool(self._finite(f0).all()):
            raise NonFiniteError("the force is NaN/Inf at the start point", step=None)
        return f0

    @staticmethod
    def _check_generator(generator, x0):
        if generator is not None and not isinstance(generator, torch.Generator):
            if callable(generator):
                return  # a noise source (manifold_langevin.noise)
            raise TypeError(
                "generator must be a torch.Generator, a noise source (like -> normals) or None; "
                f"got {type(generator).__name__}"
            )
        if generator is not None and generator.device.type != x0.device.type:
            raise ValueError(
                f"the generator lives on {generator.device} but x0 on {x0.device}; create it "
                f"with torch.Generator(device={str(x0.device)!r})"
            )

    def init(self, x0, *, p0=None, generator=None, project: bool = False) -> State:
        """Build the start state; subclasses add the momentum."""
        raise NotImplementedError

    def step(self, state: State, generator=None) -> tuple[State, torch.Tensor, torch.Tensor]:
        """One step for every chain: ``(new_state, converged, finite)``, flags per chain.

        Chains whose step failed (``converged & finite`` false) are returned as they were before
        the step (with their momentum resampled where the scheme has one).
        """
        raise NotImplementedError
