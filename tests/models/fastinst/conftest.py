"""FastInst tests run their tiny models on one thread: on a shared 2-core machine, OpenMP
threads waiting on one another cost more than the second thread gains."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
