"""manifold_langevin: constrained Langevin dynamics on manifolds, for sampling and for training.

The state stays on a constraint set ``g(x) = 0`` at every step. Layers (each imports only those
before it): ``manifolds`` (what the set is), ``integrators`` (how to step), ``sampling`` (drive
chains), ``testing`` (problems with exact values and the checks users run), ``optim`` (the
neural-network optimizer), ``nn`` (data, models, the training loop, checkpoints), ``cli``.
"""

from . import errors, integrators, manifolds, sampling
from .errors import (
    NonFiniteError,
    OffManifoldError,
    RankDeficientError,
    ShakeError,
    UntrustedRunError,
    UntrustedRunWarning,
)
from .integrators import State
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
from .sampling import HMC, Langevin, OverdampedLangevin, SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "HMC",
    "Circles",
    "ConstrainedManifold",
    "Euclidean",
    "ImplicitManifold",
    "Langevin",
    "NonFiniteError",
    "OffManifoldError",
    "OverdampedLangevin",
    "Product",
    "RankDeficientError",
    "SampleResult",
    "ShakeError",
    "Sphere",
    "State",
    "Stiefel",
    "UntrustedRunError",
    "UntrustedRunWarning",
    "__version__",
    "as_manifold",
    "errors",
    "integrators",
    "manifolds",
    "sample",
    "sampling",
]


def __getattr__(name):
    # the optimizer, the neural-network helpers, the validation harness and the command line
    # import lazily, so that the samplers load without them
    if name in ("optim", "nn", "testing", "cli"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
