"""Helpers of the fault-injection suite: configs, the CLI in-process with the stderr a real
process would have, files on disk, and torchrun launches whose stderr lines are timed."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distsgd.cli import main

ROOT = Path(__file__).resolve().parents[2]


def config(
    *,
    name: str = "tiny",
    steps: int = 20,
    eval_every: int = 10,
    checkpoint_every: int | None = 10,
    n_workers: int = 4,
    seed: int = 0,
    dataset: str = "digits",
    partition: str | None = None,
    algorithm: str = 'name = "dpsgd"\nlr = 0.1\ntopology = "ring"',
) -> str:
    """A small valid config (digits, linear model, 4 workers, D-PSGD on a ring)."""
    top = [
        f'name = "{name}"',
        f"seed = {seed}",
        f"n_workers = {n_workers}",
        f"steps = {steps}",
        f"eval_every = {eval_every}",
    ]
    if checkpoint_every is not None:
        top.append(f"checkpoint_every = {checkpoint_every}")
    task = ["[task]", f'dataset = "{dataset}"', 'model = "linear"', "batch_size = 8"]
    if partition is not None:
        task.append(f'partition = "{partition}"')
    return "\n".join([*top, *task, "[algorithm]", algorithm]) + "\n"


def _show(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(*argv: str) -> tuple[int, str]:
    """`distsgd.cli.main(argv)` in this process; returns (exit code, stderr). Warnings are
    shown on stderr as a fresh interpreter would show them (pytest would otherwise
    collect them, hiding lines a user sees)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.showwarning = _show
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    return code, err.getvalue()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- files on disk ---------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temporary_files(root: Path) -> list[str]:
    """Files left by an interrupted atomic write (`.NAME.tmpPID`)."""
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name]


def load_checkpoint(path: Path) -> dict:
    ck = torch.load(path, weights_only=True)
    assert ck["format"] == "distsgd-checkpoint", path
    return ck


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, every line strict JSON (bare NaN or Infinity fail)."""
    return [json.loads(line, parse_constant=_no_constant) for line in path.read_text().splitlines()]


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]


def tensors_equal(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


# -- torchrun --------------------------------------------------------------------------------

RANK_LINE = re.compile(r"^distsgd: (?:\w+: )?rank (\d+): ")
REPORT = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
RANK_TRACEBACK = re.compile(r'File "[^"]*[/\\]distsgd[/\\]')


@dataclass
class Finished:
    rc: int
    stderr: str
    lines: dict[int, list[str]]  # rank -> its "distsgd: ..." lines
    exitcodes: dict[int, int]  # rank -> exit code, from torchrun's failure report
    first_line: float | None  # time.monotonic() of the first distsgd line
    end: float  # time.monotonic() when torchrun had exited
    wall: float

    def check_no_rank_traceback(self) -> None:
        assert not RANK_TRACEBACK.search(self.stderr), self.stderr


@dataclass
class Launch:
    proc: subprocess.Popen
    cfg: Path
    started: float
    events: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.events.append((time.monotonic(), line.rstrip("\n")))

    def finish(self, timeout: float = 180) -> Finished:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this launch started
            self.proc.wait()
            raise AssertionError(f"torchrun did not exit within {timeout} s") from None
        end = time.monotonic()
        self.reader.join(10)
        text = "\n".join(line for _, line in self.events)
        lines: dict[int, list[str]] = {}
        first = None
        for t, raw in self.events:
            # Two ranks' lines can merge ("...distsgd: error: rank 0: ..."): each rank's
            # print() writes the text and the newline apart (a known bug, see cases.py).
            for line in re.split(r"(?<=.)(?=distsgd: (?:\w+: )?rank \d+: )", raw):
                if line.startswith("distsgd:"):
                    first = t if first is None else first
                    m = RANK_LINE.match(line)
                    lines.setdefault(int(m.group(1)) if m else -1, []).append(line)
        codes = {int(r): int(c) for r, c in REPORT.findall(text)}
        return Finished(self.proc.returncode, text, lines, codes, first, end, end - self.started)

    def rank_pids(self, timeout: float = 120) -> dict[int, int]:
        """{rank: pid} of the worker processes, found with `pgrep -f` on the config's
        (unique) path; the torchrun agent matches too and is told apart by its env."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = subprocess.run(
                ["pgrep", "-f", str(self.cfg)], capture_output=True, text=True
            ).stdout.split()
            ranks = {}
            for pid in map(int, found):
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                rank = [e[5:] for e in env if e.startswith(b"RANK=")]
                if rank and pid != self.proc.pid:
                    ranks[int(rank[0])] = pid
            if len(ranks) == 2:
                return ranks
            time.sleep(0.05)
        raise AssertionError("the ranks' processes were not found")


def torchrun(cfg: Path, out: Path, *extra: str, timeout_s: int = 30) -> Launch:
    """Start `torchrun --standalone --nproc-per-node 2 -m distsgd.cli run CFG --backend
    torch --out OUT --quiet EXTRA`; a collective waits at most `timeout_s` for a peer."""
    env = {**os.environ, "DISTSGD_TIMEOUT": str(timeout_s), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "distsgd.cli", "run", str(cfg), "--backend", "torch", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    launch = Launch(proc, cfg, time.monotonic())
    launch.reader = threading.Thread(target=launch._read, daemon=True)
    launch.reader.start()
    return launch
