"""The neural-network helpers: datasets, small models, optimizers by name, the training loop and
atomic checkpoints.

Examples:
    >>> import manifold_langevin as ml
    >>> model = ml.nn.mlp([4, 8, 2])
    >>> opt = ml.nn.make_optimizer("cola-orthogonal", model, seed=0)
    >>> type(opt).__name__
    'CoLA'
"""

from . import calibration, checkpoint, data, models, optimizers, training
from .calibration import PredictiveAverage, calibration_scores, predict_probs
from .checkpoint import load_checkpoint, save_atomic
from .models import ACTIVATIONS, cnn, mlp
from .optimizers import OPTIMIZERS, make_optimizer
from .training import evaluate, plot_history, save_history, train

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "PredictiveAverage",
    "calibration",
    "calibration_scores",
    "checkpoint",
    "cnn",
    "data",
    "evaluate",
    "load_checkpoint",
    "make_optimizer",
    "mlp",
    "models",
    "optimizers",
    "plot_history",
    "predict_probs",
    "save_atomic",
    "save_history",
    "train",
    "training",
]
