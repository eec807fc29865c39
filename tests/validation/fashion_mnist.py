"""The Fashion-MNIST guard of the real-data experiment tests.

``.ci/run`` installs Debian's ``dataset-fashion-mnist`` and sets ``MANIFOLD_LANGEVIN_CI=1``: there
a missing dataset fails every test of a module that calls :func:`require` (a broken install must
not pass as a skip); elsewhere (a developer machine without the package) the module is skipped.
:func:`skip_if_missing_outside_ci` applies the same rule to one test.
"""

from __future__ import annotations

import os

import pytest

from validation.experiment_data import load_fashion_mnist


def require() -> str | None:
    """At a test module's import: skip the module if Fashion-MNIST is missing outside CI;
    return why it is missing under CI (``None`` when it is there)."""
    try:
        load_fashion_mnist()
    except FileNotFoundError as exc:
        if not os.environ.get("MANIFOLD_LANGEVIN_CI"):
            pytest.skip(str(exc), allow_module_level=True)
        return str(exc)
    return None


def skip_if_missing_outside_ci() -> None:
    """In a single test: skip it if Fashion-MNIST is missing outside CI (under CI it runs, and
    fails on the missing files)."""
    if os.environ.get("MANIFOLD_LANGEVIN_CI"):
        return
    try:
        load_fashion_mnist()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def fail_if_missing(missing: str | None) -> None:
    """In an autouse fixture: under CI each test fails (the rest of the suite still runs)."""
    if missing is not None:
        pytest.fail(f"CI installs Fashion-MNIST (.ci/run) but it is missing: {missing}")
