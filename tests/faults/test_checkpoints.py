"""`--resume` from damaged, foreign or malicious checkpoints, and with a changed config.

Each test resumes a copy of one finished simulated run (20 steps, checkpoints at 10 and 20).
"""

import io
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cases import CASES
from .helpers import (
    config,
    load_checkpoint,
    read_metrics,
    run_cli,
    snapshot,
    without_wall,
    write,
)

pytestmark = pytest.mark.faults


def _resume(cfg, out):
    return run_cli("run", str(cfg), "--out", str(out), "--quiet", "--resume")


def _check_unchanged(case, cfg, out, run_dir, data: bytes):
    """Put `data` in place of the checkpoint, resume: the case's line; nothing else changes."""
    (run_dir / "checkpoint.pt").write_bytes(data)
    before = snapshot(run_dir)
    code, err = _resume(cfg, out)
    line = case.check(code, err)
    assert str(run_dir / "checkpoint.pt") in line
    assert snapshot(run_dir) == before
    return line


@settings(
    max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(data=st.binary(max_size=4096))
def test_random_bytes(copy_run, data):
    _check_unchanged(CASES["ckpt_random"], *copy_run, data)


def test_truncated(copy_run):
    cfg, out, run_dir = copy_run
    good = (run_dir / "checkpoint.pt").read_bytes()
    _check_unchanged(CASES["ckpt_truncated"], cfg, out, run_dir, good[: len(good) // 2])


def test_foreign_torch_file(copy_run):
    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    _check_unchanged(CASES["ckpt_foreign"], *copy_run, buf.getvalue())


class _Exploit:
    """Unpickled with weights_only=False, this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _exploit_works(make) -> None:
    """The crafted file really runs code when loaded the unsafe way (a control)."""
    with tempfile.TemporaryDirectory() as d:
        marker, path = Path(d) / "control-marker", Path(d) / "control.pt"
        path.write_bytes(make(marker))
        try:  # a plain pickle runs its code, then fails torch's magic-number check
            torch.load(path, weights_only=False).close()
        except RuntimeError:
            pass
        assert marker.exists()


def _torch_exploit(marker):
    buf = io.BytesIO()
    torch.save(_Exploit(marker), buf)
    return buf.getvalue()


def _raw_exploit(marker):
    return pickle.dumps(_Exploit(marker), protocol=4)


@pytest.mark.parametrize(
    "make",
    [
        CASES["ckpt_pickle_exploit"].param(_torch_exploit, id="torch_save"),
        CASES["ckpt_raw_pickle_exploit"].param(_raw_exploit, id="plain_pickle"),
    ],
)
def test_a_pickle_that_runs_code_is_never_unpickled(copy_run, tmp_path, make):
    case = CASES["ckpt_pickle_exploit" if make is _torch_exploit else "ckpt_raw_pickle_exploit"]
    _exploit_works(make)
    marker = tmp_path / "marker"
    cfg, out, run_dir = copy_run
    try:
        _check_unchanged(case, cfg, out, run_dir, make(marker))
    finally:
        assert not marker.exists(), "the checkpoint's code ran"


def _largest_tensor_offset(path: Path) -> int:
    """The offset of a byte in the middle of the checkpoint's largest tensor (the parameters)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:  # the data follow the local header: 30 bytes, name, extra
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + n + m + info.file_size // 2


@CASES["ckpt_bit_flip"].xfail_if_bug
def test_one_flipped_byte_in_the_parameters(copy_run):
    cfg, out, run_dir = copy_run
    path = run_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[_largest_tensor_offset(path)] ^= 0x40
    _check_unchanged(CASES["ckpt_bit_flip"], cfg, out, run_dir, bytes(data))


# -- a changed config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,differ",
    [
        ({"algorithm": 'name = "dpsgd"\nlr = 0.2\ntopology = "ring"'}, "algorithm"),
        ({"seed": 1}, "seed"),
        ({"n_workers": 8}, "n_workers"),
        ({"partition": "dirichlet"}, "task.partition"),
        ({"algorithm": 'name = "local_sgd"\nlr = 0.1\nlocal_steps = 2'}, "algorithm"),
    ],
    ids=["lr", "seed", "n_workers", "partition", "algorithm"],
)
def test_resume_with_a_changed_config_names_what_differs(copy_run, change, differ):
    case = CASES["resume_changed"]
    cfg, out, run_dir = copy_run
    write(cfg, config(**change))
    before = snapshot(run_dir)
    line = case.check(*_resume(cfg, out))
    listed = re.split(r" differs? \(", line.split("is from a different run: ", 1)[1])[0]
    fields = [f.strip() for f in re.split(r",| and ", listed)]
    assert any(f == differ or f.startswith(differ + ".") for f in fields), line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "change",
    [{"steps": 40}, {"steps": 40, "eval_every": 5}, {"steps": 40, "checkpoint_every": 7}],
    ids=["steps", "eval_every", "checkpoint_every"],
)
def test_resume_with_more_steps_or_other_intervals_continues(copy_run, tmp_path, change):
    case = CASES["resume_extended"]
    cfg, out, run_dir = copy_run
    before = read_metrics(run_dir / "metrics.jsonl")
    write(cfg, config(**change))
    case.check(*_resume(cfg, out))
    rows = read_metrics(run_dir / "metrics.jsonl")
    every = change.get("eval_every", 10)
    assert [r["step"] for r in rows] == [10, 20] + list(range(20 + every, 41, every))
    assert rows[:2] == before  # the rows up to the checkpoint are kept as they were
    ckpt = change.get("checkpoint_every", 10)
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 40 // ckpt * ckpt
    # the rows after the checkpoint equal an uninterrupted run's of the new config
    fresh = write(tmp_path / "fresh" / "cfg.toml", config(**change))
    assert run_cli("run", str(fresh), "--out", str(tmp_path / "fresh"), "--quiet") == (0, "")
    fresh_rows = read_metrics(tmp_path / "fresh" / "tiny" / "metrics.jsonl")
    assert without_wall(rows[2:]) == without_wall([r for r in fresh_rows if r["step"] > 20])
