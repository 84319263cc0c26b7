"""CHOCO-SGD: decentralized SGD with compressed gossip of model differences.

Koloskova, Stich, Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms
with Compressed Communication", ICML 2019, Algorithm 2 (CHOCO-SGD). Every worker i keeps
its model x_i and the public copies x̂_j of itself and its neighbours (all of them know
x̂_j exactly: it only ever changes by the messages j sent):

    x_i^{t+½} = x_i^t − η ∇F_i(x_i^t; ξ)                      (local step; momentum optional)
    q_i = Q(x_i^{t+½} − x̂_i)                                  send q_i to the neighbours
    x̂_j ← x̂_j + q_j            for j ∈ N(i) ∪ {i}
    x_i^{t+1} = x_i^{t+½} + γ Σ_j w_ij (x̂_j − x̂_i)            (consensus step size γ)

Q is any compressor of `distsgd.compress` (contractive, e.g. Top-K or scaled sign, or
unbiased and rescaled); with Q = identity and γ = 1 it is D-PSGD in adapt-then-combine
form. Worker i needs only s_i = Σ_j w_ij x̂_j, which it updates from the mixed messages
s_i ← s_i + Σ_j w_ij q_j, so the state per worker is x_i, x̂_i and s_i. Traffic per step:
each worker sends its compressed message to every neighbour (the payload's wire size).
The momentum variant (local heavy-ball on the gradient) is the one Koloskova, Lin, Stich,
Jaggi (ICLR 2020) train deep networks with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..compress import Identity
from ..compress.base import Compressor
from ..topology import Topology
from .base import check_hyper, sgd_direction


@dataclass(frozen=True)
class ChocoSGD:
    lr: float
    topology: Topology
    compressor: Compressor = field(default_factory=Identity)
    gamma: float = 1.0  # consensus step size
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    seed: int = 0
    name: str = "choco_sgd"

    def __post_init__(self):
        check_hyper(self.lr, self.momentum, self.weight_decay)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")

    def init(self, x0, comm):
        if self.topology.n != comm.n:
            raise ValueError(f"topology has {self.topology.n} nodes for {comm.n} workers")
        gen = torch.Generator().manual_seed(self.seed * 7919 + comm.start)
        return {
            "x": x0.clone(),
            "x_hat": torch.zeros_like(x0),  # public copies start at 0 (the paper's x̂⁰ = 0)
            "s": torch.zeros_like(x0),  # Σ_j w_ij x̂_j
            "momentum": None,
            "rng": gen.get_state(),
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        half = x.sub_(direction, alpha=self.lr)
        gen = torch.Generator()
        gen.set_state(state["rng"])
        q = self.compressor.compress(half - state["x_hat"], gen)
        x_hat = state["x_hat"].add_(self.compressor.decompress(q))
        s = state["s"].add_(comm.gossip_payload(q, self.topology, self.compressor.decompress))
        x = half.add_(s - x_hat, alpha=self.gamma)
        return {"x": x, "x_hat": x_hat, "s": s, "momentum": buf, "rng": gen.get_state(), "t": state["t"] + 1}
