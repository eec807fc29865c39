r"""Acceptance of [`HMC`][manifold_langevin.HMC] against step size and dimension, and its
effective sample size per second against the number of chains.

**Acceptance and dimension.** On the sphere $S^{d-1}$ of radius $\sqrt d$ (so that the
coordinates stay of order one and the curvature $1/\sqrt d$ fades), the Bingham-type potential
$U(x) = \tfrac12 \sum_i a_i x_i^2$ with $a_i$ evenly spaced in $[1, 4]$: close to a product of
$d$ Gaussians with frequencies between 1 and 2, the setting of Beskos, Pillai, Roberts,
Sanz-Serna and Stuart (Bernoulli 19, 2013), where the leapfrog's energy error over a fixed number
of steps has mean $\propto d h^4$ and spread $\propto \sqrt d h^2$, so that a fixed acceptance
rate needs $h \propto d^{-1/4}$. Both A steps are measured: the sphere's exact geodesic, and
RATTLE (``geodesic=False``, with the default reversibility check). ``n_leapfrog = 5``, full
momentum refresh, float64, $d \in \{3, 10, 30, 100, 300, 1000\}$, and $h = c\,d^{-1/4}$ for a
geometric grid of $c$ (the grid is only centred by the expected scaling; the measured step
$h^*(d)$ for a target acceptance is interpolated in $\log h$ between grid points, and its
exponent fitted freely). Chains start from the Gaussian that approximates the target, projected
onto the sphere, and run a burn-in before the measured steps; each step's acceptance flag and
$|\Delta H|$ (``state.info``) are summed per chain on the device.

Reported per $(d, h)$ and A step: the acceptance rate, the mean $|\Delta H|$ and the fraction of
failed proposals; per target acceptance (0.6, 0.75, 0.9) the step $h^*(d)$ and the least-squares
slope of $\log h^*$ against $\log d$ over $d \ge 30$ (and over all $d$), with a 95% bootstrap
interval (chains resampled at every grid point; it covers the Monte Carlo error, not the
interpolation between grid points). A second estimate of the same exponent: the fit
$\log \overline{|\Delta H|} = \alpha + \beta \log d + \gamma \log h$ over the points with
acceptance at least 0.8 and $d \ge 30$ gives $h \propto d^{-\beta/\gamma}$ at fixed energy
error (theory: $\beta = 1/2$, $\gamma = 2$).

**ESS per second.** ``ml.HMC`` on the ellipse (``get_problem("ellipse")``, $h = 0.8$, one
leapfrog step, reversibility check on) with $1, 10, \dots, 10^5$ chains on one CPU thread:
the trace of $y$ is recorded by driving ``init``/``step``, and the bulk ESS of
[`arviz.ess`](https://python.arviz.org/) over all chains is divided by the wall time of the
recorded steps (burn-in excluded). ``arviz`` is optional: without it this part is skipped and
the JSON says so.

The measured numbers, with the machine load, are in the JSON and on the generated page
``docs/exact-sampling-evidence.md`` (``python -m validation.report``).

Run ``python -m validation.hmc_acceptance [--quick] [--out PATH]``; writes
``validation/results/hmc_acceptance.json`` after every measurement and ``hmc_acceptance.png``,
``hmc_acceptance_ess.png`` next to it (``--quick``: three dimensions, a coarse grid, few chains
and up to 100 chains for the ESS, for the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import manifold_langevin as ml
from manifold_langevin.testing import get_problem

__all__ = ["TARGETS", "crossing", "ess_run", "fit_slope", "main", "sphere_run"]

RESULTS = Path(__file__).parent / "results"
DT = torch.float64
N_LEAPFROG = 5
TARGETS = [0.6, 0.75, 0.9]
FIT_MIN_D = 30
#: acceptance at least this: the small-step regime of the energy-error fit
DH_FIT_MIN_ACCEPTANCE = 0.8
#: the leapfrog step of the ESS runs on the ellipse
ESS_STEP = 0.8
FULL = {
    "dims": [3, 10, 30, 100, 300, 1000],
    "c_grid": [round(float(c), 4) for c in np.geomspace(0.3, 4.0, 10)],
    "n_chains": 300,
    "burn_in": 40,
    "n_measure": 100,
    "n_boot": 400,
    "ess_chains": [1, 10, 100, 1000, 10**4, 10**5],
    "ess_burn_in": 100,
    "ess_steps": 400,
    "ess_repeats_small": 3,
}
QUICK = {
    "dims": [3, 30, 100],
    "c_grid": [round(float(c), 4) for c in np.geomspace(0.3, 4.0, 6)],
    "n_chains": 60,
    "burn_in": 10,
    "n_measure": 30,
    "n_boot": 50,
    "ess_chains": [1, 10, 100],
    "ess_burn_in": 20,
    "ess_steps": 60,
    "ess_repeats_small": 1,
}


# ---------------------------------------------------------------------------- the sphere study
def _stiffness(d: int) -> torch.Tensor:
    return torch.linspace(1.0, 4.0, d, dtype=DT)


def initial_points(d: int, n: int, generator) -> torch.Tensor:
    """The Gaussian with precisions $a_i + \\lambda$ and $E|x|^2 = d$, projected onto the sphere
    of radius $\\sqrt d$ (close to the target for large $d$; the burn-in does the rest)."""
    a = _stiffness(d).numpy()
    lo, hi = -a.min() + 1e-12, 10.0
    for _ in range(200):  # bisection: sum 1 / (a + lam) decreases in lam
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (1.0 / (a + mid)).sum() > d else (lo, mid)
    sd = torch.as_tensor(1.0 / np.sqrt(a + 0.5 * (lo + hi)), dtype=DT)
    x = sd * torch.randn(n, d, dtype=DT, generator=generator)
    return x * (math.sqrt(d) / x.norm(dim=-1, keepdim=True))


def sphere_run(d: int, h: float, geodesic: bool, cfg: dict, seed: int) -> tuple[dict, np.ndarray]:
    """One grid point: the summary and the per-chain acceptance fractions."""
    a = _stiffness(d)
    sampler = ml.HMC(
        ml.Sphere(math.sqrt(d)),
        lambda x: 0.5 * (a * x * x).sum(-1),
        force=lambda x: -a * x,
        step_size=h,
        n_leapfrog=N_LEAPFROG,
        geodesic=None if geodesic else False,
    )
    gen = torch.Generator().manual_seed(seed)
    n = cfg["n_chains"]
    start = time.perf_counter()
    with torch.no_grad():
        state = sampler.init(initial_points(d, n, gen), generator=gen)
        for _ in range(cfg["burn_in"]):
            state, _, _ = sampler.step(state, gen)
        acc = torch.zeros(n, dtype=DT)
        abs_dh = torch.zeros(n, dtype=DT)
        n_valid = torch.zeros(n, dtype=DT)
        n_rev = torch.zeros(n, dtype=DT)
        for _ in range(cfg["n_measure"]):
            state, _, _ = sampler.step(state, gen)
            info = state.info
            acc += info["accepted"]
            dh = info["energy_error"]
            valid = torch.isfinite(dh)
            abs_dh += torch.where(valid, dh.abs(), torch.zeros_like(dh))
            n_valid += valid
            n_rev += info["reverse_failed"]
    total = cfg["n_measure"] * n
    per_chain = (acc / cfg["n_measure"]).numpy()
    row = {
        "d": d,
        "h": h,
        "c": h * d**0.25,
        "a_step": "geodesic" if geodesic else "rattle",
        "acceptance": float(per_chain.mean()),
        "acceptance_stderr": float(per_chain.std(ddof=1) / math.sqrt(n)),
        "mean_abs_dH": float(abs_dh.sum() / n_valid.sum()) if float(n_valid.sum()) else None,
        "failed_fraction": 1.0 - float(n_valid.sum()) / total,
        "reverse_failed_fraction": float(n_rev.sum()) / total,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return row, per_chain


def crossing(log_h: np.ndarray, acc: np.ndarray, target: float) -> float:
    """$\\log h$ where the acceptance first falls below ``target`` (linear interpolation
    between grid points, from the smallest step up); NaN where it is not bracketed."""
    if acc[0] < target:
        return math.nan
    for j in range(len(acc) - 1):
        if acc[j] >= target > acc[j + 1]:
            w = (acc[j] - target) / (acc[j] - acc[j + 1])
            return float(log_h[j] + w * (log_h[j + 1] - log_h[j]))
    return math.nan


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of ``y`` on ``x`` (NaN with fewer than two finite points)."""
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(x[keep], y[keep], 1)[0])


def scaling(rows: list, per_chain: dict, a_step: str, dims: list, cfg: dict, seed: int) -> dict:
    """$h^*(d)$ per target acceptance, the fitted exponent and its bootstrap interval, and the
    energy-error fit."""
    rng = np.random.default_rng(seed)
    out = {"targets": {}}
    log_d = np.log(np.array(dims, dtype=float))
    for target in TARGETS:
        h_star, boot = [], np.full((cfg["n_boot"], len(dims)), np.nan)
        for k, d in enumerate(dims):
            pts = sorted((r for r in rows if r["a_step"] == a_step and r["d"] == d),
                         key=lambda r: r["h"])  # fmt: skip
            log_h = np.log([r["h"] for r in pts])
            acc = np.array([r["acceptance"] for r in pts])
            h_star.append(math.exp(crossing(log_h, acc, target)))
            chains = [per_chain[(a_step, d, r["h"])] for r in pts]
            for b in range(cfg["n_boot"]):
                acc_b = np.array([c[rng.integers(0, len(c), len(c))].mean() for c in chains])
                boot[b, k] = crossing(log_h, acc_b, target)
        log_hs = np.log(np.array(h_star))
        big = log_d >= math.log(FIT_MIN_D)
        slopes = np.array([fit_slope(log_d[big], boot[b, big]) for b in range(cfg["n_boot"])])
        finite = slopes[np.isfinite(slopes)]
        out["targets"][str(target)] = {
            "h_star": {str(d): (None if math.isnan(v) else v) for d, v in zip(dims, h_star)},
            "exponent": fit_slope(log_d[big], log_hs[big]),
            "exponent_ci95": [float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))]
            if len(finite) > 1
            else None,
            "exponent_all_d": fit_slope(log_d, log_hs),
            "fit_dims": [d for d in dims if d >= FIT_MIN_D],
        }
    pts = [r for r in rows if r["a_step"] == a_step and r["d"] >= FIT_MIN_D
           and r["acceptance"] >= DH_FIT_MIN_ACCEPTANCE and r["mean_abs_dH"]]  # fmt: skip
    if len(pts) >= 4:
        design = np.column_stack(
            [np.ones(len(pts)), np.log([r["d"] for r in pts]), np.log([r["h"] for r in pts])]
        )
        y = np.log([r["mean_abs_dH"] for r in pts])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ coef
        s2 = float(resid @ resid) / max(len(pts) - 3, 1)
        cov = s2 * np.linalg.inv(design.T @ design)
        beta, gamma = float(coef[1]), float(coef[2])
        grad = np.array([0.0, -1.0 / gamma, beta / gamma**2])  # d(-beta/gamma)
        out["energy_error_fit"] = {
            "n_points": len(pts),
            "beta_log_d": beta,
            "beta_stderr": float(math.sqrt(cov[1, 1])),
            "gamma_log_h": gamma,
            "gamma_stderr": float(math.sqrt(cov[2, 2])),
            "exponent": -beta / gamma,
            "exponent_stderr": float(math.sqrt(grad @ cov @ grad)),
        }
    return out


# ---------------------------------------------------------------------------- ESS per second
def ess_run(n_chains: int, cfg: dict, seed: int) -> dict:
    """``ml.HMC`` on the ellipse: the bulk ESS of ``y`` over every chain, per second of the
    recorded steps."""
    import arviz

    p = get_problem("ellipse")
    sampler = ml.HMC(p.make_manifold(), p.potential, step_size=ESS_STEP)
    gen = torch.Generator().manual_seed(seed)
    x0 = p.initial(n_chains, dtype=DT, generator=gen)
    n_rec = cfg["ess_steps"]
    with torch.no_grad():
        state = sampler.init(x0, generator=gen)
        for _ in range(cfg["ess_burn_in"]):
            state, _, _ = sampler.step(state, gen)
        trace = torch.empty(n_rec, n_chains, dtype=DT)
        acc = torch.zeros((), dtype=torch.int64)
        start = time.perf_counter()
        for i in range(n_rec):
            state, _, _ = sampler.step(state, gen)
            trace[i] = state.x[..., 1]
            acc += state.info["accepted"].sum()
        seconds = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = float(np.asarray(arviz.ess(trace.T.numpy(), method="bulk")))
    return {
        "n_chains": n_chains,
        "seconds": seconds,
        "ess_bulk": ess,
        "ess_per_second": ess / seconds,
        "ess_per_chain_step": ess / (n_rec * n_chains),
        "acceptance": int(acc) / (n_rec * n_chains),
        "mean_y": float(trace.mean()),
    }


# ---------------------------------------------------------------------------------- output
def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows, dims = doc["grid"], doc["settings"]["dims"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    cmap = plt.get_cmap("viridis")
    for k, d in enumerate(dims):
        colour = cmap(k / max(len(dims) - 1, 1))
        for a_step, style in (("geodesic", "-o"), ("rattle", "--s")):
            pts = sorted((r for r in rows if r["d"] == d and r["a_step"] == a_step),
                         key=lambda r: r["h"])  # fmt: skip
            label = f"d={d}" if a_step == "geodesic" else None
            hs = [r["h"] for r in pts]
            acc = [r["acceptance"] for r in pts]
            axes[0, 0].plot(hs, acc, style, color=colour, ms=3, label=label)
            axes[0, 1].plot([r["c"] for r in pts], acc, style, color=colour, ms=3, label=label)
            axes[1, 1].plot(hs, [r["mean_abs_dH"] or math.nan for r in pts], style,
                            color=colour, ms=3, label=label)  # fmt: skip
    for ax in (axes[0, 0], axes[0, 1]):
        ax.set_xscale("log")
        ax.set_ylabel("acceptance rate")
    axes[0, 0].set_xlabel("step size h")
    axes[0, 0].set_title("solid: exact geodesic, dashed: RATTLE")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_xlabel("h d^(1/4)")
    axes[0, 1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0, 1].set_title("against the scaled step")
    axes[1, 1].set_xscale("log")
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_xlabel("step size h")
    axes[1, 1].set_ylabel("mean |dH|")
    ax = axes[1, 0]
    for a_step, style in (("geodesic", "-o"), ("rattle", "--s")):
        for j, (target, t) in enumerate(doc["scaling"][a_step]["targets"].items()):
            hs = [t["h_star"][str(d)] for d in dims]
            ci = t["exponent_ci95"]
            ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            ax.plot(dims, [math.nan if v is None else v for v in hs], style, color=f"C{j}",
                    label=f"{a_step}, acc {target}: {t['exponent']:.3f}{ci_txt}")  # fmt: skip
    ref = np.array(dims, dtype=float)
    ax.plot(ref, 0.5 * ref**-0.25, ":", color="k", label="d^(-1/4)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("h* for the target acceptance")
    ax.set_title(f"fitted exponent over d >= {FIT_MIN_D} [95% bootstrap]")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ess(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["ess"]["rows"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["n_chains"] for r in rows]
    ax.plot(n, [r["ess_per_second_median"] for r in rows], "-o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chains")
    ax.set_ylabel("bulk ESS of y per second")
    ax.set_title("ml.HMC on the ellipse, one CPU thread, float64")
    ax2.plot(n, [r["ess_per_chain_step_median"] for r in rows], "-o")
    ax2.set_xscale("log")
    ax2.set_xlabel("chains")
    ax2.set_ylabel("ESS per chain-step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "hmc_acceptance.json")
    parser.add_argument("--quick", action="store_true", help="a coarse, small run for the tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    start = time.perf_counter()
    doc = {
        "description": "ml.HMC acceptance vs step and dimension on spheres; ESS/s vs chains",
        "settings": {
            **cfg,
            "n_leapfrog": N_LEAPFROG,
            "targets": TARGETS,
            "fit_min_d": FIT_MIN_D,
            "fit_min_acceptance": DH_FIT_MIN_ACCEPTANCE,
            "dtype": "float64",
            "seed": args.seed,
            "quick": args.quick,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": list(os.getloadavg()),
        "grid": [],
    }
    per_chain = {}
    seed = args.seed
    for d in cfg["dims"]:
        for geodesic in (True, False):
            for c in cfg["c_grid"]:
                h = c * d**-0.25
                seed += 1
                row, chains = sphere_run(d, h, geodesic, cfg, seed)
                doc["grid"].append(row)
                per_chain[(row["a_step"], d, h)] = chains
            print(f"d={d:5d} {row['a_step']:8s} acceptance "
                  + " ".join(f"{r['acceptance']:.2f}" for r in doc["grid"][-len(cfg["c_grid"]):]),
                  flush=True)  # fmt: skip
            doc["seconds"] = round(time.perf_counter() - start, 1)
            _write(args.out, doc)
    doc["scaling"] = {
        a_step: scaling(doc["grid"], per_chain, a_step, cfg["dims"], cfg, args.seed)
        for a_step in ("geodesic", "rattle")
    }
    for a_step, s in doc["scaling"].items():
        for target, t in s["targets"].items():
            print(f"{a_step:8s} acceptance {target}: h* ~ d^{t['exponent']:.3f} "
                  f"CI {t['exponent_ci95']}", flush=True)  # fmt: skip
        if "energy_error_fit" in s:
            e = s["energy_error_fit"]
            print(f"{a_step:8s} |dH| ~ d^{e['beta_log_d']:.3f} h^{e['gamma_log_h']:.3f}: "
                  f"exponent {e['exponent']:.3f} +- {e['exponent_stderr']:.3f}")  # fmt: skip
    doc["seconds"] = round(time.perf_counter() - start, 1)
    _write(args.out, doc)
    plot(doc, args.out.with_suffix(".png"))

    try:
        import arviz  # noqa: F401
    except ImportError:
        doc["ess"] = {"skipped": "arviz is not installed"}
    else:
        doc["ess"] = {
            "problem": "ellipse",
            "step_size": ESS_STEP,
            "n_leapfrog": 1,
            "observable": "y",
            "load_start": list(os.getloadavg()),
            "rows": [],
        }
        for n in cfg["ess_chains"]:
            reps = cfg["ess_repeats_small"] if n <= 1000 else 1
            runs = [ess_run(n, cfg, args.seed + 100 + r) for r in range(reps)]
            row = {
                "n_chains": n,
                "repeats": runs,
                "ess_per_second_median": float(np.median([r["ess_per_second"] for r in runs])),
                "ess_per_chain_step_median": float(
                    np.median([r["ess_per_chain_step"] for r in runs])
                ),
                "seconds_median": float(np.median([r["seconds"] for r in runs])),
            }
            doc["ess"]["rows"].append(row)
            print(f"ESS: {n:7d} chains  {row['ess_per_second_median']:10.1f} ESS/s  "
                  f"{row['ess_per_chain_step_median']:.4f} per chain-step", flush=True)  # fmt: skip
            doc["seconds"] = round(time.perf_counter() - start, 1)
            _write(args.out, doc)
        doc["ess"]["load_end"] = list(os.getloadavg())
        plot_ess(doc, args.out.with_name(args.out.stem + "_ess.png"))
    doc["load_end"] = list(os.getloadavg())
    doc["seconds"] = round(time.perf_counter() - start, 1)
    _write(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
