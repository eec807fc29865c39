"""The command line: `manifold-langevin validate` writes its evidence and reports failure."""

import json

import pytest

from manifold_langevin.cli import main


def test_validate_quick_one_problem(tmp_path, capsys):
    status = main(
        ["validate", "--quick", "--problem", "vmf_s2", "--scheme", "BAOAB", "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "quick" / "invariant_measure.json").read_text())
    assert status == 0
    assert report["meta"]["all_consistent"]
    (run,) = report["runs"]
    assert (run["problem"], run["scheme"]) == ("vmf_s2", "BAOAB")
    assert abs(run["observables"]["mu_x"]["z"]) < 4
    assert (tmp_path / "quick" / "invariant_measure_vmf_s2.png").stat().st_size > 1000
    assert "vmf_s2 | BAOAB" in capsys.readouterr().out


def test_validate_rejects_unknown_problem():
    with pytest.raises(SystemExit) as err:
        main(["validate", "--quick", "--problem", "no_such_problem"])
    assert err.value.code == 2


def test_command_is_required():
    with pytest.raises(SystemExit):
        main([])
