"""Every test runs single-threaded: the tensors are small batches of chains and tiny models, for
which torch's intra-op thread pool costs more in barriers than it saves (on a busy 2-core CI machine
a CoLA circle step took 80 ms with two threads and 8-16 ms with one)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lapack_2x2_bits() -> bool:
    """Whether this machine's LAPACK solves 2 x 2 systems with the reference order of operations
    (then the library's closed forms return its bits). MKL's kernels for some CPUs (AVX-512 ones,
    measured) order the elimination differently and differ in the last bits; a test that
    compares a closed-form run with a LAPACK run bit for bit then compares to rounding."""
    from manifold_langevin.manifolds import small_systems as small

    g = torch.Generator().manual_seed(0)
    mat = torch.randn(4 * small.LU2_MIN_BATCH, 2, 2, generator=g, dtype=torch.float64)
    rhs = torch.randn(mat.shape[0], 2, 3, generator=g, dtype=torch.float64)
    return torch.equal(small.small_solve(mat, rhs), torch.linalg.solve_ex(mat, rhs)[0])
