"""AllReduce-SGD: synchronous data-parallel mini-batch SGD (the baseline of every paper here).

Every step each worker i computes a stochastic gradient g_i at the common model x; an
all-reduce gives every worker ḡ = (1/n) Σ_i g_i, and all apply the same update

    x ← x − γ · SGD-direction(ḡ)      (heavy-ball momentum μ, weight decay λ, as torch.optim.SGD)

which equals single-worker SGD on the concatenation of the n mini-batches (Dekel et al.,
"Optimal distributed online prediction using mini-batches", JMLR 2012; Goyal et al.,
"Accurate, large minibatch SGD", 2017). Communication: one all-reduce of d values per step.
"""

from __future__ import annotations

from typing import ClassVar

from .base import ALGORITHMS, Momentum, Nesterov, StepSize, WeightDecay, options, sgd_direction


@ALGORITHMS.register(paper="Dekel et al., JMLR 2012; Goyal et al. 2017")
@options
class AllReduceSGD:
    """Synchronous data-parallel SGD: every step one all-reduce of the gradients."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model
    # the step's first act is the all-reduce mean of the gradient, and the gradient is used
    # only through it: the drop-in may reduce it during the backward pass (as DDP does)
    gradient_all_reduce: ClassVar[bool] = True

    lr: StepSize
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    name: str = "allreduce_sgd"

    def init(self, x0, comm):
        return {"x": x0.clone(), "momentum": None, "t": 0}

    def step(self, state, oracle, comm):
        x = state["x"]
        # every worker receives the same ḡ: keep one row [1, d] and let the update broadcast
        # (the momentum buffer is then one row too, instead of m identical ones)
        g = comm.all_reduce_mean(oracle(x))[:1]
        direction, buf = sgd_direction(
            g, x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        return {"x": x.sub_(direction, alpha=self.lr), "momentum": buf, "t": state["t"] + 1}
