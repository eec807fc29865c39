"""Mutation check: plant plausible bugs in the dynamics one at a time and see the tests fail.

Each mutant of :data:`MUTANTS` is an exact text replacement in one file of the package, of the
kind that keeps every constraint satisfied and every stationary average at temperature 1 and
radius 1 unchanged while giving wrong dynamics (an O step of the wrong length, a noise scale off
by sqrt(2), a radius or temperature entering with the wrong power, a kick of the wrong time).
For each one the script copies the repository to a temporary directory, applies the replacement
(which must match exactly once: a mutant whose text is missing or ambiguous stops the script
with its name, so the table is kept in step with the code when files move), runs the mutant's
tests there with ``python -m pytest -x -q`` against that copy and records whether they fail
(*killed*) or pass (*survived*). A baseline run of every listed test on the unmodified copy
comes first: a mutant only counts as killed if the same tests pass without it.

The table is data: ``path`` relative to the repository root, the exact ``old`` and ``new``
text, the ``tests`` to run (files or node ids) and a ``description``.

Run: ``python -m validation.mutation_check`` (``--all-failures`` runs every listed test of a
mutant instead of stopping at its first failure: 17 minutes on a shared two-core machine;
``--only NAME`` runs some mutants, ``--list`` prints the table, ``--check`` only verifies that
every mutant applies). Writes ``validation/results/mutation_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "validation" / "results"
IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "site", "*.egg-info"
)

TL = "tests/integrators/test_transition_laws.py"
IM = "tests/integrators/test_invariant_measure.py"
CD = "tests/optim/test_cola_dynamics.py"
CT = "tests/optim/test_cola_temperature.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    description: str


MUTANTS: list[Mutant] = [
    Mutant(
        "obabo-o-full-step",
        "manifold_langevin/integrators/langevin.py",
        "c1, c2 = ou_coefficients(self.friction, self.temperature, h)",
        "c1, c2 = ou_coefficients(self.friction, self.temperature, self.step_size)",
        (TL,),
        "every O step at the full step h: OBABO's two O steps of h/2 become two of h "
        "(friction doubled); BAOAB and ABOBA unchanged",
    ),
    Mutant(
        "maxwell-tau-squared",
        "manifold_langevin/integrators/langevin.py",
        "return self.temperature**0.5 * self.manifold.random_normal_tangent(x, generator)",
        "return self.temperature * self.manifold.random_normal_tangent(x, generator)",
        (TL,),
        "Maxwell momenta (start, and after a rejected step) with variance tau^2 instead of tau",
    ),
    Mutant(
        "ou-noise-1-minus-c1",
        "manifold_langevin/integrators/substeps.py",
        "return c1, math.sqrt(temperature * (1.0 - c1 * c1))",
        "return c1, math.sqrt(temperature * (1.0 - c1))",
        (TL, IM),
        "O-step noise sqrt(tau (1 - c1)) instead of sqrt(tau (1 - c1^2)): the momenta "
        "thermalise at the wrong temperature (samplers and CoLA)",
    ),
    Mutant(
        "rattle-substep-time",
        "manifold_langevin/integrators/substeps.py",
        "dt = h / substeps",
        "dt = h",
        (TL,),
        "g-BAOAB: each of the K RATTLE sub-steps of time h instead of h / K",
    ),
    Mutant(
        "euler-noise-half",
        "manifold_langevin/integrators/substeps.py",
        "v = v + math.sqrt(2.0 * h * temperature) * standard_normal(x, generator)",
        "v = v + math.sqrt(h * temperature) * standard_normal(x, generator)",
        (
            f"{TL}::test_brownian_motion_on_a_sphere",
            f"{TL}::test_overdamped_ou_on_a_plane_at_finite_time",
            CD,
        ),
        "projected Euler-Maruyama (sampler 'euler', CoLA 'od' on manifolds) with noise "
        "sqrt(h tau) instead of sqrt(2 h tau): half the temperature",
    ),
    Mutant(
        "lm-half-time",
        "manifold_langevin/integrators/overdamped.py",
        "step_size=math.sqrt(2.0 * self.step_size),",
        "step_size=math.sqrt(self.step_size),",
        (TL,),
        "the BAOAB limit with h = sqrt(dt) instead of sqrt(2 dt): time runs at half speed, the "
        "invariant measure is unchanged",
    ),
    Mutant(
        "lm-init-full-kick",
        "manifold_langevin/integrators/overdamped.py",
        "half = 0.5 * self._limit.step_size",
        "half = self._limit.step_size",
        (TL,),
        "the BAOAB limit started with a full pending kick instead of a half one",
    ),
    Mutant(
        "sphere-geodesic-radius-squared",
        "manifold_langevin/manifolds/sphere.py",
        "omega = speed / r",
        "omega = speed / (r * r)",
        (TL, CD, IM),
        "great-circle rotation with angular speed |v| / r^2 instead of |v| / r",
    ),
    Mutant(
        "circle-angle-radius",
        "manifold_langevin/manifolds/circles.py",
        "theta = (w * pxi - xi * pw) / r2 * t",
        "theta = (w * pxi - xi * pw) / torch.sqrt(r2) * t",
        (TL, CD, IM),
        "circle rotation angle (w p_xi - xi p_w) t / r instead of / r^2 (position and momentum "
        "rotated alike, so the constraint holds)",
    ),
    Mutant(
        "sgld-noise-half",
        "manifold_langevin/integrators/euclidean_substeps.py",
        "alpha=math.sqrt(2.0 * h * temperature))",
        "alpha=math.sqrt(h * temperature))",
        (CD, CT),
        "CoLA unconstrained 'od' (SGLD) with noise sqrt(h tau) instead of sqrt(2 h tau)",
    ),
    Mutant(
        "cola-circle-od-noise-half",
        "manifold_langevin/integrators/circle_substeps.py",
        "s = (2.0 * h * temperature) ** 0.5",
        "s = (h * temperature) ** 0.5",
        (CD, CT),
        "CoLA circle 'od' with noise sqrt(h tau) instead of sqrt(2 h tau)",
    ),
    Mutant(
        "cola-circle-o-noise-radius",
        "manifold_langevin/integrators/circle_substeps.py",
        "b = None if noise is None else c2 / radius",
        "b = None if noise is None else c2",
        (CD, CT),
        "CoLA circle O step with the noise's angular velocity z c2 instead of z c2 / r",
    ),
    Mutant(
        "circle-kick-angle-radius",
        "manifold_langevin/integrators/circle_substeps.py",
        "return _fma(omega, grad, xi, kick / (radius * radius), inplace)",
        "return _fma(omega, grad, xi, kick / radius, inplace)",
        (CD, CT),
        "the circle kick (CoLA's circle path) changing the angular velocity by kick grad xi / r "
        "instead of / r^2",
    ),
    Mutant(
        "circle-renormalisation-newton",
        "manifold_langevin/integrators/circle_substeps.py",
        "k = torch.addcmul(w.new_full((), 1.5), w, w, value=-0.5 * inv_r2)",
        "k = torch.addcmul(w.new_full((), 1.5), w, w, value=-0.25 * inv_r2)",
        ("tests/integrators/test_circle_substeps.py", CD),
        "CoLA's eager circle rotation with a wrong Newton factor for r / |x| (the point leaves "
        "its circle)",
    ),
    Mutant(
        "circle-mask-hold-factor",
        "manifold_langevin/integrators/circle_substeps.py",
        "k.lerp_(k.new_ones(()), held)",
        "k.lerp_(k.new_ones(()), 0.5 * held)",
        ("tests/integrators/test_circle_substeps.py", "tests/optim/test_failures.py"),
        "the sync-free mode's eager circle step renormalising a rejected entry instead of "
        "keeping it exactly (it moves by a few ulps)",
    ),
    Mutant(
        "cola-circle-xi-init",
        "manifold_langevin/optim/cola.py",
        'st["xi"] = torch.sqrt((r * r - w * w).clamp_min(0)).contiguous()',
        'st["xi"] = torch.sqrt((r - w * w).clamp_min(0)).contiguous()',
        (CD,),
        "circle auxiliary started at sqrt(r - w^2) instead of sqrt(r^2 - w^2) (the first "
        "rotation renormalises onto the circle, so the constraint check passes)",
    ),
    Mutant(
        "cola-kick-pending-full",
        "manifold_langevin/optim/buckets.py",
        'kick_h = h if full else st["pending_kick"] + 0.5 * h',
        'kick_h = h if full else st["pending_kick"] + h',
        (CD, CT),
        "CoLA's carried kick h/2 + h instead of h/2 + h/2 (every constraint, 'ud')",
    ),
    Mutant(
        "cola-stiefel-kick-half",
        "manifold_langevin/integrators/substeps.py",
        "return torch.add(p, force, alpha=h)",
        "return torch.add(p, force, alpha=0.5 * h)",
        (CD,),
        "CoLA orthogonal 'ud' (RATTLE path without the kick's projection) kicking for half "
        "the time",
    ),
    Mutant(
        "cola-free-second-drift-full",
        "manifold_langevin/integrators/euclidean_substeps.py",
        "torch._foreach_add_(ps, _normals(ps, generator), alpha=c2)\n"
        "    torch._foreach_add_(xs, ps, alpha=0.5 * h)",
        "torch._foreach_add_(ps, _normals(ps, generator), alpha=c2)\n"
        "    torch._foreach_add_(xs, ps, alpha=h)",
        (CD, CT),
        "CoLA unconstrained 'ud' at tau > 0 with its second drift of time h instead of h/2",
    ),
    Mutant(
        "cola-o-half-step",
        "manifold_langevin/optim/updates.py",
        'c1, c2 = ou_coefficients(float(group["friction"]), tau, h)',
        'c1, c2 = ou_coefficients(float(group["friction"]), tau, 0.5 * h)',
        (CD,),
        "CoLA's O step of time h/2 instead of h: friction halved (every constraint)",
    ),
]


def check_table(root: Path = ROOT) -> None:
    """Every mutant's old text occurs exactly once in its file, differs from the new text, and
    its tests exist. Raises ``ValueError`` naming the first mutant that does not apply."""
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate mutant names in {names}")
    for m in MUTANTS:
        path = root / m.path
        if not path.is_file():
            raise ValueError(f"mutant {m.name!r}: {m.path} does not exist (moved?)")
        count = path.read_text().count(m.old)
        if count != 1:
            raise ValueError(
                f"mutant {m.name!r}: the old text occurs {count} times in {m.path}, not once: "
                f"{m.old!r}"
            )
        if m.old == m.new:
            raise ValueError(f"mutant {m.name!r}: old and new text are the same")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                raise ValueError(f"mutant {m.name!r}: test file {test} does not exist")


def _copy(dest: Path) -> Path:
    target = dest / "repo"
    shutil.copytree(ROOT, target, ignore=IGNORE)
    return target


def _apply(repo: Path, m: Mutant) -> None:
    path = repo / m.path
    text = path.read_text()
    if text.count(m.old) != 1:  # checked before, but the copy is what runs
        raise ValueError(f"mutant {m.name!r} does not apply to the copy")
    path.write_text(text.replace(m.old, m.new, 1))


def _pytest(repo: Path, tests, timeout: float, stop: bool = True) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
    first = ["-x"] if stop else []
    cmd = [sys.executable, "-m", "pytest", *first, "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"rc": None, "seconds": round(time.perf_counter() - start, 1), "failed": None}
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    return {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "failed": failed[0] if failed else None,
        "all_failed": failed,
        "summary": tail,
    }


def _imports_copy(repo: Path) -> bool:
    env = dict(os.environ, PYTHONPATH=str(repo))
    code = "import manifold_langevin, sys; sys.stdout.write(manifold_langevin.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True
    )
    return out.returncode == 0 and Path(out.stdout).resolve().is_relative_to(repo.resolve())


def run(
    names=None, timeout: float = 1200.0, baseline: bool = True, stop: bool = True, progress=print
) -> dict:
    """Run the chosen mutants (all by default); ``stop=False`` runs every listed test of each
    mutant instead of stopping at the first failure, to see all the tests that kill it."""
    check_table()
    chosen = [m for m in MUTANTS if names is None or m.name in names]
    unknown = set(names or ()) - {m.name for m in MUTANTS}
    if unknown:
        raise ValueError(f"unknown mutants {sorted(unknown)}; valid: {[m.name for m in MUTANTS]}")
    start = time.perf_counter()
    out = {
        "description": __doc__.splitlines()[0],
        "python": sys.version.split()[0],
        "stop_at_first_failure": stop,
    }
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        repo = _copy(Path(tmp))
        if not _imports_copy(repo):
            raise RuntimeError("the copy's tests would not import the copy of the package")
        if baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            progress(f"baseline: {len(tests)} test selections on the unmodified copy")
            base = _pytest(repo, tests, 3 * timeout)
            out["baseline"] = base
            if base["rc"] != 0:
                raise RuntimeError(f"the tests fail without any mutant: {base}")
        shutil.rmtree(repo)
        rows = []
        for m in chosen:
            repo = _copy(Path(tmp))
            _apply(repo, m)
            res = _pytest(repo, m.tests, timeout, stop)
            status = (
                "timeout" if res["rc"] is None
                else "survived" if res["rc"] == 0
                else "killed" if res["rc"] == 1
                else "error"
            )  # fmt: skip
            rows.append({**asdict(m), "tests": list(m.tests), "status": status, **res})
            progress(f"{m.name}: {status} ({res['seconds']} s) {res.get('failed') or ''}")
            shutil.rmtree(repo)
    killed = sum(r["status"] in ("killed", "error") for r in rows)
    out.update(
        seconds=round(time.perf_counter() - start, 1),
        score=f"{killed}/{len(rows)}",
        survivors=[r["name"] for r in rows if r["status"] in ("survived", "timeout")],
        mutants=rows,
    )
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--check", action="store_true", help="only check that mutants apply")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    parser.add_argument(
        "--all-failures", action="store_true", help="do not stop at a mutant's first failure"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutant")
    parser.add_argument("--out", type=Path, default=RESULTS / "mutation_check.json")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.path}: {m.description}")
        return {}
    check_table()
    if args.check:
        print(f"all {len(MUTANTS)} mutants apply")
        return {}
    res = run(
        args.only, timeout=args.timeout, baseline=not args.no_baseline, stop=not args.all_failures
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"score {res['score']}, survivors {res['survivors']}; wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
