"""Run configuration: a TOML file validated by pydantic, turned into task, algorithm, network.

Every table rejects unknown keys; the first error becomes one line naming the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .algorithms import (
    ADPSGD,
    D2,
    DPSGD,
    EF21,
    AllReduceSGD,
    ChocoSGD,
    CompressedSGD,
    LocalSGD,
    RobustGossip,
    RobustSGD,
    Signum,
)
from .comm.network import NetworkModel
from .errors import UserError
from .robust import ATTACKS, RULES, Attack, make_aggregator, pick_byzantine
from .tasks import make_task
from .topology import MIXINGS, TOPOLOGIES, make_topology


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    dataset: Literal["mnist1d", "digits", "logistic", "least_squares"] = "mnist1d"
    model: Literal["linear", "mlp", "cnn1d"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = [100, 100]
    partition: Literal["iid", "dirichlet", "labels", "natural"] | None = None
    alpha: float = Field(0.5, gt=0)
    labels_per_worker: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    num_samples: int = Field(5000, ge=100)
    samples_per_worker: int = Field(200, ge=1)
    dim: int = Field(20, ge=1)
    heterogeneity: float = Field(0.0, ge=0)


class TopologyConfig(_Strict):
    name: Literal[TOPOLOGIES] = "ring"  # type: ignore[valid-type]
    mixing: Literal[MIXINGS] = "metropolis"  # type: ignore[valid-type]
    degree: int = Field(4, ge=1)
    p: float = Field(0.3, gt=0, le=1)
    rows: int | None = Field(None, ge=1)


class NetworkConfig(_Strict):
    latency: float = Field(50e-6, ge=0)
    bandwidth: float = Field(1.25e9, gt=0)
    server_bandwidth: float | None = Field(None, gt=0)
    compute_seconds: float = Field(5e-3, ge=0)
    speeds: list[Annotated[float, Field(gt=0)]] | None = None
    speed_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    straggler_prob: float = Field(0.0, ge=0, le=1)
    straggler_slowdown: float = Field(4.0, ge=1)
    speed_jitter: float = Field(0.0, ge=0)
    link_slow_prob: float = Field(0.0, ge=0, le=1)
    link_slowdown: float = Field(4.0, ge=1)
    interconnect: str | None = None  # e.g. "torus:4x4": all-reduce time from the packet simulator
    allreduce: Literal["ring", "hd", "dbtree", "ring2d", "hierarchical", "multitree"] = "ring"
    nis: int = Field(1, ge=1)


class LRScheduleConfig(_Strict):
    kind: Literal["constant", "cosine", "step"] = "constant"
    warmup: int = Field(0, ge=0)
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.75]
    gamma: float = Field(0.1, gt=0, le=1)

    def build(self):
        from .lr_schedule import LRSchedule

        return LRSchedule(self.kind, self.warmup, tuple(self.milestones), self.gamma)


class _SGDConfig(_Strict):
    lr: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class AllReduceConfig(_SGDConfig):
    name: Literal["allreduce_sgd"]


class LocalSGDConfig(_SGDConfig):
    name: Literal["local_sgd"]
    local_steps: int = Field(8, ge=1)
    average_momentum: bool = False


class DPSGDConfig(_SGDConfig):
    name: Literal["dpsgd"]
    variant: Literal["paper", "atc"] = "paper"


COMPRESSORS = ("identity", "float16", "bfloat16", "sign", "scaled_sign", "topk", "randk", "qsgd", "natural")


class CompressorConfig(_Strict):
    name: Literal[COMPRESSORS] = "topk"  # type: ignore[valid-type]
    k: int | None = Field(None, ge=1)
    ratio: float | None = Field(None, gt=0, le=1)
    levels: int = Field(15, ge=1, le=255)
    bucket: int = Field(512, ge=1)

    def build(self):
        from .compress import make_compressor

        return make_compressor(self.name, k=self.k, ratio=self.ratio, levels=self.levels, bucket=self.bucket)


class CompressedSGDConfig(_SGDConfig):
    name: Literal["compressed_sgd"]
    compressor: CompressorConfig = CompressorConfig()
    error_feedback: bool = True


class SignumConfig(_Strict):
    name: Literal["signum"]
    lr: float = Field(gt=0)
    beta: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    aggregate: Literal["vote", "mean"] = "vote"


class EF21Config(_Strict):
    name: Literal["ef21"]
    lr: float = Field(gt=0)
    compressor: CompressorConfig = CompressorConfig()


class AggregatorConfig(_Strict):
    name: Literal[tuple(RULES)] = "geomed"  # type: ignore[valid-type]
    nnm: bool = False  # nearest-neighbour mixing first (Allouah et al. 2023)
    bucket: int = Field(1, ge=1)  # bucketing with buckets of this size (1: none)
    tau: float = Field(1.0, gt=0)  # cclip radius
    iterations: int = Field(1, ge=1)  # cclip iterations
    beta: float = Field(0.1, gt=0, le=1)  # bgmd block fraction
    selection: Literal["sample", "topk"] = "sample"  # bgmd block choice
    # bgmd: carry the left-out coordinates to the next step: true/"mean" (the paper),
    # "worker" (each worker's own, our variant), false/"none"
    memory: Literal[True, False, "mean", "worker", "none"] = True
    m: int | None = Field(None, ge=1)  # multikrum: how many to average

    def build(self, f: int, seed: int = 0):
        extra = {
            "cclip": {"tau": self.tau, "iterations": self.iterations},
            "bgmd": {"beta": self.beta, "selection": self.selection, "memory": self.memory, "seed": seed},
            "multikrum": {"m": self.m},
        }.get(self.name, {})
        return make_aggregator(self.name, f, nnm=self.nnm, bucket=self.bucket, **extra)


class AttackConfig(_Strict):
    kind: Literal[ATTACKS] = "none"  # type: ignore[valid-type]
    scale: float | None = Field(None, gt=0)  # c, noise σ, ALIE z or IPM ε (None: the paper's)


class D2Config(_Strict):
    name: Literal["d2"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lazy: Literal["auto"] | bool = "auto"  # (W + I)/2 when λ_min(W) ≤ −1/3


class ChocoSGDConfig(_SGDConfig):
    name: Literal["choco_sgd"]
    compressor: CompressorConfig = CompressorConfig()
    gamma: float = Field(1.0, gt=0, le=1)  # consensus step size


class ADPSGDConfig(_Strict):
    name: Literal["adpsgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    split: Literal["auto", "none"] = "auto"  # active/passive sets on a bipartite graph


class _RobustConfig(_Strict):
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    worker_momentum: float = Field(0.9, ge=0, lt=1)
    f: int = Field(0, ge=0)  # Byzantine workers, drawn with byzantine_seed and recorded
    byzantine_seed: int = Field(0, ge=0)
    attack: AttackConfig = AttackConfig()
    check: bool = True  # refuse an (n, f) outside the rule's guarantee


class RobustSGDConfig(_RobustConfig):
    name: Literal["robust_sgd"]
    momentum: float = Field(0.0, ge=0, lt=1)
    aggregator: AggregatorConfig = AggregatorConfig()


class RobustGossipConfig(_RobustConfig):
    name: Literal["robust_gossip"]
    aggregator: AggregatorConfig | None = None  # None: ClippedGossip with radius tau
    tau: float = Field(1.0, gt=0)


AlgorithmConfig = Annotated[
    AllReduceConfig
    | LocalSGDConfig
    | DPSGDConfig
    | CompressedSGDConfig
    | SignumConfig
    | EF21Config
    | RobustSGDConfig
    | RobustGossipConfig
    | D2Config
    | ChocoSGDConfig
    | ADPSGDConfig,
    Field(discriminator="name"),
]
ALGORITHMS = (
    "allreduce_sgd",
    "local_sgd",
    "dpsgd",
    "compressed_sgd",
    "signum",
    "ef21",
    "robust_sgd",
    "robust_gossip",
    "d2",
    "choco_sgd",
    "adpsgd",
)


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0)
    n_workers: int = Field(16, ge=1, le=4096)
    steps: int = Field(500, ge=1)
    eval_every: int | None = Field(None, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    out_dir: str = "runs"
    compile: bool = False  # torch.compile the per-worker gradients (long runs)
    task: TaskConfig = TaskConfig()
    algorithm: AlgorithmConfig
    topology: TopologyConfig = TopologyConfig()
    network: NetworkConfig = NetworkConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()

    @model_validator(mode="after")
    def _fits(self):
        if self.network.speeds is not None and len(self.network.speeds) != self.n_workers:
            raise ValueError(
                f"network.speeds has {len(self.network.speeds)} entries for n_workers={self.n_workers}"
            )
        if isinstance(self.algorithm, RobustSGDConfig | RobustGossipConfig):
            if self.algorithm.f >= self.n_workers:
                raise ValueError(f"algorithm.f = {self.algorithm.f} must be < n_workers = {self.n_workers}")
            _algorithm(self).validate(self.n_workers)
        return self


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"] if str(p) not in ALGORITHMS]
    where = ".".join(loc) or "config"
    msg = e["msg"]
    if e["type"] == "union_tag_invalid":
        msg = f"unknown algorithm {e['input'].get('name')!r} (choose from {', '.join(ALGORITHMS)})"
        where = "algorithm.name"
    elif e["type"] == "union_tag_not_found":
        msg = f"missing 'name' (choose from {', '.join(ALGORITHMS)})"
        where = "algorithm.name"
    elif e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif not isinstance(e.get("input"), dict | list):
        msg = f"{msg} (got {e.get('input')!r})"
    more = len(err.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more error{'s' * (more > 1)})" if more else "")


def parse_config(data: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{source}: {_format_error(err)}") from None


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"config file not found: {p}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read config file {p}: {e.__class__.__name__}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: invalid TOML: {e}") from None
    return parse_config(data, str(p))


def build(cfg: RunConfig):
    """(task, algorithm, network) for a validated config."""
    t = cfg.task
    task = make_task(
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
        seed=cfg.seed,
    )
    try:
        algorithm = _algorithm(cfg)
    except ValueError as e:  # a combination the algorithm refuses (e.g. D² on λ_min ≤ −1/3 without lazy)
        raise UserError(f"algorithm: {e}") from None
    return task, algorithm, _network(cfg)


def _algorithm(cfg: RunConfig):
    a = cfg.algorithm
    if isinstance(a, SignumConfig):
        return Signum(lr=a.lr, beta=a.beta, weight_decay=a.weight_decay, aggregate=a.aggregate)
    if isinstance(a, EF21Config):
        return EF21(lr=a.lr, compressor=a.compressor.build(), seed=cfg.seed)
    if isinstance(a, RobustSGDConfig | RobustGossipConfig):
        return _robust(cfg, a)
    if isinstance(a, D2Config):
        return D2(lr=a.lr, topology=_topology(cfg), weight_decay=a.weight_decay, lazy=a.lazy)
    if isinstance(a, ADPSGDConfig):
        return ADPSGD(
            lr=a.lr, topology=_topology(cfg), weight_decay=a.weight_decay, split=a.split, seed=cfg.seed
        )
    sgd = {"lr": a.lr, "momentum": a.momentum, "weight_decay": a.weight_decay}
    if isinstance(a, CompressedSGDConfig):
        return CompressedSGD(
            **sgd, compressor=a.compressor.build(), error_feedback=a.error_feedback, seed=cfg.seed
        )
    sgd["nesterov"] = a.nesterov
    if isinstance(a, ChocoSGDConfig):
        return ChocoSGD(
            **sgd, topology=_topology(cfg), compressor=a.compressor.build(), gamma=a.gamma, seed=cfg.seed
        )
    if isinstance(a, AllReduceConfig):
        return AllReduceSGD(**sgd)
    if isinstance(a, LocalSGDConfig):
        return LocalSGD(**sgd, local_steps=a.local_steps, average_momentum=a.average_momentum)
    return DPSGD(**sgd, topology=_topology(cfg), variant=a.variant)


def _topology(cfg: RunConfig):
    tp = cfg.topology
    return make_topology(
        tp.name, cfg.n_workers, tp.mixing, degree=tp.degree, p=tp.p, rows=tp.rows, seed=cfg.seed
    )


def _robust(cfg: RunConfig, a):
    common = {
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "worker_momentum": a.worker_momentum,
        "attack": Attack(a.attack.kind, a.attack.scale, seed=cfg.seed),
        "byzantine": pick_byzantine(cfg.n_workers, a.f, a.byzantine_seed),
        "check": a.check,
    }
    if isinstance(a, RobustSGDConfig):
        return RobustSGD(**common, momentum=a.momentum, aggregator=a.aggregator.build(a.f, cfg.seed))
    rule = "clipped" if a.aggregator is None else a.aggregator.build(a.f, cfg.seed)
    return RobustGossip(**common, topology=_topology(cfg), rule=rule, tau=a.tau)


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


def run_config(cfg: RunConfig, run_dir, *, backend: str = "sim", resume: bool = False, progress: bool = True):
    """Build and train a validated config; `backend="torch"` needs an initialized process group."""
    from .runner import train

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
    )
