"""Writes that fail: a read-only run folder, a folder that cannot be created, a full disk,
and Ctrl-C in the middle of a checkpoint write or of a run."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import distsgd.runner as runner

from .cases import CASES
from .helpers import (
    ROOT,
    config,
    load_checkpoint,
    read_metrics,
    run_cli,
    snapshot,
    temporary_files,
    write,
)

pytestmark = pytest.mark.faults

_open = open


def _resume(cfg, out):
    return run_cli("run", str(cfg), "--out", str(out), "--quiet", "--resume")


def _chmod_stops_writes(folder: Path) -> bool:
    """Make `folder` 0o500; True if that stops this process writing there (not root)."""
    folder.chmod(0o500)
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    folder.chmod(0o700)
    return False


def test_unwritable_run_folder(copy_run, monkeypatch):
    case = CASES["out_permission"]
    cfg, out, run_dir = copy_run
    write(cfg, config(steps=40))  # the resumed run has something to write
    before = snapshot(run_dir)
    if not _chmod_stops_writes(run_dir):  # root: make every write there fail as chmod would

        def no_permission(path, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and Path(path).parent == run_dir:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return _open(path, mode, *args, **kwargs)

        monkeypatch.setattr(runner, "open", no_permission, raising=False)
    try:
        code, err = _resume(cfg, out)
    finally:
        run_dir.chmod(0o700)
    case.check(code, err)
    assert snapshot(run_dir) == before and not temporary_files(run_dir)
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 20


@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
def test_an_out_folder_that_cannot_be_created(tmp_path, where):
    case = CASES["out_file_in_way"]
    (tmp_path / "a_file").write_text("x")
    if where == "under_proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc")
    out = tmp_path / "a_file" / "runs" if where == "under_a_file" else Path(f"/proc/distsgd-{os.getpid()}")
    cfg = write(tmp_path / "cfg.toml", config())
    before = snapshot(tmp_path)
    case.check(*run_cli("run", str(cfg), "--out", str(out), "--quiet"))
    assert snapshot(tmp_path) == before and not out.exists()


class _HalfThenFull:
    """A file that takes half of what is written, then reports a full disk."""

    def __init__(self, path, mode):
        self.f, self.path = _open(path, mode), Path(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        assert self.path.stat().st_size > 0  # a partly written temporary file exists now
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("target", ["checkpoint.pt", "metrics.jsonl", "summary.json"])
def test_disk_full_while_writing(copy_run, monkeypatch, target):
    case = CASES["disk_full"]
    cfg, out, run_dir = copy_run
    write(cfg, config(steps=40))
    before = (run_dir / target).read_bytes()
    failed = []

    def full_disk(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(f".{target}.tmp"):
            failed.append(path)
            return _HalfThenFull(path, mode)
        return _open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner, "open", full_disk, raising=False)
    line = case.check(*_resume(cfg, out))
    assert failed and str(run_dir / target) in line
    assert (run_dir / target).read_bytes() == before  # the previous version, whole
    assert not temporary_files(run_dir)
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] in (20, 30, 40)
    read_metrics(run_dir / "metrics.jsonl")


def test_sigint_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    case = CASES["sigint_checkpoint_write"]
    cfg = write(tmp_path / "cfg.toml", config(steps=30))
    run_dir = tmp_path / "out" / "tiny"
    replace = os.replace
    saved = []

    def interrupted(src, dst):
        if Path(dst).name == "checkpoint.pt":
            saved.append(dst)
            if len(saved) == 2:  # the step-20 checkpoint: its temporary file is complete
                assert Path(src).stat().st_size > 0
                raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(runner.os, "replace", interrupted)
    case.check(*run_cli("run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"))
    assert len(saved) == 2
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 10  # the previous one, intact
    assert not temporary_files(run_dir)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [10, 20]
    assert not (run_dir / "summary.json").exists()


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default action. A shell without job
    control starts background commands (`pytest ... &`) with SIGINT ignored, children inherit
    that, and Python then leaves it ignored: the run would never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_a_running_process(tmp_path):
    case = CASES["sigint_run"]
    cfg = write(tmp_path / "cfg.toml", config(steps=100_000, eval_every=25, checkpoint_every=25))
    run_dir = tmp_path / "out" / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distsgd.cli", "run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]  # a hang guard, generous for a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    case.check(proc.returncode, err)
    step = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert step > 0 and step % 25 == 0
    assert read_metrics(run_dir / "metrics.jsonl")[0]["step"] == 25
    assert not temporary_files(run_dir) and not (run_dir / "summary.json").exists()
