"""``manifold_langevin.checkpoint``: atomic saves, leftovers of interrupted saves, load errors, and
a writer SIGKILLed half-way through a save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from manifold_langevin.nn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_atomic,
    temp_files,
)

ROOT = Path(__file__).resolve().parents[2]


def test_save_and_load_round_trip_leaves_one_file(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"  # the folder is created
    obj = {"step": 3, "w": torch.arange(6.0).reshape(2, 3), "names": ("a", "b"), "x": None}
    assert save_atomic(obj, path) == path
    got = load_checkpoint(path)
    assert got["step"] == 3 and got["names"] == ("a", "b") and got["x"] is None
    assert torch.equal(got["w"], obj["w"])
    assert os.listdir(path.parent) == ["ckpt.pt"]
    save_atomic({"step": 4}, path)  # replaces
    assert load_checkpoint(path) == {"step": 4}
    assert os.listdir(path.parent) == ["ckpt.pt"]
    if os.name == "posix":  # permissions follow the umask, as for open()
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_failed_save_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception, match=r"pickle|lambda"):
        save_atomic({"step": 2, "f": lambda: 0}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert temp_files(path) == [] and os.listdir(tmp_path) == ["ckpt.pt"]


def test_leftover_temporaries_are_ignored_then_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)
    stale = [tmp_path / ".ckpt.pt.123.abcd.tmp", tmp_path / ".ckpt.pt.456.ef01.tmp"]
    stale[0].write_bytes(b"PK\x03\x04 half a zip")
    stale[1].write_bytes(b"")
    other = tmp_path / ".other.pt.1.aa.tmp"  # another checkpoint's: not ours to remove
    other.write_bytes(b"")
    assert temp_files(path) == stale
    assert load_checkpoint(path) == {"step": 1}
    save_atomic({"step": 2}, path)
    assert temp_files(path) == [] and other.exists()
    assert load_checkpoint(path) == {"step": 2}


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.zeros(10_000)}, path)
    data = path.read_bytes()
    for broken in (b"", data[: len(data) // 2], b"not a checkpoint"):
        path.write_bytes(broken)
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(path)
    # arbitrary objects need weights_only=False (a trusted file)
    save_atomic({"m": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"[Ww]eights only"):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, weights_only=False)["m"], torch.nn.Linear)


# The writer saves a first checkpoint, then a second one whose bytes stop half-way (torch.save is
# replaced by one that writes half of the real data, syncs it and stalls: a slow disk); the parent
# SIGKILLs it there. save_atomic is only assumed to call torch.save.
_WRITER = textwrap.dedent(
    """
    import io, os, sys, time
    import torch
    from manifold_langevin.nn.checkpoint import save_atomic

    path = sys.argv[1]
    save_atomic({"n": 1, "w": torch.arange(1000.0)}, path)
    real_save = torch.save

    def stalling_save(obj, f, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, **kw)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print(len(data), flush=True)
        time.sleep(120)

    torch.save = stalling_save
    save_atomic({"n": 2, "w": torch.zeros(250_000)}, path)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the second save is half-written
        assert line.strip(), proc.communicate(timeout=60)[1]
        full_size = int(line)
        (tmp,) = temp_files(path)
        assert 0 < tmp.stat().st_size < full_size
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    first = load_checkpoint(path)  # intact: the first checkpoint
    assert first["n"] == 1 and torch.equal(first["w"], torch.arange(1000.0))
    with pytest.raises(CheckpointError):  # what the kill left is indeed unreadable
        load_checkpoint(tmp)
    save_atomic({"n": 3}, path)  # the next save cleans up
    assert temp_files(path) == [] and os.listdir(tmp_path) == ["ckpt.pt"]
    assert load_checkpoint(path) == {"n": 3}
