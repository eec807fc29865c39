r"""Why [`HMC`][manifold_langevin.HMC] integrates every proposal back: an ablation of its
reversibility check.

RATTLE's position step solves SHAKE, $g(x + h p + J(x)^T \lambda) = 0$, by Newton's method from
$\lambda = 0$. Where the normal line through $x + h p$ meets the set more than once, the solve
from $(x', -p')$ back may land on a root other than $x$ (or not converge within its budget), and
the leapfrog is then not an involution: the Metropolis test, which assumes one, no longer
leaves the target invariant (Zappa, Holmes-Cerfon and Goodman, Comm. Pure Appl. Math. 71, 2018;
Lelièvre, Rousset and Stoltz, Numer. Math. 143, 2019). With ``reverse_check=True`` (the default for
RATTLE) such proposals are rejected.

Cases (``n_leapfrog = 1``, full momentum refresh, float64, exact values from
[`get_problem`][manifold_langevin.testing.get_problem]):

* ``torus_newton6``: the uniform measure on the quartic torus (``torus_quartic``: a tube of
  radius 1 around a circle of radius 2), the problem's own ``ImplicitManifold`` (6 Newton
  iterations). A normal line crosses the tube twice, so SHAKE has a second root about one tube
  diameter away, and Newton reaches it for large steps.
* ``torus_newton30``: the same set with 30 Newton iterations, so that nearly every backward
  solve converges: what remains of the bias is the second root alone.
* ``ellipse_newton6``: the ellipse $x^2/4 + y^2 = 1$ with $U = y$ (``ellipse``). The normal line
  meets a convex curve in two points, one of them the start, so a converged backward solve
  returns to it; what the check rejects here are backward solves that do not converge in 6
  iterations (counted in ``n_reverse_failed``, and in the SHAKE failures).

Per case and step size ``h``: a classification of proposals drawn at stationarity (from the end
states of the checked run): the fraction whose forward solve fails, whose backward solve fails,
and whose backward solve converges to another point (``other_root``, with the median distance);
then two runs of ``ml.HMC`` with the same seeds, ``reverse_check=False`` and ``True``: the
acceptance rate, the SHAKE failure rate, the fraction of chain-steps that failed the
reversibility check, and per observable the estimate, its standard error (the larger of the
batch-means error ``out.stderrs`` and the ESS-based ``out.mcse``, both recorded, with R-hat), the
exact value and the z-score. A run is called biased when some observable
is more than 5 standard errors off, and exact when every observable is within 4.

The measured numbers, with the machine load, are in the JSON and on the generated page
``docs/exact-sampling-evidence.md`` (``python -m validation.report``).

Run ``python -m validation.hmc_reversibility [--quick] [--out PATH]``; writes
``validation/results/hmc_reversibility.json`` after every run and ``hmc_reversibility.png`` next
to it (``--quick``: one case, one step size, 200 chains, for the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch

import manifold_langevin as ml
from manifold_langevin.testing import get_problem

__all__ = ["BIASED_Z", "CASES", "EXACT_Z", "classify", "main", "run_pair"]

RESULTS = Path(__file__).parent / "results"
DT = torch.float64
#: an observable this many standard errors off marks a run as biased
BIASED_Z = 5.0
#: every observable within this many standard errors marks a run as exact
EXACT_Z = 4.0
#: (case name, problem, Newton iterations, step sizes)
CASES = [
    ("torus_newton6", "torus_quartic", 6, [0.5, 1.0, 1.5, 2.0]),
    ("torus_newton30", "torus_quartic", 30, [1.0, 2.0]),
    ("ellipse_newton6", "ellipse", 6, [1.5]),
]
FULL = {"n_chains": 2000, "n_steps": 700, "burn_in": 200, "n_batches": 10, "n_classify": 20000}
QUICK = {"n_chains": 200, "n_steps": 150, "burn_in": 50, "n_batches": 10, "n_classify": 2000}


def _kernel(problem, max_iter: int, h: float, reverse_check: bool):
    manifold = ml.ImplicitManifold(problem.constraint, max_iter=max_iter)
    return ml.HMC(
        manifold,
        problem.potential,
        step_size=h,
        n_leapfrog=1,
        temperature=problem.temperature,
        reverse_check=reverse_check,
    )


def classify(kernel, x: torch.Tensor, seed: int) -> dict:
    """Fresh momenta at the points ``x``, one leapfrog forwards and one back from
    ``(x', -p')``: the fractions whose forward solve fails, whose backward solve fails, and whose
    backward solve converges to a point other than ``x`` (farther than the check's tolerance)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        p0 = kernel.maxwell(x, gen)
        x1, p1, f1, ok = kernel.leapfrog(x, p0, kernel.force(x))
        xb, _, _, ok_b = kernel.leapfrog(x1, -p1, f1)
        dist = (xb - x).abs().amax(-1)
        tol = 100 * kernel.manifold.tolerance(x)
        other = ok & ok_b & (dist > tol)
        n = x.shape[0]
        return {
            "n": n,
            "forward_failed": float((~ok).sum()) / n,
            "backward_failed": float((ok & ~ok_b).sum()) / n,
            "other_root": float(other.sum()) / n,
            "other_root_median_distance": float(dist[other].median())
            if bool(other.any())
            else None,
        }


def run_pair(problem, max_iter: int, h: float, cfg: dict, seed: int = 0) -> dict:
    """Both settings of ``reverse_check`` from the same start and noise seeds."""
    out = {}
    end_state = None
    for check in (False, True):
        kernel = _kernel(problem, max_iter, h, check)
        x0 = problem.initial(
            cfg["n_chains"], dtype=DT, generator=torch.Generator().manual_seed(seed)
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ml.UntrustedRunWarning)
            res = kernel.sample(
                x0,
                n_steps=cfg["n_steps"],
                burn_in=cfg["burn_in"],
                n_batches=cfg["n_batches"],
                observables=dict(problem.observables),
                generator=torch.Generator().manual_seed(seed + 1),
            )
        seconds = time.perf_counter() - start
        total = (cfg["n_steps"] - cfg["burn_in"]) * cfg["n_chains"]  # the counts after burn-in
        obs = {}
        for k in problem.observables:
            est, exact = float(res.means[k]), problem.exact[k]
            bm, mcse = float(res.stderrs[k]), float(res.mcse[k])
            se = max(bm, mcse)  # the larger of the two estimates of the same error
            obs[k] = {"estimate": est, "stderr": se, "stderr_batch_means": bm, "mcse": mcse,
                      "rhat": float(res.rhat[k]), "exact": exact,
                      "z": (est - exact) / se}  # fmt: skip
        max_z = max(abs(v["z"]) for v in obs.values())
        out["check" if check else "no_check"] = {
            "reverse_check": check,
            "acceptance_rate": res.acceptance_rate,
            "shake_failure_rate": res.failure_rate,
            "reverse_failed_rate": res.n_reverse_failed / total,
            "max_abs_z": max_z,
            "biased": max_z > BIASED_Z,
            "exact": max_z <= EXACT_Z,
            "max_residual": res.max_residual,
            "seconds": round(seconds, 2),
            "observables": obs,
        }
        if check:
            end_state = res.state.x
    # the end states of the checked run, repeated if there are fewer chains than proposals
    reps = math.ceil(cfg["n_classify"] / end_state.shape[0])
    xs = end_state.repeat(reps, 1)[: cfg["n_classify"]]
    out["classification"] = classify(_kernel(problem, max_iter, h, True), xs, seed + 2)
    return out


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_z, ax_f) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = ["C0", "C1", "C2", "C3"]
    for colour, (name, case) in zip(colours, doc["cases"].items()):
        runs = case["runs"]
        hs = [r["h"] for r in runs]
        for key, style, label in (("no_check", "--o", "no check"), ("check", "-s", "check")):
            ax_z.plot(hs, [r[key]["max_abs_z"] for r in runs], style, color=colour,
                      label=f"{name}, {label}")  # fmt: skip
        cl = [r["classification"] for r in runs]
        ax_f.plot(hs, [c["other_root"] for c in cl], "-o", color=colour,
                  label=f"{name}: other root")  # fmt: skip
        ax_f.plot(hs, [c["backward_failed"] for c in cl], ":^", color=colour,
                  label=f"{name}: backward not converged")  # fmt: skip
    ax_z.axhline(BIASED_Z, color="k", lw=0.8, ls="--")
    ax_z.axhline(EXACT_Z, color="k", lw=0.8, ls=":")
    ax_z.set_xlabel("step size h")
    ax_z.set_ylabel("largest |z| over the observables")
    ax_z.set_title("bias in standard errors (5: biased, 4: exact)")
    ax_z.legend(fontsize=7)
    ax_f.set_xlabel("step size h")
    ax_f.set_ylabel("fraction of proposals")
    ax_f.set_title("backward solve: another root, or no convergence")
    ax_f.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "hmc_reversibility.json")
    parser.add_argument("--quick", action="store_true", help="one case, one step, 200 chains")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    cases = [("torus_newton6", "torus_quartic", 6, [1.0])] if args.quick else CASES
    start = time.perf_counter()
    doc = {
        "description": "ml.HMC with and without the reversibility check where SHAKE has two roots",
        "settings": {
            **cfg,
            "n_leapfrog": 1,
            "dtype": "float64",
            "seed": args.seed,
            "biased_z": BIASED_Z,
            "exact_z": EXACT_Z,
            "quick": args.quick,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": list(os.getloadavg()),
        "cases": {},
    }
    for name, problem_name, max_iter, steps in cases:
        problem = get_problem(problem_name)
        case = doc["cases"][name] = {"problem": problem_name, "max_iter": max_iter, "runs": []}
        for h in steps:
            row = {"h": h, **run_pair(problem, max_iter, h, cfg, args.seed)}
            case["runs"].append(row)
            c, n, cl = row["check"], row["no_check"], row["classification"]
            print(f"{name:16s} h={h:4.2f}  other root {cl['other_root']:.4f}  back fail "
                  f"{cl['backward_failed']:.4f} | no check: acc {n['acceptance_rate']:.3f} "
                  f"max|z| {n['max_abs_z']:5.1f} | check: acc {c['acceptance_rate']:.3f} "
                  f"rev-failed {c['reverse_failed_rate']:.4f} max|z| {c['max_abs_z']:4.1f}",
                  flush=True)  # fmt: skip
            doc["seconds"] = round(time.perf_counter() - start, 1)
            _write(args.out, doc)
    runs = [r for case in doc["cases"].values() for r in case["runs"]]
    doc["summary"] = {
        "some_run_without_check_biased": any(r["no_check"]["biased"] for r in runs),
        "every_run_with_check_exact": all(r["check"]["exact"] for r in runs),
    }
    doc["load_end"] = list(os.getloadavg())
    doc["seconds"] = round(time.perf_counter() - start, 1)
    _write(args.out, doc)
    plot(doc, args.out.with_suffix(".png"))
    return doc


if __name__ == "__main__":
    main()
