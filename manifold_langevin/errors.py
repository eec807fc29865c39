"""Exceptions raised by the library. Each names the problem and carries the numbers behind it."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "NonFiniteError",
    "OffManifoldError",
    "RankDeficientError",
    "ShakeError",
    "UntrustedRunError",
    "UntrustedRunWarning",
]


class OffManifoldError(ValueError):
    """A point given as a start (or a parameter) is not on its constraint set.

    Attributes:
        residual: the largest constraint violation found.
        tolerance: the threshold it exceeded.
    """

    def __init__(self, message: str, residual: float, tolerance: float):
        super().__init__(message)
        self.residual = residual
        self.tolerance = tolerance


class NonFiniteError(FloatingPointError):
    """The force (gradient) or the state became NaN/Inf.

    The offending chains (or parameters) were left as they were before the failing step.

    Attributes:
        step: index (0-based) of the first failing step.
        state: the sampler state with the failed chains frozen before that step, if any.
    """

    def __init__(self, message: str, step: int | None = None, state=None):
        super().__init__(message)
        self.step = step
        self.state = state


class ShakeError(RuntimeError):
    """A SHAKE solve did not converge and strict mode was asked for.

    Attributes:
        step: index (0-based) of the first failing step.
        n_failures: number of failed chain-steps.
        state: the sampler state with the failed chains frozen before that step, if any.
    """

    def __init__(self, message: str, step: int | None = None, n_failures: int = 0, state=None):
        super().__init__(message)
        self.step = step
        self.n_failures = n_failures
        self.state = state


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the run that tries to resume from it.

    Raised by [`load_checkpoint`][manifold_langevin.nn.checkpoint.load_checkpoint] (truncated or
    corrupt file) and by ``manifold-langevin train --resume`` (a checkpoint of another
    configuration; the message names every setting that differs).
    """


class RankDeficientError(ValueError):
    """The constraint Jacobian ``J`` is rank deficient at a point: ``J J^T`` is singular, so the
    tangent projection and the SHAKE solve are undefined (redundant constraints, or a point
    where a constraint's gradient vanishes).

    Attributes:
        chains: the indices of the chains (start points) where it is.
    """

    def __init__(self, message: str, chains=()):
        super().__init__(message)
        self.chains = list(chains)


class UntrustedRunWarning(UserWarning):
    """A sampling run whose numbers should not be trusted as they are: too many failed or
    rejected steps, or diagnostics that say the chains have not mixed. The message names the
    measurement and the threshold."""


class UntrustedRunError(RuntimeError):
    """A sampling run in strict mode would have warned with
    [`UntrustedRunWarning`][manifold_langevin.errors.UntrustedRunWarning]; the message is the
    warning's.

    Attributes:
        result: the run's [`SampleResult`][manifold_langevin.sampling.SampleResult], for a look
            at what went wrong.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
