r"""The released c-CoLA-ud circle scheme as a comparison baseline (kept out of the library).

[`ReleasedCircleCoLA`][validation.released_circle.ReleasedCircleCoLA] is the underdamped
circle-constrained training method of Leimkuhler, Vlaar, Pouchon & Storkey, "Better Training
using Weight-Constrained Stochastic Dynamics" (ICML 2021), in the form of the authors' released
scripts, written here from the description of those scripts. Its two known departures from the
method are explicit switches, so that their effect can be measured one at a time against the
library's [`CoLA`][manifold_langevin.optim.CoLA] (``constraint="circle"``).
"""

from __future__ import annotations

import math

import torch
from torch.optim.optimizer import Optimizer, required

__all__ = ["GRADIENTS", "ROTATIONS", "ReleasedCircleCoLA"]

#: values of ``rotation``: the scripts' update, or the exact rotation of the pair
ROTATIONS = ("released", "exact")
#: values of ``gradient``: the kick with the previous point's gradient, or the current one's
GRADIENTS = ("lagged", "current")


def _tangent_speed(w, xi, pw, pxi):
    r"""Angular velocity $\omega = (w p_\xi - \xi p_w) / (w^2 + \xi^2)$ of the momentum's tangent
    part at ``(w, xi)`` (the tangent part is $\omega\,(-\xi, w)$)."""
    return (w * pxi - xi * pw) / (w * w + xi * xi)


class ReleasedCircleCoLA(Optimizer):
    r"""c-CoLA-ud as the released scripts run it, with their two defects as switches.

    Every weight $w$ of a group with a ``radius`` $r$ gets an auxiliary variable $\xi$ with
    $w^2 + \xi^2 = r^2$ (initially $\xi = \sqrt{r^2 - w^2}$, so $|w| \le r$); groups whose
    ``radius`` is ``None`` (biases) are unconstrained. Momenta are $(p_w, p_\xi)$; a circle
    momentum is kept tangent, $(p_w, p_\xi) = \omega\,(-\xi, w)$, and only $\omega$ enters the
    maps. With step $h$ (``lr``), friction $\gamma$, temperature $\tau$,
    $c_1 = e^{-\gamma h}$, $c_2 = \sqrt{\tau (1 - c_1^2)}$, $g$ the gradient in ``p.grad``,
    $\rho^2 = w^2 + \xi^2$ the current (not the nominal) squared radius and $P$ the tangent
    projection at the current point:

    - B (kick): $\omega \leftarrow \bigl(w p_\xi - \xi (p_w - h g)\bigr) / \rho^2$, i.e.
      $p \leftarrow P\,(p - h\,(g, 0))$;
    - A (drift for time $t$), angle $\theta = \omega t$, $c = \cos\theta$, $s = \sin\theta$:
      ``rotation="exact"``: $w' = c\,w - s\,\xi$, $\xi' = s\,w + c\,\xi$;
      ``rotation="released"``: $w' = c\,w - s\,\xi$, $\xi' = s\,w' + c\,\xi$ ($\xi$ is
      rotated with the already-rotated $w'$); then $p = \omega\,(-\xi', w')$. Neither is
      renormalised onto $r$ (CoLA renormalises), so with ``"exact"`` the radius drifts by
      rounding only (measured in float32: about $10^{-5}$ relative after 1000 steps);
    - O: $p \leftarrow c_1 p + c_2 P R$, $R$ standard normal in $(w, \xi)$;
    - unconstrained tensors: B $p \leftarrow p - h g$, A $\theta \leftarrow \theta + t p$,
      O $p \leftarrow c_1 p + c_2 R$.

    One step is $A_{h/2}\,O_h\,A_{h/2}\,B_h$ with ``gradient="lagged"`` (the scripts' order:
    the kick comes after the move, with the gradient the training loop computed at the point
    the step started from, so the move of step $k$ is driven by the gradient of step $k-1$; the
    first step starts from zero momentum and, at $\tau = 0$, does not move the weights), and
    $B_h\,A_{h/2}\,O_h\,A_{h/2}$ with ``gradient="current"`` (the kick at the current point,
    with its own gradient). The defaults are the released behaviour.

    Differences from [`CoLA`][manifold_langevin.optim.CoLA] (``constraint="circle"``) and why
    they matter:

    - ``rotation="released"``: the map $(w, \xi) \mapsto (w', \xi')$ above is linear with
      determinant $\cos^2\theta < 1$, not a rotation, so the radius $\sqrt{w^2 + \xi^2}$ shrinks
      a little at every step with $\theta \ne 0$ (by about $\theta^2/2$ relative, on average);
      over training the bound $|w| \le r$ tightens uncontrolled (the description of the scripts
      reports up to 50% in a small MLP). CoLA rotates exactly and renormalises onto $r$.
    - ``gradient="lagged"``: the momentum feels $\nabla L$ at the previous point, not the
      current one: a first-order bias of the sampled measure at $\tau > 0$ (on a 1-D toy at
      $h = 0.2$ the description reports $E[w^2] = 0.361$ against the exact $0.228$), and a
      delay of one step at $\tau = 0$. CoLA's kick is
      $\kappa_n = h_{n-1}/2 + h_n/2$ with the current gradient (BAOAB with the half kicks
      carried over), so with ``rotation="exact"``, ``gradient="current"``, $\tau = 0$ and a
      constant step this optimizer is the same map as
      ``CoLA(constraint="circle", first_kick="full")``; with CoLA's default
      ``first_kick="half"`` only the first kick differs ($h/2$ instead of $h$).
    - What the scripts do besides (CUDA-only noise constructors, hard-coded devices, an extra
      momentum call before training, per-parameter Python lists) is not reproduced: the noise
      here comes from a [`torch.Generator`][torch.Generator] on each parameter's device, seeded
      with ``seed``, and the first step needs no preparation.

    Args:
        params: parameters or param groups (e.g.
            [`constrained_groups`][manifold_langevin.optim.constrained_groups] with
            ``"circle"``: its groups carry ``radius``, the biases' group has none).
        lr: step size $h > 0$.
        friction: $\gamma \ge 0$.
        temperature: $\tau \ge 0$.
        radius: default circle radius of the groups that set none (``None``: unconstrained).
            The paper uses $r_0 = 0.05$ for the first layer's weights and $r_1 = 0.1$ for the
            other weights; biases are unconstrained.
        rotation: ``"released"`` or ``"exact"`` (see above).
        gradient: ``"lagged"`` or ``"current"`` (see above).
        seed: seed of the noise generators (one per device).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([0.01, -0.02], dtype=torch.float64))
        >>> opt = ReleasedCircleCoLA([w], lr=0.3, radius=0.05)
        >>> for _ in range(3):
        ...     w.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
        ...     opt.step()
        >>> bool((opt.radii()[0] < 0.05).all()), bool((w.abs() <= 0.05).all())
        (True, True)
    """

    def __init__(
        self,
        params,
        lr: float = required,
        friction: float = 1.0,
        temperature: float = 0.0,
        radius: float | None = None,
        *,
        rotation: str = "released",
        gradient: str = "lagged",
        seed: int = 0,
    ):
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if lr is not required and not (0 < float(lr) < math.inf):
            raise ValueError(f"lr must be positive and finite, got {lr}")
        if not 0 <= float(friction) <= math.inf or not 0 <= float(temperature) < math.inf:
            raise ValueError("friction and temperature must be >= 0")
        self.rotation = rotation
        self.gradient = gradient
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        defaults = {"lr": lr, "friction": friction, "temperature": temperature, "radius": radius}
        super().__init__(params, defaults)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device)
            gen.manual_seed(self.seed)
        return gen

    # ------------------------------------------------------------------ maps
    def _rotate(self, w, xi, omega, t):
        theta = omega * t
        c, s = torch.cos(theta), torch.sin(theta)
        w_new = c * w - s * xi
        xi_new = s * (w_new if self.rotation == "released" else w) + c * xi
        return w_new, xi_new

    @staticmethod
    def _noise(x, gen, c2):
        return c2 * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)

    def _circle(self, p, st, g, h, c1, c2, gen):
        w, xi = p.detach(), st["xi"]
        omega = _tangent_speed(w, xi, st["momentum_buffer"], st["xi_momentum"])

        def kick(w, xi, omega):
            return omega + xi * g * h / (w * w + xi * xi)

        if self.gradient == "current":
            omega = kick(w, xi, omega)
        w, xi = self._rotate(w, xi, omega, 0.5 * h)
        omega = c1 * omega
        if c2 > 0:
            rw, rxi = self._noise(w, gen, c2), self._noise(w, gen, c2)
            omega = omega + _tangent_speed(w, xi, rw, rxi)
        w, xi = self._rotate(w, xi, omega, 0.5 * h)
        if self.gradient == "lagged":
            omega = kick(w, xi, omega)
        p.copy_(w)
        st["xi"] = xi
        st["momentum_buffer"] = -omega * xi
        st["xi_momentum"] = omega * w

    def _free(self, p, st, g, h, c1, c2, gen):
        mom = st["momentum_buffer"]
        if self.gradient == "current":
            mom = mom - h * g
        x = p.detach() + 0.5 * h * mom
        mom = c1 * mom
        if c2 > 0:
            mom = mom + self._noise(x, gen, c2)
        x = x + 0.5 * h * mom
        if self.gradient == "lagged":
            mom = mom - h * g
        p.copy_(x)
        st["momentum_buffer"] = mom

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        """One step for every parameter with a gradient (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h, gamma = float(group["lr"]), float(group["friction"])
            tau = float(group["temperature"])
            c1 = math.exp(-gamma * h)
            c2 = math.sqrt(tau * max(0.0, 1.0 - c1 * c1))
            r = group["radius"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["momentum_buffer"] = torch.zeros_like(p)
                    if r is not None:
                        rr = float(r)
                        st["xi"] = torch.sqrt((rr * rr - p.detach() ** 2).clamp_min(0.0))
                        st["xi_momentum"] = torch.zeros_like(p)
                gen = self._generator(p.device)
                if r is None:
                    self._free(p, st, p.grad, h, c1, c2, gen)
                else:
                    self._circle(p, st, p.grad, h, c1, c2, gen)
                st["step"] += 1
        return loss

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def radii(self) -> list[torch.Tensor]:
        r"""$\sqrt{w^2 + \xi^2}$ of every circle-constrained parameter that has a state, in
        parameter order (each the parameter's shape)."""
        out = []
        for group in self.param_groups:
            if group["radius"] is None:
                continue
            for p in group["params"]:
                st = self.state.get(p)
                if st and "xi" in st:
                    out.append(torch.sqrt(p * p + st["xi"] ** 2))
        return out

    @torch.no_grad()
    def residuals(self) -> dict[str, float]:
        r"""Largest $|w^2 + \xi^2 - r^2| / r^2$ per circle-constrained parameter (host read; the
        name as [`CoLA.residuals`][manifold_langevin.optim.CoLA.residuals] gives it, for the
        training loop's monitoring). With ``rotation="released"`` it measures the shrink of the
        radius."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            if group["radius"] is None:
                continue
            names = group.get("param_names")
            r2 = float(group["radius"]) ** 2
            for i, p in enumerate(group["params"]):
                st = self.state.get(p)
                if st and "xi" in st:
                    name = str(names[i]) if names else f"group{gi}.{i}"
                    out[name] = float(((p * p + st["xi"] ** 2 - r2).abs() / r2).amax())
        return out

    def n_rejected(self) -> int:
        """Rejected updates: always 0 (the scheme has no failure check)."""
        return 0
