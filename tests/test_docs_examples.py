"""Every Python block of the README and the docs (``docs/**/*.md``) runs, so the examples cannot
rot. Each block runs on its own, single-threaded; shell commands go in ``bash`` blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.validation import fashion_mnist

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(code, id=f"{page.relative_to(ROOT).as_posix()}-{i}")


def test_pages_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/getting-started.md", "docs/tutorials/training.md"} <= names


@pytest.mark.parametrize("code", list(_blocks()))
def test_example_runs(code, capsys):
    # an example on Fashion-MNIST needs Debian's dataset-fashion-mnist: skipped without it,
    # except under CI (.ci/run installs it and sets MANIFOLD_LANGEVIN_CI), where it must run
    if "fashion_mnist(" in code:
        fashion_mnist.skip_if_missing_outside_ci()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
    finally:
        torch.set_num_threads(before)
