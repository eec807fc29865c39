"""The benchmarks' ``--quick`` runs: JSON schema and the ``bench`` subcommand (not timings).

Timing targets live in the benchmark report (``validation/results/bench_optim.json``), never in
unit tests: these runs use tiny sizes, one thread and a few repetitions.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import manifold_langevin as ml
from manifold_langevin import cli
from manifold_langevin.cli.bench import add_bench_parser, run_bench
from validation import bench_optim, bench_sampler

#: cases added after the committed GPU run (``validation/results/cuda``), which cannot hold
#: them until ``validation/gpu_run.sh`` runs again on a GPU
NEWER_THAN_GPU_RUN = {"ortho_512x512"}


def _check_optim_schema(result, missing=frozenset()):
    assert result["schema_version"] == bench_optim.SCHEMA_VERSION
    assert result["benchmark"] == "bench_optim"
    assert {"torch", "device", "threads"} <= set(result["environment"])
    keys = {c["key"] for c in result["cases"]}
    assert keys == set(bench_optim.CASES) - set(missing)
    for case in result["cases"]:
        assert {"key", "case", "description", "baseline", "unit", "info", "methods"} <= set(case)
        assert case["key"] in bench_optim.CASES
        assert case["baseline"] in case["methods"]
        assert case["methods"][case["baseline"]]["ratio_to_baseline"] == pytest.approx(1.0)
        for stats in case["methods"].values():
            assert {"median_ms", "q1_ms", "q3_ms", "min_ms", "n", "ratio_to_baseline"} <= set(stats)
            assert stats["n"] >= 1 and stats["median_ms"] > 0
            assert stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
            if case["unit"] is not None:
                assert stats["matmul_equivalents"] > 0
    kinds = {c["case"].split("_")[0] for c in result["cases"]}
    assert kinds == {"circle", "ortho", "train"}
    ortho = [c for c in result["cases"] if c["case"].startswith("ortho")]
    for case in ortho:
        assert {"cola", "paper", "paper_released", "geoopt_euclidean_stiefel",
                "geoopt_canonical_stiefel", "matmul"} <= set(case["methods"])  # fmt: skip
    train = next(c for c in result["cases"] if c["case"].startswith("train"))
    assert {"cola", "param_cayley", "param_default", "geoopt_euclidean_stiefel"} <= set(
        train["methods"]
    )
    for t in result["targets"]:
        assert {"name", "case", "ratio", "measured", "target", "met", "description"} <= set(t)
        assert isinstance(t["met"], bool)


def test_bench_optim_quick_schema(tmp_path):
    assert bench_optim.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_optim.json").read_text())
    assert result["quick"] is True
    _check_optim_schema(result)
    assert (tmp_path / "bench_optim.png").stat().st_size > 0
    # in quick mode the compiled variants are left out, so the compiled-circle target is absent
    assert "circle_vs_sgd" not in {t["name"] for t in result["targets"]}
    assert {"ortho_matmul_equivalents", "train_vs_cayley"} <= {t["name"] for t in result["targets"]}


def test_bench_sampler_quick_schema(tmp_path):
    assert bench_sampler.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_sampler.json").read_text())
    assert result["schema_version"] == bench_sampler.SCHEMA_VERSION
    assert result["benchmark"] == "bench_sampler" and result["quick"] is True
    sweeps = {r["sweep"] for r in result["rows"]}
    assert sweeps == {"chains", "dimension"}
    labels = {r["label"] for r in result["rows"]}
    assert {"sphere_s2", "stiefel_10x3"} <= labels
    for r in result["rows"]:
        assert r["chain_steps_per_s"] > 0 and r["n_steps"] >= 1 and r["n_failures"] == 0
        assert r["chain_steps_per_s"] == pytest.approx(r["n_chains"] * r["n_steps"] / r["seconds"])
    assert (tmp_path / "bench_sampler.png").stat().st_size > 0
    # side by side: every contender of the library ran in both dtypes; OpenMM ran or was skipped
    side = result["side_by_side"]
    ran = {(r["label"], r["dtype"]) for r in side["rows"]}
    for label in bench_sampler.SIDE_CONTENDERS:
        if label.startswith("openmm"):
            assert ((label, "float64") in ran) != (label in side["skipped"])
        elif label.endswith("_compiled"):  # one chain count, float64; quick: one of them
            quick_run = label in bench_sampler.QUICK_COMPILED
            assert ((label, "float64") in ran) == quick_run and (label, "float32") not in ran
        else:
            assert {(label, "float64"), (label, "float32")} <= ran
    ratios = {(q["label"], q["dtype"]): q for q in side["ratios"]}
    speed = {(r["label"], r["dtype"]): r["chain_steps_per_s"] for r in side["rows"]}
    q = ratios["ml_s2", "float64"]
    assert q["reference"] == "numpy_s2"
    assert q["ratio"] == pytest.approx(speed["ml_s2", "float64"] / speed["numpy_s2", "float64"])


def test_side_by_side_contenders_simulate_the_same_molecule():
    """The library's trimer and 10-bead chain keep their bonds (float64, to SHAKE's tolerance),
    and, when OpenMM is installed, OpenMM's runs of the same molecules keep them to its own
    tolerance: the two sides simulate one model."""
    from validation import sampler_peers as peers

    for beads in (3, 10):
        g = peers.chain_constraint(beads)
        x = peers.make_ml_molecule(8, beads)(20)
        assert float(g(x).abs().max()) <= 1e-12
        angles = peers.chain_angles(x, beads)
        assert angles.shape == (8, beads - 2) and bool(torch.isfinite(angles).all())
        # the closed-form bond Jacobian of the ``*_jac`` contenders is autodiff's, and a run
        # with it is the same simulation (the same bits here: both Jacobians are exact)
        manifold = ml.ImplicitManifold(g, jacobian=peers.chain_jacobian(beads))
        assert manifold.check_jacobian(x + 0.01 * torch.randn_like(x)) <= 1e-15
        assert torch.equal(peers.make_ml_molecule(8, beads, user_jacobian=True)(20), x)
        # the ``*_obabo`` contenders run the registered second-order OBABO: the same molecule
        # (bonds kept), a different path from BAOAB's
        sampler, _ = peers.ml_molecule_sampler(8, beads, scheme="OBABO")
        assert (sampler.scheme, sampler.order) == ("OBABO", 2)
        x_obabo = peers.make_ml_molecule(8, beads, newton="frozen", scheme="OBABO")(20)
        assert float(g(x_obabo).abs().max()) <= 1e-12
        assert float((x_obabo - x).abs().max()) > 1e-3
        if peers.openmm_available() is None:
            pos = peers.make_openmm_molecule(8, beads, "Reference")(20)
            y = torch.as_tensor(np.asarray(pos)).reshape(8, 3 * beads)
            # OpenMM's tolerance is relative to the bond length: |d| / BOND - 1 <= 1e-5
            assert float(g(y).abs().max()) <= 4e-5 * peers.BOND**2
    # the NumPy floor stays on the sphere
    x = peers.make_numpy_s2(50)(30)
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-12


def test_the_sphere_jacobian_contender_runs_the_autodiff_simulation():
    """``ml_s2_implicit_jac``'s written-out Jacobian ``2 x`` is autodiff's gradient of
    ``|x|^2 - 1`` bit for bit, so its run is the autodiff run's, number for number; both stay on
    the sphere."""
    from validation import sampler_peers as peers

    x = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64), dim=-1)
    auto = ml.ImplicitManifold(lambda y: (y * y).sum(-1) - 1.0)
    assert torch.equal(auto.jacobian(x).squeeze(-2), peers.sphere_jacobian(x))
    with_jac = peers.make_ml_s2(16, implicit=True, user_jacobian=True)(25)
    assert torch.equal(with_jac, peers.make_ml_s2(16, implicit=True)(25))
    assert float((with_jac.norm(dim=-1) - 1).abs().max()) < 1e-12
    # without the flag the manifold has no user Jacobian: the two contenders differ in it only
    assert peers.ml_s2_sampler(implicit=True).manifold.user_jacobian is None
    assert peers.ml_s2_sampler(implicit=True, user_jacobian=True).manifold.user_jacobian is (
        peers.sphere_jacobian
    )


def test_bench_subcommand(tmp_path):
    ap = argparse.ArgumentParser(prog="manifold-langevin")
    sub = ap.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = ap.parse_args(
        ["bench", "--quick", "--what", "optim", "--case", "circle_mlp", "--out", str(tmp_path)]
    )
    assert args.func is run_bench
    # the installed entry point goes through the same parser
    assert (
        cli.main(
            ["bench", "--quick", "--what", "optim", "--case", "circle_mlp", "--out", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "bench_optim.json").read_text())
    assert [c["case"] for c in result["cases"]] == ["circle_mlp"]
    assert not (tmp_path / "bench_sampler.json").exists()


def test_bench_gram_quick_run():
    """``validation/bench_gram.py --quick``: one row per shape, use and block count, each
    against the plain product of its own use (not a timing check)."""
    from validation import bench_gram

    rows = bench_gram.main(["--quick"])["rows"]
    assert len(rows) == 2 * 2 * len(bench_gram.BLOCKS)
    for r in rows:
        assert r["ms"] > 0 and r["blocks"] in bench_gram.BLOCKS
        if r["blocks"] == 1:
            assert r["ratio"] == pytest.approx(1.0)


def test_bench_optim_writes_what_it_measured_after_every_case():
    """A run stopped part-way keeps its finished cases: ``on_case`` gets the record so far."""
    seen = []
    result = bench_optim.run(
        ["circle_mlp", "ortho_512x128"], quick=True, log=None, on_case=seen.append
    )
    assert [[c["key"] for c in r["cases"]] for r in seen] == [
        ["circle_mlp"],
        ["circle_mlp", "ortho_512x128"],
    ]
    assert seen[-1]["cases"] == result["cases"]
    assert {t["case"] for t in seen[0]["targets"]} <= {"circle_mlp"}


def test_half_precision_quick_run(tmp_path):
    """``validation/half_precision.py --quick``: the default half-precision tolerance is 4 eps
    and the weights stay below eps with no rejection (the full run's claim, on a small weight)."""
    import torch

    from validation import half_precision

    assert half_precision.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "half_precision.json").read_text())
    assert result["schema_version"] == half_precision.SCHEMA_VERSION
    assert {r["dtype"] for r in result["rows"]} == {"bfloat16", "float16"}
    for r in result["rows"]:
        eps = torch.finfo(getattr(torch, r["dtype"])).eps
        assert r["tolerance"] == pytest.approx(4 * eps)
        assert r["rejected"] == 0 and 0 < r["residual_max"] <= eps


def test_committed_gpu_run_is_complete():
    """``validation/results/cuda`` (written by ``validation/gpu_run.sh`` on an H200) holds every
    case and sweep, and its log shows the CUDA tests passing; docs/performance.md is written
    from it."""
    import re
    from pathlib import Path

    cuda = Path(bench_optim.__file__).parent / "results" / "cuda"
    opt = json.loads((cuda / "bench_optim.json").read_text())
    assert opt["environment"]["device"] == "cuda" and opt["quick"] is False
    _check_optim_schema(opt, missing=NEWER_THAN_GPU_RUN)
    smp = json.loads((cuda / "bench_sampler.json").read_text())
    assert smp["environment"]["device"] == "cuda" and smp["quick"] is False
    assert max(r["n_chains"] for r in smp["rows"]) == 100_000
    log = (cuda / "gpu_run.log").read_text()
    summaries = re.findall(r"^.*\b\d+ passed\b.* in [\d.]+s.*$", log, flags=re.MULTILINE)
    assert len(summaries) == 1, summaries  # the one pytest run of the CUDA tests
    assert "failed" not in summaries[0] and "error" not in summaries[0], summaries[0]
    assert int(re.search(r"(\d+) passed", summaries[0]).group(1)) >= 20


def test_bench_circle_trig_quick_run(tmp_path):
    """``validation/bench_circle_trig.py --quick``: every variant timed (``run`` raises unless each
    compiled loop computed its own sin and cos); the branch-free replacement of sin/cos it times
    is float32-accurate (within 2 ulp of 1) up to |theta| = 1e4."""
    from validation import bench_circle_trig

    assert bench_circle_trig.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_circle_trig.json").read_text())
    assert set(result["median_ms"]) == {*bench_circle_trig.TRIG, "sgd"}
    assert all(ms > 0 for ms in result["median_ms"].values())
    # the eager step on one chunk contains its cos and sin (and 12 passes more), either kind
    eager = result["eager_chunk"]
    assert set(eager["us"]) == {"step", "step_torch_trig", "cos_sin", "sin", "cos", "add"}
    assert min(eager["us"].values()) > 0
    assert 0 < eager["trig_share"] < 1 and 0 < eager["torch_trig_share"] < 1
    for row in result["accuracy"]:
        assert max(row["cos_error"], row["sin_error"]) <= 2.0**-22, row


def test_bench_circle_trig_check_catches_a_loop_without_its_replacement():
    """The check compares a loop with the eager loop run under the same patch: a loop that kept
    the library's cos and sin is caught for the inexact polynomial, and passes as ``exact``."""
    from unittest import mock

    from manifold_langevin.manifolds.elementary import cos_sin
    from validation import bench_circle_trig as bct

    def exact_loop(*args):
        with mock.patch(bct._COS_SIN, cos_sin):
            bct.update(*args)

    with pytest.raises(RuntimeError, match="does not compute its sin and cos"):
        bct.check_replacement("cheap_poly", exact_loop, 1000)
    checks = bct.check_replacement("exact", exact_loop, 1000)
    assert checks["float64"][0] == 0.0
    # the eager loops themselves: the polynomials' errors on large angles
    for name, low, high in (("cheap_poly", 0.1, 10.0), ("reduced_poly", 1e-10, 1e-7)):
        got = bct.check_replacement(name, bct.update, 1000)
        assert got["float64"][0] == 0.0 and low < got["float64"][1] < high, (name, got)


def test_bench_short_sums_quick_run(tmp_path):
    """``validation/bench_short_sums.py --quick``: the ways of summing short rows are timed and
    agree to rounding (the script raises otherwise)."""
    from validation import bench_short_sums

    assert bench_short_sums.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick" / "bench_short_sums.json").read_text())
    assert result["rows"] and all(r["agree"] for r in result["rows"])
    keys = ("sum_us", "additions_us", "sum_chain_minor_us", "constraint_grad_us",
            "constraint_grad_chain_minor_us")  # fmt: skip
    assert all(r[k] > 0 for r in result["rows"] for k in keys)
    bond_keys = ("sum_us", "additions_us", "sum_chain_minor_us", "additions_chain_minor_us",
                 "sum_grad_us", "additions_chain_minor_grad_us")  # fmt: skip
    assert result["bond_rows"] and all(r["agree"] for r in result["bond_rows"])
    assert all(r[k] > 0 for r in result["bond_rows"] for k in bond_keys)


def test_bench_stiefel_geodesic_quick_run(tmp_path):
    """``validation/bench_stiefel_geodesic.py --quick``: every part and both layouts timed."""
    from validation import bench_stiefel_geodesic

    assert bench_stiefel_geodesic.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick" / "bench_stiefel_geodesic.json").read_text())
    parts = result["parts"]
    for key in ("expm_stacked_ms", "geodesic_batched_ms", "step_general_ms", "so3_step_stacked_ms"):
        assert parts[key] > 0, key
    assert {r["frame"] for r in result["crossover"]} == {"10x3", "3x3"}
    assert all(r["stacked_ms"] > 0 and r["batched_ms"] > 0 for r in result["crossover"])
    assert {(r["frame"], r["piece"]) for r in result["pieces"]} == {
        (f, k) for f in ("10x3", "3x3") for k in (256, 600)
    }


def test_bench_sphere_geodesic_quick_run(tmp_path):
    """``validation/bench_sphere_geodesic.py --quick``: the kernels and both forms' steps timed
    (the script itself checks that each form ran in its own timings)."""
    from validation import bench_sphere_geodesic

    assert bench_sphere_geodesic.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick" / "bench_sphere_geodesic.json").read_text())
    assert set(result["kernels_us"]) == {"sinc", "sin", "sine_ratio"}
    assert all(v > 0 for v in result["kernels_us"].values())
    assert set(result["step_us"]) == {"sinc", "sine_ratio"} and result["step_gain"] > 0


def test_bench_constraint_algebra_quick_run(tmp_path):
    """``validation/bench_constraint_algebra.py --quick``: every part timed, the library's
    choice named, and each step variant timed."""
    from validation import bench_constraint_algebra as bca

    assert bca.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick" / "bench_constraint_algebra.json").read_text())
    assert {r["library_picks"] for r in result["combination"]} <= {"matmul", "columns"}
    assert all(r["matmul_ms"] > 0 and r["columns_ms"] > 0 for r in result["combination"])
    assert all(r["solve_ex_ms"] > 0 and r["lu_solve_ms"] > 0 for r in result["solves"])
    for r in result["steps"]:
        assert all(r[f"{v}_ms"] > 0 for v in bca.VARIANTS)


def test_bench_constraint_algebra_variants_run_the_code_they_name():
    """The step variants swap the library's pieces for the old ones, and only while they run:
    ``before`` solves with ``solve_ex`` each time and multiplies many columns with a batched
    matmul; ``now`` keeps LAPACK's factor and sums the columns."""
    import torch

    from manifold_langevin.manifolds import base as mbase
    from validation import bench_constraint_algebra as bca

    mat = torch.eye(3, dtype=torch.float64).expand(10, 3, 3)
    jac_t = torch.randn(4000, 30, 9, dtype=torch.float64)
    lam = torch.randn(4000, 9, 1, dtype=torch.float64)
    kinds = {}
    for name in bca.VARIANTS:
        with bca.variant(name):
            kinds[name] = (mbase.small_factor(mat)[0], mbase.normal_combination)
    assert kinds["before"][0] == kinds["combination"][0] == "solve_ex"
    assert kinds["factor"][0] == kinds["now"][0] == "lu"
    assert kinds["before"][1] is kinds["factor"][1] is bca._combination_before
    assert kinds["now"][1] is kinds["combination"][1] is mbase.normal_combination
    assert torch.equal(bca._combination_before(jac_t, lam), mbase.normal_combination(jac_t, lam))
    assert mbase.small_factor(mat)[0] == "lu"  # restored


def test_bench_molecule_floor_quick_run(tmp_path):
    """``validation/bench_molecule_floor.py --quick``: every piece timed, the step's evaluations
    counted (Newton: a Jacobian at each iterate the two solves run, the last one's at the new
    point, fewer than the 14 of the whole budget since a molecular dynamics step stops within
    a few iterates; frozen: the constraint alone at the iterates, at most the budget's 12, and
    a Jacobian at each new point), and the floor is the counts times the pieces' times."""
    from validation import bench_molecule_floor as bmf

    assert bmf.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick" / "bench_molecule_floor.json").read_text())
    assert [r["molecule"] for r in result["molecules"]] == ["trimer", "chain10"]
    for r in result["molecules"]:
        assert r["constraint_ms"] > 0 and r["jacobian_ms"] > 0 and r["normals_ms"] > 0
        assert (r["openmm_reference_step_ms"] is None) == (r["openmm_skipped"] is not None)
        newton, frozen = r["per_step"]["True"], r["per_step"]["frozen"]
        assert newton["constraint_evaluations"] == 0
        assert 2 * 2 <= newton["jacobian_evaluations"] < 14
        assert 2 <= frozen["constraint_evaluations"] <= 12
        assert frozen["jacobian_evaluations"] == 2
        for p in (newton, frozen):
            assert p["normal_draws"] == 2
            floor = (
                p["constraint_evaluations"] * r["constraint_ms"]
                + p["jacobian_evaluations"] * r["jacobian_ms"]
                + 2 * r["normals_ms"]
            )
            assert p["floor_ms"] == pytest.approx(floor, rel=1e-12)
            mo = floor + p["constraint_evaluations"] * (
                r["constraint_memory_order_ms"] - r["constraint_ms"]
            )
            assert p["floor_memory_order_ms"] == pytest.approx(mo, rel=1e-12)


def test_the_memory_order_constraint_gives_the_benchmark_constraints_numbers():
    """The floor's memory-order bond sum is the benchmark's constraint, bit for bit, in the
    samplers' chain-minor layout and in the default one."""
    from manifold_langevin.integrators.base import chain_minor
    from validation import bench_molecule_floor as bmf
    from validation import sampler_peers as peers

    for beads in (3, 10):
        x = torch.randn(500, 3 * beads, dtype=torch.float64)
        g, g_mo = peers.chain_constraint(beads), bmf.memory_order_constraint(beads)
        for y in (x, chain_minor(x, 1)):
            assert torch.equal(g_mo(y), g(y))
        assert not chain_minor(x, 1).is_contiguous()


def test_implicit_reach_quick_run(tmp_path):
    """``validation/implicit_reach.py --quick``: within the same budget Newton's SHAKE reaches
    at least as far as the quasi-Newton one, and that one at least as far as the frozen old-point
    matrix, and three Newton iterates with the third one's matrix kept lie in between; all of
    them solve the smallest steps."""
    from validation import implicit_reach

    result = implicit_reach.main(["--quick", "--out", str(tmp_path / "implicit_reach.json")])
    assert (tmp_path / "quick" / "implicit_reach.json").exists()
    assert len(result["rows"]) == 4  # one problem and the trimer, two dtypes
    methods = ("newton", "newton_3", "quasi_newton", "frozen")
    for row in result["rows"]:
        reaches = [row[f"{m}_reach"] for m in methods]
        assert None not in reaches and reaches == sorted(reaches, reverse=True), reaches
        assert all(row[f"{m}_converged"][0] == 1.0 for m in methods)


def test_bench_shake_iterations_quick_run(tmp_path):
    """``validation/bench_shake_iterations.py --quick``: every iteration timed on the three
    sampler problems, the sphere also against its closed form, and Newton in ``ml.HMC`` on the
    ellipse, each ending early and running the whole budget."""
    from validation import bench_shake_iterations as bsi

    result = bsi.main(["--quick", "--out", str(tmp_path / "bench_shake_iterations.json")])
    assert (tmp_path / "quick" / "bench_shake_iterations.json").exists()
    assert [c["problem"] for c in result["cases"]] == ["s2", "trimer", "chain10", "hmc_ellipse"]
    for case in result["cases"]:
        assert case["newton"]["speed_vs_newton"] == 1.0
        methods = ("newton",) if case["problem"] == "hmc_ellipse" else bsi.METHODS
        for method in methods:
            for label in (method, method + bsi.WHOLE):
                q1, q3 = case[label]["quartiles_ms"]
                assert 0 < q1 <= case[label]["median_ms"] <= q3
            gain = case[method + bsi.WHOLE]["median_ms"] / case[method]["median_ms"]
            assert case[method]["stop_gain"] == pytest.approx(gain)
    s2 = result["cases"][0]
    assert all(s2[m]["speed_vs_closed_form"] > 0 for m in bsi.METHODS)


def test_bench_cuda_quick_schema_and_report(tmp_path):
    """The GPU benchmark's ``--quick`` run on this machine: eager rows measured, the graph modes
    skipped with the reason when there is no CUDA device, and the performance page's table
    rendered from its JSON."""
    from validation import bench_cuda, report

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert bench_cuda.main(["--quick", "--device", device, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_cuda.json").read_text())
    assert result["benchmark"] == "bench_cuda"
    assert result["schema_version"] == bench_cuda.SCHEMA_VERSION
    measured = {(r["problem"], r["dtype"], r["mode"], r["n_chains"]) for r in result["rows"]}
    skipped = {tuple(s[:4]) for s in result["skipped"]}
    planned = {(p, d, m, n) for p, d, m, counts in bench_cuda.QUICK_CASES for n in counts}
    assert measured | skipped == planned and not measured & skipped
    if device == "cpu":
        assert skipped == {c for c in planned if "graph" in c[2]}
        assert all(s[4] == "needs a CUDA device" for s in result["skipped"])
    for r in result["rows"]:
        assert r["seconds_per_step"] > 0
        assert r["chain_steps_per_s"] == pytest.approx(r["n_chains"] / r["seconds_per_step"])
    img = tmp_path / "img"
    img.mkdir()
    text = report.cuda_graph_section(img, cuda=tmp_path)
    assert (img / "bench_cuda.png").stat().st_size > 0
    assert "| s2 | float64 | eager |" in text and "needs a CUDA device" in text
    assert "${" not in text
    # without a run's JSON the section says that none was made
    assert "has not been measured yet" in report.cuda_graph_section(img, cuda=tmp_path / "no")
