r"""Step-size adaptation during burn-in: dual averaging towards a target acceptance rate.

The scheme is Nesterov's dual averaging as Hoffman and Gelman adapted it to HMC (J. Mach.
Learn. Res. 15, 2014, section 3.2). With $\alpha_m$ the mean Metropolis acceptance probability
$\min(1, e^{-\Delta H/\tau})$ over the chains at burn-in step $m$ (0 for a failed proposal),
$\delta$ the target, $\mu = \log(10 h_0)$, $\gamma = 0.05$, $t_0 = 10$ and $\kappa = 0.75$:

$$
\bar H_m = \Big(1 - \frac{1}{m + t_0}\Big)\bar H_{m-1} + \frac{\delta - \alpha_m}{m + t_0},
\qquad \log h_m = \mu - \frac{\sqrt m}{\gamma}\bar H_m,
\qquad \log \bar h_m = m^{-\kappa}\log h_m + (1 - m^{-\kappa})\log \bar h_{m-1}.
$$

The chains move with $h_m$ during burn-in; after it the step is frozen at $\bar h$ (the
averaged iterate, which no longer changes), so the recorded part of the run is one fixed,
exact kernel. All chains share one step size; every quantity is a 0-d tensor on the device, so
adapting reads nothing on the host.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DualAveraging"]


class DualAveraging:
    """The dual-averaging state of one run.

    Args:
        step_size: the initial step $h_0$.
        target: the target mean acceptance probability $\\delta$ in ``(0, 1)``.
        like: a tensor whose device and dtype the state takes.
        gamma: the scheme's shrinkage constant $\\gamma$ (the defaults of all three constants
            are Hoffman and Gelman's).
        t0: the offset $t_0$ that damps the first iterations.
        kappa: the averaging exponent $\\kappa$ of the final step.
    """

    def __init__(
        self,
        step_size: float,
        target: float,
        like: torch.Tensor,
        *,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ):
        if not 0.0 < target < 1.0:
            raise ValueError(f"target acceptance must be in (0, 1), got {target!r}")
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.mu = math.log(10.0 * step_size)
        kw = {"dtype": like.dtype, "device": like.device}
        self.log_h = torch.full((), math.log(step_size), **kw)
        self.log_h_bar = torch.zeros((), **kw)
        self.h_bar_stat = torch.zeros((), **kw)
        self.m = 0

    @property
    def step_size(self) -> torch.Tensor:
        """The step to take next (burn-in)."""
        return self.log_h.exp()

    @property
    def final_step_size(self) -> torch.Tensor:
        """The averaged step $\\bar h$, used after burn-in (``h_0`` before any update)."""
        return self.log_h_bar.exp() if self.m else self.log_h.exp()

    def update(self, accept_prob: torch.Tensor) -> None:
        """One update from the chains' acceptance probabilities at the step just taken."""
        self.m += 1
        m, w = self.m, 1.0 / (self.m + self.t0)
        alpha = torch.nan_to_num(accept_prob.to(self.log_h.dtype), nan=0.0).mean()
        self.h_bar_stat = (1.0 - w) * self.h_bar_stat + w * (self.target - alpha)
        self.log_h = self.mu - math.sqrt(m) / self.gamma * self.h_bar_stat
        eta = m ** (-self.kappa)
        self.log_h_bar = eta * self.log_h + (1.0 - eta) * self.log_h_bar
