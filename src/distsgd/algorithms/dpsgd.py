"""D-PSGD: decentralized parallel SGD over a gossip graph.

Lian, Zhang, Zhang, Hsieh, Zhang, Liu, "Can Decentralized Algorithms Outperform
Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
Descent", NeurIPS 2017, Algorithm 1. With X = [x_1; …; x_n] and the mixing matrix W:

    variant "paper" (Alg. 1):  X_{k+1} = W X_k − γ ∂F(X_k; ξ_k)
        each worker averages its neighbours' models and applies the gradient it computed
        at its own model before averaging (the two can overlap in time);
    variant "atc" (adapt then combine):  X_{k+1} = W (X_k − γ ∂F(X_k; ξ_k))
        the form of Koloskova et al., "A Unified Theory of Decentralized SGD", ICML 2020,
        eq. (2); on the complete graph with W = 11ᵀ/n it is exactly AllReduce-SGD.

Optional heavy-ball momentum and weight decay act on each worker's own gradient (local
momentum, as in DSGDm). Communication per step: each worker sends its d values to every
neighbour and receives theirs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import ALGORITHMS, Graph, Momentum, Nesterov, StepSize, WeightDecay, options, sgd_direction

VARIANTS = ("paper", "atc")


@ALGORITHMS.register(paper="Lian et al., NeurIPS 2017")
@options
class DPSGD:
    """D-PSGD: each step a local SGD step and one gossip average with the neighbours."""

    lr: StepSize
    topology: Graph = "ring"
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    variant: Annotated[Literal["paper", "atc"], Field(description="paper: gossip x then step; atc: step then gossip")] = "paper"
    name: str = "dpsgd"

    def init(self, x0, comm):
        if self.topology.n != comm.n:
            raise ValueError(f"topology has {self.topology.n} nodes for {comm.n} workers")
        return {"x": x0.clone(), "momentum": None, "t": 0}

    def step(self, state, oracle, comm):
        x = state["x"]
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        if self.variant == "paper":
            x = comm.gossip(x, self.topology).sub_(direction, alpha=self.lr)
        else:
            x = comm.gossip(x - self.lr * direction, self.topology)
        return {"x": x, "momentum": buf, "t": state["t"] + 1}
