"""What users run to check a sampler: problems with exact values, and the invariant-measure and
weak-order runners.

- [`PROBLEMS`][manifold_langevin.testing.problems.PROBLEMS]: targets on constraint sets (circles,
  spheres up to $S^9$, tori, a plane, a sphere cut by a plane, Stiefel $V(10, 3)$, $SO(3)$, an
  ellipse and an ellipsoid whose surface and conditional measures differ) with exact
  expectations.
- [`check_invariant_measure`][manifold_langevin.testing.invariant_measure.check_invariant_measure]:
  run your sampler on a problem and compare with the exact values.
- [`check_weak_order`][manifold_langevin.testing.weak_order.check_weak_order]: measure your
  scheme's weak order with coupled step-size pairs.
- ``manifold-langevin validate`` runs every scheme of the package on every problem, and the
  weak-order study.
"""

from .invariant_measure import check_invariant_measure
from .problem import Marginal, Problem
from .problems import PROBLEMS, get_problem
from .weak_order import check_weak_order

__all__ = [
    "PROBLEMS",
    "Marginal",
    "Problem",
    "check_invariant_measure",
    "check_weak_order",
    "get_problem",
]
