"""Elementwise closed forms shared by the geodesics: ``cos`` and ``sin`` of an angle, and the
ratio ``sin(theta) / theta``.

Every exact rotation (a circle weight's, the sphere's great circle, SO(2)) needs the cosine and
the sine of one angle per point. On CPU in float32, torch's ``sin`` and ``cos`` cost about
1.2 ns an entry each on the machines this library is measured on, as much as some fourteen
elementwise ``add``s, and with them they were more than half of CoLA's eager circle step;
NumPy's SIMD float32 ``sin`` and ``cos`` take under half that and round the small angles of a
step (``|theta| <= 0.1``) to half an ulp as torch does (at any angle within 1.5 ulps measured,
2 tested, against torch's 0.6).
[`cos_sin`][manifold_langevin.manifolds.elementary.cos_sin] takes them there, on the same
memory, and torch's everywhere else (float64, where torch is the faster, other dtypes and
devices, and whatever autograd, ``torch.func`` or ``torch.compile`` must see).
``python -m validation.bench_circle_trig`` times both.

The sphere's great-circle rotation and the Rodrigues exponential of SO(3) need
``sin(theta) / theta``, which is 1 at ``theta = 0``. ``torch.sinc`` gives it, but on CPU it costs
more than twice a ``sin`` (``python -m validation.bench_sphere_geodesic`` times both on 10^4
float64 angles), and the geodesics already hold ``sin(theta)``: dividing it by ``theta`` where
``theta != 0`` is the same number to rounding (both are within an ulp or two of the ratio), at
the price of a comparison, a division and two selections.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd import forward_ad

from .._host_reads import traced

__all__ = ["cos_sin", "numpy_trig_applies", "sine_ratio"]


def numpy_trig_applies(theta: torch.Tensor) -> bool:
    """Whether [`cos_sin`][] takes NumPy's ``cos`` and ``sin`` for ``theta``: a plain float32 CPU
    tensor that no autograd (reverse or forward mode), ``torch.func`` transform or
    ``torch.compile`` trace needs to see through."""
    return (
        theta.dtype == torch.float32
        and theta.device.type == "cpu"
        and type(theta) is torch.Tensor
        and not theta.requires_grad
        and getattr(forward_ad, "_current_level", 0) < 0
        and not traced(theta)
    )


def cos_sin(
    theta: torch.Tensor, sin_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos(theta), sin(theta))``, the sine written into ``sin_out`` when given (which may be
    ``theta`` itself: its storage is then reused, after the cosine is taken).

    NumPy's SIMD ufuncs on the tensors' memory where [`numpy_trig_applies`][] (float32 on CPU,
    outside autograd, ``torch.func`` and ``torch.compile``), with NaN and Inf giving NaN as
    torch does and without NumPy's floating-point warnings; ``torch.cos`` and ``torch.sin``
    otherwise. No host synchronisation either way.
    """
    if numpy_trig_applies(theta) and (
        sin_out is None or (sin_out.shape == theta.shape and numpy_trig_applies(sin_out))
    ):
        cos = torch.empty_like(theta)
        sin = torch.empty_like(theta) if sin_out is None else sin_out
        a = theta.numpy()
        with np.errstate(invalid="ignore"):
            np.cos(a, out=cos.numpy())
            np.sin(a, out=sin.numpy())
        return cos, sin
    cos = torch.cos(theta)
    return cos, (torch.sin(theta) if sin_out is None else torch.sin(theta, out=sin_out))


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
