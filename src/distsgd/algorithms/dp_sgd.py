"""DP-SGD: differentially private SGD by per-sample clipping and Gaussian noise, on any
synchronous method that sends gradients (AllReduce-SGD, Local SGD, compressed SGD, EF21,
PowerSGD, Signum).

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep learning with differential
privacy", CCS 2016, Algorithm 1. Every step, each worker i

    draws its batch L_i by Poisson sampling (each of its N_i records with probability q) or
    uniformly without replacement (exactly B records), the accountant matching the sampler;
    ḡ_ij = g_ij · min(1, C/‖g_ij‖)                          per-sample gradients, clipped
    g̃_i  = (Σ_{j∈L_i} ḡ_ij + N(0, s²I)) / b_i               noised, normalized

and the inner algorithm runs on g̃_i in place of its stochastic gradient (the privatized
oracle; everything after it is post-processing). s and b_i depend on `mode`:

- local (local DP): s = σC and b_i = worker i's expected batch (q·N_i or B). Each worker's
  message is itself (ε, δ)-DP for that worker's records: the guarantee holds against the
  server, the other workers and anyone on the wire, with no trust in anybody. The price is
  noise: the average of n messages carries σC/√n per worker-mean, n times the variance of
  central DP's.
- central (distributed DP): s = σC/√n and b_i = the mean expected batch Σ_j b_j / n, so the
  all-reduced mean (Σ_i Σ_j ḡ_ij + N(0, σ²C²I)) / Σ_j b_j carries the noise σC once, as one
  server adding it would (Opacus's DDP adds it on one rank; here the n shares sum to it).
  Assumption: secure aggregation (e.g. Bonawitz et al., CCS 2017): nobody sees a worker's
  message, only the sum, and all n workers add their share honestly. The reported ε holds
  for what the sum releases; a single message carries only σ/√n, and its ε, reported as
  `epsilon_per_message`, is what remains if secure aggregation fails or the server reads
  the messages. Sound only when every worker differentiates at the shared model and only
  the sum leaves the workers: `inner` must be allreduce_sgd (Local SGD's local steps use
  each worker's own under-noised gradients; a compressor's message is no sum).

Inner methods (`inner`): allreduce_sgd, local_sgd, compressed_sgd, ef21 (EF21 / EF21-W),
powersgd and signum (or its alias signum_mv). Each draws one gradient per worker from the
oracle per step (Local SGD: one per local step), and each call is one accounted mechanism
invocation. Compression (compressed_sgd, ef21's compressed differences ∇f_i − g_i, powersgd's
rank-r power iteration with error feedback, signum's momentum sign and majority vote, or
local_sgd with a compressor) acts on the noised g̃_i: noise before compression, so the
compressor, its error feedback, its state and its randomness are post-processing and every
compressor keeps the guarantee. Noise after compression is not offered: a compressor's
output has no sensitivity bound in general (top-k and sign change which coordinates a record
moves), so its privacy would need a per-compressor analysis. dp_sgd's lr, momentum,
weight_decay and nesterov go to the inner method where it has them; one it lacks is refused
when set (EF21 has none of the last three; Signum's momentum is its own `beta`, set in
`inner`; compressed_sgd has no Nesterov). PowerSGD's layer shapes are bound by the engine.

Accounting (`distsgd.privacy.accounting`): Poisson sampling ↔ the Poisson-subsampled
Gaussian (Opacus RDP or PRV), uniform sampling ↔ dp-accounting's sampled-without-replacement
RDP under the replace-one relation; ε is the worst over the workers' (q_i, N_i). With
`target_epsilon` the noise σ is calibrated before training for the planned `steps` (or
`epochs`), or a given σ is checked against it; `budget_exhausted(state)` says when one more
step would exceed the target, and `step` refuses to take it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from .. import rng
from ..errors import UserError
from ..privacy import accounting
from ..privacy.mechanisms import noised_mean, poisson_sample, privatize, uniform_sample
from . import allreduce_sgd, compressed_sgd, local_sgd  # noqa: F401  (register the inner algorithms; the others in inner_algorithm)
from .base import ALGORITHMS, Momentum, Nesterov, Seed, StepSize, WeightDecay, options

# the synchronous methods whose oracle dp_sgd privatizes: each step, every worker's gradients
INNER = ("allreduce_sgd", "local_sgd", "compressed_sgd", "ef21", "powersgd", "signum", "signum_mv")
SHARED = ("lr", "momentum", "weight_decay", "nesterov")  # set on dp_sgd, passed to the inner algorithm
# what to do instead when dp_sgd sets a shared option the inner method lacks
INSTEAD = {
    ("signum", "momentum"): "Signum's momentum is its beta: set it in inner, e.g. inner = {name = \"signum\", beta = 0.9}",
    ("signum_mv", "momentum"): "Signum's momentum is its beta: set it in inner, e.g. inner = {name = \"signum_mv\", beta = 0.9}",
}


def local_shards(oracle, comm) -> list[torch.Tensor]:
    """The dataset indices of the local workers' shards, which the sampler draws from: the
    oracle's `shards` (the engine's contract), or the runner's workers behind its oracle."""
    shards = getattr(oracle, "shards", None)
    if shards is None:
        owner = getattr(oracle, "__self__", None)
        shards = getattr(getattr(owner, "workers", None), "shards", None)
    if shards is None or len(shards) != comm.m:
        raise UserError("dp_sgd samples each worker's shard itself: its gradient oracle must carry the shards (run it with distsgd.train)")
    return list(shards)


def clips_sums(oracle) -> bool:
    """Whether the oracle returns clipped per-sample sums itself (`max_grad_norm=C` with
    `per_sample=True`, the engine's contract: `Workers.gradients`, which forms them without
    per-sample gradients where it can); other oracles return the per-sample gradients."""
    if getattr(oracle, "clips_sums", False):
        return True
    workers = getattr(oracle, "workers", None)
    if workers is None:
        workers = getattr(getattr(oracle, "__self__", None), "workers", None)
    return bool(getattr(workers, "clips_sums", False))


def validate_model(model: torch.nn.Module) -> None:
    """Opacus's module validator, as one line naming the layer: layers that mix the samples of
    a batch (BatchNorm) have no per-sample gradient, hence no per-sample privacy."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    for name, module in trainable_modules(model):
        check = ModuleValidator.VALIDATORS.get(type(module))
        errors = check(module) if check is not None else []
        if errors:
            why = str(errors[0]).split(". ")[0].rstrip(".")
            fix = (
                "replace it with GroupNorm (opacus.validators.ModuleValidator.fix(model) does it)"
                if "BatchNorm" in type(module).__name__
                else "opacus.validators.ModuleValidator.fix(model) replaces it"
            )
            raise UserError(f"dp_sgd: layer {name!r} ({type(module).__name__}): {why}: {fix}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the options and the shard sizes fix: per-worker sample rates q_i, batch sizes b_i
    (expected for Poisson), the accounted groups of equal (q, N) and the planned steps."""

    sample_rates: tuple[float, ...]
    batches: tuple[float, ...]
    groups: tuple[tuple[float, int | None], ...]  # (q, N or None for Poisson)
    steps: int | None


@ALGORITHMS.register(
    paper="Abadi et al., CCS 2016 (Alg. 1); Mironov, CSF 2017; Gopi et al., NeurIPS 2021; Wang et al., AISTATS 2019",
    hidden=("client_sizes", "run_steps", "shapes"),
)
@options
class DPSGDPrivate:
    """DP-SGD: per-sample clipping and Gaussian noise on a synchronous method's gradients."""

    engine_fields = ("client_sizes", "run_steps", "shapes")  # set by the engine (unannotated: not an option)

    lr: StepSize
    noise_multiplier: Annotated[float | None, Field(ge=0, description="σ: noise std σ·C on each clipped sum (None: calibrated from target_epsilon)")] = None
    max_grad_norm: Annotated[float | None, Field(gt=0, description="C, the per-sample clipping norm (None: no clipping, only with σ = 0)")] = 1.0
    target_epsilon: Annotated[float | None, Field(gt=0, description="ε budget: calibrates σ for the planned steps, or bounds the run")] = None
    delta: Annotated[float, Field(gt=0, lt=1, description="δ of the (ε, δ) guarantee")] = 1e-5
    steps: Annotated[int | None, Field(ge=1, description="planned steps, for calibrating σ from target_epsilon")] = None
    epochs: Annotated[float | None, Field(gt=0, description="planned epochs instead of steps: steps = int(epochs / q)")] = None
    sampling: Annotated[Literal["poisson", "uniform"], Field(description="poisson: each record with probability q; uniform: a fixed batch without replacement")] = "poisson"
    sample_rate: Annotated[float | None, Field(gt=0, le=1, description="q, each worker's sample rate (default: batch_size / shard size)")] = None
    batch_size: Annotated[int | None, Field(ge=1, description="expected (poisson) or fixed (uniform) batch per worker, when sample_rate is unset (default: the task's)")] = None
    accountant: Annotated[Literal["rdp", "prv"], Field(description="rdp (Opacus / dp-accounting) or prv (Opacus, Poisson only)")] = "rdp"
    mode: Annotated[Literal["local", "central"], Field(description="local: each worker adds σC; central: each adds σC/√n, summed under secure aggregation")] = "local"
    inner: Annotated[str | dict, Field(description="the synchronous method privatized: allreduce_sgd, local_sgd, compressed_sgd, ef21, powersgd or signum (a name or a table of its options)")] = "allreduce_sgd"
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    client_sizes: tuple[int, ...] | None = None  # N_i, set by the engine
    run_steps: int | None = None  # the run's steps, set by the engine: planned steps when steps/epochs are unset
    shapes: tuple[tuple[int, ...], ...] | None = None  # the model's layer shapes, set by the engine (for powersgd)
    seed: Seed = None
    name: str = "dp_sgd"

    def __post_init__(self):
        if self.max_grad_norm is None and self.noise_multiplier != 0:
            raise ValueError("max_grad_norm = None (no clipping) leaves the sensitivity unbounded: only with noise_multiplier = 0")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give the planned steps or epochs, not both")
        accounting.check_kind(self.accountant, self.sampling)
        if self.mode == "central" and self.inner_algorithm().name != "allreduce_sgd":
            raise ValueError(
                "mode = 'central' needs inner = 'allreduce_sgd': its noise is summed under secure aggregation, "
                "which Local SGD's local steps and compressed messages bypass; use mode = 'local'"
            )
        self.inner_algorithm()  # a bad inner spec fails here, with its option named

    @property
    def buffer_policy(self) -> str:
        return getattr(type(self.inner_algorithm()), "buffer_policy", "local")

    def inner_algorithm(self):
        """The inner synchronous algorithm, built from `inner` with dp_sgd's lr, momentum,
        weight decay, Nesterov flag and seed where it has them (a shared option set on dp_sgd
        that the inner method lacks is refused), and the engine's layer shapes (PowerSGD)."""
        from . import ef21, powersgd, signum  # noqa: F401  (registered here, not above: the registry keeps the package's order)

        entry, kw = ALGORITHMS.split(self.inner)
        if entry.name not in INNER:
            raise ValueError(f"inner must be one of {', '.join(INNER)}, got {entry.name!r}")
        fields = {f.name for f in dataclasses.fields(entry.factory)}
        for k in SHARED:
            if k in kw:
                raise ValueError(f"set {k} on dp_sgd itself, not in inner")
            value = getattr(self, k)
            if k in fields:
                kw[k] = value
            elif value != getattr(type(self), k, value) and value:
                instead = INSTEAD.get((entry.name, k), f"leave {k} unset with inner = {entry.name!r}")
                raise ValueError(f"inner {entry.name} has no {k}: {instead}")
        if "seed" in fields and kw.get("seed") is None:
            kw["seed"] = self.seed
        if "shapes" in fields and kw.get("shapes") is None and self.shapes is not None:
            kw["shapes"] = self.shapes
        return ALGORITHMS.create({"name": entry.name, **kw})

    # -- plan: sample rates, batches, accounted groups, σ -------------------------------------
    def plan(self) -> Plan:
        """Sample rates and batches of every worker from the shard sizes (`client_sizes`)."""
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise UserError("dp_sgd: set noise_multiplier σ or target_epsilon")
        sizes = self.client_sizes
        if sizes is None:
            raise UserError("dp_sgd needs the workers' shard sizes (client_sizes): run it with distsgd.train")
        qs, bs = [], []
        for i, size in enumerate(sizes):
            if self.sample_rate is not None:
                q = self.sample_rate
                b = q * size if self.sampling == "poisson" else round(q * size)
            elif self.batch_size is not None:
                b = self.batch_size
                q = b / size
            else:
                raise UserError("dp_sgd: set sample_rate or batch_size")
            if self.sampling == "uniform" and not 1 <= b <= size:
                raise UserError(f"worker {i} holds {size} samples: a fixed batch of {b} does not fit (sample_rate {q:g})")
            if not 0 < q <= 1:
                raise UserError(f"worker {i} holds {size} samples: batch_size {b} gives sample rate {q:g}, outside (0, 1]")
            if self.sampling == "uniform":
                q = b / size
            qs.append(float(q))
            bs.append(float(b))
        groups = sorted({(q, size if self.sampling == "uniform" else None) for q, size in zip(qs, sizes, strict=True)})
        steps = self.steps if self.steps is not None else self.run_steps
        if self.epochs is not None:
            steps = max(1, int(self.epochs / max(qs)))
        return Plan(tuple(qs), tuple(bs), tuple(groups), steps)

    def _epsilon(self, sigma: float, q: float, size: int | None, steps: int) -> float:
        return accounting.epsilon(sigma, q, steps, self.delta, self.accountant, sampling=self.sampling, dataset_size=size)

    def _calibrate(self, plan: Plan) -> float:
        """The largest σ any group needs to stay within target_epsilon over the planned steps."""
        return max(
            accounting.noise_multiplier(
                self.target_epsilon, self.delta, q, plan.steps, self.accountant, sampling=self.sampling, dataset_size=size
            )
            for q, size in plan.groups
        )

    def bind(self, n: int):
        """With the shard sizes known: calibrate σ from target_epsilon (or check the given σ
        against it over the planned steps) before anything trains."""
        if self.client_sizes is None:
            return self
        if len(self.client_sizes) != n:
            raise ValueError(f"client_sizes has {len(self.client_sizes)} entries for {n} workers")
        plan = self.plan()
        if self.target_epsilon is None:
            return self
        if self.noise_multiplier is None:
            if plan.steps is None:
                raise UserError("calibrating σ from target_epsilon needs the planned steps: set steps or epochs")
            return dataclasses.replace(self, noise_multiplier=self._calibrate(plan))
        if self.steps is not None or self.epochs is not None:  # explicit plans are checked; a run's steps stop at the budget
            worst = max(self._epsilon(self.noise_multiplier, q, size, plan.steps) for q, size in plan.groups)
            if worst > self.target_epsilon:
                needed = self._calibrate(plan)
                raise UserError(
                    f"noise_multiplier σ = {self.noise_multiplier:g} spends ε = {worst:.4g} > target_epsilon = "
                    f"{self.target_epsilon:g} in the {plan.steps} planned steps (δ = {self.delta:g}): "
                    f"σ = {needed:.4g} would be needed, or fewer steps"
                )
        return self

    # -- the algorithm ---------------------------------------------------------------------
    def init(self, x0, comm):
        if self.noise_multiplier is None:
            raise UserError(
                "dp_sgd: σ is calibrated from target_epsilon when bound to a task with the planned steps: "
                "set steps or epochs, and run it with distsgd.train"
            )
        plan = self.plan()
        accountants = [accounting.Accountant(self.accountant, self.sampling, size) for _, size in plan.groups]
        limit = None
        if self.target_epsilon is not None:
            limit = min(
                accounting.max_steps(
                    self.noise_multiplier, q, self.delta, self.target_epsilon, self.accountant,
                    sampling=self.sampling, dataset_size=size, guess=plan.steps or 1,
                )
                for q, size in plan.groups
            )
        seed = self.seed or 0
        return {
            **self.inner_algorithm().init(x0, comm),
            "dp": {
                "sampling_rng": rng.states(seed, comm.workers, "dp_sampling"),
                "noise_rng": rng.states(seed, comm.workers, "dp_noise"),
                "accountants": [a.state_dict() for a in accountants],
                "max_steps": limit,  # None: no budget
            },
        }

    def budget_exhausted(self, state) -> bool:
        """True when one more step would spend more than target_epsilon."""
        limit = state["dp"]["max_steps"]
        return limit is not None and self.privacy_steps(state) + 1 > limit

    @staticmethod
    def privacy_steps(state) -> int:
        """Mechanism invocations so far (each privatized gradient: one accounted step)."""
        accs = state["dp"]["accountants"]
        return sum(t for _, _, t in accs[0]["history"]) if accs else 0

    def step(self, state, oracle, comm):
        dp = state["dp"]
        if self.budget_exhausted(state):
            raise UserError(
                f"the privacy budget ε = {self.target_epsilon:g} (δ = {self.delta:g}) is spent after "
                f"{dp['max_steps']} steps: stop the run there"
            )
        plan = self.plan()
        shards = local_shards(oracle, comm)
        local = list(comm.workers)
        for i, shard in zip(local, shards, strict=True):
            if len(shard) != self.client_sizes[i]:
                raise UserError(f"worker {i}'s shard holds {len(shard)} samples, client_sizes says {self.client_sizes[i]}")
        sigma, clip = self.noise_multiplier, math.inf if self.max_grad_norm is None else self.max_grad_norm
        std = 0.0 if sigma == 0 else sigma * clip / (math.sqrt(comm.n) if self.mode == "central" else 1.0)
        if self.mode == "central":
            normalizer = torch.full((comm.m,), sum(plan.batches) / comm.n, dtype=torch.float64)
        else:
            normalizer = torch.tensor([plan.batches[i] for i in local], dtype=torch.float64)
        sampling, noise = rng.load(dp["sampling_rng"]), rng.load(dp["noise_rng"])
        calls = 0
        engine_clips = clips_sums(oracle)

        def private_oracle(x, rows=None, **kw):
            nonlocal calls
            if rows is not None or kw:
                raise UserError("dp_sgd privatizes the gradients of synchronous methods: every worker, every step")
            calls += 1
            if self.sampling == "poisson":
                idx, mask = poisson_sample(shards, [plan.sample_rates[i] for i in local], sampling)
            else:
                idx, mask = uniform_sample(shards, [int(plan.batches[i]) for i in local], sampling)
            if engine_clips:  # Σ_j clip(g_ij) from the engine (ghost clipping where it can), then the noise
                s = oracle(x, indices=idx, mask=mask, per_sample=True, max_grad_norm=clip)
                out = noised_mean(s, noise_std=std, generators=noise, normalizer=normalizer.to(s.dtype))
            else:
                g = oracle(x, indices=idx, mask=mask, per_sample=True)
                out = privatize(g, mask, max_grad_norm=clip, noise_std=std, generators=noise, normalizer=normalizer.to(g.dtype))
            return out.to(x.dtype)

        new = self.inner_algorithm().step({k: v for k, v in state.items() if k != "dp"}, private_oracle, comm)
        accountants = []
        for (q, _), a in zip(plan.groups, dp["accountants"], strict=True):
            acc = accounting.Accountant.from_state(a)
            acc.step(sigma, q, calls)
            accountants.append(acc.state_dict())
        return {
            **new,
            "dp": {
                "sampling_rng": rng.save(sampling),
                "noise_rng": rng.save(noise),
                "accountants": accountants,
                "max_steps": dp["max_steps"],
            },
        }

    def epsilon(self, state, *, per_message: bool = False) -> float:
        """ε spent so far at δ: the worst over the workers' accounted (q, N). `per_message`:
        one worker's message alone (central mode: noise σ/√n), what remains without secure
        aggregation."""
        out = 0.0
        for a in state["dp"]["accountants"]:
            acc = accounting.Accountant.from_state(a)
            if per_message and self.mode == "central":
                n = len(self.client_sizes)
                acc.history = [(s / math.sqrt(n), q, t) for s, q, t in acc.history]
            out = max(out, acc.epsilon(self.delta))
        return out

    def metrics(self, state) -> dict:
        row = {"epsilon": self.epsilon(state), "delta": self.delta, "noise_multiplier": self.noise_multiplier}
        if self.mode == "central":
            row["epsilon_per_message"] = self.epsilon(state, per_message=True)
        return row

    def prepare_task(self, task):
        """Refuse models without per-sample gradients (BatchNorm) before training."""
        validate_model(task.model)
        return task
