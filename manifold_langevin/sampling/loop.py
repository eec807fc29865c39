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

from ..errors import NonFiniteError, ShakeError, UntrustedRunWarning
from ..integrators.base import State, chain_mask
from .result import SampleResult
from .statistics import BatchMeans

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
            (the failed chains are frozen at their last good state) instead of rejecting the step.
        progress: show a tqdm progress bar.
        check_every: read the failure flags on the host every this many steps and raise early
            (one synchronisation each time); ``None`` reads them only at the end.

    Returns:
        A [`SampleResult`][].

    Raises:
        OffManifoldError: ``x0`` is off the manifold (and ``project`` is false).
        NonFiniteError: the force or the state became NaN/Inf; ``.step`` is the first failing
            step and ``.state`` has the affected chains frozen just before it.
        ShakeError: in ``strict`` mode, a SHAKE solve failed.
    """
    n_steps = _int("n_steps", n_steps, 1)
    burn_in = _int("burn_in", burn_in, 0)
    thin = _int("thin", thin, 1)
    n_batches = _int("n_batches", n_batches, 1)
    if check_every is not None:
        check_every = _int("check_every", check_every, 1)
    if burn_in >= n_steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than n_steps ({n_steps})")
    observables = dict(observables or {})
    for name, fn in observables.items():
        if not callable(fn):
            raise TypeError(f"observable {name!r} is not callable")

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

        alive = torch.ones(chains, dtype=torch.bool, device=dev)
        n_fail = torch.zeros((), dtype=torch.int64, device=dev)
        first_fail = torch.full((), -1, dtype=torch.int64, device=dev)
        first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        max_res = torch.zeros((), dtype=acc_dtype, device=dev)
        # the Metropolis kernel's counts (its states carry an info dict)
        n_accepted = torch.zeros((), dtype=torch.int64, device=dev)
        n_reverse = torch.zeros((), dtype=torch.int64, device=dev)
        metropolis = False

        for i in tqdm(range(n_steps), disable=not progress, desc="sampling", leave=False):
            new, ok, finite = dynamics.step(state, generator)
            failed = alive & ~ok
            bad = alive & ~finite
            n_fail += failed.sum()
            first_fail = torch.where((first_fail < 0) & failed.any(), i, first_fail)
            first_bad = torch.where((first_bad < 0) & bad.any(), i, first_bad)
            moving = alive & (ok & finite if strict else finite)
            if new.info is not None:
                metropolis = True
                n_accepted += (alive & new.info["accepted"]).sum()
                n_reverse += (alive & new.info["reverse_failed"]).sum()
            state = _freeze(state, new, moving)
            alive = moving
            if i >= burn_in and (i - burn_in) % thin == 0:
                stats.add(min((i - burn_in) // thin // batch_len, n_batches - 1), state.x)
                res = dynamics.manifold.residual_norm(state.x)
                max_res = torch.maximum(max_res, res.max().to(acc_dtype))
            if check_every is not None and (i + 1) % check_every == 0:
                _raise_if_failed(dynamics, state, first_bad, first_fail, n_fail, strict)

        _raise_if_failed(dynamics, state, first_bad, first_fail, n_fail, strict)
        means, stderrs, batch_means = stats.finish()
        nf = int(n_fail)
        total = n_steps * n_chains
        extra = {}
        if metropolis:
            na = int(n_accepted)
            extra = {"acceptance_rate": na / total, "n_rejected": total - na,
                     "n_reverse_failed": int(n_reverse)}  # fmt: skip
        _warn_if_untrusted(nf / total, extra.get("acceptance_rate"), n_steps, n_chains)
        return SampleResult(
            means=means,
            stderrs=stderrs,
            max_residual=float(max_res),
            n_failures=nf,
            failure_rate=nf / (n_steps * n_chains),
            n_samples=n_rec,
            n_chains=n_chains,
            state=state,
            batch_means=batch_means,
            **extra,
        )


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


def _warn_if_untrusted(failure_rate: float, acceptance: float | None, n_steps, n_chains) -> None:
    """Warn (``UntrustedRunWarning``) about a run whose averages should not be trusted as they
    are. A Metropolis-adjusted run's failed solves are rejections of an exact kernel (no bias):
    for it only the acceptance rate counts."""
    problems = []
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
    if problems:
        warnings.warn(
            f"sampling run of {n_chains} chain(s) x {n_steps} steps: " + "; ".join(problems),
            UntrustedRunWarning,
            stacklevel=_outside_the_package(),
        )


def _outside_the_package() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _raise_if_failed(dynamics, state, first_bad, first_fail, n_fail, strict):
    bad = int(first_bad)
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
