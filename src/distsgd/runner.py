"""The training loop: step, evaluate, record, checkpoint, resume. Read it top to bottom.

`train(task, algorithm, steps=...)` runs any algorithm on any communicator and returns the
metrics. With a `run_dir` it also writes, as it goes:

- metrics.jsonl and metrics.csv: one row every `eval_every` steps (and at the end);
- checkpoint.pt every `checkpoint_every` steps, written to a temporary name and renamed,
  holding everything needed to continue bit for bit: algorithm state, every worker's
  sampler and generator, the network clock's generator and the traffic counters;
- summary.json at the end.

`resume=True` continues from the checkpoint in `run_dir`, dropping metric rows written
after it. Under torch.distributed every rank runs this loop on its own slice of workers;
rank 0 (the process holding worker 0) writes the files, each rank its own checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import torch

from .algorithms.base import bind
from .comm.base import Communicator
from .comm.network import NetworkModel
from .comm.simulated import SimulatedCommunicator
from .errors import Diverged, Fault, UserError
from .lr_schedule import LRSchedule
from .tasks.task import Task
from .topology import Topology
from .workers import Flat, Workers

METRIC_FIELDS = (
    "step",
    "epoch",
    "batch_loss",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "consensus_distance",
    "epsilon",
    "hessian_top",
    "hessian_trace",
    "gradient_diversity",
    "avg_sharpness",
    "bytes_sent_per_worker",
    "bytes_sent_max_worker",
    "messages_per_worker",
    "sim_seconds",
    "wall_seconds",
)


@dataclass
class RunResult:
    metrics: list[dict]
    summary: dict
    state: dict
    run_dir: Path | None = None
    comm: Communicator | None = field(default=None, repr=False)
    workers: Workers | None = field(default=None, repr=False)

    def model(self):
        """A copy of the task's module holding the averaged model (parameters and buffers)
        of this process's workers (all workers in simulation)."""
        import copy

        w = self.workers
        net = copy.deepcopy(w.model)
        x = self.state["x"].mean(0)
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, view in w.flat.unflatten(x).items():
                params[name].copy_(view)
            bufs = dict(net.named_buffers())
            for name, b in w.buffers.items():
                bufs[name].copy_(b.float().mean(0).to(b.dtype) if b.is_floating_point() else b[0])
        return net

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


CHECKPOINT_FORMAT = "distsgd-checkpoint"
CHECKPOINT_VERSION = 2


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: `path` is the old file or the whole new one,
    never half of it. A failure (disk full, no permission) leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, PermissionError):
            raise UserError(f"cannot write {path}: permission denied") from None
        if isinstance(e, OSError):
            raise Fault(f"cannot write {path}: {e.strerror or e} (what was saved before is intact)") from None
        raise


def _finite(v):
    """A metric value for JSON: NaN and ±inf become null (bare NaN is not JSON)."""
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _atomic_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write(path, buf.getvalue())


def _csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return out.getvalue()


def _describe(algorithm) -> dict:
    """Hyperparameters for the summary; a topology is shown by its summary."""
    if not is_dataclass(algorithm):
        return {"name": getattr(algorithm, "name", type(algorithm).__name__)}
    out = {}
    engine = getattr(algorithm, "engine_fields", ())  # facts of the task, described by the task
    for k, v in vars(algorithm).items():
        if k in engine:
            continue
        if isinstance(v, Topology):
            v = v.summary()
        elif is_dataclass(v):  # an aggregator, attack or compressor: its type and fields
            v = {"type": type(v).__name__, **_describe(v)}
        elif hasattr(v, "compress"):  # a compressor: its name and plain options
            simple = {k: x for k, x in vars(v).items() if isinstance(x, int | float | str | bool | None)}
            v = {"type": getattr(v, "name", type(v).__name__), **simple}
        elif not isinstance(v, int | float | str | bool | type(None) | list | tuple | dict):
            v = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(v))  # readable, and the same in every run
        out[k] = v
    return out


class _Progress:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool, total: int, done: int, label: str):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn(f"[bold]{label}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=done, info="")

    def update(self, step: int, info: str | None = None) -> None:
        if self.bar is not None:
            kw = {"info": info} if info is not None else {}
            self.bar.update(self.task, completed=step, **kw)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _checkpoint_path(out: Path | None, comm: Communicator) -> Path | None:
    if out is None:
        return None
    rank = comm.start // comm.m
    return out / (f"checkpoint-rank{rank}.pt" if comm.m != comm.n else "checkpoint.pt")


def buffer_policy(algorithm, buffers: str | None) -> str:
    """"average": the workers' floating-point buffers (BatchNorm statistics) are all-reduced
    after every step; "local": each worker keeps its own. Default: "average" for algorithms
    whose workers share one model (AllReduce-SGD, compressed SGD, Signum, EF21, PowerSGD,
    robust SGD), "local" for Local SGD and the decentralized ones."""
    policy = buffers or getattr(algorithm, "buffer_policy", "local")
    if policy not in ("average", "local"):
        raise UserError(f"buffers must be 'average' or 'local', got {policy!r}")
    return policy


class _Loop:
    """What one run carries between steps: workers, state, loss sums, metrics, clock."""

    def __init__(
        self, task: Task, algorithm, comm: Communicator, seed: int, compile: bool, policy: str, diagnostics=()
    ):
        self.task, self.algorithm, self.comm, self.policy = task, algorithm, comm, policy
        self.diagnostics, self.seed = diagnostics, seed
        self.workers = Workers(task, seed=seed, start=comm.start, m=comm.m, compile=compile)
        self.state = algorithm.init(self.workers.x0(), comm)
        self.metrics: list[dict] = []
        self.start_step, self.wall_offset = 0, 0.0
        self.saved_step: int | None = None  # the step of the checkpoint on disk, if any
        self.loss_sum = torch.zeros(comm.m, dtype=torch.float64)
        self.loss_count = torch.zeros(comm.m, dtype=torch.float64)
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def oracle(self, x: torch.Tensor, rows: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """Gradients of every local worker at x[m, d]; with `rows` (asynchronous and
        federated algorithms, which keep their own clock), of those workers only, at
        x[len(rows), d]. Keyword options go to `Workers.gradients` unchanged."""
        g, loss = self.workers.gradients(x, rows, **kw)
        loss = loss.detach().double().cpu()
        if rows is None:
            self.comm.compute()
            self.loss_sum.add_(loss)
            self.loss_count.add_(1)
        else:
            self.loss_sum.index_add_(0, rows, loss)
            self.loss_count.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        return g

    def step(self, algorithm) -> None:
        self.state = algorithm.step(self.state, self.oracle, self.comm)
        if self.policy == "average" and self.workers.buffers:
            self.workers.average_buffers(self.comm)

    def evaluate(self, step: int, writer: bool) -> dict:
        """Metrics of the averaged model (and worker 0's own when the models differ); every
        process takes part in the averages, the writer evaluates."""
        comm, workers, task = self.comm, self.workers, self.task
        x = self.state["x"]
        if getattr(self.algorithm, "global_model", False):  # one model, the same on every process
            xbar, consensus = x[0], 0.0
        else:
            xbar, consensus = comm.average(x), comm.consensus_distance(x)
        buffers = workers.mean_buffers(comm)
        batch_loss = float(comm.average((self.loss_sum / self.loss_count.clamp(min=1)).unsqueeze(1)))
        self.loss_sum.zero_()
        self.loss_count.zero_()
        # samples actually drawn: batches may vary (DiveBatch, DP-SGD) or skip workers (federated)
        epoch = float(comm.average(workers.samples_drawn.double().unsqueeze(1))) * comm.n / task.train_samples
        row = {"step": step, "epoch": epoch, "batch_loss": batch_loss}
        if writer:
            f = workers.outputs(xbar, buffers)
            row.update(task.evaluate(f, "train"))
            row.update(task.evaluate(f, "val"))
            row.update(task.evaluate(f, "test"))
            if consensus > 1e-12 * max(1.0, float(xbar.double().pow(2).sum())):  # models differ (not rounding)
                own = task.evaluate(workers.outputs(x[0]), "test")
                row.update({f"worker0_{k}": v for k, v in own.items()})
        row["consensus_distance"] = consensus
        if self.diagnostics and writer:  # opt-in: Hessian, sharpness, diversity of the averaged model
            from . import diagnostics

            whole = x if comm.m == comm.n else xbar.unsqueeze(0)  # under torchrun: the averaged model
            row.update(diagnostics.measure(self.diagnostics, task, workers.model, whole, workers.flat, buffers=buffers, seed=self.seed))
        if hasattr(self.algorithm, "metrics"):
            row.update(self.algorithm.metrics(self.state))
        traffic = comm.traffic.summary()
        for k in ("bytes_sent_per_worker", "bytes_sent_max_worker", "messages_per_worker", "sim_seconds"):
            row[k] = traffic[k]
        row["wall_seconds"] = self.wall()
        return row

    def diverged(self, parameters: bool) -> str | None:
        """What became non-finite in the last step ("loss = nan"), or None. The loss is
        checked every step (m numbers); the parameters (a pass over x) only when asked,
        before an evaluation or a checkpoint: non-finite parameters make the next loss
        non-finite anyway. All processes reach the same verdict (one small all-reduce)."""
        local = 0.0
        if not bool(torch.isfinite(self.loss_sum).all()):
            local = 1.0
        elif parameters and not math.isfinite(float(self.state["x"].sum())):
            local = 1000.0
        total = local
        if self.comm.m != self.comm.n:  # under torch.distributed: Σ over processes
            rows = torch.zeros(self.comm.m, 1, dtype=torch.float64)
            rows[0, 0] = local
            total = float(self.comm.average(rows)) * self.comm.n
        if total == 0:
            return None
        if local == 1.0:
            bad = self.loss_sum[~torch.isfinite(self.loss_sum)]
            return f"the loss of worker {self.comm.start + int(torch.nonzero(~torch.isfinite(self.loss_sum))[0])} is {float(bad[0])}"
        if local == 1000.0 or total >= 1000:
            return "the parameters are not finite"
        return "the loss of a worker on another process is not finite"

    def checkpoint(self, step: int, name: str, identity: dict) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": identity,
            "fingerprint": _fingerprint(identity),
            "start": self.comm.start,  # which workers this file holds
            "m": self.comm.m,
            "step": step,
            "n": self.task.n,
            "d": self.workers.d,
            "algorithm": name,
            "state": self.state,
            "workers": self.workers.state_dict(),
            "comm": self.comm.state_dict(),
            "wall_seconds": self.wall(),
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
        }

    def resume(self, path: Path | None, out: Path | None, identity: dict, writer: bool) -> None:
        """Continue from the checkpoint at `path`; a missing, unreadable, foreign or
        different-run checkpoint is one UserError line naming the file (and the fields
        that differ)."""
        rank = self.comm.start // self.comm.m
        where = f"rank {rank}: " if self.comm.m != self.comm.n else ""
        if path is None or not path.exists():
            raise UserError(f"{where}--resume: no checkpoint {path.name if path else ''} in {out}")
        damaged = _damaged_entry(path)
        if damaged is not None:
            raise UserError(f"{where}--resume: {path} is damaged ({damaged})")
        try:
            with warnings.catch_warnings():  # torch warns about old pickles before refusing them
                warnings.simplefilter("ignore")
                ck = torch.load(path, weights_only=True)
        except Exception as e:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
            msg = text.splitlines()[0][:160] if text else type(e).__name__
            raise UserError(f"{where}--resume: {path} is not a readable distsgd checkpoint ({msg})") from None
        if isinstance(ck, dict) and "format" not in ck and {"step", "state"} <= set(ck):
            raise UserError(
                f"{where}--resume: {path} was written by an older distsgd (checkpoint format 1); "
                f"this one reads version {CHECKPOINT_VERSION}: start the run anew"
            )
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{where}--resume: {path} is not a distsgd checkpoint")
        if ck.get("version") != CHECKPOINT_VERSION:
            raise UserError(
                f"{where}--resume: {path} has checkpoint format version {ck.get('version')}, "
                f"this distsgd reads version {CHECKPOINT_VERSION}"
            )
        if ck.get("fingerprint") != _fingerprint(identity):
            differ = _differences(ck.get("identity") or {}, identity) or ["its identity"]
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise UserError(
                f"{where}--resume: {path} is from a different run: {shown} "
                f"{'differs' if len(differ) == 1 else 'differ'} (only steps, eval_every and checkpoint_every may change)"
            )
        if (ck.get("start"), ck.get("m")) != (self.comm.start, self.comm.m):
            def rank_of(start, m):
                return f"rank {start // m} (workers {start}–{start + m - 1})" if m else "no rank"

            raise UserError(
                f"{where}--resume: {path} holds the workers of {rank_of(ck.get('start') or 0, ck.get('m') or 0)}, "
                f"this process is {rank_of(self.comm.start, self.comm.m)}"
            )
        try:
            self.state = ck["state"]
            self.workers.load_state_dict(ck["workers"])
            self.comm.load_state_dict(ck["comm"])
            self.start_step, self.wall_offset = ck["step"], ck["wall_seconds"]
            self.saved_step = self.start_step
            self.loss_sum, self.loss_count = ck["loss_sum"], ck["loss_count"]
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise UserError(f"{where}--resume: {path} is damaged ({type(e).__name__}: {e})") from None
        if writer and (out / "metrics.jsonl").exists():
            rows = []
            for line in (out / "metrics.jsonl").read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a crash: the rows before it are kept
            self.metrics = [r for r in rows if isinstance(r, dict) and r.get("step", math.inf) <= self.start_step]


def _damaged_entry(path: Path) -> str | None:
    """A checkpoint is a zip archive: the first entry whose CRC-32 does not match, if any
    (torch.load does not check them, so a flipped byte would load silently)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile:
        return None  # not a zip at all: torch.load says what it is
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return f"the checksum of {bad} does not match" if bad is not None else None


def _differences(theirs, ours, prefix: str = "") -> list[str]:
    """Dotted paths where two identities differ (algorithm.lr, task.partition, ...)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        out = []
        for k in sorted(set(theirs) | set(ours)):
            out += _differences(theirs.get(k), ours.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")] if theirs != ours else []


def _fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_identity(task: Task, algorithm, seed: int, network, policy: str, lr_schedule, d: int) -> dict:
    """What fixes a run's trajectory: a checkpoint resumes only a run with the same."""
    return json.loads(
        json.dumps(
            {
                "algorithm": _describe(algorithm),
                "task": task.description,
                "n_workers": task.n,
                "parameters": d,
                "seed": seed,
                "buffers": policy,
                "network": asdict(network),
                "lr_schedule": asdict(lr_schedule) if lr_schedule is not None else None,
            },
            sort_keys=True,
            default=str,
        )
    )


def _agree(comm: Communicator, fn, *args) -> None:
    """Run `fn` on every process and agree on the outcome before going on: if it failed on
    any process, every process raises (the failing one its own error, the others a Fault
    naming it), instead of the others waiting in the next collective."""
    err = None
    try:
        fn(*args)
    except (UserError, Fault) as e:
        err = e
    if comm.m == comm.n:  # one process: nothing to agree on
        if err is not None:
            raise err
        return
    world = comm.n // comm.m
    rank = comm.start // comm.m
    rows = torch.zeros(comm.m, world, dtype=torch.float64)
    rows[0, rank] = 1.0 if err is not None else 0.0
    flags = comm.average(rows) * comm.n  # Σ over processes of each one's one-hot row
    bad = [r for r in range(world) if float(flags[r]) > 0.5]
    if err is not None:
        raise err
    if bad:
        raise Fault(f"rank {rank}: stopping because rank {bad[0]} failed")


def _same_step(comm: Communicator, step: int) -> None:
    """Every process resumed from the same step (a rank that died before writing its
    newest checkpoint leaves an older one: its collectives would not pair up)."""
    if comm.m == comm.n:
        return
    world, rank = comm.n // comm.m, comm.start // comm.m
    rows = torch.zeros(comm.m, world, dtype=torch.float64)
    rows[0, rank] = float(step)
    steps = [int(round(float(v))) for v in comm.average(rows) * comm.n]
    if len(set(steps)) > 1:
        listed = ", ".join(f"rank {r}: step {s}" for r, s in enumerate(steps))
        raise UserError(f"rank {rank}: --resume: the ranks' checkpoints are from different steps ({listed})")


def _write_metrics(out: Path, metrics: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv whole (atomically: a crash or a full disk leaves
    the previous files); non-finite values are written as null, so every line is JSON."""
    rows = [{k: _finite(v) for k, v in r.items()} for r in metrics]
    _atomic_write(out / "metrics.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())
    _atomic_write(out / "metrics.csv", _csv_text(rows).encode())


def _make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot use {out} as the run directory: a file is in the way") from None
    except PermissionError:
        raise UserError(f"cannot create the run directory {out}: permission denied") from None
    except OSError as e:
        raise UserError(f"cannot create the run directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the run directory {out}: permission denied")


def train(
    task: Task,
    algorithm,
    *,
    steps: int,
    eval_every: int | None = None,
    network: NetworkModel | None = None,
    comm: Communicator | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = False,
    name: str | None = None,
    config: dict | None = None,
    compile: bool = False,
    lr_schedule: LRSchedule | None = None,
    buffers: str | None = None,
    sinks: list | None = None,
    diagnostics: str | None = None,
    on_start=None,
) -> RunResult:
    """Train `task` with `algorithm` for `steps` steps; returns metrics, summary and state.

    One step is one stochastic gradient per worker (plus whatever the algorithm sends), so
    algorithms compare at equal computation. `stop_after` ends the run early as if it
    were interrupted there (used to test resuming). `compile` runs the per-worker gradient
    through torch.compile (faster for long runs, ~25 s to compile first). `lr_schedule`
    scales the algorithm's `lr` step by step (see `distsgd.lr_schedule`). `buffers` is the
    policy for the model's buffers (see `buffer_policy`). `sinks` receive every metrics row
    the writer records (`sink.write(row)`, e.g. a TensorBoard writer) and are closed at the
    end (`sink.close()`). `diagnostics` ("hessian_top,hessian_trace,sharpness:0.05", see
    `distsgd.diagnostics`) adds those measurements of the averaged model to every row.
    `on_start()` runs on the writer once the run directory is ready and a resume has been
    accepted (e.g. to save the effective config): a refused resume leaves the folder as it was.
    """
    # -- setup -----------------------------------------------------------------------------
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if lr_schedule is not None and lr_schedule.kind == "constant" and not lr_schedule.warmup:
        lr_schedule = None
    if lr_schedule is not None and not hasattr(algorithm, "lr"):
        raise UserError(f"{type(algorithm).__name__} has no lr for a learning-rate schedule to scale")
    eval_every = eval_every or max(1, steps // 20)
    diags = ()
    if diagnostics:
        from . import diagnostics as dg

        diags = dg.parse(diagnostics)
        if comm is not None and comm.m != comm.n and any(d.name == "avg_sharpness" for d in diags):
            raise UserError("diagnostics: avg_sharpness needs every worker's model: measure it in simulation")
    comm = comm or SimulatedCommunicator(task.n, network)
    if comm.n != task.n:
        raise UserError(f"the task has {task.n} workers, the communicator {comm.n}")
    try:
        facts = {"client_sizes": tuple(len(s) for s in task.shards), "batch_size": task.batch_size, "run_steps": steps}
        algorithm = bind(algorithm, task.n, seed, Flat.from_module(task.model).shapes, facts)
    except ValueError as e:
        raise UserError(f"algorithm: {e}") from None
    if hasattr(algorithm, "prepare_task"):  # e.g. label flipping by Byzantine workers
        task = algorithm.prepare_task(task)
    writer = comm.start == 0
    name = name or getattr(algorithm, "name", "run")
    out = Path(run_dir) if run_dir is not None else None
    ckpt_path = _checkpoint_path(out, comm)
    try:
        loop = _Loop(task, algorithm, comm, seed, compile, buffer_policy(algorithm, buffers), diags)
    except ValueError as e:  # the algorithm refuses this setup (e.g. its topology does not fit n)
        raise UserError(f"algorithm: {e}") from None
    identity = run_identity(task, algorithm, seed, comm.network, loop.policy, lr_schedule, loop.workers.d)
    if out is not None:
        _make_run_dir(out)
    if resume:
        _agree(comm, loop.resume, ckpt_path, out, identity, writer)
        _same_step(comm, loop.start_step)
    if writer and out is not None:
        _write_metrics(out, loop.metrics)
        if on_start is not None:
            on_start()
    last = min(steps, stop_after) if stop_after is not None else steps
    bar = _Progress(progress and writer, steps, loop.start_step, name)
    loop.t0 = time.perf_counter()

    # -- the loop --------------------------------------------------------------------------
    scaled, factor = algorithm, 1.0
    stopped = None
    exhausted = getattr(algorithm, "budget_exhausted", None)  # e.g. DP-SGD's privacy budget
    try:
        for t in range(loop.start_step, last):
            if exhausted is not None and exhausted(loop.state):
                stopped, last = "privacy budget exhausted", t
                if not (loop.metrics and loop.metrics[-1]["step"] == t):  # every process: evaluate is collective
                    loop.metrics.append(loop.evaluate(t, writer))
                    if writer and out is not None:
                        _write_metrics(out, loop.metrics)
                break
            if lr_schedule is not None and (f := lr_schedule.factor(t, steps)) != factor:
                scaled, factor = replace(algorithm, lr=algorithm.lr * f), f
            loop.step(scaled)
            step = t + 1
            evaluating = step % eval_every == 0 or step == steps
            saving = ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0
            why = loop.diverged(parameters=evaluating or saving or step == last)
            if why is not None:  # record where, keep the last good checkpoint, stop
                row = {**loop.evaluate(step, False), "diverged": True}
                loop.metrics.append(row)
                if writer and out is not None:
                    _write_metrics(out, loop.metrics)
                kept = f"; the checkpoint of step {loop.saved_step} is kept" if loop.saved_step is not None else ""
                raise Diverged(
                    f"step {step}: {why}{kept} (lower the learning rate, add warmup or clip the gradients)"
                )
            if evaluating:
                row = loop.evaluate(step, writer)
                loop.metrics.append(row)
                if writer:
                    for sink in sinks or ():
                        sink.write(row)
                if writer and out is not None:
                    _write_metrics(out, loop.metrics)
                acc = row.get("test_acc")
                bar.update(step, f"loss {row['batch_loss']:.3f}" + (f" acc {acc:.3f}" if acc is not None else ""))
            else:
                bar.update(step)
            if saving:
                _atomic_save(loop.checkpoint(step, name, identity), ckpt_path)
                loop.saved_step = step
    finally:
        bar.close()
        for sink in sinks or ():
            sink.close()

    # -- summary ---------------------------------------------------------------------------
    summary = {
        "name": name,
        "steps": last,
        "finished": last == steps,
        "stopped": stopped,
        "algorithm": _describe(algorithm),
        "lr_schedule": asdict(lr_schedule) if lr_schedule is not None else None,
        "task": task.description,
        "workers": task.n,
        "parameters": loop.workers.d,
        "buffers": loop.policy,
        "network": asdict(comm.network),
        "traffic": comm.traffic.summary(),
        "final": {k: _finite(v) for k, v in (loop.metrics[-1] if loop.metrics else {}).items()},
        "wall_seconds": loop.wall(),
        "seed": seed,
        "fingerprint": _fingerprint(identity),
    }
    if config is not None:
        summary["config"] = config
    if writer and out is not None:
        _atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return RunResult(loop.metrics, summary, loop.state, out, comm, loop.workers)
