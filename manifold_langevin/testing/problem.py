"""What a validation problem is: a target on a constraint set with exact expectations."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.integrate import quad

from ..manifolds.implicit import ImplicitManifold

__all__ = [
    "QUAD",
    "LazyValues",
    "Marginal",
    "Problem",
    "constant_like",
    "expectation",
    "implicit",
    "normalised_density",
    "randn_points",
    "uniform_numbers",
]

Tensor = torch.Tensor
Observable = Callable[[Tensor], Tensor]
#: the tolerances of every 1-D quadrature behind an exact value
QUAD = {"epsabs": 1e-13, "epsrel": 1e-12, "limit": 200}


class Marginal(NamedTuple):
    """A 1-D marginal for histogram checks: ``observable`` names an entry of
    ``Problem.observables``; ``density`` is its normalised density (numpy, vectorised) under the
    target, supported on ``support``."""

    observable: str
    density: Callable[[np.ndarray], np.ndarray]
    support: tuple[float, float]


class LazyValues(Mapping):
    """A read-only mapping computed by ``thunk()`` on first access, then cached."""

    def __init__(self, thunk: Callable[[], dict[str, float]]):
        self._thunk = thunk
        self._data: dict[str, float] | None = None

    def _get(self) -> dict[str, float]:
        if self._data is None:
            self._data = {k: float(v) for k, v in self._thunk().items()}
        return self._data

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


@dataclass(frozen=True, eq=False)
class Problem:
    """A sampling problem on a constraint set with exact expectations.

    Attributes:
        name: registry key.
        description: one line: set, potential, temperature.
        make_manifold: builds the constraint set as a manifold of this package.
        potential: ``U(x)``, batched torch, returns ``(n_chains,)``.
        observables: ``name -> f(x)``, batched torch, each returns ``(n_chains,)``.
        exact: expectation of each observable under ``exp(-U/tau) x surface measure``.
        initial: ``initial(n_chains, dtype, device, generator)``: points exactly on the set (closed
            form or normalisation, not drawn from the target).
        temperature: ``tau``.
        conditional: expectations under the conditional measure ``exp(-U/tau) dx | g = 0`` where it
            differs from the surface measure, else ``None``.
        marginal: optional 1-D marginal (observable name, density, support) for histogram checks.
        conditional_density: the same marginal's density under the conditional measure, if any.
        event_shape: shape of one point.
        constraint: ``g(x)``, batched torch, ``(n_chains, m)``: the defining equations, independent
            of the package (used to check ``initial`` without it).
    """

    name: str
    description: str
    make_manifold: Callable[[], Any]
    potential: Observable
    observables: Mapping[str, Observable]
    exact: Mapping[str, float]
    initial: Callable[..., Tensor]
    event_shape: tuple[int, ...]
    constraint: Observable
    temperature: float = 1.0
    conditional: Mapping[str, float] | None = None
    marginal: Marginal | None = None
    conditional_density: Callable[[np.ndarray], np.ndarray] | None = field(default=None)


def expectation(weight, fns: Mapping[str, Callable], a: float, b: float) -> dict[str, float]:
    """``E[f]`` for density ``~ weight`` on [a, b] by adaptive quadrature."""
    z = quad(weight, a, b, **QUAD)[0]
    return {k: quad(lambda t, f=f: f(t) * weight(t), a, b, **QUAD)[0] / z for k, f in fns.items()}


def normalised_density(weight, a: float, b: float) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised density ``weight / int_a^b weight`` (normaliser computed on first call)."""

    @cache
    def norm() -> float:
        return quad(weight, a, b, **QUAD)[0]

    def density(t):
        t = np.asarray(t, dtype=float)
        return np.vectorize(weight, otypes=[float])(t) / norm()

    return density


# ------------------------------------------------------------------ helpers of the catalogues
def randn_points(n, shape, dtype, device, generator) -> Tensor:
    return torch.randn(n, *shape, dtype=dtype, device=device, generator=generator)


def uniform_numbers(n, dtype, device, generator) -> Tensor:
    return torch.rand(n, dtype=dtype, device=device, generator=generator)


def constant_like(values, like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def implicit(g):
    def make():
        return ImplicitManifold(g)

    return make
