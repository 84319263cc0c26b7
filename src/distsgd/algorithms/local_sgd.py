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

from typing import Annotated

import torch
from pydantic import Field

from .. import rng
from ..compress.feedback import error_feedback
from .base import (
    ALGORITHMS,
    CompressorOption,
    Momentum,
    Nesterov,
    Seed,
    StepSize,
    WeightDecay,
    options,
    seed_of,
    sgd_direction,
)


@ALGORITHMS.register(paper="Stich, ICLR 2019; Lin et al., ICLR 2020")
@options
class LocalSGD:
    """Local SGD: H local steps, then one all-reduce of the models (optionally compressed)."""

    lr: StepSize
    local_steps: Annotated[int, Field(ge=1, description="H, local steps between averagings")] = 8
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
    average_momentum: Annotated[bool, Field(description="average the momentum buffers too")] = False
    compressor: Annotated[CompressorOption | None, Field(description="compress the model changes (None: exact average)")] = None
    error_feedback: Annotated[bool, Field(description="error feedback for the compressor")] = True
    seed: Seed = None
    name: str = "local_sgd"

    def init(self, x0, comm):
        state = {"x": x0.clone(), "momentum": None, "t": 0}
        if self.compressor is not None:
            state["anchor"] = x0[:1].clone()  # x̂: the last average, the same on every worker
            state["error"] = torch.zeros_like(x0) if self.error_feedback else None
            state["rng"] = rng.states(seed_of(self), comm.workers, "compress")  # one stream per worker
            state["compressor"] = None  # what the compressor carries between calls (PowerSGD's Q)
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
        gens = rng.load(state["rng"])
        payload, state["error"], state["compressor"] = error_feedback(
            self.compressor, x - state["anchor"], state["error"], gens, state["compressor"]
        )
        mean = self.compressor.decompress(comm.all_gather_payload(payload)).mean(0, keepdim=True)
        state["anchor"] = state["anchor"] + mean
        state["rng"] = rng.save(gens)
        return state["anchor"].expand_as(x).clone()
