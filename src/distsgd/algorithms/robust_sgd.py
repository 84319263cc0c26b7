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

Byzantine workers follow the protocol for their own model; only what they send is
attacked. Which workers are Byzantine is fixed (seeded, see `pick_byzantine`) and recorded
in the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..compress.base import Payload
from ..errors import UserError
from ..robust.aggregators import Aggregator, Mean
from ..robust.attacks import Attack, flip_labels
from ..topology import Topology
from .base import check_hyper


def _check_common(algo, n: int) -> None:
    f = len(algo.byzantine)
    if f and not all(0 <= i < n for i in algo.byzantine):
        raise ValueError(f"byzantine worker ids must be in [0, {n}), got {list(algo.byzantine)}")
    if len(set(algo.byzantine)) != f:
        raise ValueError("byzantine worker ids repeat")


def _worker_message(algo, state, oracle, x):
    g = oracle(x)
    if algo.weight_decay:
        g = g + algo.weight_decay * x
    if not algo.worker_momentum:
        return g
    return state["worker_momentum"].mul_(algo.worker_momentum).add_(g, alpha=1 - algo.worker_momentum)


@dataclass(frozen=True)
class RobustSGD:
    lr: float
    aggregator: Aggregator = field(default_factory=Mean)
    attack: Attack = field(default_factory=Attack)
    byzantine: tuple[int, ...] = ()
    worker_momentum: float = 0.0  # β
    momentum: float = 0.0  # μ, heavy-ball on the aggregate at the server
    weight_decay: float = 0.0
    check: bool = True  # refuse an (n, f) outside the aggregator's guarantee
    name: str = "robust_sgd"

    def __post_init__(self):
        check_hyper(self.lr, self.momentum, self.weight_decay)
        if not 0 <= self.worker_momentum < 1:
            raise ValueError(f"worker_momentum must be in [0, 1), got {self.worker_momentum}")

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


@dataclass(frozen=True)
class RobustGossip:
    lr: float
    topology: Topology
    rule: str | Aggregator = "clipped"  # "clipped" (ClippedGossip) or an aggregator per neighbourhood
    tau: float = 1.0  # clipping radius of "clipped"
    attack: Attack = field(default_factory=Attack)
    byzantine: tuple[int, ...] = ()
    worker_momentum: float = 0.0
    weight_decay: float = 0.0
    check: bool = True
    name: str = "robust_gossip"

    def __post_init__(self):
        check_hyper(self.lr, 0.0, self.weight_decay)
        if not 0 <= self.worker_momentum < 1:
            raise ValueError(f"worker_momentum must be in [0, 1), got {self.worker_momentum}")
        if isinstance(self.rule, str) and self.rule != "clipped":
            raise ValueError(f"rule must be 'clipped' or an aggregator, got {self.rule!r}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.attack.kind == "adaptive":
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
        if not hasattr(comm, "gossip_rows"):
            raise UserError(
                "robust gossip keeps every neighbour's row apart: run it on the simulated backend"
            )
        return {
            "x": x0.clone(),
            "worker_momentum": torch.zeros_like(x0) if self.worker_momentum else None,
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        half = x - self.lr * _worker_message(self, state, oracle, x)
        sent = comm.gossip_rows(half, self.topology)
        if self.byzantine and not self.attack.on_data:
            byz = torch.tensor(self.byzantine)
            sent = sent.clone()
            sent[byz] = self.attack(sent, byz, state["t"])
        if isinstance(self.rule, str):
            i, j = self._edges
            diff = sent[j] - half[i]  # [edges, d]: x_j − x_i, the self-edge gives 0
            diff[i == j] = 0  # a Byzantine worker mixes with its own honest half-step
            norm = torch.linalg.vector_norm(diff, dim=1, keepdim=True).clamp(min=1e-12)
            weight = self.topology.mixing[i, j].to(x.dtype).unsqueeze(1) * (self.tau / norm).clamp(max=1)
            new = half.index_add(0, i, diff * weight)  # Σ_j W_ij = 1
        else:
            new = torch.empty_like(half)
            for node, nb in enumerate(self.neighbourhoods):
                rows = sent[nb].clone()
                rows[nb == node] = half[node]  # its own honest half-step, not what it sent
                new[node] = self.rule.aggregate(rows)
        return {"x": new, "worker_momentum": state["worker_momentum"], "t": state["t"] + 1}
