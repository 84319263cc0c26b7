"""Faults under torchrun (2 ranks, gloo on loopback): a rank's checkpoint missing, foreign,
older than the other's or the other rank's; a rank killed with SIGKILL mid-run.

One reference run (400 steps, a checkpoint every 50) is shared; while it runs, its first
rank-1 checkpoint is copied aside (an older checkpoint of the same run). Each launch costs
~10 s of interpreter start-up on two cores, so the suite launches as few as it can.
"""

import contextlib
import io
import json
import os
import shutil
import signal
import time
import uuid
from types import SimpleNamespace

import pytest
import torch.distributed

from distsgd.cli import main

from .cases import CASES
from .helpers import (
    config,
    load_checkpoint,
    read_metrics,
    tensors_equal,
    torchrun,
    without_wall,
    write,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]

STEPS, EVERY = 400, 50
EXIT_WITHIN = 10.0  # seconds from the first distsgd line (or the kill) to the last rank's exit


def _ref_config(seed=0, steps=STEPS):
    return config(name="ref", steps=steps, eval_every=EVERY, checkpoint_every=EVERY, seed=seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference run, an early copy of its rank-1 checkpoint, and another run's (seed 1)."""
    base = tmp_path_factory.mktemp("torchrun")
    cfg = write(base / "ref.toml", _ref_config())
    other_cfg = write(base / "other.toml", _ref_config(seed=1, steps=EVERY))
    ref = torchrun(cfg, base / "ref")
    other = torchrun(other_cfg, base / "other")  # at the same time: start-up is mostly waiting
    run_dir = base / "ref" / "ref"
    early = base / "early"
    early.mkdir()
    first = run_dir / "checkpoint-rank1.pt"
    while ref.proc.poll() is None and not (early / first.name).exists():
        if first.exists():  # written atomically: a copy is an old or a new file, whole
            shutil.copy(first, early / first.name)
        time.sleep(0.01)
    done = ref.finish()
    assert done.rc == 0, done.stderr
    other = other.finish()
    assert other.rc == 0, other.stderr
    return SimpleNamespace(cfg=cfg, dir=run_dir, early=early, other=base / "other" / "ref")


def _copy_ref(runs, tmp_path):
    cfg = write(tmp_path / f"cfg-{uuid.uuid4().hex[:8]}.toml", runs.cfg.read_text())
    shutil.copytree(runs.dir, tmp_path / "out" / "ref")
    return cfg, tmp_path / "out", tmp_path / "out" / "ref"


def _resume_fails(case, cfg, out, timeout_s=30):
    fin = torchrun(cfg, out, "--resume", timeout_s=timeout_s).finish()
    took = fin.end - fin.first_line if fin.first_line is not None else float("inf")
    print(f"{case.id}: launch to exit {fin.wall:.1f} s, first distsgd line to exit {took:.2f} s")
    assert fin.rc != 0, fin.stderr
    fin.check_no_rank_traceback()
    case.check_ranks(fin.exitcodes, fin.lines)
    assert took < EXIT_WITHIN, f"the ranks took {took:.1f} s to exit after the first error"
    return fin


def _resume_case(case_id, prepare):
    case = CASES[case_id]

    def test(runs, tmp_path):
        cfg, out, run_dir = _copy_ref(runs, tmp_path)
        prepare(runs, run_dir)
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        _resume_fails(case, cfg, out, timeout_s=8)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written

    return case.xfail_if_bug(test)


def _missing(runs, run_dir):
    (run_dir / "checkpoint-rank1.pt").unlink()


def _foreign(runs, run_dir):
    shutil.copy(runs.other / "checkpoint-rank1.pt", run_dir / "checkpoint-rank1.pt")


def _older(runs, run_dir):
    assert load_checkpoint(runs.early / "checkpoint-rank1.pt")["step"] < STEPS
    shutil.copy(runs.early / "checkpoint-rank1.pt", run_dir / "checkpoint-rank1.pt")


def _swapped(runs, run_dir):
    shutil.copy(run_dir / "checkpoint-rank0.pt", run_dir / "checkpoint-rank1.pt")


test_resume_with_rank1_checkpoint_missing = _resume_case("resume_rank_missing", _missing)
test_resume_with_rank1_checkpoint_from_another_run = _resume_case("resume_rank_foreign", _foreign)
test_resume_with_rank1_checkpoint_older_than_rank0s = _resume_case("resume_ranks_at_different_steps", _older)
test_resume_with_rank0_checkpoint_in_rank1s_place = _resume_case("resume_rank_swapped", _swapped)


def test_kill_9_of_a_rank_then_resume_equals_an_uninterrupted_run(runs, tmp_path):
    case = CASES["kill_rank"]
    cfg = write(tmp_path / f"kill-{uuid.uuid4().hex}.toml", runs.cfg.read_text())
    out = tmp_path / "out"
    run_dir = out / "ref"
    launch = torchrun(cfg, out)
    pids = launch.rank_pids()
    ck = [run_dir / "checkpoint-rank0.pt", run_dir / "checkpoint-rank1.pt"]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in ck):
        assert launch.proc.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
        time.sleep(0.01)
    # Freeze rank 1, let rank 0 settle (it blocks in its next collective), and kill rank 1
    # when both ranks' checkpoints are of the same step (else thaw it and try again).
    while True:
        assert launch.proc.poll() is None and time.monotonic() < deadline, "no moment to kill rank 1"
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(0.3)
        steps = [load_checkpoint(p)["step"] for p in ck]
        if steps[0] == steps[1]:
            break
        os.kill(pids[1], signal.SIGCONT)
        time.sleep(0.02)
    assert steps[0] < STEPS, "the run finished before the kill"
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    fin = launch.finish()
    took = fin.end - killed
    print(f"kill_rank: killed at step {steps[0]}; the surviving rank exited {took:.2f} s after the kill")
    assert fin.rc != 0
    fin.check_no_rank_traceback()
    case.check_ranks(fin.exitcodes, fin.lines)
    assert fin.exitcodes.get(1) == -signal.SIGKILL, fin.exitcodes
    assert took < EXIT_WITHIN, f"rank 0 took {took:.1f} s to exit after rank 1 was killed"
    assert [load_checkpoint(p)["step"] for p in ck] == steps  # the last checkpoints are kept

    resumed = torchrun(cfg, out, "--resume").finish()
    assert resumed.rc == 0 and not resumed.lines, resumed.stderr
    ref_rows, rows = read_metrics(runs.dir / "metrics.jsonl"), read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(EVERY, STEPS + 1, EVERY))
    assert without_wall(rows) == without_wall(ref_rows)  # every value, bit for bit
    for rank in (0, 1):
        a = load_checkpoint(runs.dir / f"checkpoint-rank{rank}.pt")
        b = load_checkpoint(run_dir / f"checkpoint-rank{rank}.pt")
        assert a["step"] == b["step"] == STEPS
        assert tensors_equal(a["state"], b["state"]) and tensors_equal(a["workers"], b["workers"])
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    ref_final = json.loads((runs.dir / "summary.json").read_text())["final"]
    assert without_wall([final]) == without_wall([ref_final])


class _Writes(io.StringIO):
    """stderr as `python -u` has it: every write() call is its own write(2)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def write(self, s):
        self.calls.append(s)
        return super().write(s)


@CASES["rank_lines_merge"].xfail_if_bug
def test_each_error_line_is_written_in_one_call(tmp_path):
    case = CASES["rank_lines_merge"]
    cfg = write(tmp_path / "cfg.toml", config(n_workers=0))
    err = _Writes()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    case.check(code, err.getvalue())
    assert err.calls == [err.getvalue()], f"the line took {len(err.calls)} writes: {err.calls}"
