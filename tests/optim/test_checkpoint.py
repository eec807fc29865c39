"""A CoLA run checkpointed, then resumed in a fresh Python process, equals the uninterrupted run
in another fresh process, bit for bit: parameters, optimizer state, noise and shuffle generators.
The in-process variant is ``test_state.py::test_resume_is_bit_identical``; here nothing of the
first leg survives but the file. The legs live in ``checkpoint_worker.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from .checkpoint_worker import first

ROOT = Path(__file__).resolve().parents[2]
N, M = 10, 10


def _worker(mode: str, folder: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "tests.optim.checkpoint_worker",
        mode,
        str(folder),
        str(N),
        str(M),
    ]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()


def _assert_equal(a, b, where="") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    full = _worker("full", tmp_path)  # starts first: importing torch takes most of its time
    first(tmp_path, N)  # here; nothing of this process reaches the resumed leg but the file
    resumed = _worker("resume", tmp_path)
    _wait(full)
    _wait(resumed)
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    # the run moved and drew noise after the checkpoint (else the comparison proves nothing)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not torch.equal(ckpt["model"]["2.weight"], a["params"][2])
    assert not torch.equal(
        ckpt["opt"]["cola"]["generators"]["cpu"], a["opt"]["cola"]["generators"]["cpu"]
    )
    _assert_equal(a, b)
    # the circle and orthogonal states are there (and so were compared)
    state = a["opt"]["state"]
    assert "xi" in state[0] and "momentum_buffer" in state[1]
