"""The two ways in from Python: `simulate` (many stacked workers in one process) and
`run_config` (a validated TOML config, simulated or under torchrun). The drop-in for a
torchrun training loop is `distsgd.DistributedOptimizer` (`distsgd.dropin`)."""

from __future__ import annotations

from pathlib import Path

import torch

from .comm.network import NetworkModel
from .config import RunConfig, build, build_algorithm
from .errors import UserError
from .lr_schedule import LRSchedule
from .runner import RunResult, train
from .runner import train as train_task
from .tasks.task import Task
from .tasks.user import user_task


def make_algorithm(algorithm):
    """An algorithm instance from an instance, a registered name ("signum_mv") or a table
    ({"name": "choco_sgd", "lr": 0.05, ...}); a bad name or option is one UserError line."""
    if not isinstance(algorithm, str | dict):
        return algorithm
    try:
        return build_algorithm(algorithm)
    except ValueError as e:
        raise UserError(f"algorithm: {e}") from None


def simulate(
    model: torch.nn.Module | None = None,
    train=None,
    test=None,
    *,
    loss="cross_entropy",
    workers: int = 16,
    algorithm,
    partition="iid",
    validation: float = 0.0,
    batch_size: int = 32,
    steps: int = 500,
    eval_every: int | None = None,
    seed: int = 0,
    network: NetworkModel | None = None,
    buffers: str | None = None,
    device: str | torch.device = "cpu",
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    lr_schedule: LRSchedule | None = None,
    compile: bool = False,
    progress: bool = False,
    task: Task | None = None,
) -> RunResult:
    """Train `workers` simulated workers of `algorithm` on the user's model and data.

    model: any vmappable `nn.Module` (parameters and buffers; every worker starts from its
    parameters and buffers). train / test: map-style Datasets or (inputs, targets) tensors
    (a `TensorDataset` takes the fast path). loss(outputs, targets): the batch's mean loss,
    or a name (cross_entropy, mse, ...). partition: "iid", "dirichlet:α", "labels:k" or one
    index list per worker. validation: the fraction of `train` held out as a validation split
    (val_loss, val_acc in the metrics), never trained on. buffers: "average" (all-reduced every step) or "local" (each
    worker its own); default the algorithm's (see `runner.buffer_policy`).
    Returns a `RunResult` (metrics, summary, state; `.model()` is the averaged model).
    """
    if task is None:
        if model is None or train is None:
            raise UserError("simulate needs a model and a training set (or a task)")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device='cuda' but CUDA is not available")
        model = model.to(device)
        train, test = _to_device(train, device), _to_device(test, device)
        task = user_task(
            model, train, test, loss=loss, n_workers=workers, batch_size=batch_size, partition=partition,
            validation=validation, seed=seed,
        )
    elif task.n != workers and workers != 16:
        raise UserError(f"the task has {task.n} workers, workers={workers}")
    return train_task(task, make_algorithm(algorithm), steps=steps, eval_every=eval_every, network=network,
                      seed=seed, run_dir=run_dir, checkpoint_every=checkpoint_every, progress=progress,
                      compile=compile, lr_schedule=lr_schedule, buffers=buffers)


def _to_device(data, device: torch.device):
    """Tensor datasets move to the device whole; other datasets are batched on the CPU."""
    if data is None or device.type == "cpu":
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        return torch.utils.data.TensorDataset(*(t.to(device) for t in data.tensors))
    if isinstance(data, tuple | list) and all(isinstance(t, torch.Tensor) for t in data):
        return tuple(t.to(device) for t in data)
    return data


def record_run(cfg: RunConfig, run_dir) -> None:
    """config.toml (the effective config) and environment.json in the run directory, each
    written atomically."""
    import json

    from .environment import environment
    from .overrides import write_atomic, write_effective

    write_effective(cfg, run_dir)
    write_atomic(Path(run_dir) / "environment.json", json.dumps(environment(), indent=2) + "\n")


def run_config(
    cfg: RunConfig, run_dir, *, backend: str = "sim", resume: bool = False, progress: bool = True, sinks=None
):
    """Build and train a validated config; `backend="torch"` needs an initialized process group.
    `sinks` receive every metrics row (`write(row)`) and are closed at the end (`close()`),
    e.g. `distsgd.sinks.TensorBoardSink`. Before the first step (after a resume is accepted),
    the run directory gets the effective config (config.toml: every key, defaults included)
    and environment.json."""
    task, algorithm, network = build(cfg)
    comm = None
    if backend == "torch":
        from .comm.torchdist import TorchDistCommunicator

        comm = TorchDistCommunicator(cfg.n_workers, network)
    return train(
        task,
        algorithm,
        steps=cfg.steps,
        eval_every=cfg.eval_every,
        network=network,
        comm=comm,
        seed=cfg.seed,
        run_dir=run_dir,
        checkpoint_every=cfg.checkpoint_every,
        resume=resume,
        progress=progress,
        name=cfg.name,
        config=cfg.model_dump(),
        compile=cfg.compile,
        lr_schedule=cfg.lr_schedule.build(),
        buffers=cfg.buffers,
        sinks=sinks,
        diagnostics=cfg.diagnostics,
        on_start=(lambda: record_run(cfg, run_dir)) if run_dir is not None else None,
    )
