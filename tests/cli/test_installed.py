"""The installed package runs its main job: a wheel in a fresh virtual environment, run from a
folder outside the source tree, passes ``manifold-langevin validate --quick``.

The wheel is built from this checkout and installed without its dependencies into a new venv
whose only view of the outer environment is its site-packages folder (for torch, geoopt, scipy,
...), added as a plain path: the outer environment's ``.pth`` files, among them the editable
install that puts this checkout on ``sys.path``, are not processed there. So neither the source
tree nor its ``validation/`` folder is importable in the venv, and everything the command runs
must come from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, script)`` of a venv holding only the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp),
                  str(ROOT)])  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp.glob("manifold_langevin-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    inner = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    site = Path(inner.stdout.strip())
    # the outer site-packages as a plain path entry: its .pth files are not processed
    (site / "outer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                "-q", str(wheel)])  # fmt: skip
    if pip.returncode != 0 and "no such option: --python" in pip.stderr:  # pip < 22.3
        pip = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)])  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    return python, env_dir / "bin" / "manifold-langevin"


def test_the_venv_sees_the_wheel_not_the_checkout(installed, tmp_path):
    python, _ = installed
    probe = _run(
        [str(python), "-c",
         "import manifold_langevin, importlib.util as u; print(manifold_langevin.__file__); "
         "print(u.find_spec('validation'))"],
        cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    where, validation = probe.stdout.split()
    assert not Path(where).is_relative_to(ROOT), where
    assert validation == "None"


@pytest.mark.slow
def test_validate_quick_runs_from_the_wheel(installed, tmp_path):
    _, script = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = _run([str(script), "validate", "--quick", "--out", str(tmp_path / "results")],
               cwd=tmp_path, env=env, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    # the measure table: a row per observable of every quick run, all consistent
    assert "| problem | scheme | h | observable |" in text
    assert "17 of 17 runs consistent with the exact values" in text
    # a weak-order slope with its confidence interval, for a second- and a first-order scheme
    assert "OBABO: weak order" in text and "95% CI" in text
    assert "euler: weak order" in text
    assert "all checks passed" in text
    assert (tmp_path / "results" / "quick" / "invariant_measure.json").is_file()
    assert (tmp_path / "results" / "quick" / "weak_order.json").is_file()
