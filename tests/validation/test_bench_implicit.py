"""``validation.bench_implicit``: its quick run writes the documented rows, and its 'before' code
(the generic methods of the past revision, read from git) steps through the same trajectories
as today's code, bit for bit, on the constraints whose solves keep LAPACK's bits, once today's
stop of the SHAKE iteration is switched off (the past revision iterated to the end of the budget;
with the stop, the trajectories agree to the tolerance the stop allows). No timing
assertions."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.manifolds import base
from manifold_langevin.manifolds import small_systems as small
from manifold_langevin.testing import get_problem
from validation import bench_implicit


def _legacy():
    try:
        return bench_implicit.legacy_class(bench_implicit.LEGACY_REV)
    except (subprocess.CalledProcessError, OSError) as err:  # no git history here
        pytest.skip(f"the 'before' revision is not available: {err}")


@pytest.mark.parametrize("chains", [12, 1100])  # 1100: the elementwise 2 x 2 solves
@pytest.mark.parametrize("name", ["ellipse", "sphere_plane", "rigid_triatomic"])
@pytest.mark.parametrize("kind", ["langevin", "hmc"])
def test_before_and_after_run_the_same_trajectory(name, kind, chains, lapack_2x2_bits, monkeypatch):
    legacy = _legacy()
    # no chain stops early: today's iterates are the past revision's, every one of the budget
    monkeypatch.setattr(base, "STOP_FRACTION", 0.0)
    p = get_problem(name)
    x0 = p.initial(chains, torch.float64, "cpu", torch.Generator().manual_seed(0))
    runs = []
    for m in (p.make_manifold(), legacy(p.constraint)):
        s = bench_implicit.make_sampler(kind, m, p.potential, name)
        gen = torch.Generator().manual_seed(1)
        state = s.init(x0, generator=gen)
        with torch.no_grad():
            for _ in range(4):
                state = s.step(state, gen)[0]
        runs.append(state)
    two = p.constraint(x0).shape[-1] == 2  # the 2 x 2 solves are the closed form's
    if lapack_2x2_bits or chains < small.LU2_MIN_BATCH or not two:
        assert torch.equal(runs[0].x, runs[1].x)
        assert torch.equal(runs[0].p, runs[1].p)
    else:  # the 2 x 2 closed form against this machine's LAPACK, which rounds differently
        torch.testing.assert_close(runs[0].x, runs[1].x, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(runs[0].p, runs[1].p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(bench_implicit.JACOBIANS))
def test_the_hand_written_jacobians_are_right(name):
    p = get_problem(name)
    m = ml.ImplicitManifold(p.constraint, jacobian=bench_implicit.JACOBIANS[name])
    assert m.check_jacobian(p.initial(9, torch.float64, "cpu")) <= 1e-13


@pytest.mark.slow
def test_quick_run_writes_every_case(tmp_path):
    out = tmp_path / "bench_implicit.json"
    bench_implicit.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    cases = {(r["problem"], r["sampler"], r["chains"]) for r in result["cases"]}
    assert len(cases) == 3 * 2 * 3
    for row in result["cases"]:
        assert row["after_ms"] > 0 and row["user_jacobian_ms"] > 0
        assert len(row["load"]) == 2
    assert {r["sampler"] for r in result["sphere"]} == {"langevin", "hmc"}
    assert result["environment"]["threads"] == 1
