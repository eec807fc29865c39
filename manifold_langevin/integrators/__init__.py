"""How to step: B, A, O sub-steps and the schemes composed from them."""

from .dynamics import Dynamics, State
from .langevin import Langevin
from .overdamped import OverdampedLangevin
from .schemes import SCHEMES, parse_scheme
from .substeps import drift, euler, kick, ornstein_uhlenbeck, ou_coefficients

__all__ = [
    "SCHEMES",
    "Dynamics",
    "Langevin",
    "OverdampedLangevin",
    "State",
    "drift",
    "euler",
    "kick",
    "ornstein_uhlenbeck",
    "ou_coefficients",
    "parse_scheme",
]
