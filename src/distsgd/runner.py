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
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import torch

from .algorithms.base import bind
from .comm.base import Communicator
from .comm.network import NetworkModel
from .comm.simulated import SimulatedCommunicator
from .errors import UserError
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    for k, v in vars(algorithm).items():
        if isinstance(v, Topology):
            v = v.summary()
        elif is_dataclass(v):  # an aggregator, attack or compressor: its type and fields
            v = {"type": type(v).__name__, **_describe(v)}
        elif hasattr(v, "compress"):  # a compressor: its name and plain options
            simple = {k: x for k, x in vars(v).items() if isinstance(x, int | float | str | bool | None)}
            v = {"type": getattr(v, "name", type(v).__name__), **simple}
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

    def __init__(self, task: Task, algorithm, comm: Communicator, seed: int, compile: bool, policy: str):
        self.task, self.algorithm, self.comm, self.policy = task, algorithm, comm, policy
        self.workers = Workers(task, seed=seed, start=comm.start, m=comm.m, compile=compile)
        self.state = algorithm.init(self.workers.x0(), comm)
        self.metrics: list[dict] = []
        self.start_step, self.wall_offset = 0, 0.0
        self.loss_sum = torch.zeros(comm.m, dtype=torch.float64)
        self.loss_count = torch.zeros(comm.m, dtype=torch.float64)
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def oracle(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Gradients of every local worker at x[m, d]; with `rows` (asynchronous algorithms,
        which keep their own clock), of those workers only, at x[len(rows), d]."""
        g, loss = self.workers.gradients(x, rows)
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
        xbar = comm.average(x)
        buffers = workers.mean_buffers(comm)
        consensus = comm.consensus_distance(x)
        batch_loss = float(comm.average((self.loss_sum / self.loss_count.clamp(min=1)).unsqueeze(1)))
        self.loss_sum.zero_()
        self.loss_count.zero_()
        epoch = step * task.n * task.batch_size / len(task.train)
        row = {"step": step, "epoch": epoch, "batch_loss": batch_loss}
        if writer:
            f = workers.outputs(xbar, buffers)
            row.update(task.evaluate(f, "train"))
            row.update(task.evaluate(f, "test"))
            if consensus > 1e-12 * max(1.0, float(xbar.double().pow(2).sum())):  # models differ (not rounding)
                own = task.evaluate(workers.outputs(x[0]), "test")
                row.update({f"worker0_{k}": v for k, v in own.items()})
        row["consensus_distance"] = consensus
        if hasattr(self.algorithm, "metrics"):
            row.update(self.algorithm.metrics(self.state))
        traffic = comm.traffic.summary()
        for k in ("bytes_sent_per_worker", "bytes_sent_max_worker", "messages_per_worker", "sim_seconds"):
            row[k] = traffic[k]
        row["wall_seconds"] = self.wall()
        if not math.isfinite(row["batch_loss"]):
            row["diverged"] = True
        return row

    def checkpoint(self, step: int, name: str) -> dict:
        return {
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

    def resume(self, path: Path | None, out: Path | None, name: str, writer: bool) -> None:
        if path is None or not path.exists():
            raise UserError(f"--resume: no checkpoint in {out}")
        ck = torch.load(path, weights_only=True)
        if ck["n"] != self.task.n or ck["d"] != self.workers.d or ck["algorithm"] != name:
            raise UserError(f"--resume: the checkpoint in {out} is for a different run")
        self.state = ck["state"]
        self.workers.load_state_dict(ck["workers"])
        self.comm.load_state_dict(ck["comm"])
        self.start_step, self.wall_offset = ck["step"], ck["wall_seconds"]
        self.loss_sum, self.loss_count = ck["loss_sum"], ck["loss_count"]
        if writer and (out / "metrics.jsonl").exists():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
            self.metrics = [r for r in rows if r["step"] <= self.start_step]


def _write_metrics(out: Path, metrics: list[dict], row: dict | None = None) -> None:
    """Append `row` to metrics.jsonl (or rewrite it whole when row is None) and rewrite the CSV."""
    if row is None:
        _atomic_write(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metrics).encode())
    else:
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    _atomic_write(out / "metrics.csv", _csv_text(metrics).encode())


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
) -> RunResult:
    """Train `task` with `algorithm` for `steps` steps; returns metrics, summary and state.

    One step is one stochastic gradient per worker (plus whatever the algorithm sends), so
    algorithms compare at equal computation. `stop_after` ends the run early as if it
    were interrupted there (used to test resuming). `compile` runs the per-worker gradient
    through torch.compile (faster for long runs, ~25 s to compile first). `lr_schedule`
    scales the algorithm's `lr` step by step (see `distsgd.lr_schedule`). `buffers` is the
    policy for the model's buffers (see `buffer_policy`).
    """
    # -- setup -----------------------------------------------------------------------------
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if lr_schedule is not None and lr_schedule.kind == "constant" and not lr_schedule.warmup:
        lr_schedule = None
    if lr_schedule is not None and not hasattr(algorithm, "lr"):
        raise UserError(f"{type(algorithm).__name__} has no lr for a learning-rate schedule to scale")
    eval_every = eval_every or max(1, steps // 20)
    comm = comm or SimulatedCommunicator(task.n, network)
    if comm.n != task.n:
        raise UserError(f"the task has {task.n} workers, the communicator {comm.n}")
    try:
        algorithm = bind(algorithm, task.n, seed, Flat.from_module(task.model).shapes)
    except ValueError as e:
        raise UserError(f"algorithm: {e}") from None
    if hasattr(algorithm, "prepare_task"):  # e.g. label flipping by Byzantine workers
        task = algorithm.prepare_task(task)
    writer = comm.start == 0
    name = name or getattr(algorithm, "name", "run")
    out = Path(run_dir) if run_dir is not None else None
    ckpt_path = _checkpoint_path(out, comm)
    loop = _Loop(task, algorithm, comm, seed, compile, buffer_policy(algorithm, buffers))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if resume:
        loop.resume(ckpt_path, out, name, writer)
    if writer and out is not None:
        _write_metrics(out, loop.metrics)
    last = min(steps, stop_after) if stop_after is not None else steps
    bar = _Progress(progress and writer, steps, loop.start_step, name)
    loop.t0 = time.perf_counter()

    # -- the loop --------------------------------------------------------------------------
    scaled, factor = algorithm, 1.0
    try:
        for t in range(loop.start_step, last):
            if lr_schedule is not None and (f := lr_schedule.factor(t, steps)) != factor:
                scaled, factor = replace(algorithm, lr=algorithm.lr * f), f
            loop.step(scaled)
            step = t + 1
            if step % eval_every == 0 or step == steps:
                row = loop.evaluate(step, writer)
                loop.metrics.append(row)
                if writer and out is not None:
                    _write_metrics(out, loop.metrics, row)
                acc = row.get("test_acc")
                bar.update(step, f"loss {row['batch_loss']:.3f}" + (f" acc {acc:.3f}" if acc is not None else ""))
            else:
                bar.update(step)
            if ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0:
                _atomic_save(loop.checkpoint(step, name), ckpt_path)
    finally:
        bar.close()

    # -- summary ---------------------------------------------------------------------------
    summary = {
        "name": name,
        "steps": last,
        "finished": last == steps,
        "algorithm": _describe(algorithm),
        "lr_schedule": asdict(lr_schedule) if lr_schedule is not None else None,
        "task": task.description,
        "workers": task.n,
        "parameters": loop.workers.d,
        "buffers": loop.policy,
        "network": asdict(comm.network),
        "traffic": comm.traffic.summary(),
        "final": loop.metrics[-1] if loop.metrics else {},
        "wall_seconds": loop.wall(),
        "seed": seed,
    }
    if config is not None:
        summary["config"] = config
    if writer and out is not None:
        _atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return RunResult(loop.metrics, summary, loop.state, out, comm, loop.workers)
