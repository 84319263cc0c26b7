import shutil

import pytest

from .helpers import config as make_config
from .helpers import run_cli, write


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "faults: fault-injection tests (tests/faults): crashes, bad files, bad configs; "
        "run by default, select with -m faults",
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished simulated run (20 steps, checkpoint at 10 and 20): (config, out folder,
    run folder). Tests copy it with `copy_run`."""
    base = tmp_path_factory.mktemp("finished")
    cfg = write(base / "cfg.toml", make_config())
    code, err = run_cli("run", str(cfg), "--out", str(base / "out"), "--quiet")
    assert code == 0, err
    return cfg, base / "out", base / "out" / "tiny"


@pytest.fixture
def copy_run(finished_run, tmp_path):
    """A fresh copy of `finished_run`: (config path, out folder, run folder)."""
    cfg, out, run_dir = finished_run
    new_out = tmp_path / "out"
    shutil.copytree(out, new_out)
    new_cfg = tmp_path / "cfg.toml"
    shutil.copy(cfg, new_cfg)
    return new_cfg, new_out, new_out / run_dir.name
