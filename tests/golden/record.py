"""Write ``trajectories.npz`` from the current code: ``python -m tests.golden.record``.

Run it only when a change of behaviour is intended (and say so in the commit): the golden test
exists to show that a refactor changed nothing. Each case is stored as one float64 vector, its
tensors flattened in name order (:func:`pack`); the environment the numbers were recorded in is
stored under ``environment|<key>``.

``python -m tests.golden.record NAME [NAME ...]`` re-records only the named cases (a change of
behaviour that touches a few): their environment is stored with them
(``case-environment|<name>|<key>``), so that they are compared bit for bit only where it is
the same, and the other cases keep the file's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from tests.golden.cases import all_cases, environment

PATH = Path(__file__).with_name("trajectories.npz")
SEP = "|"


def pack(tensors: dict[str, torch.Tensor]) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Every tensor flattened into one float64 vector (booleans and integers exactly), in name
    order, with the ``(name, start, stop)`` segment of each."""
    parts, segments, start = [], [], 0
    for name in sorted(tensors):
        flat = tensors[name].detach().cpu().reshape(-1).to(torch.float64).numpy()
        parts.append(flat)
        segments.append((name, start, start + flat.size))
        start += flat.size
    return np.concatenate(parts), segments


CASE_ENV = "case-environment"


def load() -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """``(environment, cases, case environments)`` as recorded: the file's environment, every
    case's vector, and the environments of the cases re-recorded on their own."""
    env, cases, case_envs = {}, {}, {}
    with np.load(PATH) as data:
        for key in data.files:
            if key.startswith(f"environment{SEP}"):
                env[key.split(SEP, 1)[1]] = str(data[key])
            elif key.startswith(f"{CASE_ENV}{SEP}"):
                _, name, k = key.split(SEP)
                case_envs.setdefault(name, {})[k] = str(data[key])
            else:
                cases[key] = data[key]
    return env, cases, case_envs


def main(argv: list[str] | None = None) -> None:
    names = set(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    env = environment()
    if names:
        with np.load(PATH) as data:
            arrays = dict(data)
    else:
        arrays = {f"environment{SEP}{k}": np.array(v) for k, v in env.items()}
    done = 0
    for name, run in all_cases():
        if names and name not in names:
            continue
        torch.manual_seed(0)  # as the test does
        arrays[name] = pack(run())[0]
        for k in list(arrays):
            if k.startswith(f"{CASE_ENV}{SEP}{name}{SEP}"):
                del arrays[k]
        if names:
            for k, v in env.items():
                arrays[f"{CASE_ENV}{SEP}{name}{SEP}{k}"] = np.array(v)
        done += 1
    missing = names - {n for n, _ in all_cases()}
    if missing:
        raise SystemExit(f"no such cases: {sorted(missing)}")
    np.savez_compressed(PATH, **arrays)
    print(f"wrote {done} cases to {PATH} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
