"""The generic SHAKE solve's stop: each chain holds its multipliers from the first iterate whose
residual is within ``STOP_FRACTION`` of the tolerance, and on CPU the solve ends once every chain
has stopped. Ending early must give the numbers of the whole budget bit for bit, a chain's
numbers must not depend on the other chains of the batch, and the solve must end early where
it can (the point of the stop) and run on where a chain has not stopped."""

from __future__ import annotations

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin import _host_reads
from manifold_langevin.manifolds import base
from manifold_langevin.testing import get_problem
from tests.test_no_sync import SyncGuard

PROBLEMS = ["ellipse", "sphere_plane", "ellipsoid", "torus", "rigid_triatomic"]
ITERATIONS = [True, 3, False, "frozen"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _steps(name, n, dtype, seed=0, sizes=(0.01, 0.1, 0.4)):
    """Points of problem ``name`` and unit tangent velocities, ``n`` chains, with the step
    sizes cycling through ``sizes`` chain by chain (some chains need the whole budget)."""
    p = get_problem(name)
    m = p.make_manifold()
    x = p.initial(n, dtype, "cpu", _gen(seed))
    v = m.proju(x, torch.randn(x.shape, generator=_gen(seed + 1), dtype=dtype))
    v = v / v.norm(dim=-1, keepdim=True)
    dt = torch.tensor(sizes, dtype=dtype).repeat(n // len(sizes) + 1)[:n].unsqueeze(-1)
    return p, x, v * dt


def _rattle(manifold, x, v, full_budget, monkeypatch):
    """``manifold.rattle`` over a unit time, on CPU's path or (``full_budget``) on the path of
    an accelerator, where the solve reads nothing and runs every iterate."""
    with monkeypatch.context() as patch:
        if full_budget:
            patch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())
        with torch.no_grad():
            y, p, ok = manifold.rattle(x, v, 1.0)
            jac = manifold._cache.get(y)
    return y, p, ok, None if jac is None else jac.jac


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("newton", ITERATIONS, ids=str)
@pytest.mark.parametrize("name", PROBLEMS)
def test_ending_early_gives_the_numbers_of_the_whole_budget(name, newton, dtype, monkeypatch):
    """The early end changes no number: point, velocity, convergence flag and the Jacobian kept
    at the new point are those the whole budget gives, bit for bit."""
    p, x, v = _steps(name, 30, dtype)
    runs = []
    for full in (False, True):
        manifold = ml.ImplicitManifold(p.make_manifold().g, newton=newton)
        runs.append(_rattle(manifold, x, v, full, monkeypatch))
    (y0, p0, ok0, j0), (y1, p1, ok1, j1) = runs
    assert bool(ok0.any())  # some steps are solved, and compared
    assert torch.equal(ok0, ok1)
    assert torch.equal(y0[ok0], y1[ok1]) and torch.equal(p0[ok0], p1[ok1])
    assert j0 is not None and j1 is not None and torch.equal(j0[ok0], j1[ok1])


@pytest.mark.parametrize("newton", ITERATIONS, ids=str)
@pytest.mark.parametrize("name", PROBLEMS)
def test_a_chain_stops_on_its_own_iterates(name, newton):
    """A chain's numbers do not depend on the other chains: the easy steps solved alone (the
    solve then ends after a few iterates) and solved beside steps that need the whole budget
    give the same bits."""
    p, x, v = _steps(name, 24, torch.float64, seed=4)
    easy = torch.arange(24) % 3 == 0  # the 0.01 steps
    manifold = ml.ImplicitManifold(p.make_manifold().g, newton=newton)
    with torch.no_grad():
        y_all, p_all, ok_all = manifold.rattle(x, v, 1.0)
        y_easy, p_easy, ok_easy = manifold.rattle(x[easy], v[easy], 1.0)
    assert bool(ok_easy.all())
    assert torch.equal(ok_all[easy], ok_easy)
    assert torch.equal(y_all[easy], y_easy) and torch.equal(p_all[easy], p_easy)


def _counted(problem_name):
    p = get_problem(problem_name)
    g = p.make_manifold().g
    calls = []

    def counted(x):
        calls.append(1)
        return g(x)

    return p, calls, counted


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_the_solve_ends_once_every_chain_has_stopped(dtype, monkeypatch):
    """Small steps on the sphere-plane set: Newton's residuals fall below a quarter of the
    tolerance within a few iterates, so a solve with a budget of 12 evaluates ``g`` at four
    or five iterates, not 13 times as the whole budget does; every residual it leaves is within
    the stop."""
    p, calls, counted = _counted("sphere_plane")
    manifold = ml.ImplicitManifold(counted, max_iter=12)
    x = p.initial(200, dtype, "cpu", _gen(7))
    v = manifold.proju(x, 0.05 * torch.randn(x.shape, generator=_gen(8), dtype=dtype))
    with torch.no_grad():
        calls.clear()
        y, ok = manifold.shake(x, x + v)
        early = len(calls)
        calls.clear()
        monkeypatch.setattr(_host_reads, "HOST_READABLE_DEVICES", ())
        y_full, ok_full = manifold.shake(x, x + v)
        full = len(calls)
    assert bool(ok.all()) and torch.equal(y, y_full) and torch.equal(ok, ok_full)
    assert full == manifold.max_iter + 1  # every iterate, and the residual at the end
    assert early <= 5
    stop = base.STOP_FRACTION * manifold.tolerance(x)
    assert float(manifold.residual_norm(y).max()) <= stop


def test_one_chain_that_has_not_stopped_keeps_the_solve_going():
    """A chain whose residual never comes within the stop (a step far beyond the iteration's
    reach) holds the solve to its whole budget; the other chains' numbers are those they get
    alone, and that chain is reported as not converged."""
    p, calls, counted = _counted("sphere_plane")
    manifold = ml.ImplicitManifold(counted, newton="frozen")
    x = p.initial(8, torch.float64, "cpu", _gen(9))
    v = manifold.proju(x, 0.05 * torch.randn(x.shape, generator=_gen(10), dtype=torch.float64))
    v[3] = v[3] * (40.0 / v[3].norm())
    with torch.no_grad():
        calls.clear()
        y, ok = manifold.shake(x, x + v)
        n_calls = len(calls)
        keep = torch.arange(8) != 3
        y_alone, ok_alone = manifold.shake(x[keep], x[keep] + v[keep])
    assert not bool(ok[3]) and bool(ok_alone.all()) and bool(ok[keep].all())
    assert torch.equal(y[keep], y_alone)
    # the frozen iteration evaluates g at each of its iterates and once at the end
    assert n_calls == manifold.max_iter + 1


def test_where_the_solve_first_reads_changes_no_number(monkeypatch):
    """The iterate the solve first reads its residual at is a hint kept from the previous solve
    (one before where that one ended; its last iterate after a solve that ran to the end):
    from whichever iterate it starts, the numbers are the same, and after a solve that ran its
    whole budget the next such solve reads once."""
    p, x, v = _steps("sphere_plane", 30, torch.float64, seed=13)
    manifold = ml.ImplicitManifold(p.make_manifold().g)
    with torch.no_grad():
        runs = []
        for first in range(manifold.max_iter):
            manifold._first_read = first
            runs.append(manifold.shake(x, x + v))
        for y, ok in runs[1:]:
            assert torch.equal(y, runs[0][0]) and torch.equal(ok, runs[0][1])
        far = v.clone()
        far[0] = far[0] * (40.0 / far[0].norm())  # beyond reach: the whole budget runs
        manifold.shake(x, x + far)
        assert manifold._first_read == manifold.max_iter - 1
        with SyncGuard(monkeypatch, strict=False) as reads:
            _, ok = manifold.shake(x, x + far)
    assert not bool(ok[0]) and [name for name, _ in reads.calls] == ["__float__"]
