import os

import pytest
import torch

# one thread per pytest-xdist worker (the suite runs on `-n auto`: one worker per core),
# two when the tests run in one process
_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
torch.set_num_threads(int(_THREADS))


@pytest.fixture(scope="session")
def digits_task():
    from distsgd.tasks import make_task

    return make_task("digits", n_workers=4, model="mlp", hidden=(16,), batch_size=8, seed=0)
