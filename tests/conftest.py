import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_task():
    from distsgd.tasks import make_task

    return make_task("digits", n_workers=4, model="mlp", hidden=(16,), batch_size=8, seed=0)
