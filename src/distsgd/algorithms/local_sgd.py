"""Local SGD (periodic model averaging): H local steps, then one all-reduce of the models.

    x_i ← x_i − γ · SGD-direction(g_i(x_i))          every step, on each worker alone
    x_i ← (1/n) Σ_j x_j                               when t ≡ 0 (mod H)

Stich, "Local SGD converges fast and communicates little", ICLR 2019 (Alg. 1, eq. (3));
Lin, Stich, Patel, Jaggi, "Don't use large mini-batches, use local SGD", ICLR 2020, whose
local momentum buffers stay local (set `average_momentum` to average them as well).
H = 1 is AllReduce-SGD with model averaging instead of gradient averaging (identical
without momentum). Communication: one all-reduce of d values every H steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import check_hyper, sgd_direction


@dataclass(frozen=True)
class LocalSGD:
    lr: float
    local_steps: int = 8
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    average_momentum: bool = False
    name: str = "local_sgd"

    def __post_init__(self):
        check_hyper(self.lr, self.momentum, self.weight_decay)
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")

    def init(self, x0, comm):
        return {"x": x0.clone(), "momentum": None, "t": 0}

    def step(self, state, oracle, comm):
        x = state["x"]
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        x = x.sub_(direction, alpha=self.lr)
        t = state["t"] + 1
        if t % self.local_steps == 0:
            x = comm.all_reduce_mean(x).clone()
            if buf is not None and self.average_momentum:
                buf = comm.all_reduce_mean(buf).clone()
        return {"x": x, "momentum": buf, "t": t}
