"""Per-step cost of the samplers on ``ImplicitManifold``: the current code against the code
before the fast paths, and an implicit sphere against ``ml.Sphere()``.

Before: the generic Jacobian, projection and SHAKE of a past revision (``--legacy-rev``, read
from git) bound onto a subclass of today's ``ImplicitManifold``, so that both run through the
same integrators; one ``m`` reverse passes per Jacobian, ``g`` evaluated again beside each
Jacobian, a LAPACK solve per tiny system, nothing reused. After: the library as it is. The two
are timed in alternation (one step each, in turn), on one CPU thread, and the medians are
reported with their ratio and the load average around each case.

Cases: ``ml.Langevin`` (BAOAB) and ``ml.HMC`` (one leapfrog step, reversibility check on, as
by default without a geodesic) on the ellipse (``m = 1, n = 2``), ``sphere_plane``
(``m = 2, n = 3``) and ``rigid_triatomic`` (``m = 3, n = 9``) of
`manifold_langevin.testing`, at 1, 100 and 10^4 chains, in float64 (and float32 without
``--quick``); then the unit sphere in R^3 as ``ImplicitManifold`` against ``ml.Sphere()``
(its closed forms, RATTLE and geodesic).

Run: ``python -m validation.bench_implicit`` (a few minutes), ``--quick`` for a smoke run
(well under a minute). Writes ``validation/results/bench_implicit.json`` as it goes.
``--profile`` instead profiles (cProfile) five steps of ``ml.HMC`` (step 0.8) and
``ml.Langevin`` on the ellipse at 10, 1000 and 10^4 chains, before and after, and writes the
costliest functions and the call counts per step to ``bench_implicit_profile.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

import manifold_langevin as ml
from manifold_langevin.testing import get_problem
from validation.bench_optim import environment

OUT = Path(__file__).parent / "results" / "bench_implicit.json"
LEGACY_REV = "648bd18"
ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ("ellipse", "sphere_plane", "rigid_triatomic")
STEP = {"langevin": 0.1, "hmc": 0.5}
HMC_STEP = {"ellipse": 0.8}


def _load_old(rev: str, path: str, name: str) -> types.ModuleType:
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = src.replace("from ..", "from manifold_langevin.").replace(
        "from .base", "from manifold_langevin.manifolds.base"
    )
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(src, f"<{rev}:{path}>", "exec"), mod.__dict__)
    return mod


def legacy_class(rev: str) -> type:
    """Today's ``ImplicitManifold`` with the generic methods of revision ``rev``."""
    base = _load_old(rev, "manifold_langevin/manifolds/base.py", "_legacy_base")
    impl = _load_old(rev, "manifold_langevin/manifolds/implicit.py", "_legacy_implicit")
    old_base, old_impl = base.ConstrainedManifold, impl.ImplicitManifold
    methods = {name: old_base.__dict__[name] for name in ("jvp", "vjp", "proju", "shake", "rattle")}
    methods["jacobian"] = old_impl.__dict__["jacobian"]
    return type("LegacyImplicitManifold", (ml.ImplicitManifold,), methods)


def _ellipse_jacobian(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[..., 0] / 2, 2 * x[..., 1]], dim=-1).unsqueeze(-2)


def _sphere_plane_jacobian(x: torch.Tensor) -> torch.Tensor:
    plane = torch.zeros_like(x)
    plane[..., 2] = 1.0
    return torch.stack([2 * x, plane], dim=-2)


def _molecule_jacobian(x: torch.Tensor) -> torch.Tensor:
    # g_k = (|r_i - r_j|^2 - l_k^2) / 2 for the pairs (0,1), (1,2), (0,2): dg_k/dr_i = r_i - r_j
    r = x.reshape(*x.shape[:-1], 3, 3)
    jac = x.new_zeros(*x.shape[:-1], 3, 3, 3)
    for k, (i, j) in enumerate(((0, 1), (1, 2), (0, 2))):
        d = r[..., i, :] - r[..., j, :]
        jac[..., k, i, :] = d
        jac[..., k, j, :] = -d
    return jac.reshape(*x.shape[:-1], 3, 9)


#: hand-written Jacobians of the three problems (the ``jacobian=`` option)
JACOBIANS = {
    "ellipse": _ellipse_jacobian,
    "sphere_plane": _sphere_plane_jacobian,
    "rigid_triatomic": _molecule_jacobian,
}


def make_sampler(kind: str, manifold, potential, problem: str, **kw):
    if kind == "langevin":
        return ml.Langevin(manifold, potential, step_size=STEP["langevin"], **kw)
    return ml.HMC(manifold, potential, step_size=HMC_STEP.get(problem, STEP["hmc"]), **kw)


def time_alternating(samplers: dict, x0: torch.Tensor, reps: int, warmup: int) -> dict:
    """Median seconds per step of each sampler, stepping them in turn."""
    states, gens = {}, {}
    for key, s in samplers.items():
        gens[key] = torch.Generator().manual_seed(1)
        states[key] = s.init(x0.clone(), generator=gens[key])
    times = {key: [] for key in samplers}
    with torch.no_grad():
        for r in range(warmup + reps):
            for key, s in samplers.items():
                t0 = time.perf_counter()
                states[key] = s.step(states[key], gens[key])[0]
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[key].append(dt)
    return {key: statistics.median(v) for key, v in times.items()}


def reps_for(n: int, quick: bool) -> int:
    if quick:
        return 3
    return 9 if n >= 10_000 else 21


def sphere_g(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(-1, keepdim=True) - 1


def _profile_one(sampler, x0, steps: int = 5, top: int = 12) -> dict:
    gen = torch.Generator().manual_seed(1)
    state = sampler.init(x0.clone(), generator=gen)
    with torch.no_grad():
        for _ in range(2):
            state = sampler.step(state, gen)[0]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            state = sampler.step(state, gen)[0]
        prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {
        "ms_per_step": 1e3 * total / steps,
        "top_by_own_time": [
            {
                "function": f"{Path(k[0]).name}:{k[1]}({k[2]})",
                "calls_per_step": v[1] / steps,
                "own_ms_per_step": 1e3 * v[2] / steps,
                "share": v[2] / total,
            }
            for k, v in rows
        ],
    }


def profile(legacy, out: Path) -> dict:
    """cProfile of single steps on the ellipse (where the time goes), before and after."""
    prob = get_problem("ellipse")
    result = {"environment": environment(torch.device("cpu")), "profiles": []}
    variants = {"after": prob.make_manifold}
    if legacy is not None:
        variants["before"] = lambda: legacy(prob.constraint)
    for kind in ("hmc", "langevin"):
        for n in (10, 1000, 10_000):
            x0 = prob.initial(n, torch.float64, "cpu", torch.Generator().manual_seed(0))
            for label, make in variants.items():
                s = make_sampler(kind, make(), prob.potential, "ellipse")
                row = {"sampler": kind, "chains": n, "code": label}
                row.update(_profile_one(s, x0))
                result["profiles"].append(row)
                out.write_text(json.dumps(result, indent=1))
                head = ", ".join(
                    f"{r['function']} {100 * r['share']:.0f}%" for r in row["top_by_own_time"][:4]
                )
                print(f"{kind:8s} n={n:6d} {label:6s}: {row['ms_per_step']:.2f} ms/step; {head}")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer chains and repetitions")
    parser.add_argument("--legacy-rev", default=LEGACY_REV, help="git revision of 'before'")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--profile", action="store_true", help="profile steps instead of timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chains = (1, 100, 2000) if args.quick else (1, 100, 10_000)
    dtypes = (torch.float64,) if args.quick else (torch.float64, torch.float32)
    try:
        legacy = legacy_class(args.legacy_rev)
    except (subprocess.CalledProcessError, OSError, KeyError) as err:
        print(f"no 'before' code ({err}); timing the current code only")
        legacy = None
    if args.profile:
        return profile(legacy, args.out.with_name("bench_implicit_profile.json"))
    result = {
        "environment": environment(torch.device("cpu")),
        "legacy_rev": args.legacy_rev if legacy is not None else None,
        "quick": args.quick,
        "cases": [],
        "sphere": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        args.out.write_text(json.dumps(result, indent=1))

    for dtype in dtypes:
        for name in PROBLEMS:
            prob = get_problem(name)
            for kind in ("langevin", "hmc"):
                for n in chains:
                    x0 = prob.initial(n, dtype, "cpu", torch.Generator().manual_seed(0))
                    user = ml.ImplicitManifold(prob.constraint, jacobian=JACOBIANS[name])
                    if n == chains[0] and kind == "langevin":
                        user.check_jacobian(prob.initial(8, dtype, "cpu"), rtol=1e-5)
                    samplers = {
                        "after": make_sampler(kind, prob.make_manifold(), prob.potential, name),
                        "user_jacobian": make_sampler(kind, user, prob.potential, name),
                    }
                    if legacy is not None:
                        samplers["before"] = make_sampler(
                            kind, legacy(prob.constraint), prob.potential, name
                        )
                    load0 = os.getloadavg()[0]
                    med = time_alternating(samplers, x0, reps_for(n, args.quick), 2)
                    row = {
                        "problem": name,
                        "sampler": kind,
                        "chains": n,
                        "dtype": str(dtype).replace("torch.", ""),
                        "after_ms": 1e3 * med["after"],
                        "user_jacobian_ms": 1e3 * med["user_jacobian"],
                        "load": [load0, os.getloadavg()[0]],
                    }
                    if "before" in med:
                        row["before_ms"] = 1e3 * med["before"]
                        row["speedup"] = med["before"] / med["after"]
                        row["speedup_user_jacobian"] = med["before"] / med["user_jacobian"]
                    result["cases"].append(row)
                    save()
                    print(
                        f"{name:16s} {kind:8s} {row['dtype']:7s} n={n:6d}: "
                        f"before {row.get('before_ms', float('nan')):8.2f} ms  "
                        f"after {row['after_ms']:8.2f} ms  x{row.get('speedup', float('nan')):.2f}"
                        f"  user jacobian {row['user_jacobian_ms']:8.2f} ms  (load {load0:.2f})",
                        flush=True,
                    )
    # the unit sphere: implicit (autodiff, generic SHAKE) against the closed forms
    sphere_chains = (1, 100, 2000) if args.quick else (1, 100, 10_000)
    for kind in ("langevin", "hmc"):
        for n in sphere_chains:
            x0 = ml.Sphere().random(
                n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
            )
            pot = lambda x: -x[..., 2]  # noqa: E731
            samplers = {
                "implicit": make_sampler(kind, ml.ImplicitManifold(sphere_g), pot, "sphere"),
                "sphere_rattle": make_sampler(kind, ml.Sphere(), pot, "sphere", geodesic=False),
                "sphere_geodesic": make_sampler(kind, ml.Sphere(), pot, "sphere"),
            }
            if legacy is not None:
                samplers["implicit_before"] = make_sampler(kind, legacy(sphere_g), pot, "sphere")
            load0 = os.getloadavg()[0]
            med = time_alternating(samplers, x0, reps_for(n, args.quick), 2)
            row = {"sampler": kind, "chains": n, "load": [load0, os.getloadavg()[0]]}
            row.update({f"{k}_ms": 1e3 * v for k, v in med.items()})
            row["implicit_over_rattle"] = med["implicit"] / med["sphere_rattle"]
            row["implicit_over_geodesic"] = med["implicit"] / med["sphere_geodesic"]
            if "implicit_before" in med:
                row["before_over_rattle"] = med["implicit_before"] / med["sphere_rattle"]
            result["sphere"].append(row)
            save()
            print(
                f"sphere {kind:8s} n={n:6d}: implicit {row['implicit_ms']:.2f} ms, "
                f"Sphere RATTLE {row['sphere_rattle_ms']:.2f} ms "
                f"(x{row['implicit_over_rattle']:.2f})"
                f", geodesic {row['sphere_geodesic_ms']:.2f} ms"
                + (
                    f"; implicit before {row['implicit_before_ms']:.2f} ms"
                    if "implicit_before_ms" in row
                    else ""
                ),
                flush=True,
            )
    result["environment_end"] = {"load_average": list(os.getloadavg())}
    save()
    return result


if __name__ == "__main__":
    main()
