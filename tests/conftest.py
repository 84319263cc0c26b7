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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`): the tests that use a module-scoped fixture
    run on one worker per file, so the fixture (a process group, a finished run) is built
    once; every other test goes to whichever worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(defs and defs[-1].scope in ("module", "package", "class") for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
