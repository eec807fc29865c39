"""Independent validation runs on several processes (the runs share nothing)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

import torch

__all__ = ["default_jobs", "map_runs"]


def default_jobs() -> int:
    """The CPU cores this process may use (at least 1)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _one_thread() -> None:
    # each worker runs small batched tensors, for which intra-op threads only add overhead
    torch.set_num_threads(1)


def map_runs(fn: Callable, items: Iterable, jobs: int = 1) -> Iterator:
    """``fn(item)`` for every item, in order, on ``jobs`` worker processes (``1``: here).

    Workers are spawned (not forked: a forked torch process can deadlock in its thread pools) and
    run one torch thread each; ``fn`` must be a module-level function and the items and results
    picklable. Results are yielded as they are ready, in the order of ``items``."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(items)), mp_context=ctx, initializer=_one_thread) as ex:
        yield from ex.map(fn, items)
