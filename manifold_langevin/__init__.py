"""manifold_langevin: constrained Langevin dynamics on manifolds, for sampling and for training.

The state stays on a constraint set ``g(x) = 0`` at every step. Layers (imports point downwards):
``manifolds`` (what the set is), ``integrators`` (how to step), ``sampling`` (drive chains),
``optim`` (the neural-network optimizer).
"""

from . import errors, integrators, manifolds
from .errors import NonFiniteError, OffManifoldError, ShakeError
from .integrators import Langevin, OverdampedLangevin, State
from .manifolds import (
    Circles,
    ConstrainedManifold,
    Euclidean,
    ImplicitManifold,
    Product,
    Sphere,
    Stiefel,
    as_manifold,
)
from .sampling import SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "Circles",
    "ConstrainedManifold",
    "Euclidean",
    "ImplicitManifold",
    "Langevin",
    "NonFiniteError",
    "OffManifoldError",
    "OverdampedLangevin",
    "Product",
    "SampleResult",
    "ShakeError",
    "Sphere",
    "State",
    "Stiefel",
    "__version__",
    "as_manifold",
    "errors",
    "integrators",
    "manifolds",
    "sample",
]


def __getattr__(name):
    # optim, data, training and checkpoint import lazily so that samplers load without them
    if name in ("optim", "data", "training", "checkpoint"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
