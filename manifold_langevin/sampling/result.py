"""What a sampling run returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..integrators.base import State

__all__ = ["SampleResult"]


@dataclass
class SampleResult:
    """What [`sample`][manifold_langevin.sampling.sample] returns.

    Attributes:
        means: per observable, the average over chains and recorded steps (float64 tensors shaped
            like one chain's observable value).
        stderrs: per observable, the batch-means standard error of ``means``: the post-burn-in
            samples of every chain are cut into ``n_batches`` consecutive batches and the spread of
            the ``n_batches x n_chains`` batch means gives the error.
        max_residual: largest constraint residual (``manifold.residual_norm``) over recorded steps.
        n_failures: number of rejected chain-steps (SHAKE did not converge).
        failure_rate: ``n_failures / (n_steps * n_chains)``.
        n_samples: recorded steps per chain.
        n_chains: number of chains.
        state: the final integrator state (``state.x`` are the final points).
        batch_means: per observable, the batch means, shape ``(n_batches, *chains, ...)``.
        acceptance_rate: for a Metropolis-adjusted sampler, the accepted fraction of the
            ``n_steps * n_chains`` proposals (``None`` for the Langevin schemes).
        n_rejected: rejected proposals (a failed SHAKE solve, a failed reversibility check, a
            non-finite proposal or the Metropolis test; ``None`` without a Metropolis test).
        n_reverse_failed: proposals rejected because integrating back from them did not return
            to their start (``None`` without a Metropolis test).
    """

    means: dict[str, torch.Tensor]
    stderrs: dict[str, torch.Tensor]
    max_residual: float
    n_failures: int
    failure_rate: float
    n_samples: int
    n_chains: int
    state: State
    batch_means: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    acceptance_rate: float | None = None
    n_rejected: int | None = None
    n_reverse_failed: int | None = None

    def summary(self) -> str:
        """One line per observable: ``name: mean +- stderr``."""
        lines = [f"{k}: {self.means[k].tolist()} +- {self.stderrs[k].tolist()}" for k in self.means]
        lines.append(
            f"max residual {self.max_residual:.3g}, failures {self.n_failures} "
            f"({100 * self.failure_rate:.3g}%)"
        )
        if self.acceptance_rate is not None:
            lines.append(
                f"acceptance {100 * self.acceptance_rate:.3g}% ({self.n_rejected} rejected, "
                f"{self.n_reverse_failed} by the reversibility check)"
            )
        return "\n".join(lines)
