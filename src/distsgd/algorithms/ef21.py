"""EF21 and EF21-W: error feedback with compressed gradient differences.

Richtárik, Sokolov, Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and
Practically Faster Error Feedback", NeurIPS 2021, Algorithm 1:

    x^{t+1} = x^t − γ g^t                                  (server; broadcasts x^{t+1})
    c_i = C(∇f_i(x^{t+1}) − g_i^t);  g_i^{t+1} = g_i^t + c_i   (worker i sends c_i)
    g^{t+1} = g^t + (1/n) Σ_i c_i                           (server)

with g_i^0 = ∇f_i(x^0) sent uncompressed once. EF21-W (Richtárik, Gasanov, Burlachenko,
"Error Feedback Reloaded", 2024) weights worker i by w_i = L_i / Σ_j L_j:
c_i = C(∇f_i(x^{t+1}) / (n w_i) − g_i), g = Σ_i w_i g_i, which for positively homogeneous
compressors (Top-K) changes only the admissible step size: γ ≤ 1/(L + L_AM √(β/θ))
instead of L_QM (`ef21_stepsize`). The oracle here is the full local gradient (the
papers' setting) or a stochastic one.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from .. import rng
from ..compress.base import Payload
from .base import ALGORITHMS, CompressorOption, Seed, StepSize, options, seed_of


def ef21_stepsize(L: float, Ls: list[float], alpha: float, weighted: bool = False) -> float:
    """γ = 1/(L + L̃ √(β/θ)) with θ = 1 − √(1 − α), β = (1 − α)/(1 − √(1 − α)) (EF21 Thm 1,
    t = √(1/(1−α)) − 1) and L̃ the quadratic mean of the L_i (EF21) or their arithmetic mean
    (EF21-W). α = K/d for Top-K."""
    if alpha >= 1:
        return 1.0 / L
    s = math.sqrt(1 - alpha)
    theta = 1 - s
    beta = (1 - alpha) / (1 - s)
    lt = sum(Ls) / len(Ls) if weighted else math.sqrt(sum(li * li for li in Ls) / len(Ls))
    return 1.0 / (L + lt * math.sqrt(beta / theta))


@ALGORITHMS.register(paper="Richtárik, Sokolov, Fatkhullin, NeurIPS 2021; EF21-W: Richtárik et al. 2024")
@options
class EF21:
    """EF21 (and EF21-W): error feedback with compressed gradient differences."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: StepSize
    compressor: Annotated[CompressorOption, Field(description="contractive compressor C (e.g. \"topk:0.01\")")] = "topk:0.01"
    weights: Annotated[tuple[Annotated[float, Field(gt=0)], ...] | None, Field(description="L_i per worker for EF21-W (None: plain EF21)")] = None
    seed: Seed = None
    name: str = "ef21"

    def _w(self, comm) -> torch.Tensor | None:
        if self.weights is None:
            return None
        if len(self.weights) != comm.n:
            raise ValueError(f"{len(self.weights)} weights for {comm.n} workers")
        w = torch.tensor(self.weights, dtype=torch.float32)
        return (w / w.sum())[comm.start : comm.start + comm.m].unsqueeze(1)

    def init(self, x0, comm):
        return {
            "x": x0.clone(),
            "g_i": None,
            "g": None,
            "t": 0,
            "rng": rng.states(seed_of(self), comm.workers, "compress"),  # one stream per worker
            "compressor": None,  # what the compressor carries between steps (PowerSGD's Q)
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        w = self._w(comm)
        grad = oracle(x)
        if w is not None:
            grad = grad / (comm.n * w)
        gens = rng.load(state["rng"])
        cstate = state["compressor"]
        d = x.shape[1]
        if state["g_i"] is None:  # t = 0: g_i = ∇f_i(x⁰), uncompressed
            g_i = grad.clone()
            full = comm.gather_payload(Payload({"values": g_i.float()}, d))
            incoming = full.wire["values"]
        else:
            g_i = state["g_i"]
            payload, cstate = self.compressor.compress_with(grad - g_i, gens, cstate)
            c_i = self.compressor.decompress(payload)
            g_i = g_i + c_i
            incoming = self.compressor.decompress(comm.gather_payload(payload))
        if self.weights is None:
            delta = incoming.mean(0, keepdim=True)
        else:  # g = Σ_i w_i g_i over all n workers
            all_w = torch.tensor(self.weights, dtype=torch.float32)
            delta = ((all_w / all_w.sum()).unsqueeze(1) * incoming).sum(0, keepdim=True)
        g = delta if state["g"] is None else state["g"] + delta
        x_new = x - self.lr * g  # the server's step; every worker receives x^{t+1}
        comm.broadcast_payload(Payload({"x": x_new[:1].float()}, d))
        return {"x": x_new, "g_i": g_i, "g": g, "t": state["t"] + 1, "rng": rng.save(gens), "compressor": cstate}
