"""CoLA settings that reproduce ``torch.optim.SGD`` with momentum.

Unconstrained BAOAB at zero temperature with the carried kick is the heavy-ball method: with
``mu = exp(-gamma h)``, eliminating the momentum gives
``theta_{n+1} = theta_n - h^2 (1 + mu) / 2 * buf_n``, ``buf_n = mu buf_{n-1} + grad_n``, which is
``torch.optim.SGD(lr=h^2 (1 + mu) / 2, momentum=mu)`` exactly when the first kick is a full one
(SGD's first buffer is the whole gradient; BAOAB started from rest kicks by ``h/2``).
"""

from __future__ import annotations

import math

from .._checks import check_positive

__all__ = ["sgd_equivalent"]


def sgd_equivalent(lr: float, momentum: float) -> dict:
    r"""CoLA arguments that reproduce ``torch.optim.SGD(lr=lr, momentum=momentum)``.

    Unconstrained BAOAB at zero temperature with the carried kick is the heavy-ball method
    ``buf_n = mu buf_{n-1} + grad_n``, ``theta_{n+1} = theta_n - h^2 (1 + mu)/2 buf_n`` with
    ``mu = exp(-gamma h)``. Solving for ``h`` and ``gamma``:

    $$
    h = \sqrt{2\,\mathrm{lr} / (1 + \mu)}, \qquad \gamma = -\log(\mu) / h
    $$

    (``momentum = 0`` gives ``gamma = inf``: the momentum is dropped after every step).

    Args:
        lr: SGD's learning rate (> 0).
        momentum: SGD's momentum ``mu`` in ``[0, 1]`` (dampening 0, no Nesterov).

    Returns:
        ``dict(lr=h, friction=gamma, temperature=0.0, first_kick="full")``; pass it as keyword
        arguments to [`CoLA`][] (or merge it into a param group) with ``constraint=None``.

    Examples:
        >>> kw = sgd_equivalent(lr=0.1, momentum=0.9)
        >>> round(kw["lr"], 6), round(kw["friction"], 6), kw["first_kick"]
        (0.324443, 0.324743, 'full')
    """
    lr = check_positive("lr", lr)
    mu = float(momentum)
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    h = math.sqrt(2.0 * lr / (1.0 + mu))
    friction = math.inf if mu == 0.0 else -math.log(mu) / h
    return {"lr": h, "friction": friction, "temperature": 0.0, "first_kick": "full"}
