"""What bounds the molecules' eager step against OpenMM: the pieces of the step that the
library cannot leave out, timed next to OpenMM's whole step.

For the benchmarks' rigid trimer and 10-bead chain (two and nine bond constraints through
``ImplicitManifold``, float64, the sampler's own chain-minor points), at 4,000 molecules on one
CPU thread, in one process, contenders rotated within each repetition (medians):

- ``openmm_reference_step_ms``: one step of OpenMM's Reference platform on the same molecules
  (``LangevinMiddleIntegrator``; skipped, with the reason, where openmm is not installed);
- ``step_ms``: one library step with Newton's and with the frozen SHAKE (the default budget of
  6 iterations per solve: there is no host read to stop earlier);
- ``constraint_ms``: one evaluation of the user's constraint ``g`` (the bonds' squared lengths,
  as the benchmark writes it: ``(d * d).sum(-1)`` over each bond's three coordinates), and
  ``constraint_memory_order_ms`` the same numbers with that sum taken over a view in memory
  order, the chains moved last (its result then comes out in the points' layout): how much of
  ``g`` is torch's reduction, whose result it allocates row-major whatever the input's
  layout;
- ``jacobian_ms``: one evaluation of ``g`` with its Jacobian by autodiff;
- ``normals_ms``: one draw of a standard normal per coordinate (``torch.randn``);
- per step, counted in a real step: the evaluations of ``g`` (with and without a Jacobian)
  and the normal draws. ``floor_ms`` is those counts times the pieces' times: the user's
  constraint and the noise alone, without any of the step's own arithmetic;
  ``floor_memory_order_ms`` the same with the memory-order constraint.

Run ``python -m validation.bench_molecule_floor [--quick]``; writes
``bench_molecule_floor.json`` to ``--out`` (default ``validation/results``; ``--quick``:
``<out>/quick``, a few seconds, numbers not meaningful).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch

from manifold_langevin.integrators.base import chain_minor
from validation import sampler_peers as peers
from validation.bench_optim import cpu_bench_cli, environment
from validation.bench_stiefel_geodesic import rotate

SETTINGS = {
    "full": {"reps": 9, "molecules": 4_000, "steps": 2},
    "quick": {"reps": 2, "molecules": 4, "steps": 1},
}


def memory_order_constraint(n_beads: int):
    """:func:`~validation.sampler_peers.chain_constraint` with the sum over each bond's three
    coordinates taken with the chains moved last, ``(d * d).movedim(0, -1).sum(-2).movedim(-1,
    0)``: for the samplers' chain-minor points that view is in memory order, so torch allocates
    the sum's result in the points' layout (the recipe of the gotchas page; the same numbers,
    tested)."""

    def g(x):
        a = x.unflatten(-1, (n_beads, 3))
        d = a[..., 1:, :] - a[..., :-1, :]
        return (d * d).movedim(0, -1).sum(-2).movedim(-1, 0) - peers.BOND * peers.BOND

    return g


@contextlib.contextmanager
def counting(manifold, tally: dict):
    """Count, while a step runs, the evaluations of the manifold's ``g`` (``"g"``), those of
    them made for a Jacobian by autodiff (``"jacobian"``) and the calls of ``torch.randn``
    (``"normals"``)."""
    g, autodiff, randn = manifold.g, manifold._autodiff, torch.randn

    def g_counted(x):
        tally["g"] += 1
        return g(x)

    def autodiff_counted(x, create_graph):
        tally["jacobian"] += 1
        return autodiff(x, create_graph)

    def randn_counted(*args, **kwargs):
        tally["normals"] += 1
        return randn(*args, **kwargs)

    with (
        mock.patch.object(manifold, "g", g_counted),
        mock.patch.object(manifold, "_autodiff", autodiff_counted),
        mock.patch.object(torch, "randn", randn_counted),
    ):
        yield


def molecule(n_beads: int, n: int, reps: int, steps: int) -> dict:
    """The pieces of one molecule's step at ``n`` molecules (module docstring), ms."""
    samplers = {
        newton: peers.ml_molecule_sampler(n, n_beads, newton=newton) for newton in (True, "frozen")
    }
    x = chain_minor(samplers[True][1], 1)
    manifold = samplers[True][0].manifold
    g, g_mo = peers.chain_constraint(n_beads), memory_order_constraint(n_beads)
    if not torch.equal(g(x), g_mo(x)):
        raise AssertionError("the memory-order constraint does not give the same numbers")
    gen = torch.Generator().manual_seed(0)
    contenders = {
        "constraint": lambda: g(x),
        "constraint_memory_order": lambda: g_mo(x),
        "jacobian": lambda: manifold._value_and_jacobian(x),
        "normals": lambda: torch.randn(x.shape, generator=gen, dtype=x.dtype),
    }
    runs = {}
    for newton in (True, "frozen"):
        runs[f"step_{newton}"] = peers.make_ml_molecule(n, n_beads, newton=newton)
        contenders[f"step_{newton}"] = lambda r=runs[f"step_{newton}"]: r(steps)
    skipped = peers.openmm_available()
    if skipped is None:
        omm = peers.make_openmm_molecule(n, n_beads, "Reference")
        contenders["openmm_reference_step"] = lambda: omm(steps)
    t = rotate(contenders, reps)
    out = {
        "molecule": "trimer" if n_beads == 3 else f"chain{n_beads}",
        "molecules": n,
        "constraint_ms": 1e3 * t["constraint"],
        "constraint_memory_order_ms": 1e3 * t["constraint_memory_order"],
        "jacobian_ms": 1e3 * t["jacobian"],
        "normals_ms": 1e3 * t["normals"],
        "openmm_reference_step_ms": None if skipped else 1e3 * t["openmm_reference_step"] / steps,
        "openmm_skipped": skipped,
        "per_step": {},
    }
    for newton in (True, "frozen"):
        sampler, x0 = samplers[newton]
        state = sampler.init(x0, generator=torch.Generator().manual_seed(1))
        tally = {"g": 0, "jacobian": 0, "normals": 0}
        with counting(sampler.manifold, tally), torch.no_grad():
            sampler.step(state, torch.Generator().manual_seed(2))
        plain = tally["g"] - tally["jacobian"]
        rest = tally["jacobian"] * out["jacobian_ms"] + tally["normals"] * out["normals_ms"]
        out["per_step"][str(newton)] = {
            "step_ms": 1e3 * t[f"step_{newton}"] / steps,
            "constraint_evaluations": plain,
            "jacobian_evaluations": tally["jacobian"],
            "normal_draws": tally["normals"],
            "floor_ms": plain * out["constraint_ms"] + rest,
            "floor_memory_order_ms": plain * out["constraint_memory_order_ms"] + rest,
        }
    return out


def run(quick: bool = False) -> dict:
    s = SETTINGS["quick" if quick else "full"]
    return {
        "benchmark": "bench_molecule_floor",
        "quick": quick,
        "environment": environment(torch.device("cpu")),
        "molecules": [molecule(b, s["molecules"], s["reps"], s["steps"]) for b in (3, 10)],
    }


def _print(result: dict) -> None:
    for r in result["molecules"]:
        omm = r["openmm_reference_step_ms"]
        print(
            f"{r['molecule']} x {r['molecules']}: g {r['constraint_ms']:.3f} ms (memory order "
            f"{r['constraint_memory_order_ms']:.3f}), g with Jacobian {r['jacobian_ms']:.3f}, "
            f"normals {r['normals_ms']:.3f}; OpenMM Reference step "
            + (f"{omm:.3f} ms" if omm is not None else f"skipped ({r['openmm_skipped']})")
        )
        for newton, p in r["per_step"].items():
            print(
                f"  newton={newton}: step {p['step_ms']:.2f} ms; per step "
                f"{p['constraint_evaluations']} g, {p['jacobian_evaluations']} g with Jacobian, "
                f"{p['normal_draws']} draws: "
                f"floor {p['floor_ms']:.2f} ms (memory order {p['floor_memory_order_ms']:.2f})"
            )


def main(argv: list[str] | None = None) -> int:
    _print(cpu_bench_cli(argv, __doc__, "bench_molecule_floor", run, "tiny sizes, 2 repetitions"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
