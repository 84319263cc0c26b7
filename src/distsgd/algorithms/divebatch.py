"""DiveBatch: synchronous data-parallel SGD whose batch grows with the gradient diversity.

Chen, Wang, Sundaram, "DiveBatch: Accelerating Model Training Through Gradient-Diversity
Aware Batch Size Adaptation", arXiv 2509.16173 (2025). The gradient diversity of the
per-sample gradients g_1, …, g_N (Yin et al., "Gradient Diversity: a Key Ingredient for
Scalable Distributed Learning", AISTATS 2018, Definition 1) is

    Δ = Σ_i ‖g_i‖² / ‖Σ_i g_i‖²,

at least 1/N (N identical gradients), 1 for orthogonal ones of equal norm, unbounded when
they cancel; Yin et al. bound the batch size up to which mini-batch SGD makes about the same
progress per sample as small-batch SGD by a constant times B_S = N·Δ (DiveBatch's δ·Δ·N). Every step is AllReduce-SGD at the global batch B (each of the n
workers draws B/n samples; one all-reduce of the mean gradient ḡ):

    x ← x − γ·s · SGD-direction(ḡ)      (momentum μ, weight decay λ, Nesterov as torch.optim.SGD)

and every `resize_freq` epochs (epochs = samples drawn / N), while B < B_max,

    divebatch:  B ← min(max(δ·Δ·N, B), B_max)   (never shrinks; a NaN or inf Δ sets B = B_max)
    adabatch:   B ← min(2B, B_max)              (AdaBatch, Devarakonda et al. 2017, at the same cadence)
    fixed:      B stays B₀                      (plain AllReduce-SGD at batch B₀)

with `adaptive_lr` scaling the step size with the batch, s ← s·B_new/B_old (s = 1 at the
start; `lr` stays the base step size, so an lr schedule still scales γ·s).

Estimating Δ (as the authors' code, chenyuen0103/pytorch-cifar `DiveBatchTrainer`, does):
only on the last epoch before a resize, and only while B < B_max, the steps draw
per-sample gradients of the data loss (weight decay excluded) and accumulate Σ_i ‖g_i‖² and
Σ_i g_i over that epoch while the weights move; the other epochs cost a plain step. With n
workers the sum runs over every worker's samples: each step's all-reduce carries the
workers' Σ‖g_i‖² as one extra value next to ḡ, and Σ_i g_i of the step is n·(B/n)·ḡ, so Δ
is the diversity across the samples of all workers. On estimating steps ḡ is the mean of
the per-sample gradients (the batch gradient up to rounding); they hold m·(B/n)·d floats.

The global batch is a multiple of n: B₀ must be one, each resize rounds down to one (never
below the old B), and the cap is n·⌊B_max/n⌋. N is `train_samples` (the size of the
training set the workers' shards cover; by default the engine's count of the samples in all
workers' shards, which `distsgd.train` supplies).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from .base import ALGORITHMS, Momentum, Nesterov, StepSize, WeightDecay, options, sgd_direction


def diversity_of_sums(sq_norms: float, grad_sum: torch.Tensor) -> float:
    """Δ = Σ_i ‖g_i‖² / ‖Σ_i g_i‖² from the two sums (inf or NaN when Σ_i g_i = 0)."""
    denom = float(grad_sum.double().pow(2).sum())
    if denom == 0.0:
        return math.nan if sq_norms == 0.0 else math.inf
    return float(sq_norms) / denom


def gradient_diversity(g: torch.Tensor) -> float:
    """Gradient diversity of per-sample gradients g[k, d] (Yin et al. 2018, Definition 1):
    Σ_i ‖g_i‖² / ‖Σ_i g_i‖², in [1/k, ∞); 1/k for k identical rows, 1 for orthogonal rows."""
    g = g.double()
    return diversity_of_sums(float(g.pow(2).sum()), g.sum(0))


def divebatch_batch_size(diversity: float, delta: float, n_train: int, batch: int, cap: int, multiple: int = 1) -> int:
    """DiveBatch's rule: min(max(δ·Δ·N, B), cap), never below B; B = cap when Δ is NaN or
    inf; rounded down to a multiple of `multiple` (the workers), B and cap being multiples."""
    if not math.isfinite(diversity):
        return cap
    new = int(min(max(delta * diversity * n_train, batch), cap))
    return max(multiple * (new // multiple), batch)


def adabatch_batch_size(batch: int, cap: int) -> int:
    """AdaBatch's rule: B ← min(2B, cap)."""
    return min(2 * batch, cap)


@ALGORITHMS.register(paper="Chen, Wang, Sundaram, DiveBatch, arXiv 2509.16173, 2025", hidden=("client_sizes",))
@options
class DiveBatch:
    """Data-parallel SGD with a batch that grows with the gradient diversity (DiveBatch), doubles (AdaBatch) or stays fixed."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model
    engine_fields: ClassVar = ("client_sizes",)  # set from the task

    lr: StepSize
    batch_size: Annotated[int, Field(ge=1, description="initial global batch size B₀ (a multiple of the workers)")] = 128
    max_batch_size: Annotated[int, Field(ge=1, description="cap B_max on the global batch size")] = 2048
    rule: Annotated[
        Literal["divebatch", "adabatch", "fixed"],
        Field(description="divebatch: B ← min(max(δΔN, B), B_max); adabatch: B ← min(2B, B_max); fixed: B₀ always"),
    ] = "divebatch"
    delta: Annotated[float, Field(gt=0, description="δ: the new batch is δ·Δ·N")] = 0.1
    resize_freq: Annotated[int, Field(ge=1, description="epochs between batch-size updates")] = 10
    train_samples: Annotated[
        int | None, Field(ge=1, description="N in δΔN and in epochs = samples drawn / N (default: the workers' shards together)")
    ] = None
    adaptive_lr: Annotated[bool, Field(description="scale the step size with the batch: lr·B/B₀")] = False
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    client_sizes: tuple[int, ...] | None = None  # the workers' shard sizes, set by the engine
    name: str = "divebatch"

    def __post_init__(self):
        if self.max_batch_size < self.batch_size:
            raise ValueError(
                f"max_batch_size = {self.max_batch_size} is below batch_size = {self.batch_size} (the caps are inverted)"
            )

    def init(self, x0, comm):
        n = comm.n
        if self.batch_size % n:
            raise ValueError(f"batch_size = {self.batch_size} is not a multiple of the {n} workers")
        if self.rule != "fixed" and self.n_train is None:
            raise ValueError(
                f"rule {self.rule!r} counts epochs: set train_samples (N, the training samples) or run it with distsgd.train"
            )
        return {
            "x": x0.clone(),
            "momentum": None,
            "t": 0,
            "batch_size": self.batch_size,  # the global batch B
            "lr_scale": 1.0,  # s: the step size is lr·s
            "samples": 0,  # drawn so far, all workers together
            "sq_norms": 0.0,  # Σ‖g_i‖² over the current estimation epoch
            "grad_sum": None,  # Σ g_i over it [1, d] (float64)
            "diversity": math.nan,  # the last estimate of Δ
        }

    @property
    def n_train(self) -> int | None:
        """N: `train_samples`, or the samples of all workers' shards (known when run by distsgd.train)."""
        if self.train_samples is not None:
            return self.train_samples
        return sum(self.client_sizes) if self.client_sizes else None

    def cap(self, n: int) -> int:
        """The largest global batch: B_max rounded down to a multiple of the n workers, and
        at most n × the smallest shard (a worker's batch never outgrows its data)."""
        per = self.max_batch_size // n
        if self.client_sizes:
            per = min(per, min(self.client_sizes))
        return n * per

    def step(self, state, oracle, comm):
        state = dict(state)  # the tensors are updated in place, the caller's dict is left as it was
        x, n = state["x"], comm.n
        batch, samples = state["batch_size"], state["samples"]
        b = batch // n  # each worker's share
        cap = self.cap(n)
        resizing = self.rule != "fixed" and batch < cap
        if resizing:
            n_train = self.n_train
            period = n_train * self.resize_freq  # samples between resizes
            boundary = (samples // period + 1) * period  # the next resize
        # estimate on the steps overlapping the last epoch before a resize
        estimating = resizing and self.rule == "divebatch" and samples + n * b > boundary - n_train
        if estimating:
            gs = oracle(x, batch_size=b, per_sample=True)  # [m, b, d]
            sq = gs.pow(2).sum((1, 2), dtype=torch.float64).float()  # each worker's Σ‖g_i‖²
            packed = comm.all_reduce_mean(torch.cat([gs.mean(1), sq.unsqueeze(1)], dim=1))[:1]
            g = packed[:, :-1]
            state["sq_norms"] += float(packed[0, -1]) * n
            step_sum = g.double() * (n * b)
            state["grad_sum"] = step_sum if state["grad_sum"] is None else state["grad_sum"].add_(step_sum)
        else:
            # every worker receives the same ḡ: keep one row [1, d] (as AllReduce-SGD)
            g = comm.all_reduce_mean(oracle(x, batch_size=b))[:1]
        direction, buf = sgd_direction(g, x, state["momentum"], self.momentum, self.weight_decay, self.nesterov)
        x.sub_(direction, alpha=self.lr * state["lr_scale"])
        state.update(x=x, momentum=buf, t=state["t"] + 1, samples=samples + n * b)
        if resizing and state["samples"] >= boundary:
            self._resize(state, n, cap)
        return state

    def _resize(self, state, n: int, cap: int) -> None:
        old = state["batch_size"]
        if self.rule == "divebatch":
            grad_sum = state["grad_sum"]
            div = diversity_of_sums(state["sq_norms"], grad_sum) if grad_sum is not None else math.nan
            state.update(diversity=div, sq_norms=0.0, grad_sum=None)
            new = divebatch_batch_size(div, self.delta, self.n_train, old, cap, multiple=n)
        else:
            new = adabatch_batch_size(old, cap)
        if self.adaptive_lr:
            state["lr_scale"] *= new / old
        state["batch_size"] = new

    def metrics(self, state) -> dict:
        """The global batch size, the step size lr·s (before any lr schedule), the last
        gradient diversity Δ (once estimated) and the epochs drawn (samples / N)."""
        out = {"batch_size": state["batch_size"], "lr": self.lr * state["lr_scale"]}
        if not math.isnan(state["diversity"]):
            out["gradient_diversity"] = state["diversity"]
        if self.n_train:
            out["epochs_drawn"] = state["samples"] / self.n_train
        return out
