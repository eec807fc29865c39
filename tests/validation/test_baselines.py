"""``validation.baselines.PaperStiefel``: the released o-CoLA scripts' SHAKE, as a baseline.

Checked against a direct transcription of the scripts' iteration ``Y <- Y - T (Y^T Y - I) / 2``
(written here with plain matrix products on each matrix of the batch): the same fixed number of
iterations whatever the residual, a flag where the solve diverges, and RATTLE as projection,
SHAKE, projection.
"""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml
from validation.baselines import PAPER_ITERS, PaperStiefel


def _released_shake(t: torch.Tensor, y: torch.Tensor, iters: int) -> torch.Tensor:
    """The scripts' iteration on one tall ``N x p`` pair (old point ``t``, update ``y``)."""
    eye = torch.eye(t.shape[1], dtype=t.dtype)
    for _ in range(iters):
        y = y - 0.5 * t @ (y.T @ y - eye)
    return y


def _reference(x: torch.Tensor, x_tilde: torch.Tensor, iters: int) -> torch.Tensor:
    wide = x.shape[-2] < x.shape[-1]
    tall = (lambda a: a.mT) if wide else (lambda a: a)
    t, y = tall(x).reshape(-1, *tall(x).shape[-2:]), tall(x_tilde).reshape(-1, *tall(x).shape[-2:])
    out = torch.stack([_released_shake(a, b, iters) for a, b in zip(t, y)])
    return tall(out.reshape(tall(x).shape))


def _point_and_step(shape, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = ml.Stiefel().random(*shape, dtype=torch.float64, generator=g)
    v = ml.Stiefel().proju(x, torch.randn(shape, dtype=torch.float64, generator=g))
    return x, x + size * v / v.norm(dim=(-2, -1), keepdim=True)


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (2, 5, 5), (4, 12, 4)], ids=str)
@pytest.mark.parametrize("iters", [1, 3, PAPER_ITERS])
def test_shake_is_the_released_iteration(shape, iters):
    x, x_tilde = _point_and_step(shape, 0.3)
    y, ok = PaperStiefel(max_iter=iters).shake(x, x_tilde)
    expected = _reference(x, x_tilde, iters)
    assert y.shape == x.shape and ok.shape == x.shape[:-2]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-13)


def test_default_runs_ten_iterations_without_a_tolerance_exit():
    x, x_tilde = _point_and_step((8, 3), 0.2)
    st = PaperStiefel()
    assert st.max_iter == PAPER_ITERS == 10
    y, ok = st.shake(x, x_tilde)
    assert bool(ok)  # converged to the tolerance ...
    torch.testing.assert_close(y, _reference(x, x_tilde, 10), rtol=0, atol=1e-13)
    # ... and the iterations after convergence were still run: fewer give another point
    assert not torch.equal(y, st.shake(x, x_tilde, max_iter=4)[0])
    assert bool(st.residual_norm(y) <= st.tolerance(x))


def test_a_diverged_solve_is_flagged():
    x, x_tilde = _point_and_step((6, 3), 4.0)
    y, ok = PaperStiefel().shake(x, x_tilde)
    assert not bool(ok)
    res = PaperStiefel().residual_norm(y)
    assert not bool(torch.isfinite(res)) or float(res) > 1.0


def test_rattle_projects_shakes_and_projects():
    st = PaperStiefel()
    g = torch.Generator().manual_seed(3)
    x = st.random(3, 7, 4, dtype=torch.float64, generator=g)
    p = 0.2 * torch.randn(3, 7, 4, dtype=torch.float64, generator=g)  # not tangent
    dt, scale = 0.1, 0.7
    x_new, p_new, ok = st.rattle(x, p, dt, scale=scale, project=False)
    expected = _reference(x, x + dt * st.proju(x, p), PAPER_ITERS)
    torch.testing.assert_close(x_new, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(p_new, scale * st.proju(x_new, (x_new - x) / dt))
    assert bool(ok.all())
    assert float(st.jvp(x_new, p_new).abs().max()) < 1e-12  # the new velocity is tangent


def test_cola_with_the_baseline_keeps_weights_orthogonal():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.linalg.qr(torch.randn(20, 8))[0])
    opt = ml.optim.CoLA([{"params": [w], "constraint": PaperStiefel()}], lr=0.1, friction=1.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        w.grad = torch.randn(w.shape, generator=g)
        opt.step()
    assert opt.n_rejected() == 0
    assert max(opt.residuals().values()) <= 1e-5
