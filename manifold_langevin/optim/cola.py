r"""CoLA: constrained Langevin training as a [`torch.optim.Optimizer`][torch.optim.Optimizer].

The optimizer applies the B, A, O and E maps of
[`manifold_langevin.integrators`][manifold_langevin.integrators] to parameter tensors and
writes no update of its own: a step groups the parameters into buckets
([`buckets`][manifold_langevin.optim.buckets]), hands each bucket to its update
([`updates`][manifold_langevin.optim.updates]: the integrators' maps for manifolds, circle
components or unconstrained tensors) and applies the failure policies
([`policies`][manifold_langevin.optim.policies]). What each parameter is comes from
[`params`][manifold_langevin.optim.params]; the ``state_dict`` format from
[`state`][manifold_langevin.optim.state]; data-parallel seeding from
[`distributed`][manifold_langevin.optim.distributed].

Mapping of hyperparameters, the paper (Leimkuhler, Vlaar, Pouchon, Storkey, ICML 2021) to ours:

- step size $h$: ``lr`` (the Langevin time step, *not* an SGD learning rate);
- friction $\gamma$: ``friction``;
- temperature $T$: ``temperature`` (``0``: the deterministic constrained method);
- $r_0$ / $r_1$: ``radius`` of the first layer's / the other layers' circle group
  ([`constrained_groups`][manifold_langevin.optim.constrained_groups] sets both);
- momentum factor $\mu$: ``friction = -log(mu) / h``, reading the paper's momentum factor as the
  per-step decay $e^{-\gamma h}$ of our O step (E1: $h = 0.1$, $\mu = 0.9$ gives
  ``friction = 1.054``);
- c-CoLA / o-CoLA: ``constraint="circle"`` / ``constraint="orthogonal"``;
- -ud / -od: ``scheme="ud"`` / ``scheme="od"``.

The paper's E2 run ($h = 0.3$, $\gamma = 1$, $T = 0$) is ``CoLA(groups, lr=0.3, friction=1.0)``.
SGD with momentum maps to ``constraint=None, temperature=0`` through
[`sgd_equivalent`][manifold_langevin.optim.sgd_equivalent]; since SGD's learning rate is
$h^2 (1 + \mu) / 2$, a schedule that multiplies ``lr`` by $a$ corresponds to SGD's learning rate
times about $a^2$. The overdamped scheme at ``temperature=0`` without constraint is plain SGD with
``lr = h``.

**Host synchronisation.** With ``on_nonfinite="mask"`` (and ``on_failure="reject"``)
[`CoLA.step`][manifold_langevin.optim.CoLA.step] never reads a tensor value of an accelerator
on the host: SHAKE convergence and finiteness are per-matrix (per-tensor for circles)
device-side flags that select between the new and the old values, and failure counters live on
the device. On CPU, where a read costs no synchronisation, the eager circle update reads one
number per chunk of 65,536 weights, the sum of the chunk's rotation angles, and selects entry by
entry only in a chunk where that sum is not finite (the same numbers as selecting everywhere).
The strict modes cost one host synchronisation each per step: ``on_nonfinite="raise"`` (the
default) or ``"skip"`` reads one flag (all gradient norms finite) before anything is changed, and
``on_failure="raise"`` reads one flag (all solves converged) before anything is written.
``on_failure="subdivide"`` reads the same flag; in a step where a solve failed it then reads a few
more (one per retried bucket and per round of retries). The very first step of each parameter
also reads its constraint residual once (the off-manifold check). Hyperparameters are read as
Python numbers (a tensor ``lr`` would be read on the host).

**``torch.compile``.** In the sync-free mode at zero temperature,
``torch.compile(opt.step, fullgraph=True)`` traces the whole step without a graph break (after
the first, eager, step; the step counter turns dynamic after one recompilation, and a new ``lr``
value is a recompilation). With noise, each draw is a graph break: dynamo does not trace calls
that take an explicit ``torch.Generator``, and the noise must come from the optimizer's own
generators for runs to be reproducible and resumable. Separately, ``compile=True`` compiles only
the circle update (one fused loop per tensor), which is where eager CoLA loses most against SGD.

**Cost.** Same-shape matrices of a group are stacked into one batched solve. A Stiefel step at
zero temperature is one fused RATTLE step ([`Stiefel.rattle`][manifold_langevin.Stiefel.rattle];
the kick's tangent projection and the returned velocity's are left out, since RATTLE only sees
the tangent part of the momentum): four $N \times p \times p$ products (two of them Gram
matrices formed from their upper blocks) plus three $p \times p \times p$ ones. With noise it is
two RATTLE steps and a projected Gaussian. A circle step is 14 elementwise passes per weight
in cache-sized chunks (with noise a few more and one normal per weight), or one compiled loop
with ``compile=True``. On a GPU a step's time is set
by the number of operations it launches more than by its flops, so the CPU-only measures, blocked
Gram products and cache-sized circle chunks, are off there. The measured costs, against SGD,
geoopt, torch's orthogonal parametrizations and the paper's algorithm, are on the documentation's
performance page.

**Distributed training.** Under ``DistributedDataParallel`` every rank holds the whole model,
receives the gradient averaged over the global batch and must draw the same noise, so that the
replicas stay identical: the noise generators are seeded from ``seed``, identically on every rank
(the first accelerator of each process gets ``seed`` whatever its index), and ``seed=None``
broadcasts rank 0's draw when ``torch.distributed`` is initialised. Sharded parameters
(DTensors, FSDP shards) are refused for constrained groups: an orthogonal matrix cannot be
updated shard by shard (see the distributed-training tutorial).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch.optim.optimizer import Optimizer, required

from .buckets import Entry, make_buckets
from .distributed import broadcast_seed, check_unsharded, device_key, fsdp_flat
from .params import (
    ON_FAILURE,
    ON_NONFINITE,
    check_group,
    check_step_numbers,
    classify,
    param_name,
)
from .policies import check_converged, check_gradients, check_start, raise_nonfinite, retry_failed
from .sgd import sgd_equivalent
from .state import (
    STATE_VERSION,
    accelerators,
    check_compatible,
    extra_state,
    restore_generators,
    split_extra,
    upgrade_circle_momenta,
)
from .updates import compiled_circle_update_, update_circles, update_free, update_manifold

__all__ = ["STATE_VERSION", "CoLA", "sgd_equivalent"]


class CoLA(Optimizer):
    r"""Constrained Langevin optimizer (CoLA): weight-constrained training and sampling.

    Each parameter ``theta`` (a tensor, or a matrix view of it) is held on a constraint set
    $\Sigma = \{g = 0\}$ at every step: orthonormal columns/rows (``"orthogonal"``),
    per-weight circles $w^2 + \xi^2 = r^2$ with an auxiliary variable $\xi$
    (``"circle"``, so $|w| \le r$), row spheres (``"sphere"``), any manifold of this
    package or a plain geoopt one, or none. With loss $L$, step $h$ (``lr``),
    friction $\gamma$, temperature $\tau$, $P(\theta)$ the tangent projection
    and $R$ standard normal, one ``"ud"`` step (BAOAB with the carried kick, one gradient
    per step) is

    $$
    \begin{aligned}
    p &\leftarrow P(\theta)\,\bigl(p - \kappa_n \nabla L(\theta)\bigr),
    \qquad \kappa_n = \tfrac{h_{n-1}}{2} + \tfrac{h_n}{2}
    \ (\kappa_0 = \tfrac{h_0}{2}, \text{ or } h_0 \text{ with first\_kick="full"}) \\
    (\theta, p) &\leftarrow \Phi^A_{h/2}(\theta, p) \\
    p &\leftarrow e^{-\gamma h} p + \sqrt{\tau (1 - e^{-2\gamma h})}\, P(\theta) R \\
    (\theta, p) &\leftarrow \Phi^A_{h/2}(\theta, p)
    \end{aligned}
    $$

    where $\Phi^A$ is the exact geodesic flow (circles: the rotation in the
    $(w, \xi)$ plane; spheres) or ``substeps`` RATTLE steps (SHAKE
    $\theta' = \theta + \delta p + J(\theta)^T\lambda$ to tolerance, then
    $p' = P(\theta')(\theta' - \theta)/\delta$; the default for Stiefel). The stored momentum
    is the one after the O/A part; the final $B_{h/2}$ of step $n$ is applied at step
    $n+1$ together with its own, with the gradient the training loop has just computed at
    the current point, so no extra call is needed before training. At $\tau = 0$
    (``fuse=True``) $A_{h/2} O A_{h/2}$ is evaluated as one A step of time
    $(1 + e^{-\gamma h}) h/2$ followed by the damping: exact for geodesic flows, and for
    RATTLE one SHAKE solve instead of two (the two agree to $O(h^3)$ per step). On circles
    ``fuse=True`` fuses $A_{h/2} O A_{h/2}$ at any temperature: the O step changes only the
    angular velocity, $\omega' = e^{-\gamma h}\omega + (c_2 / r) z$ with one standard normal
    $z$ per weight (the tangent space is a line), and the two rotations compose into one by
    $\tfrac{h}{2}(\omega + \omega')$: exact, one cosine and sine per weight.

    A ``"od"`` step is projected Euler-Maruyama (the paper's constrained SGLD):
    $\theta' = \theta - h\nabla L + \sqrt{2 h \tau} R + J(\theta)^T\lambda$ with
    $g(\theta') = 0$ by SHAKE, or the geodesic with initial velocity
    $P(\theta)(-h\nabla L + \sqrt{2h\tau}R)$ for unit time (circles: always the rotation).

    Target: for $\tau > 0$ both schemes sample
    $\propto \exp(-L(\theta)/\tau)\, d\sigma_\Sigma(\theta)$ (surface measure of
    $\Sigma$); configurational averages have weak order 2 for ``"ud"`` and 1 for ``"od"``.
    $\tau = 0$ is the deterministic constrained method (heavy ball on the manifold, or
    projected gradient descent). Use the loss whose gradient you want as the force: for a Bayesian
    posterior over ``N`` examples with a mean minibatch loss, $\tau = 1/N$.

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
    [`n_rejected`][]). ``on_failure="raise"`` raises [`ShakeError`][manifold_langevin.ShakeError]
    instead, with nothing changed. ``on_failure="subdivide"`` first redoes the step of each failed
    matrix with its A steps split into 2, 4, 8 and then 16 times ``substeps`` RATTLE sub-steps
    (``"ud"`` with RATTLE only: sub-steps do not help a geodesic, ``"od"`` has no A step), with
    the same normals; a matrix takes the first result that converges, which is exactly what a
    step with that many ``substeps`` gives (a g-BAOAB step, so the scheme and its order are
    unchanged, and the noise stream is the same as without failures). Matrices that fail even
    with 16 times the sub-steps are rejected and counted as above. No NaN is written into a
    constrained parameter (one exception: outside ``on_nonfinite="mask"`` a circle update that
    overflows the dtype, from a gradient or ``lr`` near its largest value, e.g. ``lr = 300`` or a
    gradient of ``6e4`` in float16, is not checked, since checking entry by entry costs about a
    fifth of the eager circle step; ``"mask"`` rejects such entries).

    State (per parameter, in [`state_dict`][]): ``step``, ``pending_kick`` (the carried
    $h/2$), ``momentum_buffer`` (``"ud"``, parameters not on circles; for an orthogonal weight
    stepped by RATTLE it is stored before its tangent projection, which the next step makes
    redundant: the velocity is its tangent part, ``Stiefel().proju(w, buf)``), for circles ``xi``
    and (``"ud"``) ``angular_velocity`` $\omega$ (the momentum of ``(w, xi)`` is
    $\omega\,(-\xi, w)$, [`circle_momentum`][manifold_langevin.manifolds.circles.circle_momentum])
    and ``radius`` (the radius the point is on: after a change of the group's ``radius`` the
    next step takes the point onto the new circle),
    ``n_rejected`` (an int64 device counter); plus, under the ``"cola"`` key, the format version,
    the seed, ``n_skipped``, the state of every noise generator and the parameter shapes.

    Args:
        params: parameters or param groups (e.g. from
            [`constrained_groups`][manifold_langevin.optim.constrained_groups]); ``(name, tensor)``
            pairs give names for error messages.
        lr: step size ``h > 0`` (read from the group at every step, so lr schedulers work; a group
            whose ``lr`` is 0 is left unchanged).
        friction: ``gamma >= 0`` (``inf``: no momentum is kept).
        temperature: ``tau >= 0``.
        scheme: ``"ud"`` (underdamped BAOAB) or ``"od"`` (projected overdamped).
        constraint: ``"orthogonal"`` (alias ``"stiefel"``), ``"circle"``, ``"sphere"`` (each row
            of the matrix view on a sphere of ``radius``), a manifold object, or ``None``.
            ``geoopt.ManifoldParameter``s always use their own manifold.
        radius: circle radius ``r`` (required for ``"circle"``) or sphere radius (default 1).
        geodesic: ``None`` chooses per manifold (its ``cheap_geodesic``): circles and spheres
            rotate exactly, Stiefel takes RATTLE (a fused step of a few matrix products, against
            the geodesic's two matrix exponentials; the documentation's performance page has
            the measured costs), other manifolds their geodesic if they have one.
            ``True`` / ``False`` forces the choice. The geodesic fails only for steps so large
            that rounding takes its result off the manifold; RATTLE can fail sooner (see
            failures below).
        substeps: RATTLE sub-steps per A step (g-BAOAB) when no geodesic is used.
        fuse: at zero temperature, evaluate ``A O A`` as one A step; on circles at any
            temperature (see above).
        first_kick: ``"half"`` (BAOAB from rest) or ``"full"`` (SGD's first step).
        on_nonfinite: NaN/Inf gradients: ``"raise"``
            [`NonFiniteError`][manifold_langevin.NonFiniteError] naming the parameter, ``"skip"``
            the whole step (counted in ``n_skipped``); both leave parameters, state and generators
            exactly as they were and cost one host sync per step. ``"mask"`` has no sync: non-finite
            updates are rejected entry by entry (matrix by matrix) as failures are (the noise is
            drawn as usual).
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
            ``torch.compile`` (inductor) instead of 14 eager elementwise passes, at the
            price of a compilation at the first step (inductor caches it on disk; the speed-up
            and the compile time are on the performance page). If compilation fails the optimizer
            warns and stays eager; with ``on_failure="raise"`` (deferred writes) the eager update is
            used. With noise the normals are drawn per tensor instead of per chunk, so the noise
            stream differs from the eager one. Other constraints are not affected (their cost is
            in matrix products).

    Attributes:
        n_skipped: number of steps skipped with ``on_nonfinite="skip"``.

    Examples:
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
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        if seed is not None and generator is not None:
            raise ValueError("give either seed= or generator=, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is None:
            # from torch's global generator (a CPU draw): reproducible under torch.manual_seed;
            # under torch.distributed, rank 0's draw on every rank (replicas need the same noise)
            seed = broadcast_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64).item()))
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
            self._generators[device_key(generator.device)] = generator
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
            check_group(group)
            for i, p in enumerate(group["params"]):
                name = param_name(group, index, i)
                check_unsharded(group, p, classify(group, p, name)[0], name)
        except Exception:
            self.param_groups.pop()
            raise
        for p in group["params"]:
            self._generator(p.device)

    # ------------------------------------------------------------------ generators
    def _generator(self, device: torch.device) -> torch.Generator:
        key = device_key(device)
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
        if self.on_nonfinite != "mask":
            bad = check_gradients([e for _, _, es in work for e in es])
            if bad is not True:
                if self.on_nonfinite == "skip":
                    self.n_skipped += 1
                    return loss
                raise_nonfinite(bad)
        self._init_state(work)
        buckets = make_buckets(work)
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
            check_converged(checks, lambda: self._restore_generators(snapshot))
        if subdivide:
            retry_failed(checks)
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
            check_step_numbers(gi, group)
            entries = []
            noisy = float(group["temperature"]) > 0
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CoLA does not support sparse gradients")
                kind, m, shape = classify(group, p, (group, gi, i))
                # an FSDP shard is refused with noise; the temperature may have been raised
                if noisy and kind == "free" and fsdp_flat(p):
                    check_unsharded(group, p, kind, param_name(group, gi, i))
                entries.append(Entry(p, p.grad, self.state[p], (group, gi, i), kind, m, shape))
            if entries:
                work.append((gi, group, entries))
        return work

    def _init_state(self, work) -> None:
        """Check new parameters against their constraint, then create their state."""
        fresh = []
        for _, group, entries in work:
            for e in entries:
                if not e.state:
                    fresh.append((group, e))
        if fresh:
            check_start(fresh)
        for _, group, entries in work:
            ud = group["scheme"] == "ud"
            for e in entries:
                st, p = e.state, e.param
                if not st:
                    st["step"] = 0
                    st["pending_kick"] = 0.0
                    st["n_rejected"] = torch.zeros((), dtype=torch.int64, device=p.device)
                if e.kind == "circle":
                    if "xi" not in st:
                        r = float(group["radius"])
                        w = p.detach()
                        st["xi"] = torch.sqrt((r * r - w * w).clamp_min(0)).contiguous()
                        st["radius"] = r
                    if ud and "angular_velocity" not in st:
                        st["angular_velocity"] = torch.zeros_like(st["xi"])
                elif ud and "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.contiguous_format
                    )

    def _update(self, b):
        """A bucket's ``(commit, ok)``: see [`updates`][manifold_langevin.optim.updates]."""
        gen = self._generator(b.entries[0].param.device)
        mask = self.on_nonfinite == "mask"
        if b.kind == "manifold":
            return update_manifold(b, gen, on_failure=self.on_failure, scratch=self._scratch)
        if b.kind == "circle":
            compiled = self._circle_compiled if self.compile else None
            return update_circles(b, gen, mask=mask, defer=self.on_failure == "raise",
                                  compiled=compiled)  # fmt: skip
        return update_free(b, gen, mask=mask)

    def _circle_compiled(self, flats, g, z, flags, numbers):
        """The compiled update of one tensor; on a compilation error, warn once and return None
        (the caller then runs the eager update) with ``compile`` switched off."""
        if not self.compile:
            return None
        values = [torch.full((), float(v), dtype=g.dtype, device=g.device) for v in numbers]
        try:
            bad = compiled_circle_update_()(flats, g, z, *flags, *values)
        except Exception as exc:  # a missing C++ compiler, an unsupported backend, ...
            self.compile = False
            warnings.warn(
                f"CoLA(compile=True): torch.compile failed ({type(exc).__name__}: {exc}); "
                "falling back to the eager update",
                stacklevel=5,
            )
            return None
        return bad if bad is not None else g.new_zeros((), dtype=torch.int64)

    def _restore_generators(self, snapshot: dict) -> None:
        for key, state in snapshot.items():
            self._generators[key].set_state(state)

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
                name = param_name(group, gi, i)
                kind, m, shape = classify(group, p, name)
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
        parameter shapes per group (checked by
        [`load_state_dict`][manifold_langevin.optim.CoLA.load_state_dict])."""
        sd = super().state_dict()
        sd["cola"] = extra_state(self.param_groups, self._generators, self.seed, self.n_skipped)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from [`state_dict`][manifold_langevin.optim.CoLA.state_dict], after
        checking that it fits these parameters.

        A state dict of format version 1 (circle momenta held as two tensors) is read and its
        circle momenta converted to angular velocities, which reads the parameters' current
        values: load the model's state first.

        Raises:
            ValueError: the state dict was not written by CoLA, by a format version this one
                cannot read, or for other parameters (group sizes, shapes or constraints
                differ).
        """
        state_dict, extra = split_extra(state_dict)
        check_compatible(self.param_groups, state_dict, extra.get("shapes"))
        super().load_state_dict(state_dict)
        if extra["version"] == 1:
            upgrade_circle_momenta(self.state)
        for st in self.state.values():
            if "n_rejected" in st:
                st["n_rejected"] = st["n_rejected"].to(torch.int64)
        self.seed = int(extra["seed"])
        self.n_skipped = int(extra["n_skipped"])
        restore_generators(extra["generators"], accelerators(self.param_groups), self._generator)

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
