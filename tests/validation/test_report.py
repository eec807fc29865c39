"""``validation/report.py``: the committed pages are what the generator writes from the committed
JSON and the templates of ``validation/templates/``, so neither can drift from the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from validation import report

DOCS = Path(__file__).parent.parent.parent / "docs"


def test_committed_pages_are_regenerated_unchanged(tmp_path):
    assert report.main(tmp_path) == 0
    for page in (
        "validation.md",
        "experiments.md",
        "performance.md",
        "exact-sampling-evidence.md",
    ):
        assert (tmp_path / page).read_text() == (DOCS / page).read_text(), page
    for png in (tmp_path / "img").iterdir():  # the figures are copies of the committed ones
        assert png.read_bytes() == (DOCS / "img" / png.name).read_bytes(), png.name


def test_fill_needs_every_placeholder():
    text = report.fill("performance/miss_other", description="a target")
    assert text == "a target: missed."
    with pytest.raises(KeyError, match="description"):
        report.fill("performance/miss_other")
