"""Weak order of stationary averages, measured with coupled step-size pairs.

Target: von Mises-Fisher on S^2, ``U = -kappa z`` with ``kappa = 4``, observable ``z``; exact
``E[z] = coth(kappa) - 1/kappa``. The error of a second-order scheme at ``h = 0.05`` is a few
1e-5, below what independent runs resolve in minutes. So every point of a sweep runs a *coupled
pair*: a chain at step ``h`` and a chain at ``h/2`` driven by the same Brownian increments
([`manifold_langevin.noise.CoupledNoise`][manifold_langevin.noise.CoupledNoise]) from the same
start. Each chain's law is untouched, and the difference of their averages ``D(h) = E_h - E_{h/2} =
C h^p (1 - 2^-p) + ...`` has a standard error that shrinks like ``h`` (the chains track each other)
instead of staying at the Monte Carlo level. The order ``p`` is the weighted least-squares slope of
``|D|`` against ``h`` (95% confidence interval from the fit, widened when it misfits), over a sweep
spanning 8x in ``h`` at fixed physical time. Every point also reports both chains' errors against
the exact value, and a Richardson check extrapolates the smallest pair with the expected order
(``E_{h/2} - D / (2^p - 1)``, per chain, so its standard error is exact).

Also: a friction sweep of the BAOAB error constant ``C = D / (h^2 (1 - 1/4))`` for gamma from 0.1
to 100, the ratio of the OBABO and BAOAB constants, and a stochastic-gradient study (Gaussian noise
of standard deviation ``sigma`` added to the force) whose ``O(h)`` bias is compared with the
heating estimate ``tau_eff = tau + h sigma^2 / (2 gamma)``: BAOAB evaluates one force per step and
uses it in two half kicks, so each step adds momentum variance ``h^2 sigma^2`` (per tangent
direction), which the O-step dissipates at rate ``1 - exp(-2 gamma h) ~ 2 gamma h``.

Run ``manifold-langevin validate --order`` or ``python -m manifold_langevin.testing.weak_order
[--quick] [--scheme S ...] [--out DIR]``; writes ``weak_order.json`` and ``weak_order.png`` to
``--out`` (``--quick`` adds ``/quick``). [`check_weak_order`][] measures the order of a scheme
of your own on the same target.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import curve_fit

from ..integrators.schemes import SCHEMES as REGISTRY
from ..manifolds.sphere import Sphere
from ..noise import CoupledNoise
from ..sampling.samplers import Langevin, OverdampedLangevin
from .output import DEFAULT_OUT, write_json
from .workers import map_runs

__all__ = [
    "EXACT",
    "KAPPA",
    "ORDER_TOLERANCE",
    "SCHEMES",
    "Scheme",
    "check_weak_order",
    "main",
    "order_holds",
    "run",
    "study",
]

KAPPA = 4.0


def mean_z(tau: float = 1.0) -> float:
    """Exact ``E[z]`` under ``exp(kappa z / tau)`` on S^2."""
    k = KAPPA / tau
    return 1.0 / math.tanh(k) - 1.0 / k


EXACT = mean_z()


def force(x: torch.Tensor) -> torch.Tensor:
    """``-grad U`` for ``U = -kappa z`` (ambient; the kick projects it)."""
    f = torch.zeros_like(x)
    f[..., -1] = KAPPA
    return f


def noisy_force(sigma: float, generator: torch.Generator):
    """The force plus i.i.d. ``N(0, sigma^2)`` noise per entry (a stochastic gradient)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return force(x) + sigma * noise

    return f


#: RATTLE sub-steps of g-BAOAB's A steps in this study
G_BAOAB_SUBSTEPS = 2


@dataclass(frozen=True)
class Scheme:
    """A scheme of the study: how to build it at a step size, and the order we expect.

    ``build(h, friction, f)`` returns an integrator for ``exp(kappa z)`` on the unit sphere
    with force ``f``; ``expected`` is the registry's declared order for the registry's schemes.
    """

    name: str
    expected: int
    overdamped: bool = False
    factory: Callable | None = None

    def build(self, h: float, friction: float = 1.0, f=force):
        if self.factory is not None:
            return self.factory(h, friction, f)
        if self.overdamped:
            return OverdampedLangevin(Sphere(), step_size=h, scheme=self.name, force=f)
        entry = REGISTRY[self.name]
        options = dict(entry.options)
        if not options.get("geodesic", True):
            options["substeps"] = G_BAOAB_SUBSTEPS
        return Langevin(Sphere(), step_size=h, friction=friction, scheme=entry.word, force=f,
                        **options)  # fmt: skip


SCHEMES = {
    name: Scheme(name, entry.order, overdamped=entry.dynamics == "overdamped")
    for name, entry in REGISTRY.items()
}


@dataclass(frozen=True)
class Sweep:
    """Step sizes (coarse ``h`` of each pair), chains per point, physical time and burn-in."""

    steps: tuple[float, ...]
    chains: tuple[int, ...]
    time: float
    burn: float


def sweep(scheme: Scheme, quick: bool) -> Sweep:
    """The sweep of ``scheme``: 8x in ``h`` (4x in quick mode); more chains where ``D`` is small.

    Quick mode is for the tests: runs short enough for CI, on the schemes whose constant makes the
    slope resolvable in seconds (OBABO, projected Euler-Maruyama).
    """
    if scheme.name == "euler":
        if quick:
            return Sweep((0.02, 0.01, 0.005), (2000, 4000, 8000), 5.0, 2.0)
        return Sweep((0.08, 0.04, 0.02, 0.01), (8000, 16000, 32000, 64000), 10.0, 2.0)
    if scheme.overdamped:
        if quick:
            return Sweep((0.04, 0.02, 0.01), (4000, 8000, 16000), 10.0, 2.0)
        return Sweep((0.08, 0.04, 0.02, 0.01), (8000, 16000, 32000, 64000), 10.0, 2.0)
    if quick:
        return Sweep((0.4, 0.2, 0.1), (5000, 10000, 20000), 20.0, 5.0)
    return Sweep((0.4, 0.2, 0.1, 0.05), (10000, 20000, 60000, 200000), 30.0, 5.0)


def _summary(values: torch.Tensor, exact: float | None = None) -> dict:
    est = float(values.mean())
    out = {"estimate": est, "stderr": float(values.std()) / math.sqrt(values.numel())}
    if exact is not None:
        out["error"] = est - exact
    return out


def coupled_point(
    scheme: Scheme,
    h: float,
    n_chains: int,
    time_: float,
    burn: float,
    seed: int,
    device: str = "cpu",
    friction: float = 1.0,
    sigma: float = 0.0,
) -> dict:
    """Run a coarse (``h``) and a fine (``h/2``) chain per start, coupled; per-chain averages."""
    gen = torch.Generator(device=device).manual_seed(seed)
    f = noisy_force(sigma, torch.Generator(device=device).manual_seed(seed + 7)) if sigma else force
    coarse, fine = scheme.build(h, friction, f), scheme.build(h / 2, friction, f)
    x0 = Sphere().random(n_chains, 3, dtype=torch.float64, device=device, generator=gen)
    sc = coarse.init(x0, generator=gen)
    # (the overdamped fine chain draws its start from the same generator: reproducible)
    sf = fine.init(x0, generator=gen) if scheme.overdamped else fine.init(x0, p0=sc.p)
    noise = CoupledNoise(gen)
    n, nb = max(round((time_ + burn) / h), 2), round(burn / h)
    acc_c = torch.zeros(n_chains, dtype=torch.float64, device=device)
    acc_f = torch.zeros_like(acc_c)
    failures = torch.zeros((), dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    for i in range(n):
        for k in (0, 1):
            sf, ok_f, fin_f = fine.step(sf, noise.fine(k))
            failures += (~(ok_f & fin_f)).sum()
            if i >= nb:
                acc_f += sf.x[..., -1]
        sc, ok_c, fin_c = coarse.step(sc, noise.coarse())
        failures += (~(ok_c & fin_c)).sum()
        if i >= nb:
            acc_c += sc.x[..., -1]
    ec, ef = acc_c / (n - nb), acc_f / (2 * (n - nb))
    residual = max(
        float(coarse.manifold.residual_norm(sc.x).max()),
        float(fine.manifold.residual_norm(sf.x).max()),
    )
    ratio = 2.0**scheme.expected
    return {
        "h": h,
        "n_chains": n_chains,
        "coarse": _summary(ec, EXACT),
        "fine": _summary(ef, EXACT),
        "difference": _summary(ec - ef),
        "richardson": _summary(ef - (ec - ef) / (ratio - 1), EXACT),
        "failure_rate": int(failures) / (3 * n * n_chains),
        "max_residual": residual,
        "seconds": time.perf_counter() - t0,
    }


def fit_order(h: np.ndarray, d: np.ndarray, se: np.ndarray) -> dict:
    """Weighted least squares ``d = A h^p``: the slope ``p`` with a 95% confidence interval."""
    p0 = (float(d[-1] / h[-1] ** 2), 2.0)
    (a, p), cov = curve_fit(
        lambda x, a, p: a * x**p, h, d, p0=p0, sigma=se, absolute_sigma=True, maxfev=20000
    )
    dof = max(len(h) - 2, 1)
    chi2 = float((((d - a * h**p) / se) ** 2).sum())
    # the errors are known (absolute_sigma): a normal interval, widened by the Birge ratio
    # sqrt(chi2 / dof) when the power law misfits beyond the noise
    half = 1.96 * math.sqrt(cov[1, 1]) * math.sqrt(max(chi2 / dof, 1.0))
    return {"slope": float(p), "ci95": [p - half, p + half], "amplitude": float(a),
            "chi2_per_dof": chi2 / dof}  # fmt: skip


def local_slopes(points: list[dict]) -> list[dict]:
    """Slopes between neighbouring step sizes, with delta-method standard errors."""
    out = []
    for big, small in itertools.pairwise(points):
        d1, d2 = big["difference"], small["difference"]
        lr = math.log(big["h"] / small["h"])
        rel = math.hypot(d1["stderr"] / d1["estimate"], d2["stderr"] / d2["estimate"])
        slope = math.log(abs(d1["estimate"] / d2["estimate"])) / lr
        out.append({"h": [big["h"], small["h"]], "slope": slope, "stderr": rel / lr})
    return out


def study(
    scheme: Scheme,
    quick: bool,
    seed: int,
    device: str,
    progress: bool = True,
    plan: Sweep | None = None,
) -> dict:
    """One scheme's sweep (``plan``, default [`sweep`][]'s): points, fitted order, local
    slopes, Richardson at the smallest pair."""
    sw = sweep(scheme, quick) if plan is None else plan
    pts = [
        coupled_point(scheme, h, n, sw.time, sw.burn, seed + 10 * i, device)
        for i, (h, n) in enumerate(zip(sw.steps, sw.chains))
    ]
    h = np.array([p["h"] for p in pts])
    d = np.array([p["difference"]["estimate"] for p in pts])
    se = np.array([p["difference"]["stderr"] for p in pts])
    fit = fit_order(h, d, se)
    rich = pts[-1]["richardson"]
    out = {
        "scheme": scheme.name,
        "expected": scheme.expected,
        "time": sw.time,
        "burn": sw.burn,
        "points": pts,
        "fit": fit,
        "local_slopes": local_slopes(pts),
        # amplitude A of D = A h^p; the error constant C = A / (1 - 2^-p)
        "constant": fit["amplitude"] / (1 - 2.0 ** -fit["slope"]),
        "richardson": {**rich, "consistent": abs(rich["error"]) <= 3 * rich["stderr"]},
    }
    if progress:
        print(_study_line(out), flush=True)
    return out


def _study_task(task: tuple) -> dict:
    name, quick, seed, device = task
    return study(SCHEMES[name], quick, seed, device, progress=False)


def _study_line(s: dict) -> str:
    fit = s["fit"]
    return (
        f"{s['scheme']:>8}: slope {fit['slope']:.2f} [{fit['ci95'][0]:.2f}, "
        f"{fit['ci95'][1]:.2f}] (expected {s['expected']}); local "
        + ", ".join(f"{x['slope']:.2f}+-{x['stderr']:.2f}" for x in s["local_slopes"])
        + f"; {sum(p['seconds'] for p in s['points']):.0f} s"
    )


#: how far the fitted slope may be from the declared order (its neighbours are 1 away)
ORDER_TOLERANCE = 0.35


def order_holds(fit: dict, expected: int) -> bool:
    """Whether a fitted slope shows the declared order and not a neighbouring one: within
    ``ORDER_TOLERANCE`` (0.35) of ``expected``,
    with a 95% interval that excludes ``expected - 1`` and ``expected + 1``.

    The interval itself need not contain ``expected``: the sweep's step sizes are not
    asymptotically small, and the next term of the error bends the slope by a tenth or two
    (projected Euler-Maruyama measures 1.14 on this target, with local slopes falling towards 1
    as ``h`` shrinks), so requiring the exact integer inside a narrow interval would fail a correct
    scheme, while a scheme of the wrong order misses by about 1."""
    lo, hi = fit["ci95"]
    return bool(
        abs(fit["slope"] - expected) <= ORDER_TOLERANCE and expected - 1 < lo and hi < expected + 1
    )


def check_weak_order(
    build: Callable,
    expected: int,
    *,
    steps: tuple[float, ...],
    chains: tuple[int, ...],
    time: float,
    burn: float,
    overdamped: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    r"""Measure the weak order of a scheme of your own on this study's target.

    ``build(h, friction, force)`` returns an integrator (``init`` and ``step``, accepting a noise
    source in place of a generator, as every integrator of the package does) sampling
    $\\exp(\\kappa z)$ on the unit sphere $S^2 \\subset \\mathbb{R}^3$ with the force ``force``
    (a callable, $-\nabla U$). Each step size of ``steps`` runs a coarse chain at ``h`` and a
    fine one at ``h / 2`` driven by the same Brownian increments, ``chains`` chains each, for
    ``time`` units of physical time after ``burn``; the slope of $|E_h - E_{h/2}|$ against
    $h$ is the order.

    Returns:
        The study record: ``fit`` (``slope`` with its 95% interval ``ci95``), the points, the
        local slopes and a Richardson check with the ``expected`` order; ``consistent`` is
        [`order_holds`][]'s verdict.

    Examples:
        >>> import manifold_langevin as ml
        >>> from manifold_langevin.testing.weak_order import check_weak_order
        >>> def build(h, friction, force):
        ...     return ml.OverdampedLangevin(ml.Sphere(), step_size=h, force=force)
        >>> res = check_weak_order(build, 1, steps=(0.02, 0.01), chains=(500, 1000), time=2.0,
        ...                        burn=1.0, overdamped=True)
        >>> sorted(res["fit"])
        ['amplitude', 'chi2_per_dof', 'ci95', 'slope']
    """
    if len(steps) != len(chains) or len(steps) < 2:
        raise ValueError("give at least two step sizes and one chain count per step size")
    scheme = Scheme("custom", int(expected), overdamped=overdamped,
                    factory=lambda h, friction, f: build(h, friction, f))  # fmt: skip
    plan = Sweep(tuple(steps), tuple(chains), float(time), float(burn))
    out = study(scheme, False, seed, device, progress=False, plan=plan)
    out["consistent"] = order_holds(out["fit"], expected)
    return out


def friction_sweep(quick: bool, seed: int, device: str, h: float = 0.2) -> list[dict]:
    """BAOAB's error constant ``C = D / (h^2 (1 - 1/4))`` at fixed ``h`` versus friction."""
    out = []
    gammas = (0.3, 1.0, 10.0) if quick else (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    for i, gamma in enumerate(gammas):
        # mixing slows at small friction (~1/gamma) and at large friction (~gamma / kappa)
        t = (20.0 if quick else 40.0) * max(1.0, 1.0 / gamma, gamma / KAPPA)
        p = coupled_point(SCHEMES["BAOAB"], h, 4000 if quick else 20000, t, t / 8,
                          seed + 100 + i, device, friction=gamma)  # fmt: skip
        d = p["difference"]
        p.update(friction=gamma, constant=d["estimate"] / (0.75 * h**2),
                 constant_stderr=d["stderr"] / (0.75 * h**2))  # fmt: skip
        out.append(p)
    return out


def stochastic_gradient(quick: bool, seed: int, device: str, sigma: float = 2.0) -> list[dict]:
    """BAOAB with a noisy force: the ``O(h)`` bias against the heating estimate."""
    out = []
    steps = (0.2, 0.1) if quick else (0.2, 0.1, 0.05)
    for i, h in enumerate(steps):
        p = coupled_point(SCHEMES["BAOAB"], h, 4000 if quick else 20000, 20.0 if quick else 40.0,
                          5.0, seed + 200 + i, device, sigma=sigma)  # fmt: skip
        tau_eff = 1.0 + h * sigma**2 / 2.0
        p.update(sigma=sigma, predicted_error=mean_z(tau_eff) - EXACT)
        out.append(p)
    return out


#: the schemes of a quick run: constants large enough to resolve the slope in seconds (OBABO for
#: the second-order splittings, projected Euler-Maruyama for the first-order scheme)
QUICK_SCHEMES = ("OBABO", "euler")


def run(quick=False, schemes=None, device="cpu", seed=0, extras=True, progress=True, jobs=1):
    """The whole study; ``extras`` adds the friction sweep and the stochastic-gradient study.

    ``schemes=None`` runs every scheme of the registry (quick: ``QUICK_SCHEMES``). Each study
    gets ``consistent``, [`order_holds`][]'s verdict on its fit; the result's ``all_consistent``
    says whether every study's holds. ``jobs`` worker processes run the
    schemes' studies side by side (the results do not depend on it)."""
    if schemes is None:
        schemes = QUICK_SCHEMES if quick else SCHEMES
    names = list(schemes)
    for n in names:
        if n not in SCHEMES:
            raise ValueError(f"unknown scheme {n!r}; valid: {', '.join(SCHEMES)}")
    tasks = [(n, quick, seed, device) for n in names]
    studies = []
    for s in map_runs(_study_task, tasks, jobs):
        s["consistent"] = order_holds(s["fit"], s["expected"])
        if progress:
            print(_study_line(s), flush=True)
        studies.append(s)
    results = {"target": "vMF on S^2, U = -kappa z", "kappa": KAPPA, "exact": EXACT,
               "quick": quick, "studies": studies,
               "all_consistent": all(s["consistent"] for s in studies)}  # fmt: skip
    const = {s["scheme"]: s["constant"] for s in results["studies"]}
    if "BAOAB" in const and "OBABO" in const:
        results["obabo_over_baoab_constant"] = const["OBABO"] / const["BAOAB"]
    if extras:
        results["friction_sweep"] = friction_sweep(quick, seed, device)
        results["stochastic_gradient"] = stochastic_gradient(quick, seed, device)
    return results


def plot(results: dict, path: Path) -> None:
    """Log-log ``|D(h)|`` per scheme with fits; friction sweep; stochastic-gradient bias."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extras = "friction_sweep" in results
    fig, ax = plt.subplots(1, 4 if extras else 2, figsize=(18 if extras else 10, 4.2))
    for s in results["studies"]:
        axis = ax[1] if s["scheme"] in ("euler", "lm") else ax[0]
        h = np.array([p["h"] for p in s["points"]])
        d = np.abs([p["difference"]["estimate"] for p in s["points"]])
        se = np.array([p["difference"]["stderr"] for p in s["points"]])
        f = s["fit"]
        line = axis.errorbar(h, d, yerr=2 * se, marker="o", capsize=2,
                             label=f"{s['scheme']}: slope {f['slope']:.2f} "
                             f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}]")  # fmt: skip
        axis.plot(h, abs(f["amplitude"]) * h ** f["slope"], "--",
                  color=line[0].get_color(), alpha=0.6)  # fmt: skip
    for axis, title in zip(ax[:2], ["underdamped (step h)", "overdamped (step dt)"]):
        axis.set(xscale="log", yscale="log", xlabel="step size",
                 ylabel="|E_h[z] - E_{h/2}[z]|", title=title)  # fmt: skip
        axis.legend(fontsize=7)
    if extras:
        fr = results["friction_sweep"]
        g = [p["friction"] for p in fr]
        ax[2].errorbar(g, [p["constant"] for p in fr], yerr=[2 * p["constant_stderr"] for p in fr],
                       marker="o", capsize=2)  # fmt: skip
        ax[2].axhline(0, color="k", lw=0.5)
        ax[2].set(xscale="log", xlabel="friction gamma", ylabel="C = D / (0.75 h^2)",
                  title="BAOAB error constant, h = 0.2")  # fmt: skip
        sg = results["stochastic_gradient"]
        h = [p["h"] for p in sg]
        ax[3].errorbar(h, [p["coarse"]["error"] for p in sg],
                       yerr=[2 * p["coarse"]["stderr"] for p in sg], marker="o", capsize=2,
                       label="measured (BAOAB, noisy force)")  # fmt: skip
        ax[3].plot(h, [p["predicted_error"] for p in sg], "k--",
                   label="tau_eff = tau + h sigma^2 / (2 gamma)")  # fmt: skip
        ax[3].set(xlabel="h", ylabel="error of E[z]",
                  title=f"stochastic gradient, sigma = {sg[0]['sigma']}")  # fmt: skip
        ax[3].legend(fontsize=7)
    fig.suptitle(f"vMF on S^2 (kappa = {KAPPA:g}): weak error of stationary averages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    """A markdown table of the fitted orders."""
    rows = ["| scheme | expected | slope | 95% CI | local slopes (large to small h) | "
            "Richardson error (se) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for s in results["studies"]:
        f, r = s["fit"], s["richardson"]
        local = ", ".join(f"{x['slope']:.2f}+-{x['stderr']:.2f}" for x in s["local_slopes"])
        rows.append(
            f"| {s['scheme']} | {s['expected']} | {f['slope']:.2f} | "
            f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {local} | "
            f"{r['error']:+.1e} ({r['stderr']:.1e}) |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (about a minute)")
    ap.add_argument("--scheme", action="append", choices=list(SCHEMES))
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the friction sweep and the stochastic-gradient study")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output folder (default: {DEFAULT_OUT})")  # fmt: skip
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run(quick=args.quick, schemes=args.scheme, device=args.device, seed=args.seed,
                  extras=not args.no_extras, jobs=args.jobs)  # fmt: skip
    results["seconds"] = time.perf_counter() - t0
    results["torch"] = torch.__version__
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "weak_order.json", results)
    plot(results, out / "weak_order.png")
    print(table(results))
    print(f"wrote {out / 'weak_order.json'} and weak_order.png; {results['seconds']:.0f} s")
    return 0 if results["all_consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
