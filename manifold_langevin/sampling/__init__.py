"""Drive an integrator: the sampling loop, batch-means statistics, the result, the samplers."""

from .loop import sample
from .result import SampleResult
from .samplers import HMC, Langevin, OverdampedLangevin, Sampler
from .statistics import BatchMeans

__all__ = [
    "HMC",
    "BatchMeans",
    "Langevin",
    "OverdampedLangevin",
    "SampleResult",
    "Sampler",
    "sample",
]
