"""The neural-network adapter: the CoLA optimizer and the paper's grouping/initialisation rules.

Examples:
    >>> import torch
    >>> import manifold_langevin as ml
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    >>> opt = ml.optim.CoLA(ml.optim.constrained_groups(net, "orthogonal"), lr=0.1)
"""

from .cola import STATE_VERSION, CoLA, sgd_equivalent
from .groups import DEFAULT_RADII, circle_init_, constrained_groups, orthogonal_init_

__all__ = [
    "DEFAULT_RADII",
    "STATE_VERSION",
    "CoLA",
    "circle_init_",
    "constrained_groups",
    "orthogonal_init_",
    "sgd_equivalent",
]
