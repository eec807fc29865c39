"""The ``manifold-langevin`` command line: ``validate``, ``train`` and ``bench``.

One module per subcommand ([`validate`][manifold_langevin.cli.validate],
[`train`][manifold_langevin.cli.train], [`bench`][manifold_langevin.cli.bench]), and the
argument types they share ([`args`][manifold_langevin.cli.args]).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CheckpointError
from .bench import add_bench_parser
from .train import add_train_parser
from .validate import add_validate_parser

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="manifold-langevin",
        description="Constrained Langevin dynamics: evidence and tools.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    add_validate_parser(sub)
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
