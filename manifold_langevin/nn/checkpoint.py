"""Crash-safe checkpoint files: an atomic `torch.save` and a loader with clear errors.

[`save_atomic`][] never leaves a half-written file under the final name: it writes to a
temporary file in the same folder, flushes it to disk (``os.fsync``), renames it onto the final
name with ``os.replace`` (atomic on POSIX and Windows when both names are on one file system)
and, on POSIX, syncs the folder so that the rename itself survives a power cut. A process killed
at any moment leaves either the previous checkpoint or the new one, plus at worst a stray
temporary file named ``.<name>.<pid>.<random>.tmp``; [`load_checkpoint`][] never reads those
and the next successful [`save_atomic`][] to the same name removes them. One writer per
checkpoint name is assumed (the clean-up would remove a concurrent writer's temporary file).

What to put in a checkpoint so that a resumed run is bit-identical to an uninterrupted one:
``model.state_dict()``, ``optimizer.state_dict()`` ([`CoLA`][manifold_langevin.optim.CoLA]'s
includes its noise generators), the state of every other generator the loop draws from (the
data shuffle's ``generator.get_state()``, ``torch.get_rng_state()`` for dropout), the step or
epoch counter and whatever history the run reports. ``manifold-langevin train --checkpoint``
does exactly this (see ``docs/tutorials/checkpoints.md``).

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = save_atomic({"step": 3, "w": torch.ones(2)}, Path(d) / "ckpt.pt")
    ...     ckpt = load_checkpoint(path)
    ...     names = sorted(p.name for p in Path(d).iterdir())
    >>> ckpt["step"], ckpt["w"].tolist(), names
    (3, [1.0, 1.0], ['ckpt.pt'])
"""

from __future__ import annotations

import os
import pickle
import secrets
from pathlib import Path

import torch

from ..errors import CheckpointError

__all__ = ["load_checkpoint", "save_atomic", "temp_files"]

_TMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files left next to ``path`` by interrupted [`save_atomic`][] calls.

    Args:
        path: the checkpoint's final name.

    Returns:
        the paths of the leftover ``.<name>.*.tmp`` files (sorted; empty when there are none or
        the folder does not exist).
    """
    path = Path(path)
    prefix = _temp_prefix(path)
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    return sorted(
        Path(e.path)
        for e in entries
        if e.name.startswith(prefix) and e.name.endswith(_TMP_SUFFIX) and e.is_file()
    )


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def save_atomic(obj, path: str | os.PathLike, **save_kwargs) -> Path:
    """``torch.save(obj, path)`` that a crash cannot leave half-written.

    The data go to ``.<name>.<pid>.<random>.tmp`` in the same folder, which is flushed and
    ``os.fsync``-ed, then renamed onto ``path`` with ``os.replace``; the folder is synced
    (POSIX). Until the rename, ``path`` keeps its previous content. If saving raises, the
    temporary file is removed and the exception propagates. After a successful save, temporary
    files left by earlier interrupted saves to the same name are removed.

    Args:
        obj: anything `torch.save` accepts (keep to tensors, numbers, strings and
            containers of them to load it with ``weights_only=True``).
        path: the final file name; its folder is created if needed.
        **save_kwargs: further arguments of `torch.save` (e.g. ``pickle_protocol``).

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    # O_EXCL: never write into someone else's file; mode 0o666 lets the umask decide, as open()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            torch.save(obj, f, **save_kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in temp_files(path):
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location=None, *, weights_only: bool = True
) -> dict:
    """Load a checkpoint written by [`save_atomic`][] (or `torch.save`).

    Only ``path`` itself is read, never the temporary files of an interrupted save.

    Args:
        path: the checkpoint file.
        map_location: as in `torch.load` (e.g. ``"cpu"`` to load a GPU checkpoint on a
            machine without one).
        weights_only: restrict unpickling to tensors, numbers, strings and containers (the safe
            default of `torch.load`); ``False`` to load arbitrary objects from a trusted file.

    Returns:
        the saved object.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file exists but is not a readable checkpoint (truncated, corrupt or
            not written by `torch.save`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        why = str(exc) or type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from exc
