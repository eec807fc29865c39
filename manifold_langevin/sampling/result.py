"""What a sampling run returns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ..integrators.base import State

__all__ = ["SampleResult", "extreme"]


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
        n_failures: number of rejected chain-steps, burn-in included, where a SHAKE solve did
            not converge (for HMC: forwards, or backwards in the reversibility check).
        failure_rate: ``n_failures / (n_steps * n_chains)``.
        n_samples: recorded steps per chain.
        n_chains: number of chains.
        state: the final integrator state (``state.x`` are the final points).
        batch_means: per observable, the batch means, shape ``(n_batches, *chains, ...)``.
        acceptance_rate: for a Metropolis-adjusted sampler, the accepted fraction of the
            ``(n_steps - burn_in) * n_chains`` proposals after burn-in (``None`` for the
            Langevin schemes).
        n_rejected: rejected proposals after burn-in (a failed SHAKE solve, a failed
            reversibility check, a non-finite proposal or the Metropolis test; ``None`` without
            a Metropolis test).
        n_reverse_failed: proposals after burn-in rejected by the reversibility check: their
            forward solves converged, but integrating back from them did not converge or did not
            return to their start (``None`` without a Metropolis test).
        step_size: the step used after burn-in when it was adapted (``None`` otherwise).
        traces: per observable, the kept draws ``(n_traced_chains, draws, ...)`` (every
            ``trace_stride``-th recorded step; see the ``trace_draws`` and ``trace_bytes`` of
            [`sample`][manifold_langevin.sampling.sample]); on the device.
        trace_stride: the thinning of the traces, in recorded steps.
        n_traced_chains: how many chains (the first, in flattened order) the traces hold.
        ess_bulk: per observable (elementwise), the bulk effective sample size of all chains
            together: the rank-normalised split-chain ESS of Vehtari, Gelman, Simpson, Carpenter
            and Bürkner (Bayesian Analysis 16, 2021), computed on the traces and scaled by
            ``n_chains / n_traced_chains`` (independent chains of one kernel). On thinned traces
            it is a lower estimate of the ESS of every recorded step.
        ess_tail: the same for the 5% and 95% quantiles (the smaller of the two).
        rhat: the rank-normalised split R-hat (the larger of the bulk and folded ones); values
            above 1.01 say the chains have not mixed.
        mcse: the Monte Carlo standard error of ``means`` from the ESS of the traces (the
            batch-means ``stderrs`` are the other estimate; they agree for a run long enough
            for both to be reliable).
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
    step_size: float | None = None
    traces: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    trace_stride: int = 1
    n_traced_chains: int = 0
    ess_bulk: dict[str, torch.Tensor] = field(default_factory=dict)
    ess_tail: dict[str, torch.Tensor] = field(default_factory=dict)
    rhat: dict[str, torch.Tensor] = field(default_factory=dict)
    mcse: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per observable: ``name: mean +- stderr`` and, where there are traces, the
        smallest bulk and tail ESS and the largest R-hat of its entries; then the residual,
        failure and acceptance counts."""
        lines = []
        for k in self.means:
            line = f"{k}: {self.means[k].tolist()} +- {self.stderrs[k].tolist()}"
            if k in self.rhat:
                bulk, tail = extreme(self.ess_bulk[k], min), extreme(self.ess_tail[k], min)
                rhat = extreme(self.rhat[k], max)
                line += f" (ESS bulk {bulk:.4g}, tail {tail:.4g}; R-hat {rhat:.4g})"
            lines.append(line)
        lines.append(
            f"max residual {self.max_residual:.3g}, failures {self.n_failures} "
            f"({100 * self.failure_rate:.3g}%)"
        )
        if self.acceptance_rate is not None:
            lines.append(
                f"acceptance {100 * self.acceptance_rate:.3g}% ({self.n_rejected} rejected, "
                f"{self.n_reverse_failed} by the reversibility check)"
            )
        if self.step_size is not None:
            lines.append(f"adapted step size {self.step_size:.4g}")
        return "\n".join(lines)

    def to_arviz(self):
        """The traces as arviz's container: one posterior variable per observable, dims
        ``(chain, draw, ...)``, with the traced chains as chains. arviz >= 1.0 returns its
        ``DataTree``, earlier versions an ``InferenceData``.

        Raises:
            ImportError: arviz is not installed (``pip install "manifold-langevin[arviz]"``).
            ValueError: the run kept no traces (``trace_draws=0``).
        """
        try:
            import arviz as az
        except ImportError as err:
            raise ImportError(
                "SampleResult.to_arviz needs arviz, an optional dependency: "
                'pip install "manifold-langevin[arviz]"'
            ) from err
        if not self.traces:
            raise ValueError("this run kept no traces (trace_draws=0): nothing to convert")
        posterior = {k: v.detach().cpu().numpy() for k, v in self.traces.items()}
        attrs = {"trace_stride": self.trace_stride, "n_chains_run": self.n_chains}
        if self.step_size is not None:
            attrs["step_size"] = self.step_size
        with warnings.catch_warnings():
            # arviz guesses the layout wrong when there are more chains than draws; ours is
            # (chain, draw) by construction
            warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
            if int(az.__version__.split(".")[0]) >= 1:
                return az.from_dict({"posterior": posterior}, attrs=attrs)
            return az.from_dict(posterior=posterior, attrs=attrs)


def extreme(values: torch.Tensor, pick) -> float:
    """The largest (``pick=max``) or smallest finite entry of ``values``; NaN if none is finite
    (a constant observable has no R-hat or ESS), which no threshold test passes."""
    v = values[torch.isfinite(values)]
    if v.numel() == 0:
        return float("nan")
    return float(v.max() if pick is max else v.min())
