"""Federated averaging with partial participation, heterogeneous local work and server optimizers.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-efficient learning of
deep networks from decentralized data", AISTATS 2017 (FedAvg, Algorithm 1); Haddadpour &
Mahdavi, "On the convergence of local descent methods in federated learning", 2019 (local
SGD with periodic averaging on heterogeneous data); Li, Huang, Yang, Wang, Zhang, "On the
convergence of FedAvg on non-IID data", ICLR 2020 (the sampling schemes and their
unbiased weights, §3.3); Hsu, Qi, Brown, 2019 (FedAvgM: server momentum); Reddi et al.,
"Adaptive federated optimization", ICLR 2021 (FedAdam, FedYogi: Algorithm 2).

N clients (the task's workers; client k holds its shard, n_k samples, p_k = n_k / Σ n_j or
1/N). One runner step is one communication round t:

    1. the server draws S_t: K draws from the N clients, uniformly or ∝ p_k, with or
       without replacement (Li et al.'s Scheme II and Scheme I);
    2. it sends w_t to each drawn client that is available (probability `participation`);
    3. client k runs τ_k local SGD steps from w_t on its own mini-batches (τ fixed, drawn
       uniformly in {1..τ}, or ∝ its speed; E local epochs are τ_k = ⌈E·n_k/B⌉), and
       sends Δ_k = w_t − w_k unless it failed mid-round or missed the deadline;
    4. Δ̄_t = Σ_{k∈S_t} ω_k Δ_k, with the weight each scheme needs for E[Δ̄_t] = Σ_k p_k Δ_k:
         uniform without replacement  ω_k = p_k·N/K        (Li et al. eq. (6), Scheme II)
         uniform with replacement     ω_k = c_k·p_k·N/K    (c_k: the times k was drawn)
         ∝ n_k with replacement       ω_k = c_k·p_k/(K·q_k) (q_k = n_k/Σn_j; = c_k/K, Scheme I,
                                                           when p_k ∝ n_k)
       ("renormalized" divides them by their sum: Σ_S n_k Δ_k / Σ_S n_k, the common
       implementation, biased when the n_k differ); the weights of clients that do not
       report are spread over those that do (their sum is kept: a ratio estimator, biased
       when the p_k differ), or with absent = "inverse_probability" the reporters' weights
       are divided by the probability of reporting, participation·(1 − failure) (unbiased);
    5. the server optimizer steps on the pseudo-gradient Δ̄_t:
         sgd   v ← βv + Δ̄;  w ← w − η_s v               (β = server_momentum: FedAvgM)
         adam  m ← β₁m + (1−β₁)Δ̄;  v ← β₂v + (1−β₂)Δ̄²;  w ← w − η_s m/(√v + ε)
         yogi  as adam with v ← v − (1−β₂)Δ̄²·sign(v − Δ̄²)

Sampling, local steps, availability and failures draw from one server stream (seed,
SERVER, "clients"), so every process draws the same round and a run is reproducible from
its seed alone. The sampled clients are stacked like workers: a round costs τ_max
vectorized gradient calls over the sampled clients, never a Python loop over clients.
Simulated seconds of a round: the downlink to the available clients and the uplink from
the reporting ones through the server's interface (α + k·b/β_server each) plus the longest
local computation among the available clients (τ_k × the network model's per-gradient time
of client k; a failing client until it fails), at most the deadline.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from .. import rng
from ..rng import SERVER
from .base import ALGORITHMS, Momentum, Seed, StepSize, WeightDecay, options, seed_of

Probability = Annotated[float, Field(ge=0, lt=1)]


# -- client sampling: pure functions of a generator (tested for unbiasedness) ------------------
def draw_clients(
    generator: torch.Generator, q: torch.Tensor, k: int, sampling: str, replacement: bool
) -> torch.Tensor:
    """K draws [k] from N clients: uniformly, or with probabilities q (∝ data size), with or
    without replacement."""
    n = len(q)
    if sampling == "uniform":
        if replacement:
            return torch.randint(n, (k,), generator=generator)
        return torch.randperm(n, generator=generator)[:k]
    return torch.multinomial(q.double(), k, replacement=replacement, generator=generator)


def client_weights(
    draws: torch.Tensor, p: torch.Tensor, k: int, sampling: str, weighting: str, q: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clients, ω): the distinct drawn clients, sorted, and their aggregation weights, so
    that E[Σ_S ω_k Δ_k] = Σ_k p_k Δ_k for "unbiased": ω_k = c_k·p_k/(K·q_k), with c_k the
    times k was drawn and q_k its probability per draw (1/N uniformly: p_k·N/K, Li et al.'s
    Scheme II without replacement too; q = p: 1/K, Scheme I)."""
    clients, counts = draws.unique(sorted=True, return_counts=True)
    n = len(p)
    if sampling == "uniform":
        w = counts.double() * p[clients].double() * n / k
    else:
        q = p if q is None else q
        w = counts.double() * p[clients].double() / (k * q[clients].double())
    if weighting == "renormalized":
        w = w / w.sum()
    return clients, w


def reporting_weights(weights: torch.Tensor, reports: torch.Tensor, absent: str, rate: float) -> torch.Tensor:
    """The weights of the clients that report. "redistribute": the absent clients' weight is
    spread over them in proportion (their sum is kept; a ratio estimator, biased when the
    p_k differ); "inverse_probability": ω_k/r with r the probability that a drawn client
    reports (participation × (1 − failure)), so E over availability is ω_k again (unbiased
    when nothing else, e.g. a deadline, drops clients)."""
    omega = weights[reports]
    if absent == "inverse_probability":
        return omega / rate
    return omega * (weights.sum() / omega.sum())


def local_steps_of_epochs(epochs: float, sizes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """τ_k = ⌈E·n_k/B⌉: E passes over a client's n_k samples in batches of B (at least 1)."""
    return torch.clamp(torch.ceil(epochs * sizes.double() / batch_size).long(), min=1)


def momentum_norm(tau: torch.Tensor, rho: float) -> torch.Tensor:
    """‖a_k‖₁ of FedNova (Wang et al., NeurIPS 2020, §4): how much τ_k local steps of SGD with
    heavy-ball momentum ρ weigh the gradients, Σ_{s=1}^{τ} (1 − ρ^s)/(1 − ρ); τ for ρ = 0."""
    tau = tau.double()
    if rho == 0:
        return tau
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


@ALGORITHMS.register(
    paper="McMahan et al., AISTATS 2017; Li et al., ICLR 2020; Reddi et al., ICLR 2021",
    hidden=("client_sizes", "batch_size"),
)
@options
class FedAvg:
    """Federated averaging: K of N clients a round, local SGD, weighted averaging, a server optimizer."""

    buffer_policy: ClassVar[str] = "local"
    global_model: ClassVar[bool] = True  # state["x"] rows are the one global model
    engine_fields: ClassVar = ("client_sizes", "batch_size")  # set from the task

    lr: StepSize
    clients_per_round: Annotated[
        int | None, Field(ge=1, description="K, clients drawn each round (default: all N, full participation)")
    ] = None
    sampling: Annotated[Literal["uniform", "size"], Field(description="draw clients uniformly or ∝ their data size")] = "uniform"
    replacement: Annotated[bool, Field(description="draw with replacement")] = False
    weighting: Annotated[
        Literal["unbiased", "renormalized"],
        Field(description="unbiased: each scheme's weights (E = full participation); renormalized: Σ_S n_k Δ_k / Σ_S n_k"),
    ] = "unbiased"
    client_weights: Annotated[
        Literal["size", "equal"], Field(description="p_k: ∝ the client's samples, or 1/N")
    ] = "size"
    local_steps: Annotated[int, Field(ge=1, description="τ, local SGD steps per round")] = 5
    local_epochs: Annotated[
        float | None, Field(gt=0, description="E: local epochs per round instead of τ (τ_k = ⌈E·n_k/B⌉)")
    ] = None
    local_work: Annotated[
        Literal["fixed", "uniform", "speed"],
        Field(description="system heterogeneity: τ_k = τ, drawn uniformly in {1..τ} each round, or ∝ the client's speed"),
    ] = "fixed"
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    server_lr: Annotated[float, Field(gt=0, description="η_s, the server's step size")] = 1.0
    server_optimizer: Annotated[Literal["sgd", "adam", "yogi"], Field(description="sgd (FedAvg, FedAvgM), adam (FedAdam), yogi (FedYogi)")] = "sgd"
    server_momentum: Annotated[float, Field(ge=0, lt=1, description="β of the server's sgd (FedAvgM)")] = 0.0
    server_betas: Annotated[tuple[float, float], Field(description="β₁, β₂ of FedAdam/FedYogi")] = (0.9, 0.99)
    server_eps: Annotated[float, Field(gt=0, description="ε (Reddi et al.'s τ): FedAdam/FedYogi's adaptivity")] = 1e-3
    participation: Annotated[
        float, Field(gt=0, le=1, description="probability that a drawn client is available this round")
    ] = 1.0
    failure: Annotated[float, Field(ge=0, lt=1, description="probability that a client fails mid-round (its update is lost)")] = 0.0
    deadline: Annotated[
        float | None, Field(gt=0, description="simulated seconds the server waits for local work")
    ] = None
    deadline_policy: Annotated[
        Literal["drop", "partial"],
        Field(description="late clients: drop their update, or send what they computed by the deadline"),
    ] = "drop"
    absent: Annotated[
        Literal["redistribute", "inverse_probability"],
        Field(description="weights of clients that do not report: spread over those that do, or 1/(participation·(1 − failure)) for the reporters (unbiased)"),
    ] = "redistribute"
    client_sizes: tuple[int, ...] | None = None  # n_k, set by the engine
    batch_size: int | None = None  # B, set by the engine
    seed: Seed = None
    name: str = "fedavg"

    # -- checks that need N ---------------------------------------------------------------
    def bind(self, n: int):
        if self.clients_per_round is None:
            return dataclasses.replace(self, clients_per_round=n).bind(n)
        if self.clients_per_round > n:
            raise ValueError(f"clients_per_round = {self.clients_per_round} is more than the {n} clients")
        if self.sampling == "size" and not self.replacement and self.weighting == "unbiased":
            raise ValueError(
                "sampling = 'size' without replacement has no unbiased fixed-K weighting: "
                "set replacement = true (Scheme I) or weighting = 'renormalized'"
            )
        if self.client_sizes is not None and len(self.client_sizes) != n:
            raise ValueError(f"client_sizes has {len(self.client_sizes)} entries for {n} clients")
        b1, b2 = self.server_betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"server_betas must be in [0, 1), got {self.server_betas}")
        return self

    # -- state ----------------------------------------------------------------------------
    def sizes(self, n: int) -> torch.Tensor:
        return torch.tensor(self.client_sizes, dtype=torch.float64) if self.client_sizes else torch.ones(n, dtype=torch.float64)

    def p(self, n: int) -> torch.Tensor:
        """p_k: the clients' weights in the objective Σ_k p_k f_k."""
        if self.client_weights == "equal":
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        s = self.sizes(n)
        return s / s.sum()

    def init(self, x0, comm):
        w = x0[:1].clone()
        state = {
            "w": w,
            "x": w.expand(comm.m, -1),
            "server_m": None,
            "server_v": None,
            "rng": rng.generator(seed_of(self), SERVER, "clients").get_state(),
            "t": 0,
            "round": {},
        }
        return state

    # -- one round -----------------------------------------------------------------------
    def sample(self, state, gen, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clients, ω) of this round (sorted distinct ids and their weights)."""
        k = self.clients_per_round
        sizes = self.sizes(n)
        q = sizes / sizes.sum()  # "size": the probability of each draw ∝ n_k
        p = q if self.client_weights == "size" else self.p(n)
        draws = draw_clients(gen, q, k, self.sampling, self.replacement)
        return client_weights(draws, p, k, self.sampling, self.weighting, q)

    def plan(self, clients, gen, comm):
        """Local steps τ_k of each drawn client and which of them report: availability,
        mid-round failures and the deadline. Returns (available, steps done, reports,
        compute seconds of the round)."""
        n, k = comm.n, len(clients)
        if self.local_epochs is not None:
            tau = local_steps_of_epochs(self.local_epochs, self.sizes(n)[clients], self.batch_size or 1)
        else:
            tau = torch.full((k,), self.local_steps, dtype=torch.long)
        if self.local_work == "uniform":
            tau = (torch.rand(k, generator=gen, dtype=torch.float64) * tau).long() + 1  # U{1..τ_k}
        elif self.local_work == "speed":
            speed = comm.clock.speeds
            tau = torch.clamp((tau * speed[clients] / speed.max()).floor().long(), min=1)
        available = torch.rand(k, generator=gen, dtype=torch.float64) < self.participation
        fails = torch.rand(k, generator=gen, dtype=torch.float64) < self.failure
        fail_at = (torch.rand(k, generator=gen, dtype=torch.float64) * tau).long()  # U{0..τ_k−1}
        per_step = comm.clock.gradient_seconds()[clients]  # this round's speed of each client
        steps = torch.where(available, torch.where(fails, fail_at, tau), 0)
        reports = available & ~fails
        if self.deadline is not None:
            if self.deadline_policy == "partial":
                fit = torch.floor(self.deadline / per_step).long()
                steps = torch.minimum(steps, fit)
                reports = reports & (steps > 0)
            else:
                late = steps * per_step > self.deadline
                reports = reports & ~late
                steps = torch.where(late, torch.floor(self.deadline / per_step).long().clamp(max=steps), steps)
        busy = steps.double() * per_step
        seconds = float(busy.max()) if k else 0.0
        if self.deadline is not None:
            seconds = min(seconds, self.deadline)
        return available, steps, reports, seconds

    def local_train(self, w, rows, steps, oracle):
        """τ_k local SGD steps (momentum, weight decay) from w for the local clients `rows`;
        all of them in one vectorized call per step. Returns their final models [k, d]."""
        x = w.expand(len(rows), -1).clone()
        buf = torch.zeros_like(x) if self.momentum else None
        for s in range(int(steps.max()) if len(steps) else 0):
            live = torch.nonzero(steps > s).flatten()
            every = len(live) == len(rows)
            xs = x if every else x[live]
            g = oracle(xs, rows=rows if every else rows[live])
            d = g + self.weight_decay * xs if self.weight_decay else g
            if buf is not None:
                if every:
                    d = buf.mul_(self.momentum).add_(d)
                else:
                    d = buf[live].mul_(self.momentum).add_(d)
                    buf[live] = d
            if every:
                x.sub_(d, alpha=self.lr)
            else:
                x[live] = xs - self.lr * d
        return x

    def step(self, state, oracle, comm):
        gen = torch.Generator()
        gen.set_state(state["rng"])
        clients, weights = self.sample(state, gen, comm.n)
        available, steps, reports, compute = self.plan(clients, gen, comm)
        w = state["w"]
        comm.to_clients(w[0], clients[available])
        local = (clients >= comm.start) & (clients < comm.start + comm.m) & (steps > 0)
        rows = clients[local] - comm.start
        xk = self.local_train(w, rows, steps[local], oracle)
        mine = reports[local]
        delta = comm.from_clients(w - xk[mine], clients[reports])  # Δ_k = w_t − w_k, on every process
        comm.traffic.compute_seconds += compute
        state = {**state, "rng": gen.get_state(), "t": state["t"] + 1}
        state["round"] = {
            "clients_sampled": len(clients),
            "clients_reporting": int(reports.sum()),
            "mean_local_steps": float(steps[reports].double().mean()) if bool(reports.any()) else 0.0,
        }
        if int(reports.sum()) == 0:  # nobody reported: the model stays
            return state
        omega = reporting_weights(weights, reports, self.absent, self.participation * (1 - self.failure))
        update = self.aggregate(state, delta, omega, clients[reports], steps[reports])
        if update is None:
            return state
        w = self.server_step(state, w, update)
        state["w"], state["x"] = w, w.expand(comm.m, -1)
        return state

    def aggregate(self, state, delta, omega, clients, steps):
        """Δ̄ = Σ ω_k Δ_k [1, d]."""
        return (omega.to(delta.dtype).unsqueeze(1) * delta).sum(0, keepdim=True)

    def server_step(self, state, w, update):
        """w ← ServerOpt(w, Δ̄): sgd with momentum (FedAvgM), adam (FedAdam) or yogi (FedYogi)."""
        if self.server_optimizer == "sgd":
            if self.server_momentum:
                v = update if state["server_m"] is None else state["server_m"].mul(self.server_momentum).add_(update)
                state["server_m"], update = v, v
            return w - self.server_lr * update
        b1, b2 = self.server_betas
        if state["server_m"] is None:  # m₋₁ = 0, v₋₁ = ε² (Reddi et al., Algorithm 2)
            state["server_m"] = torch.zeros_like(update)
            state["server_v"] = torch.full_like(update, self.server_eps**2)
        m = state["server_m"] * b1 + (1 - b1) * update
        sq = update.pow(2)
        v = state["server_v"]
        v = v * b2 + (1 - b2) * sq if self.server_optimizer == "adam" else v - (1 - b2) * sq * torch.sign(v - sq)
        state["server_m"], state["server_v"] = m, v
        return w - self.server_lr * m / (v.sqrt() + self.server_eps)

    def metrics(self, state) -> dict:
        return {"round": state["t"], **state.get("round", {})}
