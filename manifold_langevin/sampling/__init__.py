"""Drive an integrator: the sampling loop, batch-means statistics, the result, the samplers."""

from .loop import sample
from .result import SampleResult
from .samplers import Langevin, OverdampedLangevin, Sampler
from .statistics import BatchMeans

__all__ = ["BatchMeans", "Langevin", "OverdampedLangevin", "SampleResult", "Sampler", "sample"]
