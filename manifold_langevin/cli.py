"""The ``manifold-langevin`` command line: ``validate``, ``train`` and ``bench``.

``manifold-langevin validate [--quick] [--problem P] [--scheme S] [--device D] [--order]`` runs the
invariant-measure suite (every problem of ``validation/problems.py`` against its exact values) and,
with ``--order``, the weak-order study; it prints a table of measured versus exact values and writes
JSON and PNG files under ``--out``. The evidence scripts live in the source tree's ``validation/``
folder, so the command needs a source checkout installed with ``pip install -e .``.

``manifold-langevin train --dataset fashion-mnist|digits|spiral --constraint circle|orthogonal|none
...`` trains a network (see :mod:`manifold_langevin.train_cli`).

``manifold-langevin bench [--quick] [--what optim|sampler|all]`` times CoLA's step and the sampler
against their peers (see :mod:`manifold_langevin.bench_cli`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import CheckpointError

__all__ = [
    "device",
    "main",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


def _number(kind: type, text: str, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: an integer ``>= 1``."""
    return _number(int, text, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer ``>= 0``."""
    return _number(int, text, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number ``> 0`` (a step size, a learning rate)."""
    return _number(float, text, "a positive number", lambda v: 0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    """``argparse`` type: a number ``>= 0`` (``inf`` allowed, NaN not)."""
    return _number(float, text, "a non-negative number", lambda v: v >= 0)


def device(text: str) -> str:
    """``argparse`` type: a string ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``...)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu, cuda or cuda:0, got {text!r}"
        ) from None
    return text


def validation_module(module: str, command: str = "validate"):
    """Import ``validation.<module>`` from the source checkout, with a clear error when absent
    (``command`` names the subcommand in the message)."""
    try:
        return importlib.import_module(f"validation.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("validation", f"validation.{module}"):
            raise
        raise SystemExit(
            f"manifold-langevin {command}: the scripts of validation/ are not importable. "
            "They ship with the source tree: clone the repository and run `pip install -e .` "
            "from its root."
        ) from exc


def _validate(args: argparse.Namespace) -> int:
    im = validation_module("invariant_measure")
    argv = ["--device", args.device, "--seed", str(args.seed), "--dtype", args.dtype]
    if args.quick:
        argv.append("--quick")
    for p in args.problem or ():
        argv += ["--problem", p]
    for s in args.scheme or ():
        argv += ["--scheme", s]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    status = im.main(argv)
    if args.order:
        wo = validation_module("weak_order")
        wargv = ["--device", args.device, "--seed", str(args.seed)]
        if args.quick:
            wargv.append("--quick")
        if args.out is not None:
            wargv += ["--out", str(args.out)]
        status = max(status, wo.main(wargv))
    return status


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="manifold-langevin",
        description="Constrained Langevin dynamics: evidence and tools.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "validate",
        help="check every scheme against exact invariant-measure values",
        description="Run the invariant-measure suite (and, with --order, the weak-order study).",
    )
    v.add_argument("--quick", action="store_true", help="small run: under 2 minutes on 2 cores")
    v.add_argument("--problem", action="append", help="problem name (repeatable; default: all)")
    v.add_argument("--scheme", action="append", help="scheme name (repeatable; default: all)")
    v.add_argument(
        "--device", type=device, default="cpu", help="torch device of the chains (default: cpu)"
    )
    v.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--order", action="store_true", help="also run the weak-order step-size sweep")
    v.add_argument(
        "--out", type=Path, default=None, help="output folder (default: validation/results)"
    )
    v.set_defaults(func=_validate)
    from .bench_cli import add_bench_parser
    from .train_cli import add_train_parser

    add_train_parser(sub)
    add_bench_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``manifold-langevin`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as exc:
        # user errors (a missing dataset or package, a bad combination of options): the message,
        # without a traceback
        raise SystemExit(f"manifold-langevin {args.command}: error: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
