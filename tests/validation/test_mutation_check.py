"""The mutation check's table stays in step with the code (no mutant is run here).

``validation/mutation_check.py`` plants each mutant by an exact text replacement; when the package
is reorganised a mutant whose text moved would stop the script. This test fails first, naming the
mutant, so the table is updated with the move.
"""

from __future__ import annotations

import pytest

from validation import mutation_check as mc


def test_every_mutant_applies_exactly_once():
    mc.check_table()
    assert len(mc.MUTANTS) >= 10


def test_a_missing_text_is_reported_with_the_mutant_name(tmp_path, monkeypatch):
    bad = mc.Mutant("ghost", mc.MUTANTS[0].path, "no such text", "x", mc.MUTANTS[0].tests, "")
    monkeypatch.setattr(mc, "MUTANTS", [bad])
    with pytest.raises(ValueError, match=r"'ghost'.*0 times"):
        mc.check_table()


def test_apply_changes_only_the_mutated_text(tmp_path):
    m = mc.MUTANTS[0]
    target = tmp_path / m.path
    target.parent.mkdir(parents=True)
    original = (mc.ROOT / m.path).read_text()
    target.write_text(original)
    mc._apply(tmp_path, m)
    mutated = target.read_text()
    assert mutated == original.replace(m.old, m.new, 1) and mutated != original
