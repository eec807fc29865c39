"""Validation tests run single-threaded: the chains are small batched tensors, and on a busy
2-core machine the intra-op thread pool's barriers cost far more than they save."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
