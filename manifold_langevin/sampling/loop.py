"""The sampling loop: drive an integrator's chains, record observables, count failures.

Everything accumulates on the device; the host reads the totals once, at the end (or every
``check_every`` steps when asked), so the loop has no per-step synchronisation.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import NonFiniteError, ShakeError, UntrustedRunError, UntrustedRunWarning
from ..integrators.base import State, chain_mask, standard_layout
from .adaptation import DualAveraging
from .compiled import CompiledStep
from .diagnostics import summarise
from .graphed import GraphedBody, check_graphable
from .result import SampleResult, extreme
from .statistics import BatchMeans
from .traces import TRACE_BYTES, TRACE_DRAWS, Traces

__all__ = ["sample"]


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def sample(
    dynamics,
    x0: torch.Tensor,
    n_steps: int,
    *,
    burn_in: int = 0,
    observables: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    generator: torch.Generator | None = None,
    thin: int = 1,
    n_batches: int = 10,
    p0: torch.Tensor | None = None,
    project: bool = False,
    strict: bool = False,
    progress: bool = False,
    check_every: int | None = None,
    trace_draws: int = TRACE_DRAWS,
    trace_bytes: int = TRACE_BYTES,
    compile: bool | Mapping = False,
    cuda_graph: bool = False,
) -> SampleResult:
    """Run ``n_steps`` of ``dynamics`` from ``x0`` for every chain and average ``observables``.

    Args:
        dynamics: an integrator: an object with ``manifold``, ``chain_shape(x)``,
            ``init(x0, p0=, generator=, project=)`` and ``step(state, generator)`` returning
            ``(state, converged, finite)`` (every integrator of
            [`manifold_langevin.integrators`][manifold_langevin.integrators]).
        x0: start points ``(*chains, *event)`` on the manifold.
        n_steps: total steps, burn-in included.
        burn_in: steps discarded before recording.
        observables: ``name -> f(x)`` with ``f(x)`` shaped ``(*chains, ...)``.
        generator: the noise source (on ``x0``'s device); ``None`` uses torch's global one.
        thin: record every ``thin``-th step after burn-in.
        n_batches: batches per chain for the batch-means standard errors.
        p0: start momenta (projected onto the tangent space); default: drawn from the Gaussian.
        project: project an off-manifold ``x0`` instead of raising.
        strict: raise [`ShakeError`][manifold_langevin.errors.ShakeError] when any SHAKE solve fails
            (the failed chains are frozen at their last good state) instead of rejecting the step,
            and [`UntrustedRunError`][manifold_langevin.errors.UntrustedRunError] instead of the
            [`UntrustedRunWarning`][manifold_langevin.errors.UntrustedRunWarning] at the end.
        progress: show a tqdm progress bar.
        check_every: read the failure flags on the host every this many steps and raise early
            (one synchronisation each time); ``None`` reads them only at the end.
        trace_draws: keep at most this many draws per chain of every observable on the device
            (evenly thinned over the recorded steps) for the diagnostics (ESS, R-hat, MCSE;
            ``SampleResult.traces``); ``0`` keeps none and skips the diagnostics.
        trace_bytes: the memory bound of those traces: beyond it only the first chains that fit
            are traced (see [`Traces`][manifold_langevin.sampling.traces.Traces]).
        compile: run the step through ``torch.compile``
            ([`CompiledStep`][manifold_langevin.sampling.compiled.CompiledStep]: the noise is
            drawn eagerly from ``generator`` in the eager step's order, so the stream and the
            trajectory are the eager ones to rounding); a mapping passes options to
            ``torch.compile``. The first step pays for the compilation (seconds to a minute);
            worth it for long runs. The sampler keeps its compiled step for later runs with the
            same options (a run resumed in pieces compiles once; another chain count or dtype
            recompiles once). If compilation fails the run warns and continues eagerly.
        cuda_graph: on a CUDA device, capture the loop's step (the integrator's step, the
            failure counts, the recording) in CUDA graphs and replay them, one launch per step
            instead of one per kernel
            ([`GraphedBody`][manifold_langevin.sampling.graphed.GraphedBody]): the same
            kernels, so the same numbers bit for bit and the same generator state at the end as
            the eager run. Combines with ``compile``. A step-size adaptation's burn-in runs
            eagerly, the steps after it graphed. ``generator`` must then be a
            ``torch.Generator`` on the chains' device, or ``None``.

    A run that should not be trusted as it is warns with
    [`UntrustedRunWarning`][manifold_langevin.errors.UntrustedRunWarning], naming the
    measurement and the threshold: more than 1% (``FAILURE_WARN``) of the steps of a Langevin
    scheme failed, a Metropolis test accepted fewer than 10% (``ACCEPTANCE_WARN``) of the
    proposals, an observable's rank-normalised split R-hat exceeds 1.01 (``RHAT_WARN``: the
    chains disagree, not yet mixed or stuck in different modes), or its bulk or tail ESS is below
    100 (``ESS_WARN``: too few effective samples for the errors themselves to be reliable).
    These constants live in ``manifold_langevin.sampling.loop``.

    With an [`HMC`][manifold_langevin.HMC] sampler built with ``adapt_step_size=True``, the
    step is tuned during burn-in by dual averaging and then frozen
    ([`DualAveraging`][manifold_langevin.sampling.adaptation.DualAveraging]); the step used
    after burn-in is ``SampleResult.step_size``.

    Returns:
        A [`SampleResult`][].

    Raises:
        OffManifoldError: ``x0`` is off the manifold (and ``project`` is false).
        ValueError: ``cuda_graph`` with chains off a CUDA device (or a generator on another
            device); TypeError: ``cuda_graph`` with a noise source that is no
            ``torch.Generator``.
        RuntimeError: ``cuda_graph`` with a step that cannot be captured (it reads a tensor on
            the host); the chains are left as they were.
        NonFiniteError: the force or the state became NaN/Inf; ``.step`` is the first failing
            step and ``.state`` has the affected chains frozen just before it.
        ShakeError: in ``strict`` mode, a SHAKE solve failed.
        UntrustedRunError: in ``strict`` mode, the run would have warned (``.result`` holds it).
    """
    n_steps = _int("n_steps", n_steps, 1)
    burn_in = _int("burn_in", burn_in, 0)
    thin = _int("thin", thin, 1)
    n_batches = _int("n_batches", n_batches, 1)
    trace_draws = _int("trace_draws", trace_draws, 0)
    trace_bytes = _int("trace_bytes", trace_bytes, 1)
    adapt = bool(getattr(dynamics, "adapt_step_size", False))
    if adapt and burn_in == 0:
        raise ValueError("adapt_step_size needs burn_in > 0: the step is tuned during burn-in")
    if check_every is not None:
        check_every = _int("check_every", check_every, 1)
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be True or False, got {cuda_graph!r}")
    if burn_in >= n_steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than n_steps ({n_steps})")
    observables = dict(observables or {})
    for name, fn in observables.items():
        if not callable(fn):
            raise TypeError(f"observable {name!r} is not callable")

    if cuda_graph and isinstance(x0, torch.Tensor):
        check_graphable(x0.device, generator)
    with torch.no_grad():
        state = dynamics.init(x0, p0=p0, generator=generator, project=project)
        x = state.x
        chains = dynamics.chain_shape(x)
        n_chains = math.prod(chains)
        n_rec = (n_steps - burn_in + thin - 1) // thin
        n_batches = min(n_batches, n_rec)
        batch_len = n_rec // n_batches
        dev = x.device
        acc_dtype = torch.float64 if dev.type != "mps" else torch.float32

        stats = BatchMeans(observables, x, chains, n_batches, acc_dtype)
        traces = Traces(
            stats.evaluate(x), chains, n_rec, acc_dtype, max_draws=trace_draws,
            max_bytes=trace_bytes,
        )  # fmt: skip
        adapter = (
            DualAveraging(
                dynamics.step_size,
                dynamics.target_accept,
                torch.empty((), dtype=acc_dtype, device=dev),
            )
            if adapt
            else None
        )
        step = dynamics.step
        if compile:
            step = _compiled_step(dynamics, dict(compile) if isinstance(compile, Mapping) else {})

        tally = _Tally(chains, dev, acc_dtype)
        body = _Body(step, dynamics.manifold, strict, stats, tally)
        graphed = None

        for i in tqdm(range(n_steps), disable=not progress, desc="sampling", leave=False):
            r = (i - burn_in) // thin
            recorded = i >= burn_in and (i - burn_in) % thin == 0
            # the body's Python settings: count the Metropolis outcomes (after burn-in), and the
            # batch a recorded step adds to
            key = (i >= burn_in, min(r // batch_len, n_batches - 1) if recorded else None)
            if adapter is not None and i <= burn_in:
                # tuned during burn-in (eagerly), then frozen at the averaged step
                body.step_size = adapter.step_size if i < burn_in else adapter.final_step_size
                state, values = body(state, generator, i, key)
                if i < burn_in:
                    adapter.update(state.info["accept_prob"])
            elif cuda_graph:
                if graphed is None:  # from the state reached so far (after an eager burn-in)
                    graphed = GraphedBody(body, state, generator, body.touched)
                state, values = graphed(i, key)
            else:
                state, values = body(state, generator, i, key)
            if recorded:
                stats.counts[key[1]] += 1
                traces.add(r, values)
            if check_every is not None and (i + 1) % check_every == 0:
                _raise_if_failed(dynamics, state, tally, strict)

        _raise_if_failed(dynamics, state, tally, strict)
        means, stderrs, batch_means = stats.finish()
        nf = int(tally.n_fail)
        extra = {}
        if body.metropolis:
            na, proposals = int(tally.n_accepted), (n_steps - burn_in) * n_chains
            extra = {"acceptance_rate": na / proposals, "n_rejected": proposals - na,
                     "n_reverse_failed": int(tally.n_reverse)}  # fmt: skip
        if adapter is not None:
            extra["step_size"] = float(adapter.final_step_size)
        extra.update(_diagnostics(traces, n_chains))
        result = SampleResult(
            means=means,
            stderrs=stderrs,
            max_residual=float(tally.max_res),
            n_failures=nf,
            failure_rate=nf / (n_steps * n_chains),
            n_samples=n_rec,
            n_chains=n_chains,
            state=standard_layout(state),
            batch_means=batch_means,
            **extra,
        )
        problems = _untrusted(result)
        if problems:
            message = f"sampling run of {n_chains} chain(s) x {n_steps} steps: " + "; ".join(
                problems
            )
            if strict:
                raise UntrustedRunError(message, result=result)
            warnings.warn(message, UntrustedRunWarning, stacklevel=_outside_the_package())
        return result


def _diagnostics(traces: Traces, n_chains: int) -> dict:
    """ESS, R-hat and MCSE per observable from the traces, scaled to every chain when only the
    first ``n_traced`` were traced (the chains are independent runs of one kernel: the effective
    sample size is proportional to their number)."""
    kept = traces.finish()
    out = {"traces": kept, "trace_stride": traces.stride, "n_traced_chains": traces.n_traced}
    if not kept:
        return out
    scale = n_chains / traces.n_traced
    diag = summarise(kept)
    out["ess_bulk"] = {k: d["ess_bulk"] * scale for k, d in diag.items()}
    out["ess_tail"] = {k: d["ess_tail"] * scale for k, d in diag.items()}
    out["rhat"] = {k: d["rhat"] for k, d in diag.items()}
    out["mcse"] = {k: d["mcse_mean"] / math.sqrt(scale) for k, d in diag.items()}
    return out


def _compiled_step(dynamics, options: dict) -> CompiledStep:
    """The sampler's compiled step for these ``torch.compile`` options, made once per sampler
    and kept on it: later runs (a run resumed in pieces, another chain count) reuse its
    compiled code instead of compiling again."""
    attributes = getattr(dynamics, "__dict__", None)
    if attributes is None:  # nowhere to keep it
        return CompiledStep(dynamics, **options)
    steps = attributes.setdefault("_compiled_steps", {})
    key = repr(sorted(options.items()))
    if key not in steps:
        steps[key] = CompiledStep(dynamics, **options)
    return steps[key]


class _Tally:
    """The run's counters on the device, updated in place by the loop body (so that a CUDA
    graph of the body updates them too): the chains still moving, the failed chain-steps and
    the first failing steps, the Metropolis test's outcomes, the largest recorded residual."""

    def __init__(self, chains: torch.Size, device: torch.device, acc_dtype: torch.dtype):
        self.alive = torch.ones(chains, dtype=torch.bool, device=device)
        self.n_fail = torch.zeros((), dtype=torch.int64, device=device)
        self.first_fail = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.n_accepted = torch.zeros((), dtype=torch.int64, device=device)
        self.n_reverse = torch.zeros((), dtype=torch.int64, device=device)
        self.max_res = torch.zeros((), dtype=acc_dtype, device=device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.alive, self.n_fail, self.first_fail, self.first_bad, self.n_accepted,
                self.n_reverse, self.max_res]  # fmt: skip


class _Body:
    """One step of the sampling loop, all of it device work: the integrator's step, the
    failure counts, the freezing of failed chains and, on a recorded step, the observables added
    to their batch and the residual. The eager loop calls it, and
    [`GraphedBody`][manifold_langevin.sampling.graphed.GraphedBody] captures it; ``index`` is
    the step's number (an int, or a device tensor inside a graph) and ``key`` the Python
    settings ``(count, batch)``: count the Metropolis outcomes, and the batch a recorded step
    adds to (``None``: not recorded)."""

    def __init__(self, step, manifold, strict: bool, stats: BatchMeans, tally: _Tally):
        self.step, self.manifold, self.strict = step, manifold, strict
        self.stats, self.tally = stats, tally
        self.step_size = None  # set by step-size adaptation
        self.metropolis = False  # the integrator's states carry the Metropolis kernel's info

    def touched(self, key) -> list[torch.Tensor]:
        """The device tensors, besides the state, that the body with settings ``key`` writes."""
        batch = key[1]
        sums = [] if batch is None else [s[batch] for s in self.stats.sums.values()]
        return self.tally.tensors() + sums

    def __call__(self, state: State, generator, index, key):
        count, batch = key
        t = self.tally
        if self.step_size is None:
            new, ok, finite = self.step(state, generator)
        else:
            new, ok, finite = self.step(state, generator, step_size=self.step_size)
        failed = t.alive & ~ok
        # a step whose SHAKE solve failed is rejected whatever its garbage holds; NaN/Inf
        # counts only where the solves converged (a potential or force gone non-finite)
        nonfinite = ok & ~finite
        bad = t.alive & nonfinite
        t.n_fail += failed.sum()
        t.first_fail.copy_(torch.where((t.first_fail < 0) & failed.any(), index, t.first_fail))
        t.first_bad.copy_(torch.where((t.first_bad < 0) & bad.any(), index, t.first_bad))
        moving = t.alive & (ok & finite if self.strict else ~nonfinite)
        if new.info is not None:
            self.metropolis = True
            if count:
                t.n_accepted += (t.alive & new.info["accepted"]).sum()
                t.n_reverse += (t.alive & new.info["reverse_failed"]).sum()
        state = _freeze(state, new, moving)
        t.alive.copy_(moving)
        if batch is None:
            return state, None
        values = self.stats.evaluate(state.x)
        self.stats.accumulate(batch, values)
        res = self.manifold.residual_norm(state.x)
        torch.maximum(t.max_res, res.max().to(t.max_res.dtype), out=t.max_res)
        return state, values


def _freeze(old: State, new: State, moving: torch.Tensor) -> State:
    """Chains not ``moving`` keep their old state (device-side, no branch)."""
    m = chain_mask(moving, old.x)
    p = None if new.p is None else torch.where(m, new.p, old.p)
    x, f = torch.where(m, new.x, old.x), torch.where(m, new.force, old.force)
    return State(x, p, f, info=new.info)


#: a run warns when more than this fraction of its chain-steps failed (the failures' bias on the
#: averages is of the order of the failure rate, which then exceeds the Monte Carlo error of most
#: runs)
FAILURE_WARN = 0.01
#: a Metropolis-adjusted run warns when it accepts fewer than this fraction of its proposals (its
#: averages are then unbiased but rest on few moves: shorten the step)
ACCEPTANCE_WARN = 0.1


#: a run warns when an observable's rank-normalised split R-hat exceeds this (Vehtari, Gelman,
#: Simpson, Carpenter and Bürkner, Bayesian Analysis 16, 2021, recommend 1.01)
RHAT_WARN = 1.01
#: a run warns when an observable's bulk or tail ESS (all chains together) is below this: with
#: fewer effective samples the standard errors are themselves too uncertain to rely on
ESS_WARN = 100


def _untrusted(result: SampleResult) -> list[str]:
    """What is wrong with a run whose averages should not be trusted as they are (empty: nothing
    found). A Metropolis-adjusted run's failed solves are rejections of an exact kernel (no
    bias): for it only the acceptance rate counts."""
    problems = []
    failure_rate, acceptance = result.failure_rate, result.acceptance_rate
    if failure_rate >= 1.0:
        problems.append("every chain-step failed: the chains never moved from their start")
    elif acceptance is None and failure_rate > FAILURE_WARN:
        problems.append(
            f"{100 * failure_rate:.3g}% of the chain-steps failed (SHAKE did not converge) and "
            f"were rejected, more than {100 * FAILURE_WARN:g}%: the averages are biased by about "
            "that rate; reduce step_size or use substeps"
        )
    if acceptance is not None and acceptance < ACCEPTANCE_WARN:
        problems.append(
            f"the Metropolis test accepted {100 * acceptance:.3g}% of the proposals, fewer than "
            f"{100 * ACCEPTANCE_WARN:g}%: the averages rest on few moves; reduce step_size"
        )
    high = {k: extreme(r, max) for k, r in result.rhat.items()}
    high = {k: v for k, v in high.items() if v > RHAT_WARN}
    if high:
        per_chain = min(extreme(result.ess_bulk[k], min) for k in high) / result.n_chains
        hint = (
            f"; each chain holds about {per_chain:.3g} effective draws, and R-hat stays above "
            f"{RHAT_WARN:g} until each holds about 100 even for chains that started in the "
            "target: more steps, not more chains"
            if per_chain < 100
            else ""
        )
        problems.append(
            f"R-hat above {RHAT_WARN:g} for {_listing(high)}: the chains disagree (not yet "
            f"mixed, or in different modes); run longer or burn in more{hint}"
        )
    low = {}
    for kind, ess in (("bulk", result.ess_bulk), ("tail", result.ess_tail)):
        for k, e in ess.items():
            v = extreme(e, min)
            if v < ESS_WARN:
                low[f"{k} ({kind})"] = v
    if low:
        problems.append(
            f"ESS below {ESS_WARN} for {_listing(low)}: too few effective samples for the "
            "standard errors to be reliable; run longer"
        )
    return problems


def _listing(values: dict[str, float]) -> str:
    return ", ".join(f"{k!r} ({v:.4g})" for k, v in values.items())


def _outside_the_package() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _raise_if_failed(dynamics, state, tally: _Tally, strict: bool):
    first_fail, n_fail = tally.first_fail, tally.n_fail
    bad = int(tally.first_bad)
    if bad >= 0:
        raise NonFiniteError(
            f"the force or the state became NaN/Inf at step {bad}; the affected chains were "
            "frozen just before it (see .state)",
            step=bad,
            state=state,
        )
    if strict and int(n_fail) > 0:
        step = int(first_fail)
        raise ShakeError(
            f"SHAKE did not converge at step {step} ({int(n_fail)} failed chain-steps); the "
            "failed chains were frozen just before it (see .state). Reduce step_size, use "
            "substeps, or run with strict=False to reject and count such steps",
            step=step,
            n_failures=int(n_fail),
            state=state,
        )
