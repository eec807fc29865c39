"""The samplers: each integrator with a [`sample`][manifold_langevin.sampling.sample] method.

``ml.Langevin`` is [`LangevinIntegrator`][manifold_langevin.integrators.LangevinIntegrator]
and ``ml.OverdampedLangevin`` is
[`OverdampedIntegrator`][manifold_langevin.integrators.OverdampedIntegrator] (same arguments,
same ``init`` and ``step``; their docstrings carry the update equations, the target measure,
the order and the references), plus ``.sample(x0, n_steps, ...)``, which runs the sampling loop.
"""

from __future__ import annotations

from ..integrators.hmc import HMCKernel
from ..integrators.langevin import LangevinIntegrator
from ..integrators.overdamped import OverdampedIntegrator
from .loop import sample
from .result import SampleResult

__all__ = ["HMC", "Langevin", "OverdampedLangevin", "Sampler"]


class Sampler:
    """Mixin: ``.sample`` for an integrator."""

    def sample(self, x0, n_steps: int, **kwargs) -> SampleResult:
        """Run the chains from ``x0`` for ``n_steps``: the keywords and the result are those of
        [`sample`][manifold_langevin.sampling.sample]."""
        return sample(self, x0, n_steps, **kwargs)


class Langevin(Sampler, LangevinIntegrator):
    """Constrained underdamped Langevin sampler: BAOAB, ABOBA, OBABO, g-BAOAB.

    The scheme, its update equations, target measure and order, and every argument are those of
    [`LangevinIntegrator`][manifold_langevin.integrators.LangevinIntegrator].

    Examples:
        >>> import torch, manifold_langevin as ml
        >>> sampler = ml.Langevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2],
        ...                       step_size=0.1, friction=1.0)
        >>> x0 = torch.nn.functional.normalize(torch.ones(64, 3, dtype=torch.float64), dim=-1)
        >>> out = sampler.sample(x0, n_steps=200, observables={"z": lambda x: x[..., 2]},
        ...                      generator=torch.Generator().manual_seed(0))
        >>> out.max_residual < 1e-12
        True
    """


class OverdampedLangevin(Sampler, OverdampedIntegrator):
    """Constrained overdamped Langevin sampler: projected Euler-Maruyama and the BAOAB limit.

    The schemes, their update equations, target measure and orders, and every argument are
    those of [`OverdampedIntegrator`][manifold_langevin.integrators.OverdampedIntegrator].

    Examples:
        >>> import torch, manifold_langevin as ml
        >>> od = ml.OverdampedLangevin(ml.Sphere(), potential=lambda x: -2.0 * x[..., 2],
        ...                            step_size=0.01, scheme="lm")
        >>> x0 = torch.nn.functional.normalize(torch.ones(64, 3, dtype=torch.float64), dim=-1)
        >>> out = od.sample(x0, n_steps=100, observables={"z": lambda x: x[..., 2]},
        ...                 generator=torch.Generator().manual_seed(0))
        >>> od.order, out.max_residual < 1e-12, out.n_failures
        (1, True, 0)
    """


class HMC(Sampler, HMCKernel):
    """Metropolis-adjusted constrained HMC (``friction=None``) or generalised HMC
    (``friction=gamma``): exact for ``exp(-U/tau)`` times the surface (or conditional) measure
    at every step size.

    The proposal, the reversibility check, the Metropolis test, the momentum refresh and every
    argument are those of [`HMCKernel`][manifold_langevin.integrators.hmc.HMCKernel]; the result
    of ``.sample`` adds ``acceptance_rate``, ``n_rejected`` and ``n_reverse_failed``.

    Examples:
        >>> import torch, manifold_langevin as ml
        >>> ellipse = ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
        >>> hmc = ml.HMC(ellipse, potential=lambda x: x[..., 1], step_size=0.3, n_leapfrog=3)
        >>> t = torch.linspace(0, 6.28, 64, dtype=torch.float64)
        >>> x0 = torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)
        >>> out = hmc.sample(x0, n_steps=50, observables={"y": lambda x: x[..., 1]},
        ...                  generator=torch.Generator().manual_seed(0))
        >>> 0.5 < out.acceptance_rate <= 1.0, out.max_residual < 1e-10
        (True, True)
    """
