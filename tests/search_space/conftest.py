"""Shared by the search-space tests: every test runs torch on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions (even the 224 px space's, at batch 1-3): one thread is about as fast, and
    does not spin against other processes for the CPUs, which slowed a loaded 2-CPU machine 5-fold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
