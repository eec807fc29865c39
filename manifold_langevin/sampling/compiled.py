"""A sampler step compiled with ``torch.compile``, its noise drawn eagerly from the same stream.

``torch.compile`` cannot trace a draw from a ``torch.Generator`` without breaking the graph
there, and the generators are what make a run reproducible and resumable. So the step is split:
the normals one step needs are drawn eagerly, in the order and shapes the eager step draws them
(recorded from one eager step on a recording noise source that draws nothing, once per kind of
state: its tensors' shapes, dtypes and devices), and the compiled function receives them and
replays them to the integrator as its noise source. The
generator therefore advances exactly as in an eager run, and the compiled trajectory equals the
eager one to rounding (the compiler fuses and reorders arithmetic). The maths is the
integrator's own ``step``: nothing here re-implements a sub-step.

The number and shapes of the draws must not depend on the state, which holds for every
integrator of the library (they branch on Python settings, never on tensor values). If
compilation fails, the run warns once and goes on eagerly with the same noise.
"""

from __future__ import annotations

import contextlib
import types
import warnings

import torch

from ..noise import standard_normal

__all__ = ["CompiledStep", "StateDependentDraws"]


class StateDependentDraws(RuntimeError):
    """A step asked for other normals than the step that was recorded: its draws depend on the
    state, and pre-drawn noise would be the wrong noise."""


class _Recorder:
    """A noise source that records what it is asked for and returns zeros (draws nothing)."""

    def __init__(self):
        self.likes: list[torch.Tensor] = []

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        self.likes.append(torch.empty_like(like))
        return torch.zeros_like(like)


class _Replay:
    """A noise source that hands out pre-drawn normals in order."""

    def __init__(self, normals):
        self.normals = normals
        self.i = 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        z = self.normals[self.i]
        self.i += 1
        if z.shape != like.shape:  # shapes are static: checked when the graph is traced
            raise StateDependentDraws(
                f"the step asked for normals shaped {tuple(like.shape)} where one step "
                f"recorded {tuple(z.shape)}: its draws depend on the state"
            )
        return z


def _autograd_config():
    """Let the compiler trace ``torch.autograd.grad`` (the potential's force) where this
    torch can; elsewhere the graph breaks there and the rest is still compiled."""
    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    if config is not None and hasattr(config, "trace_autograd_ops"):
        return config.patch(trace_autograd_ops=True)
    return contextlib.nullcontext()


def _own_code(fn):
    """``fn`` with a copy of its code object. Dynamo keeps its cache of compiled frames, and
    counts its recompile limit, per code object, and every closure made from one ``def`` shares
    it: without the copy, each sampler's step would add a cache entry to the same code, and
    from the limit's (default 8) next sampler on dynamo would quietly run the step eagerly."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _kind_of(state, kwargs) -> tuple:
    """What the shapes of a step's draws can depend on: the state's tensors' shapes, dtypes and
    devices, and which keywords the step gets."""
    tensors = [getattr(state, name, None) for name in ("x", "p", "force")]
    return tuple(
        (tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else None
        for t in tensors
    ) + tuple(sorted(kwargs))


class CompiledStep:
    """``dynamics.step`` under ``torch.compile``, with the noise drawn eagerly.

    Call it as the step itself: ``step(state, generator, **kwargs) -> (state, ok, finite)``.
    ``generator`` is what the eager step takes (a ``torch.Generator``, a noise source, or
    ``None`` for torch's global generator); the draws are the eager step's, in its order.

    Args:
        dynamics: the integrator (anything with ``step(state, generator, **kwargs)``).
        **options: keyword arguments of ``torch.compile`` (default: inductor, no full graph
            required, static shapes).
    """

    def __init__(self, dynamics, **options):
        self.dynamics = dynamics
        self.options = {"dynamic": False, **options}
        # the draws one step makes, recorded per kind of state (shapes, dtype, device)
        self._likes: dict[tuple, list[torch.Tensor]] = {}
        self._compiled = None
        self.fallback: str | None = None

        def core(state, normals, kwargs):
            return dynamics.step(state, _Replay(normals), **kwargs)

        self._core = _own_code(core)

    def _record(self, state, kwargs) -> list[torch.Tensor]:
        recorder = _Recorder()
        with torch.no_grad():
            self.dynamics.step(state, recorder, **kwargs)
        return recorder.likes

    def __call__(self, state, generator=None, **kwargs):
        kind = _kind_of(state, kwargs)
        likes = self._likes.get(kind)
        if likes is None:
            likes = self._likes[kind] = self._record(state, kwargs)
        normals = [standard_normal(like, generator) for like in likes]
        if self.fallback is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self._core, **self.options)
                with _autograd_config():
                    return self._compiled(state, normals, kwargs)
            except StateDependentDraws:
                raise
            except Exception as exc:  # any compiler failure: eager from now on, same noise
                self.fallback = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                warnings.warn(
                    f"torch.compile of the sampler step failed ({self.fallback}); running "
                    "the step eagerly (same noise stream)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self._core(state, normals, kwargs)
