"""What each injected fault should do: the tests check these, the README table shows them.

A `Case` states the fault (`when`), the exit code (one code, a tuple of acceptable codes,
or under torchrun one entry per rank), the stderr line(s) as patterns (`…` stands for any
text, `<n>` for a number) and what is on disk afterwards. A case with `bug` set describes
the behaviour distsgd should have and does not: its test is marked
`xfail(strict=True, reason=bug)`, and the table says so, with what happens today (`now`).

`python -m tests.faults.table` prints the table; `test_readme.py` checks the README's copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

Codes = int | tuple[int, ...]


@dataclass(frozen=True)
class Case:
    id: str
    when: str  # the fault, Markdown
    exit: Codes | dict[int, Codes]  # {rank: code(s)} for the ranks that report under torchrun
    says: tuple[str, ...] | dict[int, str]  # one stderr line, any of these; or per rank
    after: str  # what is on disk (and what else holds) afterwards, Markdown
    bug: str | None = None  # set: the test is xfail(strict=True), this is the precise cause
    now: str | None = None  # with bug: what happens today, for the table

    # -- used by the tests -------------------------------------------------------------------
    @property
    def marks(self) -> list:
        return [pytest.mark.xfail(strict=True, reason=self.bug)] if self.bug else []

    def xfail_if_bug(self, test):
        """Decorator: the test, marked xfail(strict=True, reason=bug) if this case is a bug."""
        for mark in self.marks:
            test = mark(test)
        return test

    def param(self, *values, id: str | None = None):
        """A pytest.param of `values` carrying this case's xfail mark (if any)."""
        return pytest.param(*values, marks=self.marks, id=id or self.id)

    def check(self, code: int, err: str) -> str:
        """Assert the exit code and the stderr of one process: no traceback, no line on
        success, exactly one matching line otherwise. Returns that line ("" on success)."""
        assert "Traceback" not in err, err
        assert code in _codes(self.exit), f"exit code {code}, expected {self.exit}; stderr:\n{err}"
        lines = err.splitlines()
        if code == 0:
            assert lines == [], err
            return ""
        assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
        assert any(matches(p, lines[0]) for p in self.says), f"{lines[0]!r} does not match {self.says}"
        return lines[0]

    def check_ranks(self, exitcodes: dict[int, int], lines: dict[int, list[str]]) -> None:
        """Under torchrun: each rank named in `exit` exited with its code and printed
        exactly one distsgd line matching its pattern."""
        for rank, codes in self.exit.items():
            assert exitcodes.get(rank) in _codes(codes), (
                f"rank {rank}: exit codes {exitcodes}, expected {self.exit}"
            )
            got = lines.get(rank, [])
            assert len(got) == 1, f"rank {rank}: expected one distsgd line, got {got}"
            assert matches(self.says[rank], got[0]), (
                f"rank {rank}: {got[0]!r} does not match {self.says[rank]!r}"
            )


def _codes(c: Codes) -> tuple[int, ...]:
    return c if isinstance(c, tuple) else (c,)


def matches(pattern: str, line: str) -> bool:
    """`…` is any text, `<n>` a whole number; everything else literal; the whole line."""
    rx = re.escape(pattern).replace("…", ".*").replace("<n>", r"\d+")
    return re.fullmatch(rx, line) is not None


STOPPING = "distsgd: error: rank 0: stopping because rank 1 failed"
DIFFERENT_RUN = "is from a different run: … (only steps, eval_every and checkpoint_every may change)"
NOT_READABLE = "distsgd: error: --resume: …/checkpoint.pt is not a readable distsgd checkpoint (…)"
NOT_DISTSGD = "distsgd: error: --resume: …/checkpoint.pt is not a distsgd checkpoint"
UNCHANGED = "the run folder is unchanged"

CASES_LIST = [
    # -- torchrun: 2 ranks ---------------------------------------------------------------------
    Case(
        "resume_rank_missing",
        "`--resume` under torchrun, rank 1's checkpoint is missing",
        {1: 2, 0: 4},
        {1: "distsgd: error: rank 1: --resume: no checkpoint checkpoint-rank1.pt in …", 0: STOPPING},
        "nothing is written; every rank exits on its own within 10 s",
    ),
    Case(
        "resume_rank_foreign",
        "`--resume` under torchrun, rank 1's checkpoint is from another run",
        {1: 2, 0: 4},
        {1: f"distsgd: error: rank 1: --resume: …/checkpoint-rank1.pt {DIFFERENT_RUN}", 0: STOPPING},
        "nothing is written; every rank exits on its own within 10 s",
    ),
    Case(
        "kill_rank",
        "one rank is killed (`kill -9`) mid-run under torchrun",
        {0: 4},
        {0: "distsgd: error: rank 0: lost contact with another rank (…)"},
        "the surviving rank exits within 10 s; each rank's last checkpoint is kept, and `--resume` "
        "finishes with metrics and parameters equal bit for bit to an uninterrupted run's",
    ),
    Case(
        "resume_ranks_at_different_steps",
        "`--resume` under torchrun, rank 1's checkpoint is older than rank 0's "
        "(rank 1 died before writing its newest one)",
        {0: (2, 4), 1: (2, 4)},
        {
            0: "distsgd: error: rank 0: --resume: …step…",
            1: "distsgd: error: rank 1: --resume: …step…",
        },
        "nothing is written; every rank exits on its own within 10 s",
    ),
    Case(
        "resume_rank_swapped",
        "`--resume` under torchrun, rank 1 holds rank 0's checkpoint (same run, other workers)",
        {1: 2, 0: 4},
        {1: "distsgd: error: rank 1: --resume: …/checkpoint-rank1.pt …rank 0…", 0: STOPPING},
        "nothing is written; every rank exits on its own within 10 s",
    ),
    Case(
        "rank_lines_merge",
        "two ranks print their error at the same moment (torchrun runs each with `python -u`)",
        2,
        ("distsgd: error: …",),
        "each line reaches stderr in one write, so two ranks' lines never merge",
    ),
    # -- distsgd netem: nodes behind rate-limited links --------------------------------------------
    Case(
        "netem_node_fails",
        "a node of `distsgd netem` exits with an error (code 7) while the others run on",
        7,
        ("distsgd: error: netem: node 1 exited with code 7; stopped nodes 0, 2 10 s later",),
        "the others get 10 s to exit on their own, then are stopped; the exit code is the node's",
    ),
    Case(
        "netem_no_tools",
        "`distsgd netem` where `tc` (or `ip`, `unshare`, `nsenter`) is not installed",
        2,
        ("distsgd: error: netem: missing tc (needs iproute2's ip and tc, util-linux's unshare and nsenter)",),
        "nothing is started",
    ),
    Case(
        "netem_bad_link",
        "`distsgd netem --bandwidth 0` (or negative, `inf`, a unit like `1Gb/s`)",
        2,
        ("distsgd: error: bad bandwidth '…': …",),
        "nothing is started",
    ),
    # -- divergence ------------------------------------------------------------------------------
    Case(
        "diverged",
        "the loss becomes inf (`lr = 1e6` on least squares)",
        3,
        (
            "distsgd: diverged: step <n>: the loss of worker <n> is inf; the checkpoint of step <n> is kept "
            "(lower the learning rate, add warmup or clip the gradients)",
        ),
        "metrics.jsonl: one JSON object per line (null for NaN and inf), the last row "
        '`"diverged": true` at step N; checkpoint.pt is the last one before step N, loadable; '
        "none is written at or after step N; no temporary file",
    ),
    Case(
        "diverged_at_checkpoint_step",
        "the loss becomes inf at a step where a checkpoint is due",
        3,
        ("distsgd: diverged: step <n>: the loss of worker <n> is inf; the checkpoint of step <n> is kept …",),
        "as above, and the message names the step of the checkpoint on disk",
    ),
    Case(
        "lr_not_float32",
        "`lr = 1e300` or `lr = inf`",
        2,
        ("distsgd: error: …: algorithm: lr = … is not a finite float32 number",),
        "nothing is written",
    ),
    # -- checkpoints -----------------------------------------------------------------------------
    Case(
        "ckpt_random",
        "`--resume` from a checkpoint of random bytes",
        2,
        (NOT_READABLE, NOT_DISTSGD),
        UNCHANGED,
    ),
    Case("ckpt_truncated", "`--resume` from a checkpoint cut in half", 2, (NOT_READABLE,), UNCHANGED),
    Case("ckpt_foreign", '`--resume` from another torch file (`{"a": 1}`)', 2, (NOT_DISTSGD,), UNCHANGED),
    Case(
        "ckpt_pickle_exploit",
        "`--resume` from a torch file whose pickle runs code when loaded with `weights_only=False`",
        2,
        (NOT_READABLE,),
        "the code never runs (weights-only loading); " + UNCHANGED,
    ),
    Case(
        "ckpt_raw_pickle_exploit",
        "`--resume` from a plain pickle (protocol 4) that runs code when unpickled",
        2,
        (NOT_READABLE,),
        "the code never runs (weights-only loading); " + UNCHANGED,
    ),
    Case(
        "ckpt_bit_flip",
        "`--resume` from a checkpoint with one byte of the parameters flipped",
        2,
        ("distsgd: error: --resume: …/checkpoint.pt is damaged …",),
        UNCHANGED,
    ),
    Case(
        "resume_changed",
        "`--resume` with another lr, seed, n_workers, partition or algorithm",
        2,
        (f"distsgd: error: --resume: …/checkpoint.pt {DIFFERENT_RUN}",),
        "nothing is written; the line names the differing parts of the run "
        "(algorithm, seed, n_workers, task, ...)",
    ),
    Case(
        "resume_extended",
        "`--resume` with more steps, another eval_every or another checkpoint_every",
        0,
        (),
        "the run continues from the checkpoint: rows up to it are kept, later rows equal an "
        "uninterrupted run's",
    ),
    # -- writes ----------------------------------------------------------------------------------
    Case(
        "out_permission",
        "the run folder is not writable (`chmod 0o500`; as root, writes fail with EACCES)",
        2,
        ("distsgd: error: cannot write … permission denied",),
        "nothing new is written, no temporary file; the previous checkpoint is intact and loadable",
    ),
    Case(
        "out_file_in_way",
        "`--out` cannot be created (a path under a regular file, or under /proc)",
        2,
        ("distsgd: error: cannot create the run directory …: …",),
        "nothing is created",
    ),
    Case(
        "disk_full",
        "the disk fills (ENOSPC) while checkpoint.pt, metrics.jsonl or summary.json is written",
        4,
        ("distsgd: error: cannot write …: No space left on device (what was saved before is intact)",),
        "that file is its previous version (the checkpoint loadable); no temporary file",
    ),
    Case(
        "sigint_checkpoint_write",
        "Ctrl-C (SIGINT) while a checkpoint is being written",
        130,
        ("distsgd: interrupted",),
        "the previous checkpoint is intact and loadable; no temporary file",
    ),
    Case(
        "sigint_run",
        "Ctrl-C (SIGINT) sent to a `distsgd run` process mid-run",
        130,
        ("distsgd: interrupted",),
        "the last checkpoint is loadable, metrics.jsonl is valid; no temporary file",
    ),
    # -- configs ---------------------------------------------------------------------------------
    Case(
        "bad_name",
        '`name = ".."`, `"a/b"`, `"../x"`, `"."` or `"/tmp/x"`',
        2,
        ("distsgd: error: …: name: …",),
        "nothing is written, inside or outside out_dir",
    ),
    Case(
        "strict_types",
        '`lr = "0.1"`, `lr = true` or `n_workers = 4.0`',
        2,
        ("distsgd: error: …: …: Input should be a valid … (got …)",),
        "nothing is written",
    ),
    Case(
        "fuzz_toml",
        "the config is random text, or a valid one with characters deleted, values swapped or "
        "values of the wrong type (hypothesis)",
        (0, 2, 3),
        ("distsgd: error: …", "distsgd: diverged: …"),
        "never a traceback; one line whenever the exit code is not 0",
    ),
]

CASES: dict[str, Case] = {c.id: c for c in CASES_LIST}
assert len(CASES) == len(CASES_LIST), "duplicate case ids"
