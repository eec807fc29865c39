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
