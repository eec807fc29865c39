"""``manifold-langevin bench``: the performance evidence (optimizer steps and sampler throughput).

``manifold-langevin bench [--quick] [--what optim|sampler|all] [--case C ...] [--device D]
[--threads N] [--reps R] [--out DIR]`` runs ``validation/bench_optim.py`` (CoLA's step against
SGD, geoopt, the paper's SHAKE and torch's orthogonal parametrizations, as ratios measured in one
process) and/or ``validation/bench_sampler.py`` (chain-steps per second against the number of
chains and the dimension), prints the tables and the targets, and writes JSON and PNG files under
``--out``. The benchmarks compare with peers (geoopt, the paper's algorithm) and are evidence for
the documentation, so they live in the source tree's ``validation/`` folder: the command needs a
clone (``pip install -e .`` from its root), and says so when run without one.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .args import device, non_negative_int, positive_int

__all__ = ["add_bench_parser", "run_bench", "validation_module"]

_WHAT = ("all", "optim", "sampler")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Returns the new subparser; its ``func`` default is [`run_bench`][].
    """
    b = subparsers.add_parser(
        "bench",
        help="time CoLA's step and the sampler against their peers",
        description=(
            "Optimizer-step benchmark (ratios against SGD, geoopt, the paper's SHAKE and torch's "
            "orthogonal parametrizations, medians over many repetitions in one process) and "
            "sampler throughput (chain-steps per second against chains and dimension)."
        ),
    )
    b.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    b.add_argument("--what", choices=_WHAT, default="all", help="which benchmark (default: all)")
    b.add_argument(
        "--case", action="append", help="optimizer case (repeatable; default: all cases)"
    )
    b.add_argument("--device", type=device, default="cpu", help="torch device (default: cpu)")
    b.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    b.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: leave as is)"
    )
    b.add_argument(
        "--reps", type=positive_int, default=None, help="repetitions per optimizer method"
    )
    b.add_argument(
        "--out", type=Path, default=None, help="output folder (default: validation/results)"
    )
    b.set_defaults(func=run_bench)
    return b


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks selected by ``args`` (parsed by [`add_bench_parser`][]'s parser)."""
    common = ["--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    if args.quick:
        common.append("--quick")
    if args.out is not None:
        common += ["--out", str(args.out)]
    status = 0
    if args.what in ("all", "optim"):
        argv = list(common)
        for c in args.case or ():
            argv += ["--case", c]
        if args.reps is not None:
            argv += ["--reps", str(args.reps)]
        status = max(status, int(validation_module("bench_optim").main(argv)))
    if args.what in ("all", "sampler"):
        status = max(status, int(validation_module("bench_sampler").main(common)))
    return status


def validation_module(module: str, command: str = "bench"):
    """Import ``validation.<module>`` from the source checkout, with a clear error when absent."""
    try:
        return importlib.import_module(f"validation.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("validation", f"validation.{module}"):
            raise
        raise SystemExit(
            f"manifold-langevin {command}: the benchmark scripts of validation/ are not "
            "importable. They ship with the source tree: clone the repository and run "
            "`pip install -e .` from its root."
        ) from exc
