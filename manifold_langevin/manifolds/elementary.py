"""Elementwise closed forms shared by the geodesics: the ratio ``sin(theta) / theta``.

The sphere's great-circle rotation and the Rodrigues exponential of SO(3) need
``sin(theta) / theta``, which is 1 at ``theta = 0``. ``torch.sinc`` gives it, but on CPU it costs
more than twice a ``sin`` (``python -m validation.bench_sphere_geodesic`` times both on 10^4
float64 angles), and the geodesics already hold ``sin(theta)``: dividing it by ``theta`` where
``theta != 0`` is the same number to rounding (both are within an ulp or two of the ratio), at
the price of a comparison, a division and two selections.
"""

from __future__ import annotations

import torch

__all__ = ["sine_ratio"]


def sine_ratio(sin: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``sin / theta`` where ``theta != 0``, 1 where ``theta == 0``: ``sin(theta) / theta`` given
    ``sin = sin(theta)``.

    No cancellation threatens the ratio (for ``|theta|`` below ``sqrt(eps)``, ``sin(theta)``
    rounds to ``theta`` and the ratio to 1, as it should), so only ``theta == 0`` is special.
    The division there is by 1, so the discarded branch is finite too and autograd's gradient
    is finite at zero (it is 0 there, as the ratio's derivative is).
    """
    zero = theta == 0
    return torch.where(zero, 1.0, sin / torch.where(zero, 1.0, theta))
