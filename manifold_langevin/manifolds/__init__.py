"""What the constraint set is: residual, Jacobian products, projections, SHAKE/RATTLE, geodesics."""

from .adapters import as_manifold
from .base import ConstrainedManifold, default_tolerance
from .circles import Circles, circle_project, circle_rotate
from .euclidean import Euclidean
from .implicit import ImplicitManifold
from .product import Product
from .sphere import Sphere
from .stiefel import Stiefel

__all__ = [
    "Circles",
    "ConstrainedManifold",
    "Euclidean",
    "ImplicitManifold",
    "Product",
    "Sphere",
    "Stiefel",
    "as_manifold",
    "circle_project",
    "circle_rotate",
    "default_tolerance",
]
