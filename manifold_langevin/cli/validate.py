"""``manifold-langevin validate``: every scheme against exact values, and the weak order.

``manifold-langevin validate [--quick] [--what all|measure|order] [--problem P ...]
[--scheme S ...] [--device D] [--dtype T] [--seed N] [--out DIR]`` runs the invariant-measure
suite ([`manifold_langevin.testing.invariant_measure`][manifold_langevin.testing.invariant_measure]:
every scheme on every problem against its exact values) and the weak-order study
([`manifold_langevin.testing.weak_order`][manifold_langevin.testing.weak_order]: the slope of the
step-size bias with its 95% confidence interval), prints both tables and writes JSON and PNG files
under ``--out``. The exit status is 0 when every run is consistent with its exact values and
every measured order is the declared one, not a neighbour (see
[`order_holds`][manifold_langevin.testing.weak_order.order_holds]). Everything it runs ships with
the package: it works from any folder of an installed wheel.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from ..sampling.loop import RHAT_WARN
from ..testing import invariant_measure as im
from ..testing import weak_order as wo
from ..testing.output import DEFAULT_OUT, write_json
from ..testing.problems import PROBLEMS
from ..testing.workers import default_jobs
from .args import device, positive_int

__all__ = ["add_validate_parser", "run_validate"]

_WHAT = ("all", "measure", "order")


def add_validate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``validate`` subcommand to ``subparsers``; returns its parser."""
    v = subparsers.add_parser(
        "validate",
        help="check every scheme against exact values and measure the weak orders",
        description=(
            "The invariant-measure suite (every scheme on every problem against its exact "
            "values) and the weak-order study (slopes with 95%% confidence intervals)."
        ),
    )
    v.add_argument("--quick", action="store_true", help="small run: under 2 minutes on 2 cores")
    v.add_argument("--what", choices=_WHAT, default="all", help="which study (default: all)")
    v.add_argument("--problem", action="append", choices=sorted(PROBLEMS),
                   help="problem name (repeatable; default: all)")  # fmt: skip
    v.add_argument("--scheme", action="append", choices=im.SCHEMES,
                   help="scheme (repeatable; default: all, or the quick selection)")  # fmt: skip
    v.add_argument(
        "--device", type=device, default="cpu", help="torch device of the chains (default: cpu)"
    )
    v.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    v.add_argument("--jobs", type=positive_int, default=None,
                   help="worker processes (default: the available cores)")  # fmt: skip
    v.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder (default: {DEFAULT_OUT})")  # fmt: skip
    v.set_defaults(func=run_validate)
    return v


def run_validate(args: argparse.Namespace) -> int:
    """Run the studies selected by ``args``; 0 when every check passes."""
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs is None:
        args.jobs = default_jobs() if torch.device(args.device).type == "cpu" else 1
    status = 0
    old_threads = torch.get_num_threads()
    if args.threads and torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        if args.what in ("all", "measure"):
            status = max(status, _measure(args, out))
        if args.what in ("all", "order"):
            status = max(status, _order(args, out))
    finally:
        torch.set_num_threads(old_threads)
    print("all checks passed" if status == 0 else "SOME CHECKS FAILED (see the tables above)")
    return status


def _measure(args, out: Path) -> int:
    t0 = time.perf_counter()
    print("invariant measure: every scheme against exact values", flush=True)
    records = im.run(problems=args.problem, schemes=args.scheme, quick=args.quick,
                     device=args.device, seed=args.seed, dtype=getattr(torch, args.dtype),
                     threads=None, verbose=True, jobs=args.jobs)  # fmt: skip
    pngs = im.plot(records, out) if records else []
    meta = {"quick": args.quick, "device": args.device, "dtype": args.dtype, "seed": args.seed,
            "torch": torch.__version__, "n_sigma": im.N_SIGMA, "bias_constant": im.BIAS_CONSTANT,
            "order": im.ORDER, "seconds": time.perf_counter() - t0,
            "all_consistent": all(r["consistent"] for r in records)}  # fmt: skip
    path = write_json(out / "invariant_measure.json", {"meta": meta, "runs": records})
    print(im.table(records))
    bad = [f"{r['problem']}/{r['scheme']}" for r in records if not r["consistent"]]
    print(f"{len(records) - len(bad)} of {len(records)} runs consistent with the exact values"
          + (f"; inconsistent: {', '.join(bad)}" if bad else "")
          + f" ({meta['seconds']:.0f} s; {path} and {len(pngs)} PNG(s))", flush=True)  # fmt: skip
    unmixed = [r for r in records if _max_rhat(r) > RHAT_WARN]
    if unmixed:
        print(f"note: {len(unmixed)} run(s) have an R-hat above {RHAT_WARN:g} (largest "
              f"{max(_max_rhat(r) for r in unmixed):.3g}): their chains are short next to "
              "their mixing time, so each chain alone has not forgotten its start; the check "
              "judges the averages over all chains by the exact values (R-hat, ESS and the "
              "ESS-based errors are in the JSON)", flush=True)  # fmt: skip
    return 0 if not bad else 1


def _max_rhat(record: dict) -> float:
    values = [o.get("rhat", math.nan) for o in record["observables"].values()]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=math.nan)


def _order(args, out: Path) -> int:
    t0 = time.perf_counter()
    print("weak order: coupled step-size pairs on von Mises-Fisher S^2", flush=True)
    schemes = args.scheme if args.scheme else None
    results = wo.run(quick=args.quick, schemes=schemes, device=args.device, seed=args.seed,
                     extras=not args.quick, jobs=args.jobs)  # fmt: skip
    results["seconds"] = time.perf_counter() - t0
    results["torch"] = torch.__version__
    write_json(out / "weak_order.json", results)
    wo.plot(results, out / "weak_order.png")
    print(wo.table(results))
    for s in results["studies"]:
        lo, hi = s["fit"]["ci95"]
        verdict = "holds" if s["consistent"] else "DOES NOT hold"
        print(f"{s['scheme']}: weak order {s['fit']['slope']:.2f}, 95% CI [{lo:.2f}, {hi:.2f}]; "
              f"the declared order {s['expected']} {verdict} (within {wo.ORDER_TOLERANCE} of it, "
              "its neighbours outside the interval)")  # fmt: skip
    print(f"({results['seconds']:.0f} s; {out / 'weak_order.json'})", flush=True)
    return 0 if results["all_consistent"] else 1
