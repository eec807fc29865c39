"""Running sums of observables on the device, and their batch-means averages and errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

__all__ = ["BatchMeans"]

Observable = Callable[[torch.Tensor], torch.Tensor]


class BatchMeans:
    """Per-batch sums of observables over the recorded steps of every chain.

    The recorded steps are cut into ``n_batches`` consecutive batches; each batch's mean per
    chain is one sample of the batch-means estimator, so the standard error of the overall mean
    comes from the spread of the ``n_batches x n_chains`` batch means (independent chains, and
    batches long enough to be nearly independent). Everything stays on the device: adding a
    sample reads nothing on the host.

    Args:
        observables: ``name -> f(x)`` with ``f(x)`` shaped ``(*chains, ...)``.
        x: the start points (to check each observable's shape and to size the sums).
        chains: the chain shape.
        n_batches: the number of batches.
        dtype: the accumulation dtype (float64 where the device has it).

    Raises:
        ValueError: an observable does not return a tensor shaped ``(*chains, ...)``.
    """

    def __init__(
        self,
        observables: Mapping[str, Observable],
        x: torch.Tensor,
        chains: torch.Size,
        n_batches: int,
        dtype: torch.dtype,
    ):
        self.observables = dict(observables)
        self.chains = chains
        self.n_batches = n_batches
        self.dtype = dtype
        self.counts = [0] * n_batches
        self.sums: dict[str, torch.Tensor] = {}
        for name, fn in self.observables.items():
            v = fn(x)
            if not isinstance(v, torch.Tensor) or v.shape[: len(chains)] != chains:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"observable {name!r} must return a tensor shaped (*chains, ...) = "
                    f"{tuple(chains)} + ...; got {shape}"
                )
            self.sums[name] = torch.zeros(
                (n_batches, *tuple(v.shape)), dtype=dtype, device=x.device
            )

    def evaluate(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every observable at points ``x``, in the accumulation dtype."""
        return {name: fn(x).to(self.dtype) for name, fn in self.observables.items()}

    def add(self, batch: int, values: dict[str, torch.Tensor]) -> None:
        """Add the observables' ``values`` (from [`evaluate`][]) to batch ``batch``."""
        self.counts[batch] += 1
        self.accumulate(batch, values)

    def accumulate(self, batch: int, values: dict[str, torch.Tensor]) -> None:
        """The device half of [`add`][]: the sums only, without counting the sample (the
        caller counts it in ``counts``; a CUDA graph replays this half, not the count)."""
        for name, v in values.items():
            self.sums[name][batch] += v

    def finish(self) -> tuple[dict, dict, dict]:
        """``(means, stderrs, batch_means)`` per observable (see
        [`SampleResult`][manifold_langevin.sampling.SampleResult])."""
        n_chains = math.prod(self.chains)
        n_batches = self.n_batches
        means, stderrs, batch_means = {}, {}, {}
        device = next(iter(self.sums.values())).device if self.sums else None
        cnt = torch.tensor(self.counts, dtype=self.dtype, device=device)
        for name, s in self.sums.items():
            shape = (n_batches,) + (1,) * (s.dim() - 1)
            bm = s / cnt.reshape(shape)
            total = s.sum(0) / cnt.sum()
            flat = bm.reshape(n_batches * n_chains, *s.shape[1 + len(self.chains) :])
            means[name] = total.reshape(n_chains, *flat.shape[1:]).mean(0)
            k = flat.shape[0]
            stderrs[name] = (
                flat.std(0, unbiased=True) / math.sqrt(k)
                if k > 1
                else torch.full_like(means[name], math.nan)
            )
            batch_means[name] = bm
        return means, stderrs, batch_means
