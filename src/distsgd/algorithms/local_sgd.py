"""Local SGD (periodic model averaging): H local steps, then one all-reduce of the models.

    x_i ← x_i − γ · SGD-direction(g_i(x_i))          every step, on each worker alone
    x_i ← (1/n) Σ_j x_j                               when t ≡ 0 (mod H)

Stich, "Local SGD converges fast and communicates little", ICLR 2019 (Alg. 1, eq. (3));
Lin, Stich, Patel, Jaggi, "Don't use large mini-batches, use local SGD", ICLR 2020, whose
local momentum buffers stay local (set `average_momentum` to average them as well).
H = 1 is AllReduce-SGD with model averaging instead of gradient averaging (identical
without momentum). Communication: one all-reduce of d values every H steps.

With a `compressor`, the workers exchange compressed model changes since the last
average, with error feedback (as in Basu et al., "Qsparse-local-SGD", NeurIPS 2019):

    p_i = (x_i − x̂) + e_i;  c_i = C(p_i);  e_i ← p_i − c_i;  x_i ← x̂ ← x̂ + mean_j c_j

sent as an all-gather of the compressed payloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compress.base import Compressor
from ..compress.feedback import error_feedback
from .base import check_hyper, sgd_direction


@dataclass(frozen=True)
class LocalSGD:
    lr: float
    local_steps: int = 8
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    average_momentum: bool = False
    compressor: Compressor | None = None
    error_feedback: bool = True
    seed: int = 0
    name: str = "local_sgd"

    def __post_init__(self):
        check_hyper(self.lr, self.momentum, self.weight_decay)
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")

    def init(self, x0, comm):
        state = {"x": x0.clone(), "momentum": None, "t": 0}
        if self.compressor is not None:
            state["anchor"] = x0[:1].clone()  # x̂: the last average, the same on every worker
            state["error"] = torch.zeros_like(x0) if self.error_feedback else None
            state["rng"] = torch.Generator().manual_seed(self.seed * 7919 + comm.start).get_state()
        return state

    def step(self, state, oracle, comm):
        x = state["x"]
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, self.nesterov
        )
        x = x.sub_(direction, alpha=self.lr)
        t = state["t"] + 1
        state = {**state, "momentum": buf, "t": t}
        if t % self.local_steps == 0:
            if self.compressor is None:
                x = comm.all_reduce_mean(x).clone()
            else:
                x = self._compressed_average(state, x, comm)
            if buf is not None and self.average_momentum:
                state["momentum"] = comm.all_reduce_mean(buf).clone()
        state["x"] = x
        return state

    def _compressed_average(self, state, x, comm):
        g = torch.Generator()
        g.set_state(state["rng"])
        payload, state["error"] = error_feedback(self.compressor, x - state["anchor"], state["error"], g)
        mean = self.compressor.decompress(comm.all_gather_payload(payload)).mean(0, keepdim=True)
        state["anchor"] = state["anchor"] + mean
        state["rng"] = g.get_state()
        return state["anchor"].expand_as(x).clone()
