"""The sampling loop's steps captured once in CUDA graphs and replayed.

On a GPU an eager sampler step is tens to hundreds of small kernels, each launched from the
host: at small and moderate chain counts the host's launches, not the device, set the speed
(about 2 ms per step on an H200 whatever the number of chains). The loop is free of host
synchronisation, so its body can be captured in a CUDA graph and replayed with one launch.

What is captured is the loop's own body (the integrator's step, the failure counts, the
freezing of failed chains, and on recorded steps the observables, their batch sums and the
residual), the same function the eager loop calls, on buffers that stay in place: the state,
the counters and a device-side step index. The body branches on Python settings that change
during a run (counting the Metropolis test's outcomes after burn-in, which batch a recorded step
adds to), so one graph is captured per combination met, each on first use, all sharing one
memory pool (they are replayed one at a time, never concurrently).

The noise is the generator's own: a graph registered with a ``torch.Generator`` draws, at each
replay, the Philox numbers the same kernels would draw eagerly from the generator's state at that
moment, and advances the generator by the same amount. A graphed run therefore equals the eager
run bit for bit (the same kernels on the same inputs) and leaves the generator where the eager
run leaves it, so runs stay reproducible and resumable.

Before the first capture the body runs once on the real buffers with a scratch generator (the
libraries' lazy initialisation and a compiled step's compilation happen there, outside the
capture), and every buffer it touched is restored; the caller's generator does not move.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

__all__ = ["BACKEND", "CudaGraphs", "GraphedBody", "check_graphable"]


class CudaGraphs:
    """How graphs are captured and replayed: ``torch.cuda.CUDAGraph`` (the one backend of the
    library; a test substitutes one that replays by calling, to exercise the loop's graphed
    path on a machine without a GPU)."""

    name = "CUDA graphs"

    @staticmethod
    def supports(device: torch.device) -> bool:
        return device.type == "cuda"

    @staticmethod
    def warm_up(device: torch.device, fn: Callable[[], object]) -> None:
        """Run ``fn`` once on a side stream (lazy initialisation away from any capture)."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)

    @staticmethod
    def capture(fn: Callable[[], object], generator, pool, checkpoint):
        """``(replay, outputs, pool)``: ``fn``'s work captured (not run: the buffers and the
        generator do not move), its outputs (overwritten by each replay) and the memory pool the
        next capture shares. ``checkpoint()`` saves the buffers and returns their restorer, for
        a backend that has to run ``fn`` to capture it (this one does not)."""
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            if not hasattr(graph, "register_generator_state"):
                raise RuntimeError(
                    "cuda_graph=True with a torch.Generator needs a torch whose CUDAGraph has "
                    "register_generator_state (2.5 or newer); pass generator=None to draw from "
                    "torch's global generator"
                )
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, pool=pool):
            outputs = fn()
        return graph.replay, outputs, graph.pool()


#: the capture backend :class:`GraphedBody` uses
BACKEND = CudaGraphs()


def check_graphable(device: torch.device, generator) -> None:
    """Raise if a run on ``device`` drawing from ``generator`` cannot be graphed.

    Raises:
        ValueError: the chains are not on a CUDA device, or the generator is on another device.
        TypeError: the noise source is not a ``torch.Generator`` (or ``None``).
    """
    if not BACKEND.supports(device):
        raise ValueError(f"cuda_graph=True needs the chains on a CUDA device; they are on {device}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            "cuda_graph=True needs a torch.Generator (or None) as the noise source, "
            f"got {type(generator).__name__}"
        )
    if generator is not None and generator.device != device:
        raise ValueError(
            f"the generator is on {generator.device}, the chains on {device}: a CUDA graph "
            "draws from a generator on the chains' device"
        )


class GraphedBody:
    """``body(state, generator, index, key)`` captured per ``key`` and replayed.

    Args:
        body: the loop body, ``body(state, generator, index, key) -> (state, values)``; it must
            only launch device work that depends on its tensor arguments and Python settings
            (``key``), never read a tensor on the host.
        state: the chains' state to start from; its ``x``, ``p`` and ``force`` are copied into
            the buffers the graphs read and write (the caller's tensors are never written).
        generator: the ``torch.Generator`` the run draws from (``None``: torch's global one on
            the state's device).
        touched: ``touched(key)``, the device tensors besides the state that the body with
            settings ``key`` updates in place (the counters, the batch sums it adds to); they are
            restored after the warm-up run.

    Raises:
        ValueError, TypeError: see [`check_graphable`][].
    """

    def __init__(
        self,
        body: Callable,
        state,
        generator: torch.Generator | None,
        touched: Callable[[Hashable], list[torch.Tensor]],
    ):
        device = state.x.device
        check_graphable(device, generator)
        self.body = body
        self.device = device
        self.generator = generator
        self.state = state.replace(
            x=state.x.clone(),
            p=None if state.p is None else state.p.clone(),
            force=state.force.clone(),
        )
        self.touched = touched
        self.index = torch.zeros((), dtype=torch.int64, device=device)
        self._next_index: int | None = None
        self._graphs: dict[Hashable, tuple[Callable[[], None], object]] = {}
        self._pool = None
        self._warm = False

    def _buffers(self, key) -> list[torch.Tensor]:
        s = self.state
        own = [s.x, s.force] + ([] if s.p is None else [s.p])
        return own + list(self.touched(key)) + [self.index]

    def _run_body(self, generator, key):
        """The body once, its state written back into the buffers (what a replay does)."""
        new, values = self.body(self.state, generator, self.index, key)
        s = self.state
        s.x.copy_(new.x)
        s.force.copy_(new.force)
        if s.p is not None:
            s.p.copy_(new.p)
        self.index.add_(1)
        return new.info, values

    def _checkpoint(self, key) -> Callable[[], None]:
        """Save every buffer the body with settings ``key`` writes; returns the function that
        writes them back (the writes also leave stale any Jacobian a manifold cached at the
        buffers)."""
        buffers = self._buffers(key)
        saved = [t.clone() for t in buffers]

        def restore() -> None:
            for t, s in zip(buffers, saved):
                t.copy_(s)

        return restore

    def _warm_up(self, key) -> None:
        """One run of the body with a scratch generator, every buffer restored afterwards."""
        restore = self._checkpoint(key)
        scratch = torch.Generator(device=self.device)
        BACKEND.warm_up(self.device, lambda: self._run_body(scratch, key))
        restore()
        self._warm = True

    def _capture(self, key):
        if not self._warm:
            self._warm_up(key)
        try:
            replay, outputs, self._pool = BACKEND.capture(
                lambda: self._run_body(self.generator, key),
                self.generator,
                self._pool,
                lambda: self._checkpoint(key),
            )
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise RuntimeError(
                f"the sampler step could not be captured in a CUDA graph ({type(exc).__name__}: "
                f"{first}); a step that reads a tensor on the host or launches work outside "
                "PyTorch cannot be graphed: run with cuda_graph=False"
            ) from exc
        self._graphs[key] = (replay, outputs)
        return replay, outputs

    def __call__(self, index: int, key: Hashable):
        """Run step ``index`` of the loop with settings ``key``: returns ``(state, values)``,
        the buffers (overwritten by the next call) and the recorded values (``None`` when the
        step records nothing)."""
        replay, (info, values) = self._graphs.get(key) or self._capture(key)
        if self._next_index != index:
            self.index.fill_(index)
        replay()
        self._next_index = index + 1
        return self.state.replace(info=info), values
