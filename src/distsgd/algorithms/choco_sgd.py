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

from typing import Annotated

import torch
from pydantic import Field

from .. import rng
from .base import (
    ALGORITHMS,
    CompressorOption,
    Graph,
    Momentum,
    Nesterov,
    Seed,
    StepSize,
    WeightDecay,
    options,
    seed_of,
    sgd_direction,
)


@ALGORITHMS.register(paper="Koloskova, Stich, Jaggi, ICML 2019")
@options
class ChocoSGD:
    """CHOCO-SGD: decentralized SGD with compressed gossip of model differences."""

    lr: StepSize
    topology: Graph = "ring"
    compressor: Annotated[CompressorOption, Field(description="compressor Q of the differences (e.g. \"topk:0.01\")")] = "topk:0.01"
    gamma: Annotated[float, Field(gt=0, le=1, description="consensus step size γ (1 suits the identity compressor; Top-1% needs about 0.05)")] = 0.05
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    seed: Seed = None
    name: str = "choco_sgd"

    def init(self, x0, comm):
        if self.topology.n != comm.n:
            raise ValueError(f"topology has {self.topology.n} nodes for {comm.n} workers")
        return {
            "x": x0.clone(),
            "x_hat": torch.zeros_like(x0),  # public copies start at 0 (the paper's x̂⁰ = 0)
            "s": torch.zeros_like(x0),  # Σ_j w_ij x̂_j
            "momentum": None,
            "rng": rng.states(seed_of(self), comm.workers, "compress"),  # one stream per worker
            "compressor": None,  # what the compressor carries between steps (PowerSGD's Q)
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        half = x.sub_(direction, alpha=self.lr)
        gens = rng.load(state["rng"])
        q, cstate = self.compressor.compress_with(half - state["x_hat"], gens, state["compressor"])
        x_hat = state["x_hat"].add_(self.compressor.decompress(q))
        s = state["s"].add_(comm.gossip_payload(q, self.topology, self.compressor.decompress))
        x = half.add_(s - x_hat, alpha=self.gamma)
        return {
            "x": x,
            "x_hat": x_hat,
            "s": s,
            "momentum": buf,
            "rng": rng.save(gens),
            "compressor": cstate,
            "t": state["t"] + 1,
        }
