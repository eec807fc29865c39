"""Quick weak-order checks: coupled step-size pairs resolve the slope of each scheme family.

``manifold_langevin.testing.weak_order`` measures ``D(h) = E_h[z] - E_{h/2}[z]`` with the coarse and
fine chains driven by the same Brownian increments, so its standard error shrinks with ``h``. The
tests ask for the fitted slope within 0.35 of the expected order *and* a 95% interval narrower than
+-0.35, so a scheme of the wrong order (1 instead of 2, or 2 instead of 1) fails: the test has the
power to tell. OBABO stands for the underdamped splittings (its error constant is large enough to
resolve in seconds; BAOAB's and ABOBA's are ten times smaller and are measured in the full study),
projected Euler-Maruyama for the first-order overdamped scheme.
"""

import pytest

from manifold_langevin.testing import weak_order as wo


@pytest.mark.parametrize("name", ["OBABO", "euler"])
def test_quick_slope_matches_the_order(name):
    scheme = wo.SCHEMES[name]
    res = wo.study(scheme, quick=True, seed=0, device="cpu", progress=False)
    fit = res["fit"]
    lo, hi = fit["ci95"]
    assert hi - lo < 0.7, fit  # power: the interval excludes the neighbouring order
    assert abs(fit["slope"] - scheme.expected) <= 0.35, fit
    for p in res["points"]:
        assert p["max_residual"] < 1e-12
        # D is resolved at every step size (at least 4 standard errors from zero)
        assert abs(p["difference"]["estimate"]) > 4 * p["difference"]["stderr"], p


def test_coupling_shrinks_the_error_bar():
    """The coupled difference is far more precise than the difference of independent runs."""
    p = wo.coupled_point(wo.SCHEMES["BAOAB"], 0.2, 2000, 10.0, 3.0, seed=1)
    independent = (p["coarse"]["stderr"] ** 2 + p["fine"]["stderr"] ** 2) ** 0.5
    assert p["difference"]["stderr"] < 0.4 * independent, p


def test_fit_recovers_a_known_power_law():
    import numpy as np

    h = np.array([0.4, 0.2, 0.1, 0.05])
    d = 0.03 * h**2 * (1 + np.array([0.01, -0.01, 0.01, -0.01]))
    fit = wo.fit_order(h, d, 0.01 * np.abs(d))
    assert fit["slope"] == pytest.approx(2.0, abs=0.02)
    assert fit["ci95"][0] < 2.0 < fit["ci95"][1]


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="unknown scheme"):
        wo.run(quick=True, schemes=["RK4"], extras=False, progress=False)


def test_order_verdict_tells_the_declared_order_from_its_neighbours():
    # a pre-asymptotic first-order fit (projected Euler-Maruyama's, measured) holds for 1 only
    euler = {"slope": 1.14, "ci95": [1.07, 1.21]}
    assert wo.order_holds(euler, 1) and not wo.order_holds(euler, 2)
    # too far from the declared order, or an interval too wide to exclude a neighbour, fails
    assert not wo.order_holds({"slope": 1.5, "ci95": [1.45, 1.55]}, 2)
    assert not wo.order_holds({"slope": 2.0, "ci95": [0.9, 3.1]}, 2)
    assert wo.order_holds({"slope": 2.06, "ci95": [2.00, 2.12]}, 2)
