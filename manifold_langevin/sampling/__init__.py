"""Drive an integrator: the sampling loop, batch-means statistics, the device traces and the
convergence diagnostics computed from them, step-size adaptation, the result, the samplers."""

from . import diagnostics
from .adaptation import DualAveraging
from .diagnostics import ess, mcse_mean, rhat
from .loop import sample
from .result import SampleResult
from .samplers import HMC, Langevin, OverdampedLangevin, Sampler
from .statistics import BatchMeans
from .traces import Traces

__all__ = [
    "HMC",
    "BatchMeans",
    "DualAveraging",
    "Langevin",
    "OverdampedLangevin",
    "SampleResult",
    "Sampler",
    "Traces",
    "diagnostics",
    "ess",
    "mcse_mean",
    "rhat",
    "sample",
]
