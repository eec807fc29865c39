"""Weak order of stationary averages: step-size sweeps at fixed physical time.

For each scheme we run many batched chains for the same physical time ``T`` at step sizes
spanning at least 8x, measure the error of a stationary average against its exact value, and fit
``err(h) = C h^p`` by weighted least squares (weights from the batch-means standard errors), giving
the slope ``p`` with a 95% confidence interval. A Richardson check combines the two smallest steps
with the expected order and reports whether the extrapolated value is closer to the truth.

Also: a friction sweep of the BAOAB error (gamma from 0.1 to 100 at fixed h), the ratio of the
BAOAB and OBABO error constants, and a stochastic-gradient study (Gaussian noise added to the
force, the O(h) bias it causes).

Target: von Mises-Fisher on S^2, U = -kappa z with kappa = 4, observable z, exact
E[z] = coth(kappa) - 1/kappa.

Run ``python -m validation.weak_order [--quick]``; writes ``weak_order.json`` and ``weak_order.png``
to ``--out`` (default ``validation/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import curve_fit
from scipy.stats import t as student_t

import manifold_langevin as ml

KAPPA = 4.0
EXACT = 1.0 / math.tanh(KAPPA) - 1.0 / KAPPA


def potential(x: torch.Tensor) -> torch.Tensor:
    return -KAPPA * x[..., -1]


def _implicit_sphere() -> ml.ImplicitManifold:
    # the same sphere seen as a generic constraint: RATTLE sub-steps instead of rotations (g-BAOAB)
    return ml.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - 1)


@dataclass(frozen=True)
class Study:
    """One scheme's sweep: how to build the sampler for a step size, and the order we expect."""

    name: str
    expected: float
    steps: tuple[float, ...]
    time: float
    burn: float

    def make(self, h: float, friction: float = 1.0, force_noise: float = 0.0):
        force = None
        if force_noise > 0:
            force = _noisy_force(force_noise)
        if self.name in ("BAOAB", "ABOBA", "OBABO"):
            return ml.Langevin(
                ml.Sphere(),
                potential,
                step_size=h,
                friction=friction,
                scheme=self.name,
                force=force,
            )
        if self.name == "g-BAOAB (K=2)":
            return ml.Langevin(
                _implicit_sphere(), potential, step_size=h, friction=friction, substeps=2
            )
        scheme = {"Euler-Maruyama": "euler", "BAOAB limit": "lm"}[self.name]
        return ml.OverdampedLangevin(ml.Sphere(), potential, step_size=h, scheme=scheme)


_state = {"gen": None}


def _noisy_force(sigma: float):
    def force(x):
        f = torch.zeros_like(x)
        f[..., -1] = KAPPA
        noise = torch.randn(x.shape, generator=_state["gen"], dtype=x.dtype, device=x.device)
        return f + sigma * noise

    return force


def _geometric(h_max: float, ratio: float, n: int) -> tuple[float, ...]:
    return tuple(h_max / ratio ** (i / (n - 1)) for i in range(n))


def studies(quick: bool) -> list[Study]:
    n = 4 if quick else 7
    ud = _geometric(0.8, 8.0, n)
    od = _geometric(0.16, 8.0, n)
    t_ud, t_od = (15.0, 5.0) if quick else (40.0, 12.0)
    return [
        Study("BAOAB", 2, ud, t_ud, 5.0),
        Study("ABOBA", 2, ud, t_ud, 5.0),
        Study("OBABO", 2, ud, t_ud, 5.0),
        Study("g-BAOAB (K=2)", 2, ud[:-1] if quick else ud, t_ud, 5.0),
        Study("Euler-Maruyama", 1, od, t_od, 2.0),
        Study("BAOAB limit", 2, od, t_od, 2.0),
    ]


def run_point(study: Study, h: float, n_chains: int, seed: int, device: str, **kw) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    _state["gen"] = gen
    x0 = ml.Sphere().random(
        n_chains,
        3,
        dtype=torch.float64,
        device=device,
        generator=torch.Generator(device=device).manual_seed(seed + 1),
    )
    sampler = study.make(h, **kw)
    n_steps = max(round((study.time + study.burn) / h), 2)
    burn = round(study.burn / h)
    t0 = time.perf_counter()
    out = sampler.sample(
        x0, n_steps=n_steps, burn_in=burn, observables={"z": lambda x: x[..., -1]}, generator=gen
    )
    est, se = float(out.means["z"]), float(out.stderrs["z"])
    return {
        "h": h,
        "estimate": est,
        "stderr": se,
        "error": est - EXACT,
        "failure_rate": out.failure_rate,
        "max_residual": out.max_residual,
        "seconds": time.perf_counter() - t0,
    }


def fit_order(h: np.ndarray, err: np.ndarray, se: np.ndarray) -> dict:
    """Weighted least squares fit of ``err = C h^p``; slope with a 95% confidence interval."""
    p0 = (float(err[0] / h[0] ** 2), 2.0)
    (c, p), cov = curve_fit(
        lambda x, c, p: c * x**p, h, err, p0=p0, sigma=se, absolute_sigma=True, maxfev=20000
    )
    dof = max(len(h) - 2, 1)
    resid = (err - c * h**p) / se
    chi2 = float((resid**2).sum())
    # inflate the interval when the model misfits beyond the noise (chi2/dof > 1)
    scale = math.sqrt(max(chi2 / dof, 1.0))
    half = float(student_t.ppf(0.975, dof) * math.sqrt(cov[1, 1]) * scale)
    return {
        "slope": float(p),
        "ci95": [float(p) - half, float(p) + half],
        "constant": float(c),
        "chi2_per_dof": chi2 / dof,
    }


def richardson(points: list[dict], order: float) -> dict:
    """Extrapolate from the two smallest steps with the expected order."""
    a, b = sorted(points, key=lambda r: r["h"])[:2]  # b has the larger step
    ratio = (b["h"] / a["h"]) ** order
    extrap = (ratio * a["estimate"] - b["estimate"]) / (ratio - 1)
    se = math.hypot(ratio * a["stderr"], b["stderr"]) / (ratio - 1)
    return {
        "extrapolated": extrap,
        "stderr": se,
        "error": extrap - EXACT,
        "finest_error": a["error"],
        "consistent": abs(extrap - EXACT) < 3 * se + 1e-4,
    }


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True) -> dict:
    n_chains = 4000 if quick else 40000
    results = {
        "target": "vMF on S^2",
        "kappa": KAPPA,
        "exact": EXACT,
        "n_chains": n_chains,
        "studies": [],
    }
    for study in studies(quick):
        pts = [run_point(study, h, n_chains, seed + i, device) for i, h in enumerate(study.steps)]
        h = np.array([p["h"] for p in pts])
        err = np.array([p["error"] for p in pts])
        se = np.array([p["stderr"] for p in pts])
        entry = {
            "scheme": study.name,
            "expected": study.expected,
            "time": study.time,
            "points": pts,
            "fit": fit_order(h, err, se),
            "richardson": richardson(pts, study.expected),
        }
        results["studies"].append(entry)
        if progress:
            f = entry["fit"]
            print(
                f"{study.name:>16}: slope {f['slope']:.2f} "
                f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] (expected {study.expected})",
                flush=True,
            )
    if not quick:
        results["friction_sweep"] = friction_sweep(n_chains, seed, device)
        results["stochastic_gradient"] = stochastic_gradient(n_chains, seed, device)
    by = {s["scheme"]: s["fit"]["constant"] for s in results["studies"]}
    results["obabo_over_baoab_constant"] = by["OBABO"] / by["BAOAB"]
    return results


def friction_sweep(n_chains: int, seed: int, device: str, h: float = 0.4) -> list[dict]:
    out = []
    for i, gamma in enumerate([0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]):
        # slow mixing at small and large friction: lengthen the run accordingly
        t = 40.0 * max(1.0, 1.0 / gamma, gamma / 4)
        st = Study("BAOAB", 2, (h,), t, 5.0 * max(1.0, 1.0 / gamma, gamma / 4))
        r = run_point(st, h, n_chains, seed + 100 + i, device, friction=gamma)
        r["friction"] = gamma
        out.append(r)
    return out


def stochastic_gradient(n_chains: int, seed: int, device: str, sigma: float = 2.0) -> list[dict]:
    study = Study("BAOAB", 2, (), 40.0, 5.0)
    out = []
    for i, h in enumerate([0.4, 0.2, 0.1, 0.05]):
        r = run_point(study, h, n_chains, seed + 200 + i, device, force_noise=sigma)
        r["force_noise"] = sigma
        out.append(r)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in results["studies"]:
        h = np.array([p["h"] for p in s["points"]])
        err = np.abs([p["error"] for p in s["points"]])
        se = np.array([p["stderr"] for p in s["points"]])
        axis = ax[0] if s["expected"] == 2 and "limit" not in s["scheme"] else ax[1]
        line = axis.errorbar(
            h,
            err,
            yerr=se,
            marker="o",
            capsize=2,
            label=f"{s['scheme']} (slope {s['fit']['slope']:.2f})",
        )
        c, p = abs(s["fit"]["constant"]), s["fit"]["slope"]
        axis.plot(h, c * h**p, "--", color=line[0].get_color(), alpha=0.6)
    for axis, title in zip(ax, ["underdamped (h)", "overdamped (dt)"]):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("step size")
        axis.set_ylabel("|error of E[z]|")
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.suptitle(f"vMF on S^2 (kappa={KAPPA}): weak error of stationary averages")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict) -> str:
    rows = ["| scheme | expected | slope | 95% CI | Richardson consistent |"]
    rows.append("|---|---|---|---|---|")
    for s in results["studies"]:
        f = s["fit"]
        rows.append(
            f"| {s['scheme']} | {s['expected']} | {f['slope']:.2f} | "
            f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {s['richardson']['consistent']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (under a minute)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    results = run(quick=args.quick, device=args.device, seed=args.seed)
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "weak_order.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "weak_order.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
