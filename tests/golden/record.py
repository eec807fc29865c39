"""Write ``trajectories.npz`` from the current code: ``python -m tests.golden.record``.

Run it only when a change of behaviour is intended (and say so in the commit): the golden test
exists to show that a refactor changed nothing. Each case is stored as one float64 vector, its
tensors flattened in name order (:func:`pack`); the environment the numbers were recorded in is
stored under ``environment|<key>``.
"""

from __future__ import annotations

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


def load() -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``(environment, cases)`` as recorded."""
    env, cases = {}, {}
    with np.load(PATH) as data:
        for key in data.files:
            if key.startswith(f"environment{SEP}"):
                env[key.split(SEP, 1)[1]] = str(data[key])
            else:
                cases[key] = data[key]
    return env, cases


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    arrays = {f"environment{SEP}{k}": np.array(v) for k, v in environment().items()}
    for name, run in all_cases():
        torch.manual_seed(0)  # as the test does
        arrays[name] = pack(run())[0]
    np.savez_compressed(PATH, **arrays)
    print(f"wrote {len(arrays) - 2} cases to {PATH} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
