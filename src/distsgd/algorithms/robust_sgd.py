"""Byzantine-robust SGD: a parameter server with a robust aggregator, and robust gossip.

`RobustSGD` (the setting of Blanchard et al. 2017, Yin et al. 2018 and, with worker
momentum, Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, Algorithm 2):

    worker i:  m_i ← β m_i + (1 − β)(g_i + λx)         (β = 0: m_i = g_i + λx)
               send m_i                                  (Byzantine i send the attack's row)
    server:    v = Agg(m_1, …, m_n);  send v
    all:       b ← μb + v (server momentum μ, optional);  x ← x − γ b

Worker momentum averages the honest workers' noise before it reaches the aggregator, which
is what makes the classic rules (median, Krum, trimmed mean) hold up against
time-coupled attacks such as ALIE.

`RobustGossip` (decentralized, in the spirit of He, Karimireddy, Jaggi, "Byzantine-Robust
Decentralized Learning via ClippedGossip", 2022): each worker takes a local momentum step
x_i^{½} = x_i − γ m_i, sends x_i^{½} to its neighbours (Byzantine workers send the attack's
row, computed on the half-step models), and replaces its model by

    rule = "clipped":  x_i ← Σ_j W_ij (x_i^{½} + clip(x_j^{½} − x_i^{½}, τ))     (W: the mixing matrix)
    rule = an aggregator:  x_i ← Agg({x_j^{½} : j ∈ N(i) ∪ {i}})

where each worker's aggregator keeps its own state from step to step (centered
clipping's centre, BGMD's memory) in the algorithm state, so checkpoints carry it.

Byzantine workers follow the protocol for their own model; only what they send is
attacked. Which workers are Byzantine is fixed (seeded, see `pick_byzantine`) and recorded
in the run summary.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from ..compress.base import Payload
from ..robust import make_aggregator, make_attack, pick_byzantine
from ..robust.aggregators import Aggregator
from ..robust.attacks import Attack, flip_labels
from .base import ALGORITHMS, Graph, StepSize, WeightDecay, options, seed_of


def _check_common(algo, n: int) -> None:
    ids = algo.byzantine or ()
    if ids and not all(0 <= i < n for i in ids):
        raise ValueError(f"byzantine worker ids must be in [0, {n}), got {list(ids)}")
    if len(set(ids)) != len(ids):
        raise ValueError("byzantine worker ids repeat")


def _bind_common(algo, n: int, **rules) -> dict:
    """The Byzantine ids (drawn when only f is given), the attack and the rules built."""
    byz = algo.byzantine
    if byz is None:
        if algo.f >= n:
            raise ValueError(f"f = {algo.f} must be < n_workers = {n}")
        byz = tuple(pick_byzantine(n, algo.f, algo.byzantine_seed))
    f = len(byz)
    out = {"byzantine": tuple(byz), "attack": make_attack(algo.attack, seed=seed_of(algo))}
    for key, spec in rules.items():
        if spec is not None and not isinstance(spec, Aggregator):
            out[key] = make_aggregator(spec, f, seed=seed_of(algo))
    return out


def _from_own_model(agg_state, row):
    """A gossip worker's aggregator state at t = 0: a rule that starts from its previous
    aggregate (centered clipping's centre, at 0 for a server's gradients) starts from the
    worker's own initial model, which is what its previous aggregate stands for in gossip."""
    if isinstance(agg_state, dict):
        return {k: row.clone() if k == "center" else _from_own_model(v, row) for k, v in agg_state.items()}
    return agg_state


def _worker_message(algo, state, oracle, x):
    g = oracle(x)
    if algo.weight_decay:
        g = g + algo.weight_decay * x
    if not algo.worker_momentum:
        return g
    return state["worker_momentum"].mul_(algo.worker_momentum).add_(g, alpha=1 - algo.worker_momentum)


@options
class _Byzantine:
    """The options every Byzantine-robust algorithm shares: the step, who is Byzantine and
    what they send, the workers' momentum."""

    lr: StepSize
    attack: Annotated[Attack | str | dict, Field(description="what the Byzantine workers send: none, sign_flip, scaled_flip, gaussian, alie, ipm, label_flip, adaptive (\"alie:1.5\" sets the scale)")] = "none"
    f: Annotated[int, Field(ge=0, description="number of Byzantine workers, drawn with byzantine_seed (ignored when byzantine is given)")] = 0
    byzantine: Annotated[tuple[int, ...] | None, Field(description="the Byzantine worker ids (default: f drawn at random)")] = None
    byzantine_seed: Annotated[int, Field(ge=0, description="seed of the draw of the Byzantine workers")] = 0
    worker_momentum: Annotated[float, Field(ge=0, lt=1, description="β of the workers' momentum (Karimireddy et al. 2021)")] = 0.9
    weight_decay: WeightDecay = 0.0
    check: Annotated[bool, Field(description="refuse an (n, f) outside the rule's guarantee")] = True
    seed: Annotated[int | None, Field(ge=0, description="seed of the attack and of randomized rules (default: the run's)")] = None


@ALGORITHMS.register(paper="Blanchard et al. 2017; Karimireddy, He, Jaggi, ICML 2021")
@options
class RobustSGD(_Byzantine):
    """Byzantine-robust SGD: a server aggregates the workers' momenta with a robust rule."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    aggregator: Annotated[Aggregator | str | dict, Field(description="robust rule: mean, median, trimmed_mean, krum, multikrum, geomed, cclip, bgmd, vote (a table adds options, nnm, bucket)")] = "geomed"
    momentum: Annotated[float, Field(ge=0, lt=1, description="μ, heavy-ball on the aggregate at the server")] = 0.0
    name: str = "robust_sgd"

    def bind(self, n: int):
        return dataclasses.replace(self, **_bind_common(self, n, aggregator=self.aggregator))

    def prepare_task(self, task):
        """Label flipping acts on the Byzantine workers' data, not on their messages."""
        return flip_labels(task, self.byzantine) if self.attack.on_data else task

    def validate(self, n: int) -> None:
        """ValueError when the Byzantine ids or the aggregator's guarantee do not fit n workers."""
        _check_common(self, n)
        if self.check:
            self.aggregator.check(n)

    def init(self, x0, comm):
        self.validate(comm.n)
        return {
            "x": x0.clone(),
            "worker_momentum": torch.zeros_like(x0) if self.worker_momentum else None,
            "momentum": None,
            "aggregator": self.aggregator.init(x0.shape[1]),
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        d = x.shape[1]
        msg = _worker_message(self, state, oracle, x)
        rows = comm.gather_payload(Payload({"m": msg}, d)).wire["m"]  # [n, d]: the server's view
        if self.byzantine and not self.attack.on_data:
            byz = torch.tensor(self.byzantine)
            rows = rows.clone()
            rows[byz] = self.attack(rows, byz, state["t"], self.aggregator, state["aggregator"])
        v, agg_state = self.aggregator(rows, state["aggregator"])
        v = comm.broadcast_payload(Payload({"v": v.unsqueeze(0)}, d)).wire["v"]  # [1, d]
        buf = state["momentum"]
        if self.momentum:
            buf = v.clone() if buf is None else buf.mul_(self.momentum).add_(v)
            v = buf
        return {
            "x": x.sub_(v, alpha=self.lr),
            "worker_momentum": state["worker_momentum"],
            "momentum": buf,
            "aggregator": agg_state,
            "t": state["t"] + 1,
        }


@ALGORITHMS.register(paper="He, Karimireddy, Jaggi, ClippedGossip, 2022")
@options
class RobustGossip(_Byzantine):
    """Byzantine-robust gossip: ClippedGossip, or a robust rule over each neighbourhood."""

    topology: Graph = "ring"
    rule: Annotated[Aggregator | str | dict, Field(description="clipped (ClippedGossip) or an aggregator spec applied per neighbourhood")] = "clipped"
    tau: Annotated[float, Field(gt=0, description="clipping radius τ of ClippedGossip")] = 1.0
    name: str = "robust_gossip"

    def bind(self, n: int):
        rule = None if self.rule == "clipped" else self.rule
        return dataclasses.replace(self, **_bind_common(self, n, rule=rule))

    def __post_init__(self):
        if isinstance(self.attack, Attack) and self.attack.kind == "adaptive":
            raise ValueError("the adaptive attack targets one server aggregator, not gossip")

    def prepare_task(self, task):
        return flip_labels(task, self.byzantine) if self.attack.on_data else task

    @cached_property
    def neighbourhoods(self) -> list[torch.Tensor]:
        """Each worker's closed neighbourhood N(i) ∪ {i} (the support of row i of W)."""
        w = self.topology.mixing
        return [torch.nonzero(w[i]).flatten() for i in range(w.shape[0])]

    @cached_property
    def _edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = torch.nonzero(self.topology.mixing, as_tuple=True)
        return i, j

    def _local_edges(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The edges (i, j) whose receiver i is one of this process's workers [lo, hi)."""
        i, j = self._edges
        keep = (i >= lo) & (i < hi)
        return i[keep], j[keep]

    def validate(self, n: int) -> None:
        _check_common(self, n)
        if self.topology.n != n:
            raise ValueError(f"the topology has {self.topology.n} nodes for {n} workers")
        if self.check and not isinstance(self.rule, str):
            for node, nb in enumerate(self.neighbourhoods):
                try:
                    self.rule.check(len(nb))
                except ValueError as e:
                    raise ValueError(f"worker {node}'s neighbourhood (itself + {len(nb) - 1}): {e}") from None

    def init(self, x0, comm):
        self.validate(comm.n)
        d = x0.shape[1]
        return {
            "x": x0.clone(),
            "worker_momentum": torch.zeros_like(x0) if self.worker_momentum else None,
            # each local worker's own aggregator state over its neighbourhood (centered
            # clipping's centre, BGMD's memory), carried from step to step and checkpointed
            "aggregator": None if isinstance(self.rule, str) else [_from_own_model(self.rule.init(d), x0[k]) for k in range(comm.m)],
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        half = x - self.lr * _worker_message(self, state, oracle, x)
        honest = comm.gossip_rows(half, self.topology)  # [n, d]: every worker's half-step
        sent = honest
        if self.byzantine and not self.attack.on_data:
            byz = torch.tensor(self.byzantine)
            sent = sent.clone()
            sent[byz] = self.attack(sent, byz, state["t"])
        lo = comm.start
        agg_states = state["aggregator"]
        if isinstance(self.rule, str):
            i, j = self._local_edges(lo, lo + comm.m)
            diff = sent[j] - honest[i]  # [edges, d]: x_j − x_i, the self-edge gives 0
            diff[i == j] = 0  # a Byzantine worker mixes with its own honest half-step
            norm = torch.linalg.vector_norm(diff, dim=1, keepdim=True).clamp(min=1e-12)
            weight = self.topology.mixing[i, j].to(x.dtype).unsqueeze(1) * (self.tau / norm).clamp(max=1)
            new = half.index_add(0, i - lo, diff * weight)  # Σ_j W_ij = 1
        else:
            new, agg_states = torch.empty_like(half), list(agg_states)
            for node in comm.workers:
                nb = self.neighbourhoods[node]
                rows = sent[nb].clone()
                rows[nb == node] = honest[node]  # its own honest half-step, not what it sent
                v, agg_states[node - lo] = self.rule(rows, agg_states[node - lo])  # functional
                new[node - lo] = v
        return {
            "x": new,
            "worker_momentum": state["worker_momentum"],
            "aggregator": agg_states,
            "t": state["t"] + 1,
        }
