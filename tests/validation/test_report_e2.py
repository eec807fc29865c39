"""``validation.report_e2``: differences between methods paired by seed."""

from __future__ import annotations

import math

import pytest

from validation.report_e2 import paired_difference


def _runs(values, diverged=()):
    out = []
    for seed, v in enumerate(values):
        r = {"seed": seed, "last_test_loss": v}
        if seed in diverged:
            r["diverged_at"] = 8
        out.append(r)
    return out


def test_differences_are_paired_by_seed_over_the_finished_seeds():
    a = _runs([0.40, 0.44, 0.42])
    b = _runs([0.37, 0.38, 0.99], diverged=(2,))  # seed 2 of b stopped early: left out
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1] and d["n"] == 2
    assert d["mean"] == pytest.approx(0.045)
    # per-seed differences 0.03 and 0.06: std 0.0212, standard error 0.015
    assert d["sem"] == pytest.approx(0.015)
    # pairing, not two independent means: a shift common to both methods cancels
    shifted = paired_difference(_runs([1.40, 0.44]), _runs([1.37, 0.41]))
    assert shifted["mean"] == pytest.approx(0.03)
    assert shifted["sem"] == pytest.approx(0.0, abs=1e-12)


def test_one_seed_has_no_standard_error():
    d = paired_difference(_runs([0.4]), _runs([0.3]))
    assert d["n"] == 1 and math.isnan(d["sem"]) and d["mean"] == pytest.approx(0.1)
