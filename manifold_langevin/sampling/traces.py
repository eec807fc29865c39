"""Thinned traces of the observables, kept on the device within a memory bound, for the
convergence diagnostics."""

from __future__ import annotations

import math

import torch

__all__ = ["TRACE_BYTES", "TRACE_DRAWS", "Traces"]

#: at most this many draws per chain are kept (evenly thinned over the recorded steps): enough
#: for split-chain R-hat and for the autocorrelations of a chain thinned to that length
TRACE_DRAWS = 500
#: and at most this many bytes for all the traces of a run together (2^21 float64 values; the
#: diagnostics take about 0.4 us per value on one CPU thread, so about a second at the bound)
TRACE_BYTES = 16 * 2**20


class Traces:
    """Every ``stride``-th recorded value of each observable, for the first ``n_traced`` chains.

    The stride is the smallest that keeps at most ``max_draws`` draws per chain; if the traces of
    every chain would then exceed ``max_bytes``, only the first ``n_traced`` chains (in the
    flattened chain order) are kept, as many as fit (at least one; with the draws cut further
    if even one chain does not fit). Storing a draw is one copy on the device; which recorded
    steps are kept depends on their index alone, so nothing is read on the host.

    Args:
        values: one value of each observable at the start, ``(*chains, ...)`` (for the shapes).
        chains: the chain shape.
        n_recorded: the number of recorded steps per chain.
        dtype: the storage dtype.
        max_draws: the draw bound; ``0`` keeps no traces.
        max_bytes: the memory bound.
    """

    def __init__(
        self,
        values: dict[str, torch.Tensor],
        chains: torch.Size,
        n_recorded: int,
        dtype: torch.dtype,
        *,
        max_draws: int = TRACE_DRAWS,
        max_bytes: int = TRACE_BYTES,
    ):
        self.n_chains = n_chains = math.prod(chains)
        self.element_shapes = {k: tuple(v.shape[len(chains) :]) for k, v in values.items()}
        per_draw = sum(math.prod(s) for s in self.element_shapes.values()) * _itemsize(dtype)
        if max_draws == 0 or not values or n_recorded == 0:
            self.stride, self.n_draws, self.n_traced = 1, 0, 0
            self._buffers: dict[str, torch.Tensor] = {}
            return
        draws = min(max_draws, n_recorded)
        traced = min(n_chains, max_bytes // max(per_draw * draws, 1))
        if traced < 1:
            traced, draws = 1, max(4, max_bytes // max(per_draw, 1))
        self.stride = -(-n_recorded // draws)
        self.n_draws = -(-n_recorded // self.stride)
        self.n_traced = traced
        device = next(iter(values.values())).device
        self._buffers = {
            k: torch.empty((self.n_draws, traced, *s), dtype=dtype, device=device)
            for k, s in self.element_shapes.items()
        }

    @property
    def nbytes(self) -> int:
        """The bytes the traces hold."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def add(self, index: int, values: dict[str, torch.Tensor]) -> None:
        """Keep recorded step ``index``'s ``values`` if it falls on the stride."""
        if not self._buffers or index % self.stride:
            return
        row = index // self.stride
        for k, buf in self._buffers.items():
            v = values[k].reshape(self.n_chains, *self.element_shapes[k])
            buf[row].copy_(v[: self.n_traced])

    def finish(self) -> dict[str, torch.Tensor]:
        """The traces, each shaped ``(n_traced, n_draws, *element)`` (chain, draw: the layout of
        [`diagnostics`][manifold_langevin.sampling.diagnostics] and of arviz)."""
        return {k: b.transpose(0, 1) for k, b in self._buffers.items()}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
