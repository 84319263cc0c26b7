"""Run configuration: a TOML file validated by pydantic, turned into task, algorithm, network.

The `[algorithm]` table is validated by the algorithm's own options class, found by its
`name` in the registry (`distsgd.algorithms.ALGORITHMS`): there is no second copy of any
algorithm's options or defaults here. Every table rejects unknown keys; the first error
becomes one line naming the field. `[task]` names a built-in dataset and model, or the
user's own by import path (`model = "mypkg.nets:make_model"`, `train = "mypkg.data:train_set"`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .algorithms import ALGORITHMS, bind
from .comm.network import NetworkModel
from .errors import UserError
from .registry import SpecError, one_line
from .tasks import make_task


class _Strict(BaseModel):
    """Unknown keys are errors, and types are not coerced: lr = "0.1" or lr = true is an
    error, not 0.1 or 1 (an integer is accepted for a float)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TaskConfig(_Strict):
    dataset: Literal["mnist1d", "digits", "logistic", "least_squares", "mobility"] = Field(
        "mnist1d", description="built-in dataset (mobility: synthetic multi-region counts to forecast)"
    )
    model: str = Field(
        "mlp", description="linear, mlp, cnn1d, forecast_cnn (mobility), or the user's 'package.module:name' (a module or a factory)"
    )
    train: str | None = Field(None, description="the user's training Dataset (or a factory), by import path")
    test: str | None = Field(None, description="the user's test Dataset (or a factory), by import path")
    loss: str = Field(
        "cross_entropy", description="user models' loss: cross_entropy, mse, l1, nll, bce_with_logits or an import path"
    )
    hidden: list[Annotated[int, Field(gt=0)]] = Field([100, 100], description="hidden widths of the built-in mlp")
    partition: Literal["iid", "dirichlet", "labels", "natural"] | None = Field(
        None, description="how samples are split over workers (default: natural for synthetic data, else iid)"
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration α (smaller: more skewed)")
    labels_per_worker: int = Field(2, ge=1, description="classes per worker for partition = labels")
    batch_size: int = Field(32, ge=1, description="mini-batch per worker")
    validation: float = Field(
        0.0, ge=0, lt=1, description="fraction of the training samples held out as a validation split (val_loss, val_acc; what sweeps select on)"
    )
    num_samples: int = Field(5000, ge=100, description="MNIST-1D samples generated (train + test)")
    samples_per_worker: int = Field(200, ge=1, description="synthetic data: samples each worker generates")
    dim: int = Field(20, ge=1, description="synthetic data: features")
    heterogeneity: float = Field(0.0, ge=0, description="synthetic data: how far workers' optima and inputs differ (ζ)")
    regions: int = Field(20, ge=1, description="mobility: regions whose counts are forecast")
    lags: int = Field(6, ge=1, description="mobility: past half-hours the forecaster reads")
    input_epsilon: float | None = Field(None, gt=0, description="mobility: ε of input perturbation (noise on the training series once)")
    input_mechanism: Literal["laplace", "gaussian"] = Field("laplace", description="mobility: input perturbation's mechanism")
    input_delta: float | None = Field(None, gt=0, lt=1, description="mobility: δ of the gaussian input perturbation")

    @model_validator(mode="after")
    def _user_or_builtin(self):
        user = self.train is not None
        if user and ":" not in self.model:
            raise ValueError("with train = an import path, model must be one too ('package.module:name')")
        if not user and ":" in self.model:
            raise ValueError("a user model needs its training data: set train = 'package.module:name'")
        if not user and self.model not in ("linear", "mlp", "cnn1d", "forecast_cnn"):
            raise ValueError(f"unknown model {self.model!r} (linear, mlp, cnn1d, forecast_cnn, or 'package.module:name')")
        return self


class NetworkConfig(_Strict):
    latency: float = Field(50e-6, ge=0, description="α, seconds per message")
    bandwidth: float = Field(1.25e9, gt=0, description="β, bytes/s per worker interface")
    server_bandwidth: float | None = Field(None, gt=0, description="bytes/s of the parameter server's interface (default: bandwidth)")
    compute_seconds: float = Field(5e-3, ge=0, description="seconds per gradient on a speed-1 worker")
    speeds: list[Annotated[float, Field(gt=0)]] | None = Field(None, description="relative speed per worker")
    speed_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None, description="draw speeds log-uniformly in [lo, hi]", strict=False
    )
    straggler_prob: float = Field(0.0, ge=0, le=1, description="probability a worker straggles at a gradient")
    straggler_slowdown: float = Field(4.0, ge=1, description="a straggling gradient takes this many times longer")
    speed_jitter: float = Field(0.0, ge=0, description="σ: each gradient's time × exp(σ·Z)")
    link_slow_prob: float = Field(0.0, ge=0, le=1, description="probability a pairwise exchange is slow")
    link_slowdown: float = Field(4.0, ge=1, description="a slow exchange takes this many times longer")
    interconnect: str | None = Field(None, description="e.g. \"torus:4x4\": all-reduce time from the packet simulator")
    allreduce: Literal["ring", "hd", "dbtree", "ring2d", "hierarchical", "multitree"] = Field(
        "ring", description="all-reduce algorithm simulated on the interconnect"
    )
    nis: int = Field(1, ge=1, description="network interfaces per node of the interconnect")


class LRScheduleConfig(_Strict):
    kind: Literal["constant", "cosine", "step"] = Field("constant", description="factor on the algorithm's lr over the run")
    warmup: int = Field(0, ge=0, description="steps of linear warmup")
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = Field([0.5, 0.75], description="step: fractions of the run")
    gamma: float = Field(0.1, gt=0, le=1, description="step: factor at each milestone")

    def build(self):
        from .lr_schedule import LRSchedule

        return LRSchedule(self.kind, self.warmup, tuple(self.milestones), self.gamma)


def build_algorithm(spec):
    """The algorithm of an `[algorithm]` table (or a name), validated by its options class."""
    try:
        entry, options = ALGORITHMS.split(spec)
    except SpecError as e:
        raise ValueError(f"name: {e}") from None
    try:
        return entry.factory(**entry.preset, **options)
    except ValidationError as e:
        raise ValueError(one_line(e)) from None


class RunConfig(_Strict):
    source_dir: str | None = Field(None, exclude=True)  # the config file's folder (user imports)
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$", description="run name: the folder under out_dir")
    seed: int = Field(0, ge=0, description="seed of every random draw (data, model, sampling, algorithm)")
    n_workers: int = Field(16, ge=1, le=4096, description="number of workers n")
    steps: int = Field(500, ge=1, description="steps; one step is one stochastic gradient per worker")
    eval_every: int | None = Field(None, ge=1, description="steps between metric rows (default steps/20)")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints (none if unset)")
    out_dir: str = Field("runs", description="folder of the run folders")
    compile: bool = Field(False, description="torch.compile the per-worker gradients (long runs)")
    buffers: Literal["average", "local"] | None = Field(
        None, description="model buffers (BatchNorm): averaged every step or kept per worker; the algorithm's default if unset"
    )
    diagnostics: str | None = Field(
        None, description='measurements added to every metrics row, e.g. "hessian_top,hessian_trace,sharpness:0.05"'
    )
    task: TaskConfig = TaskConfig()
    algorithm: dict
    network: NetworkConfig = NetworkConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v):
        if set(v) <= {"."}:
            raise ValueError(f"{v!r} is not a folder name under out_dir")
        return v

    @field_validator("diagnostics")
    @classmethod
    def _diagnostics(cls, v):
        if v is not None:
            from .diagnostics import parse

            parse(v)
        return v

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v):
        build_algorithm(v)
        return v

    @model_validator(mode="after")
    def _fits(self):
        if self.network.speeds is not None and len(self.network.speeds) != self.n_workers:
            raise ValueError(
                f"network.speeds has {len(self.network.speeds)} entries for n_workers={self.n_workers}"
            )
        try:  # the checks that need n: topology fits, Byzantine ids, the rule's guarantee, ...
            algorithm = bind(build_algorithm(self.algorithm), self.n_workers, self.seed)
            if hasattr(algorithm, "validate"):
                algorithm.validate(self.n_workers)
        except ValueError as e:
            raise ValueError(f"algorithm: {e}") from None
        return self


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] != "value_error" and not isinstance(e.get("input"), dict | list):
        msg = f"{msg} (got {e.get('input')!r})"
    if where in ("algorithm", "config") and ": " in msg and msg.split(": ", 1)[0].replace(".", "").isidentifier():
        field, msg = msg.split(": ", 1)  # "algorithm.lr: ..." rather than "algorithm: lr: ..."
        where = f"{where}.{field}" if where == "algorithm" else field
    more = len(err.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more error{'s' * (more > 1)})" if more else "")


def parse_config(data: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{source}: {_format_error(err)}") from None


def read_toml(path: str | Path) -> dict:
    """The TOML of a config file; a missing, unreadable or invalid file is one UserError line."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"config file not found: {p}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read config file {p}: {e.__class__.__name__}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: invalid TOML: {e}") from None


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    data = read_toml(p)
    if isinstance(data, dict) and "source_dir" in data:
        raise UserError(f"{p}: source_dir: unknown key")
    data = {k: v for k, v in data.items() if k != "sweep"}  # `distsgd sweep`'s table, not the run's
    return parse_config({**data, "source_dir": str(p.resolve().parent)}, str(p))


def build_task(cfg: RunConfig):
    t = cfg.task
    if t.train is not None:
        from .tasks.user import resolve, resolve_loss, user_task

        search = (cfg.source_dir,) if cfg.source_dir else ()

        partition = t.partition or "iid"
        if partition == "dirichlet":
            partition = f"dirichlet:{t.alpha}"
        elif partition == "labels":
            partition = f"labels:{t.labels_per_worker}"
        return user_task(
            resolve(t.model, "task.model", search=search),
            resolve(t.train, "task.train", search=search),
            resolve(t.test, "task.test", search=search) if t.test is not None else None,
            loss=resolve_loss(t.loss, search),
            n_workers=cfg.n_workers,
            batch_size=t.batch_size,
            partition=partition,
            validation=t.validation,
            seed=cfg.seed,
        )
    return make_task(
        t.dataset,
        n_workers=cfg.n_workers,
        model=t.model,
        hidden=tuple(t.hidden),
        partition=t.partition,
        alpha=t.alpha,
        labels_per_worker=t.labels_per_worker,
        batch_size=t.batch_size,
        num_samples=t.num_samples,
        samples_per_worker=t.samples_per_worker,
        dim=t.dim,
        heterogeneity=t.heterogeneity,
        regions=t.regions,
        lags=t.lags,
        input_epsilon=t.input_epsilon,
        input_mechanism=t.input_mechanism,
        input_delta=t.input_delta,
        validation=t.validation,
        seed=cfg.seed,
    )


def build(cfg: RunConfig):
    """(task, algorithm, network) for a validated config; the algorithm is not yet bound
    to the model (the runner binds it)."""
    task = build_task(cfg)
    try:
        algorithm = bind(build_algorithm(cfg.algorithm), cfg.n_workers, cfg.seed)
    except ValueError as e:
        raise UserError(f"algorithm: {e}") from None
    return task, algorithm, _network(cfg)


def _network(cfg: RunConfig) -> NetworkModel:
    nw = cfg.network
    return NetworkModel(
        latency=nw.latency,
        bandwidth=nw.bandwidth,
        server_bandwidth=nw.server_bandwidth,
        compute_seconds=nw.compute_seconds,
        speeds=tuple(nw.speeds) if nw.speeds else None,
        speed_range=tuple(nw.speed_range) if nw.speed_range else None,
        straggler_prob=nw.straggler_prob,
        straggler_slowdown=nw.straggler_slowdown,
        speed_jitter=nw.speed_jitter,
        link_slow_prob=nw.link_slow_prob,
        link_slowdown=nw.link_slowdown,
        seed=cfg.seed,
        interconnect=nw.interconnect,
        allreduce=nw.allreduce,
        nis=nw.nis,
    )
