"""How to step: the B, A, O, E sub-steps written once, and the schemes composed from them.

``substeps`` holds the maps for any manifold, ``circle_substeps`` and ``euclidean_substeps`` the
same maps on separate circle components and on lists of unconstrained tensors (the optimizer's
fast paths), ``schemes`` the registry of named schemes with their orders, ``base`` the state, the
integrator protocol and the start checks.
"""

from .base import START_FACTOR, Dynamics, State, chain_mask, check_on_manifold, finite_chains
from .hmc import HMCKernel
from .langevin import LangevinIntegrator
from .overdamped import OverdampedIntegrator
from .schemes import SCHEMES, Scheme, parse_scheme, scheme_order
from .substeps import (
    baoa_step,
    damped_drift,
    drift,
    euler,
    kick,
    ornstein_uhlenbeck,
    ou_coefficients,
    ou_update,
)

__all__ = [
    "SCHEMES",
    "START_FACTOR",
    "Dynamics",
    "HMCKernel",
    "LangevinIntegrator",
    "OverdampedIntegrator",
    "Scheme",
    "State",
    "baoa_step",
    "chain_mask",
    "check_on_manifold",
    "damped_drift",
    "drift",
    "euler",
    "finite_chains",
    "kick",
    "ornstein_uhlenbeck",
    "ou_coefficients",
    "ou_update",
    "parse_scheme",
    "scheme_order",
]
