"""The constraint view of a manifold, on top of `geoopt.Manifold`.

A constrained manifold is a level set ``Sigma = {x : g(x) = 0}`` embedded in Euclidean space with
the Euclidean metric. Points carry ``ndim`` trailing *event* dimensions (1 for vectors, 2 for
matrices); every leading dimension is a batch (chain) dimension. Everything the integrators need
is here:

* ``constraint(x)``: the residual ``g(x)``, shape ``(..., m)``;
* ``jvp(x, v) = J(x) v`` and ``vjp(x, lam) = J(x)^T lam``;
* ``proju(x, v) = v - J^T (J J^T)^{-1} J v``: the tangent (RATTLE) projection;
* ``shake(x, x_tilde)``: solve ``g(x_tilde + J(x)^T lam) = 0`` for ``lam`` (SHAKE along the old
  normals), returning the new point and a per-chain convergence flag kept on device;
* ``geodesic(x, v, t)``: the exact constrained free flow where a closed form exists.

The generic SHAKE solve here is Newton's method (or a simplified Newton variant that freezes the
iteration matrix at the first iterate) on the ``m`` Lagrange multipliers, within a fixed budget of
iterations; each chain stops at the first iterate within a quarter of the tolerance
(`STOP_FRACTION`), and on CPU, eagerly, the solve ends once every chain has stopped (one read of
the largest residual per iterate), where accelerators and compiled code run the whole budget
without host synchronisation, to the same numbers. Convergence is judged per chain from the
final residual. Subclasses with closed forms (spheres, circles, Stiefel) override ``shake`` and
``geodesic``.
"""

from __future__ import annotations

import math
import weakref

import geoopt
import torch

from .._checks import check_int, check_positive
from .._compiling import is_compiling
from .._host_reads import host_reads_free
from ..noise import standard_normal
from .small_systems import (
    factor_solve,
    normal_combination,
    row_product,
    row_sum,
    select_factor,
    small_factor,
)

__all__ = [
    "ConstrainedManifold",
    "as_time",
    "default_tolerance",
    "event_sum",
    "finite_entries",
]

_BASE_TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-6,
}
_HALF = (torch.bfloat16, torch.float16)


def default_tolerance(dtype: torch.dtype, inner_size: int = 1) -> float:
    """Default SHAKE tolerance for ``dtype``.

    float32 and float64: ``inner_size`` is the length of the sums that form one constraint value
    (for a sphere the dimension, for Stiefel the number of rows): rounding grows like its square
    root, and the tolerance, ``max(base, 8 eps sqrt(inner_size))``, must stay above that floor or
    every solve would be reported as failed.

    bfloat16 and float16: ``4 eps`` (0.031 and 0.0039) whatever ``inner_size``. Their products
    and sums accumulate in float32 (on CPU, and by default on GPUs), so the floor is the final
    rounding, about ``eps``, not a growing sum of roundings: orthogonal weights of up to
    4608 x 512 kept residuals of at most 0.76 eps over noisy CoLA steps, on CPU and on an H200
    (``validation/half_precision.py``; ``validation/results/cuda/half_precision.json``).
    """
    if dtype in _HALF:
        return 4.0 * torch.finfo(dtype).eps
    if dtype not in _BASE_TOL:
        raise TypeError(f"unsupported dtype {dtype}: use a floating-point dtype")
    eps = torch.finfo(dtype).eps
    return max(_BASE_TOL[dtype], 8.0 * eps * math.sqrt(max(inner_size, 1)))


def as_time(t: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A time (or step size) ready to multiply tensors like ``like``.

    A Python number stays a number: torch passes it to the kernel as a scalar. Turning it into a
    tensor on a GPU (``torch.as_tensor(0.1, device="cuda")``) is a host-to-device copy that
    synchronises, once per call: inside a sampling loop, once per step. A tensor is cast to
    ``like``'s dtype and device.
    """
    if isinstance(t, (int, float)):
        return float(t)
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def event_sum(t: torch.Tensor, ndim: int, keepdim: bool = False) -> torch.Tensor:
    """Sum over the trailing ``ndim`` event dimensions."""
    if ndim == 0:
        return t
    if ndim == 1:
        return row_sum(t, keepdim=keepdim)
    return t.sum(dim=tuple(range(-ndim, 0)), keepdim=keepdim)


def finite_entries(*tensors: torch.Tensor) -> torch.Tensor:
    """Per entry (broadcast): are all ``tensors`` finite there, as ``torch.isfinite`` of each
    combined with ``&``.

    Eagerly, ``x * 0`` is 0 for a finite ``x`` and NaN for an infinity or a NaN, so one product
    per tensor, their sum and one comparison decide it; ``torch.isfinite`` on CPU takes four
    passes per tensor (an equality, an absolute value, a comparison, a conjunction), which made
    it the largest cost of the optimizer's sync-free mode. Under ``torch.compile`` the plain
    ``torch.isfinite`` is used (the compiler fuses it, and it might fold ``x * 0`` away)."""
    if is_compiling():
        ok = torch.isfinite(tensors[0])
        for t in tensors[1:]:
            ok = ok & torch.isfinite(t)
        return ok
    zero = tensors[0].new_zeros(())
    acc = tensors[0] * zero
    for t in tensors[1:]:
        # in place where the shapes agree (an FMA keeps inf * 0 = NaN)
        acc = acc.addcmul_(t, zero) if t.shape == acc.shape else acc + t * zero
    return acc == 0


STOP_FRACTION = 0.25
"""A chain's SHAKE iteration stops at the first iterate whose residual ``max_i |g_i|`` is at
most this fraction of the tolerance: its multipliers are held from then on (the residual is
zeroed entry by entry within the stop, so that the step is exactly zero), and the later iterates
change none of its numbers. Newton's iterates are within rounding a few iterates after that,
so the residual a step leaves is at most a quarter of the tolerance instead of at rounding; a
smaller ``tol`` asks for more. Each chain's numbers depend on its own iterates only, whatever
the other chains do, and where the host reads values for free (CPU, eagerly) the solve ends
at the first iterate at which every chain has stopped, with the numbers the whole budget
gives. Since ending later changes no number, the solve reads the largest residual only from one
iterate before the previous solve of the same manifold ended (after a solve that ran its whole
budget, at the last iterate): where every solve runs to the end, a solve reads once."""

POINT_CACHE_SIZE = 3
"""Points whose Jacobians the point cache keeps: a RATTLE step of the samplers forms them at
its start point and at the end of each of its (at most two) drifts, and the redraw of a failed
chain's momentum projects at the start point again, after both drifts."""


def _matrix_updates(newton) -> int | None:
    """The number of SHAKE iterates that form their own iteration matrix for a ``newton``
    argument: ``None`` (every one) for ``True``, 1 for ``False``, ``k`` for an integer ``k >=
    1``, 0 for ``"frozen"``."""
    if isinstance(newton, bool):
        return None if newton else 1
    if isinstance(newton, str) and newton == "frozen":
        return 0
    wanted = "True, False, an integer >= 1 or 'frozen'"
    if isinstance(newton, str):
        raise ValueError(f"newton must be {wanted}, got {newton!r}")
    try:
        return check_int("newton", newton)
    except (TypeError, ValueError):
        kind = ValueError if isinstance(newton, (int, float)) else TypeError
        raise kind(f"newton must be {wanted}, got {newton!r}") from None


class _CacheEntry:
    """One point's Jacobian and factorised Gram matrix, keyed on the tensor and its version."""

    __slots__ = ("factor", "jac", "ref", "version")

    def __init__(self, ref, version, jac):
        self.ref, self.version, self.jac, self.factor = ref, version, jac, None


class _PointCache:
    """The Jacobians (and the factorised Gram matrices) at the last `POINT_CACHE_SIZE` points
    they were formed at.

    The integrators call the projection at a point right after the RATTLE step that made it
    (the velocity projection, then the next kick), and SHAKE from it next; a sampler step that
    redraws the momentum of its failed chains projects at its start point once more: one
    evaluation serves them all. An entry is keyed on the tensor object itself (a weak
    reference) and its version counter, so that any in-place change of the point (through the
    tensor, not through ``.data``) or a new tensor at the same address misses. Entries whose
    point is gone are dropped at the next ``put``. Never cached: inference tensors, which keep
    no version counter, points inside a ``torch.compile`` graph, and a Jacobian that carries an
    autograd graph (a differentiable user Jacobian under autograd), whose graph a backward pass
    may free."""

    __slots__ = ("entries",)

    def __init__(self):
        self.entries: list[_CacheEntry] = []

    @staticmethod
    def _version(x: torch.Tensor):
        # no cache inside a compiled graph (weak references and version counters are not
        # traced; the compiler shares the work itself)
        if is_compiling() or x.is_inference():
            return None
        return x._version

    def get(self, x: torch.Tensor) -> _CacheEntry | None:
        if not self.entries:
            return None
        version = self._version(x)
        for entry in self.entries:
            if entry.ref() is x:
                return entry if version is not None and entry.version == version else None
        return None

    def put(self, x: torch.Tensor, jac: torch.Tensor) -> _CacheEntry | None:
        """Keep ``jac`` for ``x``, the newest entry; returns it (``None`` if ``x`` cannot be
        cached, which also empties the cache)."""
        version = self._version(x)
        if version is None or jac.requires_grad:
            self.clear()
            return None
        entry = _CacheEntry(weakref.ref(x), version, jac)
        kept = [e for e in self.entries if e.ref() is not None and e.ref() is not x]
        self.entries = [entry, *kept[: POINT_CACHE_SIZE - 1]]
        return entry

    def clear(self) -> None:
        self.entries = []

    def __reduce__(self):  # a copy (or a pickle) starts empty: weak references do not travel
        return (_PointCache, ())


class ConstrainedManifold(geoopt.Manifold):
    r"""Base class: a level set ``g(x) = 0`` with the Euclidean metric.

    Subclasses implement [`constraint`][] and, for the generic Newton SHAKE, [`jacobian`][]
    (dense, ``(..., m, N)`` with ``N`` the flattened event size). Closed-form subclasses override
    [`jvp`][], [`vjp`][], [`proju`][], [`shake`][] and [`geodesic`][] instead.

    Attributes:
        ndim: number of trailing event dimensions of a point.
        has_geodesic: whether [`geodesic`][] is an exact closed form.
        rattle_absorbs_normal: whether [`rattle`][] absorbs a normal part of the momentum
            exactly in its starting guess (then a kick before it may skip its projection at no
            cost in convergence; the generic SHAKE starts from zero multipliers instead).
        cheap_geodesic: whether the closed-form geodesic costs about as much as a RATTLE step,
            so that an optimizer, which weighs cost against exactness, takes it by default
            (samplers always default to the exact flow). ``False`` for Stiefel, whose geodesic
            needs two matrix exponentials.
        constant_gram: whether $\det(J J^\top)$ is constant on the set (spheres, circles,
            Stiefel, linear constraints), so that the conditional measure is the surface
            measure and [`log_det_gram`][] may return zeros.
        flags_nonfinite: whether the convergence flags of [`shake`][] and [`rattle`][] are
            already ``False`` wherever the returned point or momentum is not finite (their
            residual test sees every NaN/Inf), so that a caller need not check finiteness again.
        max_iter: iteration budget of the SHAKE solve (a chain stops within it at the first
            iterate within `STOP_FRACTION` of the tolerance; on CPU the solve ends there).
        newton: ``True`` for Newton, ``False`` for simplified Newton (the iteration matrix
            ``J(x~) J(x)^T`` is formed once, at the unconstrained point, and reused); also
            ``True`` for a Newton start of two or more iterates (``newton=k``).
        frozen: the generic SHAKE iterates with the Gram matrix ``J(x) J(x)^T`` of the old
            point, the one its projections factorise (``newton="frozen"``): no Jacobian is
            formed inside the solve.
        matrix_updates: how many of the generic SHAKE's iterates form their own iteration
            matrix ``J(y_k) J(x)^T`` before the last one is kept: ``None`` every iterate
            (``newton=True``), ``k`` the first ``k`` (``newton=k``; ``newton=False`` is 1),
            0 none (``newton="frozen"``).
    """

    ndim = 1
    name = "Constrained"
    reversible = False
    has_geodesic = False
    rattle_absorbs_normal = False
    cheap_geodesic = True
    flags_nonfinite = False
    constant_gram = False

    def __init__(self, *, tol: float | None = None, max_iter: int = 12, newton: bool | str = True):
        super().__init__()
        # an infinite tolerance would accept any SHAKE result, however far off the manifold
        self.tol = None if tol is None else check_positive("tol", tol)
        self.max_iter = check_int("max_iter", max_iter)
        self.matrix_updates = _matrix_updates(newton)
        self.frozen = self.matrix_updates == 0
        self.newton = self.matrix_updates is None or self.matrix_updates > 1
        self._cache = _PointCache()
        # the first SHAKE iterate whose residual the CPU path reads (see STOP_FRACTION)
        self._first_read = 0

    # ------------------------------------------------------------------ constraint view
    def constraint(self, x: torch.Tensor) -> torch.Tensor:
        """Residual ``g(x)``, shape ``(..., m)``."""
        raise NotImplementedError

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """Dense Jacobian ``Dg(x)``, shape ``(..., m, N)`` with ``N`` the flattened event size."""
        raise NotImplementedError(f"{type(self).__name__} has no dense Jacobian")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[: x.dim() - self.ndim], -1)

    def _value_and_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x), J(x))`` together; subclasses whose Jacobian evaluation forms ``g`` anyway
        (autodiff) override this to evaluate ``g`` once."""
        return self.constraint(x), self.jacobian(x)

    def _cached_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, _CacheEntry | None]:
        """``J(x)`` and its point-cache entry (``None`` if ``x`` cannot be cached): from the
        cache when it was formed last at this very ``x``, else formed and kept there."""
        hit = self._cache.get(x)
        if hit is not None:
            return hit.jac, hit
        jac = self.jacobian(x)
        return jac, self._cache.put(x, jac)

    def _jacobian_at(self, x: torch.Tensor) -> torch.Tensor:
        """``J(x)``, from the point cache when it was formed last at this very ``x``."""
        return self._cached_jacobian(x)[0]

    def jvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J(x) v``, shape ``(..., m)``."""
        return row_product(self._jacobian_at(x), self._flat(v).unsqueeze(-1)).squeeze(-1)

    def vjp(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``J(x)^T lam``, shaped like ``x``."""
        jac_t = self._jacobian_at(x).transpose(-1, -2)
        return normal_combination(jac_t, lam.unsqueeze(-1)).squeeze(-1).reshape(x.shape)

    def _jacobian_and_gram_factor(self, x: torch.Tensor):
        """``J(x)`` and the `small_factor` of ``J(x) J(x)^T``, from the point cache when they
        were formed at this very ``x`` (and kept there for the next use)."""
        jac, hit = self._cached_jacobian(x)
        factor = None if hit is None else hit.factor
        if factor is None:
            factor = small_factor(row_product(jac, jac.transpose(-1, -2)))
            if hit is not None:
                hit.factor = factor
        return jac, factor

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Tangent (RATTLE) projection ``u - J^T (J J^T)^{-1} J u``.

        The Gram system is solved by
        `small_factor`; at the point the
        Jacobian was last formed at (the point a RATTLE step returned, say), the Jacobian and the
        factorised Gram matrix are reused (the velocity projection and the next kick share
        them)."""
        jac, factor = self._jacobian_and_gram_factor(x)
        uf = self._flat(u).unsqueeze(-1)
        lam = factor_solve(factor, row_product(jac, uf))
        return (uf - normal_combination(jac.transpose(-1, -2), lam)).squeeze(-1).reshape(u.shape)

    def select_points(self, keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``torch.where(keep, a, b)`` for points ``a``, ``b`` (``keep`` per chain, broadcast over
        the event), with the Jacobian at the result, and its factorised Gram matrix, selected
        the same way from those cached at ``a`` and ``b`` when both are: an integrator that
        keeps a failed chain where it was then does not form the Jacobian at its new state
        again (``g`` acts row by row, so the selection is what a new evaluation would give)."""
        out = torch.where(keep, a, b)
        hit_a, hit_b = self._cache.get(a), self._cache.get(b)
        if hit_a is None or hit_b is None:
            return out
        batch = out.shape[: out.dim() - self.ndim]
        flag = keep.reshape(batch)

        def pick(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.where(flag.reshape(batch + (1,) * (u.dim() - len(batch))), u, v)

        entry = self._cache.put(out, pick(hit_a.jac, hit_b.jac))
        if entry is not None:
            entry.factor = select_factor(pick, hit_a.factor, hit_b.factor)
        return out

    def log_det_gram(self, x: torch.Tensor) -> torch.Tensor:
        r"""$\log\det(J(x) J(x)^\top)$ per chain, differentiable in ``x``: the Fixman term of the
        conditional measure, $(\det J J^\top)^{-1/2}$ times the surface measure. Zeros where
        the Gram determinant is constant on the set (``constant_gram``): only its variation
        matters."""
        if self.constant_gram:
            return x.new_zeros(x.shape[: x.dim() - self.ndim])
        jac = self.jacobian(x)
        return torch.linalg.slogdet(jac @ jac.transpose(-1, -2))[1]

    def gram_rank_deficiency(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per chain: whether the Gram matrix $J J^\top$ at ``x`` is singular to working
        precision (its condition number above ``1 / (16 eps)``), i.e. the constraints are not
        independent there and neither the tangent projection nor SHAKE is defined. Always
        ``False`` where the Gram matrix is constant."""
        if self.constant_gram:
            return torch.zeros(x.shape[: x.dim() - self.ndim], dtype=torch.bool, device=x.device)
        jac = self.jacobian(x)
        eig = torch.linalg.eigvalsh(jac @ jac.transpose(-1, -2))
        top = eig[..., -1:].abs()
        eps = torch.finfo(x.dtype).eps
        return ~(
            (eig[..., :1] > 16 * eps * top) & torch.isfinite(eig).all(dim=-1, keepdim=True)
        ).squeeze(-1)

    def residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Per-chain violation ``max_i |g_i(x)|`` (scale-free where a subclass says so)."""
        return self.constraint(x).abs().amax(dim=-1)

    def tolerance(self, x: torch.Tensor) -> float:
        """SHAKE tolerance for points like ``x`` (the user's ``tol`` if given)."""
        if self.tol is not None:
            return self.tol
        return default_tolerance(x.dtype, self._inner_size(x))

    def _inner_size(self, x: torch.Tensor) -> int:
        return self._flat(x).shape[-1]

    def shake(
        self, x: torch.Tensor, x_tilde: torch.Tensor, *, max_iter: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve ``g(x_tilde + J(x)^T lam) = 0`` for ``lam``.

        Args:
            x: the old point (its normals span the correction), shape ``(..., *event)``.
            x_tilde: the unconstrained update, same shape.
            max_iter: iteration budget (default: ``self.max_iter``).

        Returns:
            ``(x_new, converged)`` with ``converged`` a boolean tensor of the batch shape: the final
            residual is finite and at most [`tolerance`][]. Where it is ``False`` the returned
            point is garbage (possibly NaN) and must be discarded by the caller.
        """
        return self._shake(x, x_tilde, max_iter, keep_jacobian=False)

    def _shake(
        self, x: torch.Tensor, x_tilde: torch.Tensor, max_iter: int | None, keep_jacobian: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[`shake`][]; with ``keep_jacobian`` the Jacobian at the new point is formed together
        with its residual and kept in the point cache (for the projection that follows)."""
        iters = self.max_iter if max_iter is None else max_iter
        if self.frozen:  # SHAKE's own iteration matrix: the old point's Gram matrix
            jac0, factor = self._jacobian_and_gram_factor(x)
        else:
            jac0, factor = self._jacobian_at(x), None
        jac0_t = jac0.transpose(-1, -2)  # (..., N, m)
        xt = self._flat(x_tilde)
        lam = torch.zeros(*jac0_t.shape[:-2], jac0_t.shape[-1], 1, dtype=x.dtype, device=x.device)
        updates = self.matrix_updates
        tol = self.tolerance(x)
        stop = STOP_FRACTION * tol
        # where reading is free, the solve ends at the first iterate every chain stopped at;
        # it reads from one iterate before the last solve ended (a hint, not a result)
        readable = host_reads_free(xt) and xt.numel() > 0
        first_read = min(getattr(self, "_first_read", 0), iters - 1)
        g_new = jac_new = None
        for i in range(iters):
            yr = (xt + normal_combination(jac0_t, lam).squeeze(-1)).reshape(x.shape)
            if updates is None or i < updates:  # a new iteration matrix at this iterate
                g, jac = self._value_and_jacobian(yr)
            else:
                g, jac = self.constraint(yr), None
            if readable and i >= first_read and float(g.abs().amax()) <= stop:
                # every multiplier is held from here on: yr is the point the budget would end
                # at, and g (with jac, if formed here) its residual
                x_new, g_new, jac_new = yr, g, jac
                self._first_read = max(i - 1, 0)
                break
            if jac is not None:
                factor = small_factor(row_product(jac, jac0_t))
            # a residual within the stop moves nothing: that chain's multipliers are held
            lam = lam - factor_solve(factor, torch.nn.functional.hardshrink(g, stop).unsqueeze(-1))
        else:
            x_new = (xt + normal_combination(jac0_t, lam).squeeze(-1)).reshape(x.shape)
            if readable:  # the whole budget ran: the next solve reads at its last iterate first
                self._first_read = iters - 1
        plain_residual = type(self).residual_norm is ConstrainedManifold.residual_norm
        if keep_jacobian and plain_residual:
            if jac_new is None:
                g_new, jac_new = self._value_and_jacobian(x_new)
            self._cache.put(x_new, jac_new)
        if plain_residual and g_new is not None:
            res = g_new.abs().amax(dim=-1)
        else:
            res = self.residual_norm(x_new)
        converged = torch.isfinite(res) & (res <= tol)
        return x_new, converged

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
        r"""One RATTLE step of size ``dt``: [`shake`][] from ``x + dt p``, then the velocity
        $p' = P(x')\,(x' - x)/dt$, multiplied by ``scale``.

        The A sub-step's one building block ([`drift`][manifold_langevin.integrators.substeps.drift]
        calls it for the samplers and the optimizer alike); manifolds with a faster fused form
        ([`Stiefel.rattle`][manifold_langevin.Stiefel.rattle]) override it. Only the tangent
        part of ``p`` matters: a normal part is absorbed by the multipliers.

        Args:
            x: points on the manifold, ``(..., *event)``.
            p: momenta (velocities), same shape.
            dt: the step.
            scale: factor applied to the returned momentum.
            max_iter: SHAKE iteration budget (default: the manifold's).
            scratch: reusable buffers for overrides that keep temporaries (ignored here).
            project: ``False`` skips the velocity's tangent projection (``p' = (x' - x)/dt``),
                for callers whose next use of ``p'`` only sees its tangent part.

        Returns:
            ``(x', p', converged)`` as [`shake`][] returns them.
        """
        if type(self).shake is ConstrainedManifold.shake:
            x_new, ok = self._shake(x, x + dt * p, max_iter, keep_jacobian=True)
        else:
            x_new, ok = self.shake(x, x + dt * p, max_iter=max_iter)
        p_new = (x_new - x) / dt
        if project:
            p_new = self.proju(x_new, p_new)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            p_new = scale * p_new
        return x_new, p_new, ok

    def geodesic(
        self, x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact constrained free flow for time ``t`` from ``(x, v)``; ``v`` tangent at ``x``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form geodesic")

    # ------------------------------------------------------------------ geoopt interface
    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.proju(x, u)

    def inner(self, x, u, v=None, *, keepdim=False):
        if v is None:
            v = u
        return event_sum(u * v, self.ndim, keepdim=keepdim)

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-normal projection: SHAKE from ``x`` onto ``Sigma`` along its own normals."""
        y, ok = self.shake(x, x, max_iter=max(self.max_iter, 30))
        return torch.where(self._bcast(ok, x), y, x)

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Retraction by SHAKE; a chain whose solve fails stays at ``x``."""
        y, ok = self.shake(x, x + u)
        return torch.where(self._bcast(ok, x), y, x)

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.has_geodesic:
            return self.geodesic(x, u, 1.0)[0]
        return self.retr(x, u)

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.proju(y, v)

    def _bcast(self, flag: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return flag.reshape(flag.shape + (1,) * self.ndim).expand_as(like)

    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        res = self.residual_norm(x)
        ok = bool((res <= atol).all())
        return ok, None if ok else f"constraint residual {float(res.max()):.3g} > {atol}"

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        ju = self.jvp(x, u).abs().amax()
        ok = bool(ju <= atol)
        return ok, None if ok else f"|J u| = {float(ju):.3g} > {atol}"

    def random_normal_tangent(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """A standard Gaussian on the tangent space at ``x`` (projected ambient normal).

        ``generator`` is a ``torch.Generator`` or a noise source
        ([`manifold_langevin.noise`][manifold_langevin.noise]).
        """
        return self.proju(x, standard_normal(x, generator))
