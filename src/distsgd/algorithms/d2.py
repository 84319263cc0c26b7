"""D²: decentralized training over decentralized data.

Tang, Lian, Yan, Zhang, Liu, "D²: Decentralized Training over Decentralized Data",
ICML 2018, Algorithm 1. With X_t = [x_1; …; x_n] and the mixing matrix W:

    t = 0:   X_{1/2} = X_0 − γ G(X_0; ξ_0)
    t ≥ 1:   X_{t+1/2} = 2X_t − X_{t−1} − γ G(X_t; ξ_t) + γ G(X_{t−1}; ξ_{t−1})
    all t:   X_{t+1} = W X_{t+1/2}

Each worker keeps its previous model and previous stochastic gradient; the correction
term cancels the bias D-PSGD suffers when the workers' data differ, improving the rate
from O(σ/√(nT) + (nζ²)^{1/3}/T^{2/3}) to O(σ/√(nT)). The analysis needs W symmetric,
doubly stochastic, with smallest eigenvalue λ_min(W) > −1/3. A Metropolis ring with an
even number of workers has λ_min = −1/3 exactly, so `lazy="auto"` replaces W by the lazy
(W + I)/2 whenever the condition fails, and the run summary's topology says so ("lazy
metropolis"); `lazy=True` always does, `lazy=False` refuses such a W. Communication per
step is D-PSGD's: each worker sends d values to every neighbour.

On the complete graph with W = 11ᵀ/n, every row equals the average after the first step
and x_{t+1} − x_t = −γ ḡ_t by induction: exactly AllReduce-SGD (tested).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..topology import Topology
from .base import ALGORITHMS, Graph, StepSize, WeightDecay, options

LAMBDA_MIN = -1 / 3


@ALGORITHMS.register(paper="Tang et al., ICML 2018")
@options
class D2:
    """D²: decentralized training robust to data variance across workers (gossip of 2x − x_prev − γ(g − g_prev))."""

    lr: StepSize
    topology: Graph = "ring"
    weight_decay: WeightDecay = 0.0
    lazy: Annotated[Literal["auto"] | bool, Field(description="auto: (W + I)/2 when λ_min(W) ≤ −1/3; true: always; false: refuse")] = "auto"
    name: str = "d2"

    def __post_init__(self):
        if not isinstance(self.topology, Topology):
            return  # a spec: checked when bound to n workers
        lam = self.topology.lambda_min
        if self.lazy is True or (self.lazy == "auto" and lam <= LAMBDA_MIN + 1e-9):
            if not self.topology.mixing_kind.startswith("lazy"):
                object.__setattr__(self, "topology", self.topology.lazy())
        elif lam <= LAMBDA_MIN + 1e-9:
            raise ValueError(
                f"D² needs λ_min(W) > −1/3, this {self.topology.name} has {lam:.4f}: "
                "use lazy mixing (W + I)/2"
            )

    def init(self, x0, comm):
        if self.topology.n != comm.n:
            raise ValueError(f"topology has {self.topology.n} nodes for {comm.n} workers")
        return {"x": x0.clone(), "x_prev": None, "g_prev": None, "t": 0}

    def step(self, state, oracle, comm):
        x = state["x"]
        g = oracle(x)
        if self.weight_decay:
            g = g + self.weight_decay * x
        if state["x_prev"] is None:
            half = x - self.lr * g
        else:
            half = (2 * x).sub_(state["x_prev"]).sub_(g - state["g_prev"], alpha=self.lr)
        return {"x": comm.gossip(half, self.topology), "x_prev": x, "g_prev": g, "t": state["t"] + 1}
