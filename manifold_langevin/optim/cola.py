r"""CoLA: constrained Langevin training as a :class:`torch.optim.Optimizer`.

The optimizer applies the B, A, O sub-steps of :mod:`manifold_langevin.integrators.substeps` (and,
for the circle constraint, :func:`~manifold_langevin.manifolds.circles.circle_rotate` /
:func:`~manifold_langevin.manifolds.circles.circle_project`) to parameter tensors. It writes no
update of its own: where a formula appears below it is the Euclidean (``P = I``) or per-weight
(circle) specialisation of those sub-steps, composed in the order of the scheme.

Mapping of hyperparameters
--------------------------
Paper (Leimkuhler, Vlaar, Pouchon, Storkey, ICML 2021) to ours:

========================  ===========================================================
paper                     ``CoLA``
========================  ===========================================================
step size ``h``           ``lr`` (the Langevin time step, *not* an SGD learning rate)
friction ``gamma``        ``friction``
temperature ``T``         ``temperature`` (``0``: the deterministic constrained method)
``r0`` / ``r1``           ``radius`` of the first layer's / the other layers' circle group
                          (:func:`~manifold_langevin.optim.constrained_groups` sets both)
momentum factor ``mu``    ``friction = -log(mu) / h``, reading the paper's momentum factor
                          as the per-step decay ``exp(-gamma h)`` of our O step (E1:
                          ``h = 0.1, mu = 0.9`` gives ``friction = 1.054``)
c-CoLA / o-CoLA           ``constraint="circle"`` / ``constraint="orthogonal"``
-ud / -od                 ``scheme="ud"`` / ``scheme="od"``
========================  ===========================================================

The paper's E2 run (``h = 0.3, gamma = 1, T = 0``) is ``CoLA(groups, lr=0.3, friction=1.0)``.

SGD with momentum to ours (``constraint=None, temperature=0``): eliminating the momentum from the
BAOAB step with the carried kick gives the heavy-ball recursion
``theta_{n+1} = theta_n - h^2 (1 + mu) / 2 * buf_n``, ``buf_n = mu buf_{n-1} + grad_n`` with
``mu = exp(-gamma h)``, which is ``torch.optim.SGD(lr=h^2 (1 + mu) / 2, momentum=mu)`` exactly
when the first kick is a full one (SGD's first buffer is the whole gradient; BAOAB started
from rest kicks by ``h/2``): :func:`sgd_equivalent` returns the matching arguments, including
``first_kick="full"``. Because SGD's learning rate is ``h^2 (1 + mu) / 2``, a schedule that
multiplies ``lr`` by ``a`` corresponds to SGD's learning rate times about ``a^2``.
The overdamped scheme at ``temperature=0`` without constraint is plain SGD with ``lr = h``.

Host synchronisation
--------------------
With ``on_nonfinite="mask"`` (and ``on_failure="reject"``) :meth:`CoLA.step` never reads a tensor
value on the host: SHAKE convergence and finiteness are per-matrix (per-tensor for circles)
device-side flags that select between the new and the old values, and failure counters live on
the device (``tests/test_no_sync.py`` checks it). The strict modes cost one host synchronisation
each per step: ``on_nonfinite="raise"`` (the default) or ``"skip"`` reads one flag (all gradient
norms finite) before anything is changed, and ``on_failure="raise"`` reads one flag (all solves
converged) before anything is written. ``on_failure="subdivide"`` reads the same flag; in a step
where a solve failed it then reads a few more (one per retried bucket and per round of retries).
The very first step of each parameter also reads its constraint residual once (the off-manifold
check). Hyperparameters are read as Python numbers (a
tensor ``lr`` would be read on the host).

``torch.compile``
-----------------
In the sync-free mode at zero temperature, ``torch.compile(opt.step, fullgraph=True)`` traces the
whole step without a graph break (after the first, eager, step; the step counter turns dynamic
after one recompilation, and a new ``lr`` value is a recompilation). With noise, each draw is a
graph break: dynamo does not trace calls that take an explicit ``torch.Generator``, and the noise
must come from the optimizer's own generators for runs to be reproducible and resumable.
Separately, ``compile=True`` compiles only the circle update (one fused loop per tensor), which
is where eager CoLA loses most against SGD.

Cost
----
Same-shape matrices of a group are stacked into one batched solve. A Stiefel step at zero
temperature is one fused RATTLE step (:meth:`~manifold_langevin.Stiefel.rattle`; the kick's
tangent projection and the returned velocity's are left out, since RATTLE only sees the tangent
part of the momentum): four ``N x p x p`` products (two of them Gram matrices formed from their
upper blocks) plus three ``p x p x p`` ones, measured at about 7 matmul-equivalents for a
1024 x 1024 float32 weight on CPU (the same step with the released scripts' SHAKE: about 25).
With noise it is two RATTLE steps and a projected Gaussian. A circle step is some 20 elementwise
passes per weight in cache-sized chunks (11 to 15 SGD steps on CPU), or one compiled loop with
``compile=True`` (about 3 SGD steps: the loop moves twice SGD's bytes, four state arrays and the
gradient, and the Python around it, dynamo's guards and the finiteness check, costs a fixed
amount per step). ``validation/bench_optim.py`` measures all of this against SGD, geoopt and the
paper's algorithm. On a GPU a step's time is set by the number of operations it launches, each
costing microseconds of host time, more than by its flops (an H200 runs the 1024 x 1024
orthogonal step in 1.3 ms, 13 products' time; ``validation/results/cuda``), so the CPU-only
measures, blocked Gram products and cache-sized circle chunks, are off there.

Distributed training
--------------------
Under ``DistributedDataParallel`` every rank holds the whole model, receives the gradient averaged
over the global batch and must draw the same noise, so that the replicas stay identical: the
noise generators are seeded from ``seed``, identically on every rank (the first accelerator of
each process gets ``seed`` whatever its index), and ``seed=None`` broadcasts rank 0's draw when
``torch.distributed`` is initialised (``tests/optim/test_distributed.py`` checks bit-identical
replicas at ``temperature > 0``). Sharded parameters (DTensors, FSDP shards) are refused for
constrained groups: an orthogonal matrix cannot be updated shard by shard (see
``docs/tutorials/distributed.md``).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import geoopt
import torch
import torch.distributed as dist
from torch.optim.optimizer import Optimizer, required

from ..errors import NonFiniteError, OffManifoldError, ShakeError
from ..integrators.dynamics import check_positive
from ..integrators.substeps import drift, euler, kick, ornstein_uhlenbeck, ou_coefficients
from ..manifolds.adapters import as_manifold
from ..manifolds.base import ConstrainedManifold
from ..manifolds.circles import circle_kick_rotate, circle_project, circle_rotate
from ..manifolds.product import Euclidean
from ..manifolds.sphere import Sphere
from ..manifolds.stiefel import Stiefel

__all__ = ["STATE_VERSION", "CoLA", "sgd_equivalent"]

#: format of :meth:`CoLA.state_dict`; bumped when the layout changes
STATE_VERSION = 1

_SCHEMES = ("ud", "od")
_NAMED = ("orthogonal", "stiefel", "circle", "sphere")
_FIRST_KICKS = ("half", "full")
_ON_NONFINITE = ("raise", "skip", "mask")
_ON_FAILURE = ("reject", "raise", "subdivide")
#: ``on_failure="subdivide"`` retries a failed A step with 2, 4, ... up to this many times the
#: group's ``substeps``
_SUBDIVIDE_MAX = 16
#: a start point passes the off-manifold check up to this multiple of the SHAKE tolerance
_START_FACTOR = 10.0


def sgd_equivalent(lr: float, momentum: float) -> dict:
    r"""CoLA arguments that reproduce ``torch.optim.SGD(lr=lr, momentum=momentum)``.

    Unconstrained BAOAB at zero temperature with the carried kick is the heavy-ball method
    ``buf_n = mu buf_{n-1} + grad_n``, ``theta_{n+1} = theta_n - h^2 (1 + mu)/2 buf_n`` with
    ``mu = exp(-gamma h)``. Solving for ``h`` and ``gamma``:

    .. math::
        h = \sqrt{2\,\mathrm{lr} / (1 + \mu)}, \qquad \gamma = -\log(\mu) / h

    (``momentum = 0`` gives ``gamma = inf``: the momentum is dropped after every step).

    Args:
        lr: SGD's learning rate (> 0).
        momentum: SGD's momentum ``mu`` in ``[0, 1]`` (dampening 0, no Nesterov).

    Returns:
        ``dict(lr=h, friction=gamma, temperature=0.0, first_kick="full")``; pass it as keyword
        arguments to :class:`CoLA` (or merge it into a param group) with ``constraint=None``.

    Example:
        >>> kw = sgd_equivalent(lr=0.1, momentum=0.9)
        >>> round(kw["lr"], 6), round(kw["friction"], 6), kw["first_kick"]
        (0.324443, 0.324743, 'full')
    """
    lr = check_positive("lr", lr)
    mu = float(momentum)
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    h = math.sqrt(2.0 * lr / (1.0 + mu))
    friction = math.inf if mu == 0.0 else -math.log(mu) / h
    return {"lr": h, "friction": friction, "temperature": 0.0, "first_kick": "full"}


_NAMED_MANIFOLDS: dict = {}


def _named_manifold(name: str, radius: float | None) -> ConstrainedManifold:
    """One shared manifold object per named constraint (a plain dict: ``functools.cache`` makes
    ``torch.compile`` warn)."""
    key = ("stiefel", None) if name in ("orthogonal", "stiefel") else ("sphere", radius)
    m = _NAMED_MANIFOLDS.get(key)
    if m is None:
        m = Stiefel() if key[0] == "stiefel" else Sphere(1.0 if radius is None else radius)
        _NAMED_MANIFOLDS[key] = m
    return m


@dataclass
class _Entry:
    """One parameter taking part in a step."""

    param: torch.Tensor
    grad: torch.Tensor
    state: dict
    where: tuple  # (group, group index, index in the group): the name is built only when needed
    kind: str = "free"  # "manifold" | "circle" | "free"
    manifold: ConstrainedManifold | None = None
    shape: tuple = ()

    @property
    def name(self) -> str:
        return _param_name(*self.where)


@dataclass
class _Bucket:
    """Parameters of one group processed together: same kind, shape, dtype, device, kick."""

    kind: str  # "manifold" | "circle" | "free"
    group: dict
    manifold: ConstrainedManifold | None = None
    shape: tuple = ()
    kick_h: float = 0.0
    entries: list = field(default_factory=list)
    # on_failure="subdivide": re-runs the failed points before the bucket is committed
    retry: Callable[[], None] | None = None


def _gather(tensors: list[torch.Tensor], shape) -> torch.Tensor:
    """Stack same-shape tensors as ``(B, *shape)`` (a view when there is only one)."""
    if len(tensors) == 1:
        return tensors[0].reshape(1, *shape)
    return torch.stack([t.reshape(shape) for t in tensors])


def _scatter(new: torch.Tensor, targets: list[torch.Tensor]) -> None:
    """Copy the rows of a ``(B, ...)`` tensor back into ``targets`` (in place)."""
    if len(targets) == 1:
        targets[0].copy_(new.reshape(targets[0].shape))
        return
    torch._foreach_copy_(targets, [n.reshape(t.shape) for n, t in zip(new.unbind(0), targets)])


def _select_into(targets: list[torch.Tensor], keep: torch.Tensor, new: torch.Tensor, old) -> None:
    """``targets <- where(keep, new, old)`` (``new``/``old`` stacked as by :func:`_gather`).

    A single contiguous target is written directly (no temporary, no copy)."""
    if len(targets) == 1 and targets[0].is_contiguous():
        if not isinstance(old, torch.Tensor):
            old = new.new_full((), old)
        torch.where(keep, new, old, out=targets[0].view(new.shape))
        return
    _scatter(torch.where(keep, new, old), targets)


#: elements per chunk of an eager circle update on CPU: the temporaries of the elementwise update
#: then stay in cache and in the allocator's free lists (fresh multi-megabyte temporaries cost
#: page faults that made the whole-vector update about 4x slower on CPU). On a GPU a tensor is one
#: chunk: there every pass is a kernel launch, whose host cost (about 10 us on the H200 machine of
#: validation/results/cuda) is what the update's time is made of, and the caching allocator
#: recycles the temporaries.
_CHUNK = 1 << 16


class _FlatView:
    """A 1-D alias of a tensor (or of a contiguous working copy, written back by ``flush``)."""

    def __init__(self, t: torch.Tensor):
        self.target = t
        self.copy = not t.is_contiguous()
        self.flat = (t.contiguous() if self.copy else t).view(-1)

    def flush(self) -> None:
        if self.copy:
            self.target.copy_(self.flat.view(self.target.shape))


def _finite(ndim: int, *tensors: torch.Tensor) -> torch.Tensor:
    """Per-point flag: every entry of every tensor is finite (event = last ``ndim`` dims)."""
    out = None
    for t in tensors:
        f = torch.isfinite(t)
        if ndim:
            f = f.flatten(-ndim).all(dim=-1)
        out = f if out is None else out & f
    return out


class _NoiseTape:
    """A noise source (see :mod:`manifold_langevin.noise`) that keeps its draws, so that a retry
    of some of the points replays exactly the normals they had in the first attempt.

    It draws what ``standard_normal(like, generator)`` would, so a step reads the same stream
    through it as straight from the generator."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.draws: list[torch.Tensor] = []

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)
        self.draws.append(z)
        return z

    def replay(self, rows: torch.Tensor, ndim: int):
        """A noise source returning the recorded draws at the flat batch indices ``rows`` (of
        points with ``ndim`` event dimensions), in the order they were drawn."""
        draws = iter(self.draws)

        def source(like):
            z = next(draws)
            return z.reshape(-1, *z.shape[z.dim() - ndim :])[rows].reshape(like.shape)

        return source


# ---------------------------------------------------------------------------- the updates
# Pure functions of tensors and Python floats (no host reads), one per (scheme, kind): the
# compute graph of a step. ``kick_h`` is the total kick time (the previous step's pending
# B(h/2) plus this step's B(h/2)); the force is ``-grad``, passed as ``kick(..., grad, -kick_h)``.


def _ud_manifold(
    m, x, p, grad, kick_h, h, c1, c2, generator, geodesic, substeps, fuse, scratch=None
):
    """B(kick_h) A(h/2) O(h) A(h/2); returns ``(x, p, ok)``."""
    geodesic = geodesic and m.has_geodesic
    lazy = not geodesic and m.rattle_absorbs_normal
    if lazy:
        # projections are left out: a RATTLE step depends on the momentum only through its
        # tangent part, and this manifold's step absorbs a normal part exactly in its first
        # multiplier guess (e.g. Stiefel.rattle), so B followed by A is the same map without the
        # kick's projection, and the momentum RATTLE returns may keep its normal part too (the
        # O step is linear and the next step's kick and RATTLE step see only the tangent part)
        p = torch.add(p, grad, alpha=-kick_h)
    else:
        p = kick(m, x, p, grad, -kick_h)
    kw = {"substeps": substeps, "geodesic": geodesic, "scratch": scratch, "project": not lazy}
    if c2 == 0.0 and fuse:
        # A(h/2) O A(h/2) with a noiseless O is one flow of time (1 + c1) h / 2 followed by the
        # damping (the free flow with velocity c1 p for time t equals the flow with velocity p
        # for time c1 t, with the velocity scaled by c1): exact for geodesics; with RATTLE it is
        # one SHAKE solve instead of two, the two agreeing to O(h^3) per step
        return drift(m, x, p, 0.5 * (1.0 + c1) * h, scale=c1, **kw)
    x, p, ok = drift(m, x, p, 0.5 * h, **kw)
    p = ornstein_uhlenbeck(m, x, p, c1, c2, generator)
    x, p, ok2 = drift(m, x, p, 0.5 * h, **kw)
    return x, p, ok & ok2


def _subdivide(m, start, new, run, noise, substeps):
    """Re-run the failed points of a bucket with ``2, 4, ...`` up to :data:`_SUBDIVIDE_MAX` times
    ``substeps`` RATTLE sub-steps per A step, each point keeping the first result that converges.

    ``start`` is ``(x0, p0, grad)`` and ``new`` the first attempt's ``(x, p, ok)``;
    ``run(x0, p0, grad, noise, substeps)`` is the step. A point redone with ``K`` sub-steps gets
    the normals it drew in the first attempt (``noise`` is a :class:`_NoiseTape`), so its result
    is the one a step with ``substeps=K`` would have given, and the generator advances as in any
    other step. Host reads: one per round. Returns the new ``(x, p, ok)``."""
    ndim = m.ndim

    def flat(t):
        return t.reshape(-1, *t.shape[t.dim() - ndim :])

    x0, p0, g = (flat(t) for t in start)
    x, p = flat(new[0]).clone(), flat(new[1]).clone()
    ok = new[2].reshape(-1).clone()
    # a point with a non-finite gradient or momentum fails at any step size
    rows = (~ok & _finite(ndim, g, p0)).nonzero().squeeze(-1)
    factor = 2
    while rows.numel() and factor <= _SUBDIVIDE_MAX:
        source = noise.replay(rows, ndim) if isinstance(noise, _NoiseTape) else noise
        xk, pk, okk = run(x0[rows], p0[rows], g[rows], source, factor * substeps)
        okk = okk & _finite(ndim, xk, pk)
        keep = okk.reshape(okk.shape + (1,) * ndim)
        x[rows] = torch.where(keep, xk, x[rows])
        p[rows] = torch.where(keep, pk, p[rows])
        ok[rows] = okk
        rows = rows[~okk]
        factor *= 2
    return x.reshape(new[0].shape), p.reshape(new[1].shape), ok.reshape(new[2].shape)


def _od_manifold(m, x, grad, h, temperature, generator, geodesic):
    """Projected Euler-Maruyama; returns ``(x, ok)``."""
    return euler(m, x, -grad, h, temperature, generator, geodesic=geodesic)


def _circle_noise(w, generator):
    """Standard normals for the ``(w, xi)`` pairs of the flat tensor ``w``, shape ``(2, n)``."""
    return torch.randn((2, *w.shape), generator=generator, dtype=w.dtype, device=w.device)


def _ud_circle(w, xi, pw, pxi, grad, kick_h, h, c1, c2, radius, noise, fuse):
    """The circle specialisation of B A O A (rotation in the ``(w, xi)`` planes); ``noise`` is
    :func:`_circle_noise`'s draw, ``None`` when ``c2 == 0``. No branch depends on the numbers,
    which may be 0-d tensors (see :func:`_circle_update_`)."""
    # B then A: the loss does not depend on xi, so the force is (-grad, 0)
    if noise is None and fuse:
        # exact fusion of A(h/2) O A(h/2) at zero noise, as in _ud_manifold
        t = 0.5 * (1.0 + c1) * h
        w, xi, pw, pxi = circle_kick_rotate(w, xi, pw, pxi, grad, -kick_h, t, radius, c1)
        return _bound(w, radius), xi, pw, pxi
    w, xi, pw, pxi = circle_kick_rotate(w, xi, pw, pxi, grad, -kick_h, 0.5 * h, radius)
    if noise is None:
        pw, pxi = c1 * pw, c1 * pxi
    else:
        rw, rxi = circle_project(w, xi, noise[0], noise[1])
        pw, pxi = c1 * pw + c2 * rw, c1 * pxi + c2 * rxi
    w, xi, pw, pxi = circle_rotate(w, xi, pw, pxi, 0.5 * h, radius)
    return _bound(w, radius), xi, pw, pxi


def _bound(w, radius):
    """``|w| <= r`` exactly: the renormalised rotation can overshoot ``r`` by an ulp near xi = 0."""
    return torch.clamp(w, -radius, radius)


def _od_circle(w, xi, grad, h, temperature, radius, noise):
    """Projected Euler-Maruyama on circles with the exact rotation (geodesic for unit time);
    ``noise`` is ``None`` when ``temperature == 0``."""
    vw = -h * grad
    if noise is not None:
        s = (2.0 * h * temperature) ** 0.5
        vw, vxi = vw + s * noise[0], s * noise[1]
    else:
        vxi = torch.zeros_like(xi)
    vw, vxi = circle_project(w, xi, vw, vxi)
    w, xi, _, _ = circle_rotate(w, xi, vw, vxi, 1.0, radius)
    return _bound(w, radius), xi


def _circle_update(state, grad, noise, ud, fuse, mask, kick_h, h, c1, c2, tau, radius):
    """New values of one flat circle tensor: ``state`` is ``(w, xi, pw, pxi)`` (``"ud"``) or
    ``(w, xi)``; returns ``(new state, number of rejected entries or None)``. With ``mask`` an
    entry whose update is not finite keeps its point and gets zero momentum."""
    if ud:
        new = _ud_circle(*state, grad, kick_h, h, c1, c2, radius, noise, fuse)
    else:
        new = _od_circle(*state, grad, h, tau, radius, noise)
    if not mask:
        return new, None
    ok = torch.isfinite(new[0])
    for t in new[1:]:
        ok = ok & torch.isfinite(t)
    kept = (torch.where(ok, new[0], state[0]), torch.where(ok, new[1], state[1]))
    return (*kept, *(torch.where(ok, t, 0.0) for t in new[2:])), (~ok).sum()


def _circle_update_(state, grad, noise, ud, fuse, mask, *numbers):
    """:func:`_circle_update` written into ``state`` (in place); returns the rejection count.

    This is the function ``CoLA(compile=True)`` hands to ``torch.compile``: the whole update of a
    tensor becomes one loop over memory (about 20 elementwise passes in eager mode). It is then
    called with the numbers ``(kick_h, h, c1, c2, tau, radius)`` as 0-d tensors: with Python
    floats dynamo would either recompile for every new value (an lr schedule) or, for arguments
    that torch ops take as a ``Scalar`` (``clamp``'s bounds, ``add``'s ``alpha``), bake the first
    value into the kernel without a guard (observed with torch 2.13)."""
    new, bad = _circle_update(state, grad, noise, ud, fuse, mask, *numbers)
    for t, n in zip(state, new):
        t.copy_(n)
    return bad


_COMPILED: dict = {}


def _compiled_circle_update_():
    """``torch.compile(_circle_update_)``, built once per process (sizes are dynamic)."""
    fn = _COMPILED.get("circle")
    if fn is None:
        fn = _COMPILED["circle"] = torch.compile(_circle_update_, dynamic=True)
    return fn


def _randn_list(tensors, generator):
    return [
        torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device) for t in tensors
    ]


def _ud_free_(xs, ps, grads, kick_h, h, c1, c2, generator, fuse):
    """Unconstrained BAOAB (``P = I``, the geodesic a straight line), in place."""
    torch._foreach_add_(ps, grads, alpha=-kick_h)
    if c2 == 0.0 and fuse:
        torch._foreach_add_(xs, ps, alpha=0.5 * (1.0 + c1) * h)
        torch._foreach_mul_(ps, c1)
        return
    torch._foreach_add_(xs, ps, alpha=0.5 * h)
    torch._foreach_mul_(ps, c1)
    torch._foreach_add_(ps, _randn_list(ps, generator), alpha=c2)
    torch._foreach_add_(xs, ps, alpha=0.5 * h)


def _od_free_(xs, grads, h, temperature, generator):
    """Unconstrained Euler-Maruyama (SGLD), in place."""
    torch._foreach_add_(xs, grads, alpha=-h)
    if temperature > 0:
        torch._foreach_add_(xs, _randn_list(xs, generator), alpha=math.sqrt(2.0 * h * temperature))


# ---------------------------------------------------------------------------- the optimizer


class CoLA(Optimizer):
    r"""Constrained Langevin optimizer (CoLA): weight-constrained training and sampling.

    Each parameter ``theta`` (a tensor, or a matrix view of it) is held on a constraint set
    :math:`\Sigma = \{g = 0\}` at every step: orthonormal columns/rows (``"orthogonal"``),
    per-weight circles :math:`w^2 + \xi^2 = r^2` with an auxiliary variable :math:`\xi`
    (``"circle"``, so :math:`|w| \le r`), row spheres (``"sphere"``), any manifold of this
    package or a plain geoopt one, or none. With loss :math:`L`, step :math:`h` (``lr``),
    friction :math:`\gamma`, temperature :math:`\tau`, :math:`P(\theta)` the tangent projection
    and :math:`R` standard normal, one ``"ud"`` step (BAOAB with the carried kick, one gradient
    per step) is

    .. math::
        p &\leftarrow P(\theta)\,\bigl(p - \kappa_n \nabla L(\theta)\bigr),
            \qquad \kappa_n = \tfrac{h_{n-1}}{2} + \tfrac{h_n}{2}
            \ (\kappa_0 = \tfrac{h_0}{2}, \text{ or } h_0 \text{ with first\_kick="full"}) \\
        (\theta, p) &\leftarrow \Phi^A_{h/2}(\theta, p) \\
        p &\leftarrow e^{-\gamma h} p + \sqrt{\tau (1 - e^{-2\gamma h})}\, P(\theta) R \\
        (\theta, p) &\leftarrow \Phi^A_{h/2}(\theta, p)

    where :math:`\Phi^A` is the exact geodesic flow (circles: the rotation in the
    :math:`(w, \xi)` plane; spheres) or ``substeps`` RATTLE steps (SHAKE
    :math:`\theta' = \theta + \delta p + J(\theta)^T\lambda` to tolerance, then
    :math:`p' = P(\theta')(\theta' - \theta)/\delta`; the default for Stiefel). The stored momentum
    is the one after the O/A part; the final :math:`B_{h/2}` of step :math:`n` is applied at step
    :math:`n+1` together with its own, with the gradient the training loop has just computed at
    the current point, so no extra call is needed before training. At :math:`\tau = 0`
    (``fuse=True``) :math:`A_{h/2} O A_{h/2}` is evaluated as one A step of time
    :math:`(1 + e^{-\gamma h}) h/2` followed by the damping: exact for geodesic flows, and for
    RATTLE one SHAKE solve instead of two (the two agree to :math:`O(h^3)` per step).

    A ``"od"`` step is projected Euler-Maruyama (the paper's constrained SGLD):
    :math:`\theta' = \theta - h\nabla L + \sqrt{2 h \tau} R + J(\theta)^T\lambda` with
    :math:`g(\theta') = 0` by SHAKE, or the geodesic with initial velocity
    :math:`P(\theta)(-h\nabla L + \sqrt{2h\tau}R)` for unit time (circles: always the rotation).

    Target: for :math:`\tau > 0` both schemes sample
    :math:`\propto \exp(-L(\theta)/\tau)\, d\sigma_\Sigma(\theta)` (surface measure of
    :math:`\Sigma`); configurational averages have weak order 2 for ``"ud"`` and 1 for ``"od"``.
    :math:`\tau = 0` is the deterministic constrained method (heavy ball on the manifold, or
    projected gradient descent). Use the loss whose gradient you want as the force: for a Bayesian
    posterior over ``N`` examples with a mean minibatch loss, :math:`\tau = 1/N`.

    Reference: B. Leimkuhler, T. Vlaar, T. Pouchon, A. Storkey, "Better Training using
    Weight-Constrained Stochastic Dynamics", ICML 2021 (PMLR 139:6200-6211). See the module
    docstring for the mapping of the paper's ``(h, gamma, T, r0, r1)`` and of SGD's
    ``(lr, momentum)`` to these arguments.

    Batching: in each param group, same-shape tensors with the same manifold, dtype and device are
    stacked and updated in one batched call (``(B, n, k)`` matmuls for Stiefel); circle-constrained
    tensors are flattened into one vector per radius; unconstrained ones use ``torch._foreach_*``.
    Conv kernels ``(out, in, kh, kw)`` are treated as ``(out, in*kh*kw)`` matrices (rows
    orthonormal when wide).

    Failures: a matrix whose SHAKE solve did not converge or whose update is not finite (with
    ``on_nonfinite="mask"`` also a circle weight or an unconstrained entry with a non-finite
    update) is rejected: it keeps its old value, its momentum is reset to zero (a restart of the
    heavy ball; unlike a resampling it draws no noise, so the noise stream does not depend on
    failures), and ``state["n_rejected"]`` counts it. A rejection is a state-dependent restart, so
    at ``tau > 0`` it biases the sampled measure by about the rejection rate (read it with
    :meth:`n_rejected`). ``on_failure="raise"`` raises :class:`~manifold_langevin.ShakeError`
    instead, with nothing changed. ``on_failure="subdivide"`` first redoes the step of each failed
    matrix with its A steps split into 2, 4, 8 and then 16 times ``substeps`` RATTLE sub-steps
    (``"ud"`` with RATTLE only: sub-steps do not help a geodesic, ``"od"`` has no A step), with
    the same normals; a matrix takes the first result that converges, which is exactly what a
    step with that many ``substeps`` gives (a g-BAOAB step, so the scheme and its order are
    unchanged, and the noise stream is the same as without failures). Matrices that fail even
    with 16 times the sub-steps are rejected and counted as above. No NaN is written into a
    constrained parameter (one exception: outside ``on_nonfinite="mask"`` a circle update that
    overflows the dtype, from a gradient or ``lr`` near its largest value, e.g. ``lr = 300`` or a
    gradient of ``6e4`` in float16, is not checked, since checking costs some 70% of the eager
    circle step; ``"mask"`` rejects such entries).

    State (per parameter, in :meth:`state_dict`): ``step``, ``pending_kick`` (the carried
    :math:`h/2`), ``momentum_buffer`` (``"ud"``; for an orthogonal weight stepped by RATTLE
    it is stored before its tangent projection, which the next step makes redundant: the velocity
    is its tangent part, ``Stiefel().proju(w, buf)``), ``xi`` and ``xi_momentum`` (circles),
    ``n_rejected`` (an int64 device counter); plus, under the ``"cola"`` key, the format version,
    the seed, :attr:`n_skipped`, the state of every noise generator and the parameter shapes.

    Args:
        params: parameters or param groups (e.g. from
            :func:`~manifold_langevin.optim.constrained_groups`); ``(name, tensor)`` pairs give
            names for error messages.
        lr: step size ``h > 0`` (read from the group at every step, so lr schedulers work; a group
            whose ``lr`` is 0 is left unchanged).
        friction: ``gamma >= 0`` (``inf``: no momentum is kept).
        temperature: ``tau >= 0``.
        scheme: ``"ud"`` (underdamped BAOAB) or ``"od"`` (projected overdamped).
        constraint: ``"orthogonal"`` (alias ``"stiefel"``), ``"circle"``, ``"sphere"`` (each row
            of the matrix view on a sphere of ``radius``), a manifold object, or ``None``.
            ``geoopt.ManifoldParameter`` s always use their own manifold.
        radius: circle radius ``r`` (required for ``"circle"``) or sphere radius (default 1).
        geodesic: ``None`` chooses per manifold: circles and spheres rotate exactly, Stiefel uses
            RATTLE (measured on CPU in float32, a fused RATTLE step costs about 7
            matmul-equivalents at 1024x1024, the closed-form geodesic, a ``2k x 2k`` matrix
            exponential, 40 to 190 for shapes from 128x32 to 1024x1024), other manifolds their
            geodesic if they have one.
            ``True`` / ``False`` forces the choice. The geodesic fails only for steps so large
            that rounding takes its result off the manifold; RATTLE can fail sooner (see
            failures below).
        substeps: RATTLE sub-steps per A step (g-BAOAB) when no geodesic is used.
        fuse: at zero temperature, evaluate ``A O A`` as one A step (see above).
        first_kick: ``"half"`` (BAOAB from rest) or ``"full"`` (SGD's first step).
        on_nonfinite: NaN/Inf gradients: ``"raise"`` :class:`~manifold_langevin.NonFiniteError`
            naming the parameter, ``"skip"`` the whole step (counted in :attr:`n_skipped`); both
            leave parameters, state and generators exactly as they were and cost one host sync per
            step. ``"mask"`` has no sync: non-finite updates are rejected entry by entry (matrix by
            matrix) as failures are (the noise is drawn as usual).
        on_failure: ``"reject"`` (default, no sync), ``"raise"`` (one sync per step) or
            ``"subdivide"`` (retry with more sub-steps, then reject; one sync per step, a few more
            in steps with a failure).
        seed: seed of the optimizer's noise generators (one per device; the k-th accelerator
            met gets ``seed + k``). ``None`` draws one from torch's global generator, so
            ``torch.manual_seed`` makes runs reproducible; if ``torch.distributed`` is
            initialised, rank 0's draw is broadcast to every rank (a collective: construct the
            optimizer on every rank). An explicit seed is used as given: in data-parallel
            training give the same one on every rank, or the replicas drift apart.
        generator: a ``torch.Generator`` to use for the parameters on its device (instead of
            ``seed``).
        compile: run each circle-constrained tensor's update as one loop compiled by
            ``torch.compile`` (inductor) instead of some 20 eager elementwise passes: 3 to 5
            times faster on CPU, at the price of a compilation of 10 to 20 seconds at the first
            step (inductor caches it on disk). If compilation fails the optimizer warns and
            stays eager; with ``on_failure="raise"`` (deferred writes) the eager update is used.
            With noise the normals are drawn per tensor instead of per chunk, so the noise
            stream differs from the eager one. Other constraints are not affected (their cost is
            in matrix products).

    Attributes:
        n_skipped: number of steps skipped with ``on_nonfinite="skip"``.

    Example:
        >>> import torch
        >>> import manifold_langevin as ml
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 16), torch.nn.Tanh(),
        ...                             torch.nn.Linear(16, 1))
        >>> groups = ml.optim.constrained_groups(model, constraint="orthogonal")
        >>> opt = ml.optim.CoLA(groups, lr=0.1, friction=1.0, temperature=1e-4, seed=0)
        >>> x, y = torch.randn(64, 8), torch.randn(64, 1)
        >>> for _ in range(20):
        ...     opt.zero_grad()
        ...     torch.nn.functional.mse_loss(model(x), y).backward()
        ...     opt.step()
        >>> w = model[2].weight
        >>> bool((w.T @ w - torch.eye(16)).abs().max() < 1e-5)
        True
    """

    def __init__(
        self,
        params,
        lr: float = required,
        friction: float = 1.0,
        temperature: float = 0.0,
        scheme: str = "ud",
        constraint=None,
        radius: float | None = None,
        *,
        geodesic: bool | None = None,
        substeps: int = 1,
        fuse: bool = True,
        first_kick: str = "half",
        on_nonfinite: str = "raise",
        on_failure: str = "reject",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ):
        if on_nonfinite not in _ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_ON_NONFINITE}, got {on_nonfinite!r}")
        if on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be one of {_ON_FAILURE}, got {on_failure!r}")
        if seed is not None and generator is not None:
            raise ValueError("give either seed= or generator=, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is None:
            # from torch's global generator (a CPU draw): reproducible under torch.manual_seed;
            # under torch.distributed, rank 0's draw on every rank (replicas need the same noise)
            seed = _broadcast_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64).item()))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if compile not in (True, False):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.on_nonfinite = on_nonfinite
        self.on_failure = on_failure
        self.compile = bool(compile)
        self.seed = seed
        self.n_skipped = 0
        self._generators: dict[str, torch.Generator] = {}
        # reusable temporaries of the Stiefel RATTLE step (not part of the state)
        self._scratch: dict = {}
        if generator is not None:
            self._generators[_device_key(generator.device)] = generator
        defaults = {
            "lr": lr,
            "friction": friction,
            "temperature": temperature,
            "scheme": scheme,
            "constraint": constraint,
            "radius": radius,
            "geodesic": geodesic,
            "substeps": substeps,
            "fuse": fuse,
            "first_kick": first_kick,
        }
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            _check_group(group)
            for i, p in enumerate(group["params"]):
                name = _param_name(group, index, i)
                _check_unsharded(group, p, self._classify(group, p, name)[0], name)
        except Exception:
            self.param_groups.pop()
            raise
        for p in group["params"]:
            self._generator(p.device)

    def _classify(self, group: dict, p: torch.Tensor, name):
        """``(kind, manifold, point shape)`` of parameter ``p`` in ``group``.

        ``name`` is the parameter's name or its ``(group, group index, index)`` (for messages).
        """
        if isinstance(name, tuple):
            name = _LazyName(name)
        constraint = group["constraint"]
        if not p.is_floating_point():
            raise TypeError(f"parameter {name} has dtype {p.dtype}; CoLA needs floating point")
        if p.device.type == "meta":
            raise ValueError(
                f"parameter {name} is on the meta device (a shape without values); materialise "
                "and initialise the model (e.g. model.to_empty(device=...)) before building CoLA"
            )
        if isinstance(p, geoopt.ManifoldParameter):
            own = as_manifold(p.manifold)
            if not isinstance(own, Euclidean):
                if constraint is not None:
                    raise ValueError(
                        f"parameter {name} is a geoopt.ManifoldParameter on {own.name} but its "
                        f"group also asks for constraint={constraint!r}; put it in a group with "
                        "constraint=None"
                    )
                return self._manifold_kind(own, p, name)
        if constraint is None:
            return "free", None, ()
        if isinstance(constraint, str):
            radius = group["radius"]
            if constraint == "circle":
                return "circle", None, ()
            if constraint in ("orthogonal", "stiefel"):
                if p.dim() < 2:
                    raise ValueError(
                        f"parameter {name} has shape {tuple(p.shape)}: the orthogonal constraint "
                        "needs a matrix (or a conv kernel, taken as (out, in*kh*kw)); put "
                        "vectors in an unconstrained group"
                    )
                if p.numel() == 0:
                    raise ValueError(
                        f"parameter {name} has shape {tuple(p.shape)}: an empty matrix has no "
                        "orthonormal frame; put it in an unconstrained group"
                    )
                m = _named_manifold(constraint, None)
                return "manifold", m, (p.shape[0], math.prod(p.shape[1:]))
            if p.dim() == 0:
                raise ValueError(f"parameter {name} is a scalar; a sphere needs a vector")
            shape = (p.shape[0], math.prod(p.shape[1:])) if p.dim() >= 2 else tuple(p.shape)
            return "manifold", _named_manifold("sphere", radius), shape
        return self._manifold_kind(as_manifold(constraint), p, name)

    @staticmethod
    def _manifold_kind(m: ConstrainedManifold, p: torch.Tensor, name: str):
        if isinstance(m, Euclidean):
            return "free", None, ()
        if p.dim() < m.ndim:
            raise ValueError(
                f"parameter {name} has shape {tuple(p.shape)} but points of {m.name} have "
                f"{m.ndim} dimension(s)"
            )
        check = getattr(m, "_check_shape", None)
        if check is not None:
            ok, reason = check(p.shape, f"parameter {name}")
            if not ok:
                raise ValueError(reason)
        return "manifold", m, tuple(p.shape)

    # ------------------------------------------------------------------ generators
    def _generator(self, device: torch.device) -> torch.Generator:
        key = _device_key(device)
        gen = self._generators.get(key)
        if gen is None:
            dev = torch.device(key)
            gen = torch.Generator(device=dev)
            # the k-th accelerator this optimizer meets gets seed + k, not seed + its index:
            # distinct streams for the devices of one process, and the same stream on every DDP
            # rank (one device per rank, cuda:0 on rank 0, cuda:1 on rank 1, ...)
            k = sum(torch.device(other).type != "cpu" for other in self._generators)
            gen.manual_seed(self.seed + (0 if dev.type == "cpu" else k))
            self._generators[key] = gen
        return gen

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One CoLA step for every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss (it runs
                with gradients enabled before the update).

        Returns:
            the closure's loss, or ``None``.

        Raises:
            NonFiniteError: a gradient is NaN/Inf and ``on_nonfinite="raise"``.
            ShakeError: a SHAKE solve failed and ``on_failure="raise"``.
            OffManifoldError: at a parameter's first step, it is not on its constraint set.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        if not work:
            return loss
        if self.on_nonfinite != "mask" and not self._check_finite(work):
            return loss  # skipped
        self._init_state(work)
        buckets = self._buckets(work)
        strict = self.on_failure == "raise"
        subdivide = self.on_failure == "subdivide"
        snapshot = {k: g.get_state() for k, g in self._generators.items()} if strict else None
        commits, checks = [], []
        # constrained updates first (those can fail), then the unconstrained ones: the same order
        # in every mode, so that the noise stream does not depend on on_failure
        for b in buckets:
            if b.kind != "free":
                commit, ok = self._update(b)
                checks.append((b, ok))
                if strict or subdivide:
                    commits.append(commit)
                else:
                    commit()
        if strict:
            self._check_converged(checks, snapshot)
        if subdivide:
            self._retry_failed(checks)
        for commit in commits:
            commit()
        for b in buckets:
            if b.kind == "free":
                self._update(b)[0]()
        for _, group, entries in work:
            h = float(group["lr"])
            pending = 0.5 * h if group["scheme"] == "ud" else 0.0
            for e in entries:
                e.state["step"] += 1
                e.state["pending_kick"] = pending
        return loss

    def _collect(self):
        """``[(group index, group, entries)]`` for the groups with a positive lr."""
        work = []
        for gi, group in enumerate(self.param_groups):
            h = float(group["lr"])
            # the numbers a step reads may have been changed since the group was checked (a
            # scheduler, or by hand); comparisons of Python floats are traceable by torch.compile
            if not 0 <= h < math.inf:  # negative, infinite or NaN
                raise ValueError(f"param group {gi}: lr must be >= 0 and finite, got {group['lr']}")
            if h == 0:
                continue
            _check_step_numbers(gi, group)
            entries = []
            noisy = float(group["temperature"]) > 0
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CoLA does not support sparse gradients")
                kind, m, shape = self._classify(group, p, (group, gi, i))
                # an FSDP shard is refused with noise; the temperature may have been raised
                if noisy and kind == "free" and _fsdp_flat(p):
                    _check_unsharded(group, p, kind, _param_name(group, gi, i))
                entries.append(_Entry(p, p.grad, self.state[p], (group, gi, i), kind, m, shape))
            if entries:
                work.append((gi, group, entries))
        return work

    def _check_finite(self, work) -> bool:
        """All gradients finite (one host read); raise or report a skip otherwise."""
        entries = [e for _, _, es in work for e in es]
        by_kind: dict = {}
        for i, e in enumerate(entries):
            by_kind.setdefault((e.grad.device, e.grad.dtype), []).append(i)
        norms: list = [None] * len(entries)
        flags = {}
        for (device, dtype), idx in by_kind.items():
            grads = [entries[i].grad for i in idx]
            # the 2-norm in the gradient's own precision (half precisions: float32) is the
            # cheapest reduction that sees every NaN/Inf (the max-norm and float64 norms are
            # several times slower on CPU); it can also overflow for huge finite entries, so a
            # non-finite result is confirmed below before anything is reported
            wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
            out = torch._foreach_norm(grads, 2, dtype=wide)
            for i, n in zip(idx, out):
                norms[i] = n
            flags.setdefault(device, []).append(torch.isfinite(torch.stack(out)).all())
        ok = True
        for parts in flags.values():
            ok = ok and bool(torch.stack(parts).all())  # the one host read of the strict mode
        if ok:
            return True
        suspects = [e for e, n in zip(entries, norms) if not bool(torch.isfinite(n))]
        bad = next((e for e in suspects if not bool(torch.isfinite(e.grad).all())), None)
        if bad is None:  # the norm overflowed; every entry is finite
            return True
        if self.on_nonfinite == "skip":
            self.n_skipped += 1
            return False
        raise NonFiniteError(
            f"the gradient of parameter {bad.name} contains NaN/Inf; parameters, optimizer state "
            "and noise generators were left unchanged (use on_nonfinite='skip' to skip such "
            "steps)",
            step=bad.state.get("step", 0),
        )

    def _init_state(self, work) -> None:
        """Check new parameters against their constraint, then create their state."""
        fresh = []
        for _, group, entries in work:
            for e in entries:
                if not e.state:
                    fresh.append((group, e))
        if fresh:
            self._check_on_manifold(fresh)
        for _, group, entries in work:
            ud = group["scheme"] == "ud"
            for e in entries:
                st, p = e.state, e.param
                if not st:
                    st["step"] = 0
                    st["pending_kick"] = 0.0
                    st["n_rejected"] = torch.zeros((), dtype=torch.int64, device=p.device)
                if ud and "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.contiguous_format
                    )
                if e.kind == "circle":
                    if "xi" not in st:
                        r = float(group["radius"])
                        w = p.detach()
                        st["xi"] = torch.sqrt((r * r - w * w).clamp_min(0)).contiguous()
                    if ud and "xi_momentum" not in st:
                        st["xi_momentum"] = torch.zeros_like(st["xi"])

    def _check_on_manifold(self, fresh) -> None:
        """Residual of every new constrained parameter against 10x its SHAKE tolerance."""
        rows = []
        for group, e in fresh:
            p = e.param.detach()
            if e.kind == "circle":
                r = float(group["radius"])
                res = ((p.abs() - r) / r).amax() if p.numel() else p.new_zeros(())
                # |w| <= r up to rounding; xi is then sqrt(r^2 - w^2)
                what = "(max |w| - radius) / radius"
                hint = "clip or rescale the weights into [-radius, radius]"
                rows.append((e, res, 8.0 * torch.finfo(p.dtype).eps, what, hint))
            elif e.kind == "manifold":
                x = p.reshape(e.shape)
                res = e.manifold.residual_norm(x)
                res = res.amax() if res.numel() else p.new_zeros(())
                lim = _START_FACTOR * e.manifold.tolerance(x)
                hint = "project it first (constrained_groups(..., init=True) does)"
                rows.append((e, res, lim, "constraint residual", hint))
        if not rows:
            return
        by_device = {}
        for _, res, lim, _, _ in rows:
            by_device.setdefault(res.device, []).append(~(res.double() <= lim))
        bad_any = None
        for flags in by_device.values():
            f = torch.stack(flags).any().cpu()
            bad_any = f if bad_any is None else bad_any | f
        if not bool(bad_any):
            return
        for e, res, lim, what, hint in rows:
            value = float(res)
            if not value <= lim:
                raise OffManifoldError(
                    f"parameter {e.name} is off its constraint set at the first step: {what} "
                    f"{value:.3g} exceeds {lim:.3g}; {hint}",
                    residual=value,
                    tolerance=lim,
                )

    def _buckets(self, work) -> list[_Bucket]:
        buckets: dict = {}
        for gi, group, entries in work:
            h = float(group["lr"])
            for e in entries:
                st = e.state
                if group["scheme"] == "ud":
                    full = st["step"] == 0 and group["first_kick"] == "full"
                    kick_h = h if full else st["pending_kick"] + 0.5 * h
                else:
                    kick_h = 0.0
                p = e.param
                key = (gi, e.kind, id(e.manifold), e.shape, p.dtype, p.device, kick_h)
                b = buckets.get(key)
                if b is None:
                    b = buckets[key] = _Bucket(e.kind, group, e.manifold, e.shape, kick_h)
                b.entries.append(e)
        return list(buckets.values())

    def _geodesic(self, group: dict, m: ConstrainedManifold, shape) -> bool:
        choice = group["geodesic"]
        if choice is not None:
            return bool(choice) and m.has_geodesic
        # measured (CPU, float32): one fused Stiefel RATTLE step costs about 7
        # matmul-equivalents at 1024x1024, the 2k x 2k matrix exponential of the geodesic 40-190
        # from 128x32 up to 1024x1024
        return m.has_geodesic and not isinstance(m, Stiefel)

    def _update(self, b: _Bucket):
        """Compute a bucket's new values; returns ``(commit, ok)`` (``ok`` on device or None)."""
        group = b.group
        h = float(group["lr"])
        gamma = float(group["friction"])
        tau = float(group["temperature"])
        ud = group["scheme"] == "ud"
        c1, c2 = ou_coefficients(gamma, tau, h)
        device = b.entries[0].param.device
        gen = self._generator(device)
        params = [e.param for e in b.entries]
        grads = [e.grad for e in b.entries]
        counters = [e.state["n_rejected"] for e in b.entries]
        mask = self.on_nonfinite == "mask"
        fuse = bool(group["fuse"])

        if b.kind == "manifold":
            m, shape = b.manifold, b.shape
            geo = self._geodesic(group, m, shape)
            x0, g = _gather(params, shape), _gather(grads, shape)
            # only RATTLE A steps are subdivided (a closed-form flow fails only where rounding
            # swamps it, which sub-steps do not cure; "od" has no A step)
            retry = self.on_failure == "subdivide" and ud and not geo
            if ud:
                moms = [e.state["momentum_buffer"] for e in b.entries]
                p0 = _gather(moms, shape)
                substeps = int(group["substeps"])
                # a retry must see the normals of the first attempt: record them
                noise = _NoiseTape(gen) if retry and c2 > 0 else gen

                def run(x0, p0, g, noise, substeps, scratch=None):
                    kick_h = b.kick_h
                    return _ud_manifold(
                        m, x0, p0, g, kick_h, h, c1, c2, noise, geo, substeps, fuse, scratch
                    )

                x, p, ok = run(x0, p0, g, noise, substeps, self._scratch)
            else:
                x, ok = _od_manifold(m, x0, g, h, tau, gen, geo)
                p = None
            if geo or not isinstance(m, (Stiefel, Sphere)):
                # the SHAKE flags of Stiefel and Sphere already cover non-finite values (a NaN
                # anywhere reaches the residual they check); a closed-form flow reports only its
                # residual, not the momentum's
                ok = ok & _finite(m.ndim, x) if p is None else ok & _finite(m.ndim, x, p)
            if retry:

                def retry_failed():
                    nonlocal x, p, ok
                    x, p, ok = _subdivide(m, (x0, p0, g), (x, p, ok), run, noise, substeps)

                b.retry = retry_failed

            def commit():
                keep = ok.reshape(ok.shape + (1,) * m.ndim)
                _select_into(params, keep, x, x0)
                if ud:
                    _select_into(moms, keep, p, 0.0)
                if len(params) == 1:
                    counters[0].add_((~ok).sum())
                else:
                    bad = (~ok).reshape(len(params), -1).sum(dim=1)
                    torch._foreach_add_(counters, list(bad.unbind(0)))

            return commit, ok

        if b.kind == "circle":
            return self._update_circles(b, params, grads, counters, ud, h, c1, c2, tau, gen, fuse)

        # unconstrained
        def commit():
            if mask:
                self._free_masked(b, params, grads, counters, ud, h, c1, c2, tau, gen, fuse)
            elif ud:
                moms = [e.state["momentum_buffer"] for e in b.entries]
                _ud_free_(params, moms, grads, b.kick_h, h, c1, c2, gen, fuse)
            else:
                _od_free_(params, grads, h, tau, gen)

        return commit, None

    def _update_circles(self, b, params, grads, counters, ud, h, c1, c2, tau, gen, fuse):
        """Circle bucket, tensor by tensor (eagerly in cache-sized chunks, or one compiled loop
        per tensor with ``compile=True``); written at once unless ``on_failure="raise"``."""
        radius = float(b.group["radius"])
        mask = self.on_nonfinite == "mask"
        defer = self.on_failure == "raise"
        noisy = c2 > 0 if ud else tau > 0
        keys = ("xi", "momentum_buffer", "xi_momentum") if ud else ("xi",)
        numbers = (b.kick_h, h, c1, c2, tau, radius)
        pending, oks, views_all = [], [], []
        for i, e in enumerate(b.entries):
            views = [_FlatView(t) for t in [params[i]] + [e.state[k] for k in keys]]
            views_all.append(views)
            flats = [v.flat for v in views]
            g = grads[i].reshape(-1)
            bad = None
            if self.compile and not defer:
                z = _circle_noise(g, gen) if noisy else None
                bad = self._circle_compiled(flats, g, z, (ud, fuse, mask), numbers)
            if bad is None:
                bads = []
                chunk = _CHUNK if g.device.type == "cpu" else max(g.numel(), 1)
                for a in range(0, g.numel(), chunk):
                    piece = [f[a : a + chunk] for f in flats]
                    gp = g[a : a + chunk]
                    z = _circle_noise(gp, gen) if noisy else None
                    if defer:
                        new, nb = _circle_update(piece, gp, z, ud, fuse, mask, *numbers)
                        pending.append((piece, new))
                    else:
                        nb = _circle_update_(piece, gp, z, ud, fuse, mask, *numbers)
                    bads.append(nb)
                bad = torch.stack(bads).sum() if mask and bads else None
            if mask and bad is not None:
                counters[i].add_(bad)
                oks.append(bad == 0)

        def commit():
            for piece, new in pending:
                for t, n in zip(piece, new):
                    t.copy_(n)
            for views in views_all:
                for v in views:
                    v.flush()

        ok = torch.stack(oks) if oks else None
        if not defer:
            commit()
            return (lambda: None), ok
        return commit, ok

    def _circle_compiled(self, flats, g, z, flags, numbers):
        """The compiled update of one tensor; on a compilation error, warn once and return None
        (the caller then runs the eager update) with ``compile`` switched off."""
        values = [torch.full((), float(v), dtype=g.dtype, device=g.device) for v in numbers]
        try:
            bad = _compiled_circle_update_()(flats, g, z, *flags, *values)
        except Exception as exc:  # a missing C++ compiler, an unsupported backend, ...
            self.compile = False
            warnings.warn(
                f"CoLA(compile=True): torch.compile failed ({type(exc).__name__}: {exc}); "
                "falling back to the eager update",
                stacklevel=4,
            )
            return None
        return bad if bad is not None else g.new_zeros((), dtype=torch.int64)

    @staticmethod
    def _free_masked(b, params, grads, counters, ud, h, c1, c2, tau, gen, fuse):
        xs = [p.clone() for p in params]
        moms = [e.state["momentum_buffer"] for e in b.entries] if ud else []
        ps = [q.clone() for q in moms]
        if ud:
            _ud_free_(xs, ps, grads, b.kick_h, h, c1, c2, gen, fuse)
        else:
            _od_free_(xs, grads, h, tau, gen)
        for i, x in enumerate(xs):
            ok = torch.isfinite(x)
            if ud:
                ok = ok & torch.isfinite(ps[i])
                moms[i].copy_(torch.where(ok, ps[i], 0.0))
            params[i].copy_(torch.where(ok, x, params[i]))
            counters[i].add_((~ok).sum())

    @staticmethod
    def _retry_failed(checks) -> None:
        """``on_failure="subdivide"``: one host read (did any solve fail?), then the retries."""
        flags = {}
        for b, ok in checks:
            if b.retry is not None:
                flags.setdefault(ok.device, []).append(ok.all())
        if all(bool(torch.stack(parts).all()) for parts in flags.values()):
            return
        for b, ok in checks:
            if b.retry is not None and not bool(ok.all()):
                b.retry()

    def _check_converged(self, checks, snapshot) -> None:
        """``on_failure="raise"``: one host read; restore the generators and raise on failure."""
        flags = {}
        for _, ok in checks:
            if ok is not None:
                flags.setdefault(ok.device, []).append(ok.all())
        all_ok = True
        for parts in flags.values():
            all_ok = all_ok and bool(torch.stack(parts).all())
        if all_ok:
            return
        for key, state in snapshot.items():
            self._generators[key].set_state(state)
        for b, ok in checks:
            if ok is None or bool(ok.all()):
                continue
            n_bad = int((~ok).sum())
            if b.kind == "manifold":
                per = ok.reshape(len(b.entries), -1).all(dim=1)
                i = int((~per).nonzero()[0, 0])
                e = b.entries[i]
                trial = self._trial_residual(b, i)
            else:  # circles (mask mode): one flag per tensor
                j = int((~ok).nonzero()[0, 0])
                e, trial = b.entries[j], float("nan")
            err = ShakeError(
                f"the constrained update of parameter {e.name} failed (SHAKE did not converge "
                f"or the result is not finite): residual {trial:.3g} against tolerance "
                f"{self._tolerance(b, e):.3g}; parameters, optimizer state and noise generators "
                "were left unchanged (use on_failure='reject' to keep such matrices and go on, "
                "or a smaller lr)",
                step=e.state["step"],
                n_failures=n_bad,
            )
            err.parameter = e.name
            err.residual = trial
            raise err

    def _trial_residual(self, b: _Bucket, i: int) -> float:
        """Residual of the rejected proposal for entry ``i`` (recomputed: diagnostics only)."""
        e, group = b.entries[i], b.group
        m, shape = b.manifold, b.shape
        h = float(group["lr"])
        x0 = e.param.detach().reshape(1, *shape)
        g = e.grad.reshape(1, *shape)
        geo = self._geodesic(group, m, shape)
        c1, _ = ou_coefficients(float(group["friction"]), 0.0, h)
        if group["scheme"] == "ud":
            p0 = e.state["momentum_buffer"].reshape(1, *shape)
            x = _ud_manifold(
                m, x0, p0, g, b.kick_h, h, c1, 0.0, None, geo, group["substeps"], group["fuse"]
            )[0]
        else:
            x = _od_manifold(m, x0, g, h, 0.0, None, geo)[0]
        return float(m.residual_norm(x).amax())

    @staticmethod
    def _tolerance(b: _Bucket, e: _Entry) -> float:
        if b.kind == "manifold":
            return b.manifold.tolerance(e.param.detach().reshape(b.shape))
        return 0.0

    # ------------------------------------------------------------------ inspection
    def n_rejected(self) -> int:
        """Total rejected updates (matrices, circle weights or entries) so far (host read)."""
        counts = [st["n_rejected"] for st in self.state.values() if "n_rejected" in st]
        return int(sum(int(c) for c in counts))

    @torch.no_grad()
    def residuals(self) -> dict[str, float]:
        """Largest constraint residual per constrained parameter (host read; for monitoring).

        Orthogonal/sphere/manifold parameters report ``manifold.residual_norm`` (e.g.
        ``max |M^T M - I|``); circle parameters report ``max |w^2 + xi^2 - r^2| / r^2``.
        """
        out = {}
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                name = _param_name(group, gi, i)
                kind, m, shape = self._classify(group, p, name)
                name = str(names[i]) if names else name
                st = self.state.get(p, {})
                if kind == "manifold":
                    out[name] = float(m.residual_norm(p.reshape(shape)).amax())
                elif kind == "circle" and "xi" in st:
                    r2 = float(group["radius"]) ** 2
                    out[name] = float(((p * p + st["xi"] ** 2 - r2).abs() / r2).amax())
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Torch's optimizer state plus a ``"cola"`` entry: format version, seed, skip counter,
        the state of every noise generator (so that a resumed run is bit-identical) and the
        parameter shapes per group (checked by :meth:`load_state_dict`)."""
        sd = super().state_dict()
        sd["cola"] = {
            "version": STATE_VERSION,
            "seed": self.seed,
            "n_skipped": self.n_skipped,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
            "shapes": [[tuple(p.shape) for p in g["params"]] for g in self.param_groups],
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict`, after checking that it fits these parameters.

        Raises:
            ValueError: the state dict was not written by CoLA, by another version of its format,
                or for other parameters (group sizes, shapes or constraints differ).
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("cola", None)
        if extra is None:
            raise ValueError(
                "this state dict was not written by CoLA (it has no 'cola' entry); load it into "
                "the optimizer that wrote it"
            )
        if extra.get("version") != STATE_VERSION:
            raise ValueError(
                f"CoLA state dict format version {extra.get('version')!r} is not supported "
                f"(expected {STATE_VERSION})"
            )
        self._check_compatible(state_dict, extra.get("shapes"))
        super().load_state_dict(state_dict)
        for st in self.state.values():
            if "n_rejected" in st:
                st["n_rejected"] = st["n_rejected"].to(torch.int64)
        self.seed = int(extra["seed"])
        self.n_skipped = int(extra["n_skipped"])
        # accelerator generators are matched by order, not by name, as :meth:`_generator` seeds
        # them: the k-th saved one goes to the k-th accelerator of these parameters, so that a
        # checkpoint written by rank 0 (cuda:0) resumes on rank 1 (cuda:1) with the same stream
        here = self._accelerators()
        k = 0
        for key, gstate in extra["generators"].items():
            device = torch.device(key)
            if device.type != "cpu":
                if k < len(here) and torch.device(here[k]).type == device.type:
                    device = torch.device(here[k])
                k += 1
            if device.type == "cuda" and not torch.cuda.is_available():
                warnings.warn(
                    f"the state dict holds the noise generator of {key}, which is not available "
                    "here; its stream restarts from the seed",
                    stacklevel=2,
                )
                continue
            self._generator(device).set_state(gstate)

    def _accelerators(self) -> list[str]:
        """The non-CPU devices of the parameters, in order of first appearance."""
        seen: dict[str, None] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.device.type not in ("cpu", "meta"):
                    seen.setdefault(_device_key(p.device), None)
        return list(seen)

    def _check_compatible(self, state_dict: dict, shapes: list | None) -> None:
        # ``shapes``: absent from state dicts written before it was added (same format version);
        # the per-parameter state alone has no shape in the "od" scheme
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} param group(s), this optimizer "
                f"{len(self.param_groups)}: it was written for a different model or grouping"
            )
        saved_state = state_dict["state"]
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"param group {gi} has {len(group['params'])} parameters here but "
                    f"{len(saved['params'])} in the state dict: a different model or grouping"
                )
            if _constraint_key(group["constraint"]) != _constraint_key(saved.get("constraint")):
                raise ValueError(
                    f"param group {gi} has constraint {group['constraint']!r} here but "
                    f"{saved.get('constraint')!r} in the state dict"
                )
            for i, (p, pid) in enumerate(zip(group["params"], saved["params"])):
                if shapes is not None and tuple(shapes[gi][i]) != tuple(p.shape):
                    raise ValueError(
                        f"parameter {_param_name(group, gi, i)}: shape {tuple(p.shape)} here but "
                        f"{tuple(shapes[gi][i])} in the state dict, which belongs to a different "
                        "model"
                    )
                st = saved_state.get(pid, {})
                for key in ("momentum_buffer", "xi", "xi_momentum"):
                    if key in st and tuple(st[key].shape) != tuple(p.shape):
                        raise ValueError(
                            f"parameter {_param_name(group, gi, i)} has shape {tuple(p.shape)} "
                            f"but its saved {key!r} has shape {tuple(st[key].shape)}: the state "
                            "dict belongs to a different model"
                        )

    def __getstate__(self):
        s = super().__getstate__()
        s["_cola"] = {
            "on_nonfinite": self.on_nonfinite,
            "on_failure": self.on_failure,
            "compile": self.compile,
            "seed": self.seed,
            "n_skipped": self.n_skipped,
            "_generators": self._generators,
        }
        return s

    def __setstate__(self, state):
        extra = state.pop("_cola", None)
        super().__setstate__(state)
        if extra is not None:
            self.__dict__.update(extra)
        self._scratch = {}


# ---------------------------------------------------------------------------- helpers


def _broadcast_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank when the default process group is initialised (one
    broadcast, so every rank must construct the optimizer), else ``seed`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return seed
    box = [seed]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def _is_dtensor(p: torch.Tensor) -> bool:
    # no DTensor can exist before its module is imported; importing it here would cost ~0.3 s
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(p, module.DTensor)


def _fsdp_flat(p: torch.Tensor) -> bool:
    """An FSDP1 ``FlatParameter`` or an original parameter FSDP1 flattened into one."""
    return bool(getattr(p, "_is_flat_param", False) or getattr(p, "_fsdp_flattened", False))


def _check_unsharded(group: dict, p: torch.Tensor, kind: str, name) -> None:
    """Refuse a sharded parameter where CoLA's update would be wrong (raises TypeError).

    A constrained update needs the whole tensor (an orthogonal matrix or a sphere row cannot be
    moved shard by shard), and every rank's generator draws the same normals, which is right for
    replicas but makes the shards' noise identical. An FSDP1 shard of an unconstrained group is
    accepted at ``temperature == 0`` (the update is then elementwise and deterministic)."""
    dtensor = _is_dtensor(p)
    if not dtensor and not _fsdp_flat(p):
        return
    what = "a DTensor (FSDP2 fully_shard, tensor parallel)" if dtensor else "an FSDP1 shard"
    fix = (
        "keep such layers whole on every rank: use DistributedDataParallel, or leave them out of "
        "FSDP (FSDP(..., use_orig_params=True, ignored_states=...) or fully_shard(..., "
        "ignored_params=...)) and average their gradients yourself before opt.step() "
        "(docs/tutorials/distributed.md)"
    )
    if kind != "free":
        c = group["constraint"]
        label = "(a geoopt.ManifoldParameter's manifold)" if c is None else repr(c)
        raise TypeError(
            f"parameter {name} is {what}: CoLA's constrained updates need the full tensor on "
            f"every rank, sharded parameters are not supported for constraint {label}; {fix}"
        )
    if dtensor:
        raise TypeError(
            f"parameter {name} is {what}: CoLA does not support DTensor parameters (its state "
            f"and noise are plain tensors); {fix}, or use another optimizer for them"
        )
    if float(group["temperature"]) > 0:
        raise TypeError(
            f"parameter {name} is {what}: at temperature > 0 every rank would draw the same "
            "noise for its own shard; FSDP shards are supported at temperature 0 only (in "
            f"unconstrained groups); {fix}"
        )


def _device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


class _LazyName:
    """Formats as the parameter's name; built only when a message needs it."""

    __slots__ = ("where",)

    def __init__(self, where: tuple):
        self.where = where

    def __str__(self) -> str:
        return _param_name(*self.where)


def _param_name(group: dict, gi: int, i: int) -> str:
    names = group.get("param_names")
    if names:
        return repr(str(names[i]))
    p = group["params"][i]
    return f"param_groups[{gi}]['params'][{i}] (shape {tuple(p.shape)})"


def _constraint_key(c):
    if c is None or isinstance(c, str):
        return "orthogonal" if c == "stiefel" else c
    return type(as_manifold(c)).__name__


def _check_step_numbers(gi: int, group: dict) -> None:
    """The hyperparameters a step reads besides ``lr`` (cheap; called at every step)."""
    gamma, tau, sub = float(group["friction"]), float(group["temperature"]), group["substeps"]
    if not gamma >= 0:
        raise ValueError(f"param group {gi}: friction must be >= 0, got {group['friction']}")
    if not 0 <= tau < math.inf:
        raise ValueError(
            f"param group {gi}: temperature must be >= 0 and finite, got {group['temperature']}"
        )
    if type(sub) is not int or sub < 1:
        raise ValueError(f"param group {gi}: substeps must be a positive integer, got {sub!r}")


def _check_group(group: dict) -> None:
    """Validate a param group's hyperparameters (raises ValueError/TypeError)."""
    check_positive("lr", group["lr"], allow_zero=True)
    check_positive("friction", group["friction"], allow_zero=True, allow_inf=True)
    check_positive("temperature", group["temperature"], allow_zero=True)
    if group["scheme"] not in _SCHEMES:
        raise ValueError(f"scheme must be 'ud' or 'od', got {group['scheme']!r}")
    if group["first_kick"] not in _FIRST_KICKS:
        raise ValueError(f"first_kick must be 'half' or 'full', got {group['first_kick']!r}")
    if group["fuse"] not in (True, False):
        raise ValueError(f"fuse must be True or False, got {group['fuse']!r}")
    if group["geodesic"] not in (None, True, False):
        raise ValueError(f"geodesic must be None, True or False, got {group['geodesic']!r}")
    sub = group["substeps"]
    if isinstance(sub, bool) or not isinstance(sub, int) or sub < 1:
        raise ValueError(f"substeps must be a positive integer, got {sub!r}")
    c, radius = group["constraint"], group["radius"]
    if isinstance(c, str):
        if c not in _NAMED:
            raise ValueError(f"constraint must be one of {_NAMED}, a manifold or None; got {c!r}")
        if c == "circle" and radius is None:
            raise ValueError(
                "constraint='circle' needs radius= (the paper used 0.05 for the first layer and "
                "0.1 for the others; constrained_groups sets them)"
            )
        if c in ("orthogonal", "stiefel") and radius is not None:
            raise ValueError("radius applies to the circle and sphere constraints only")
    elif c is not None:
        as_manifold(c)  # raises TypeError for anything unsupported
    if radius is not None:
        check_positive("radius", radius)
