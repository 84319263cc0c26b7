"""Compressed data-parallel SGD, with or without error feedback.

Each worker compresses its (error-corrected) step. With `mode="server"` a parameter
server averages the decompressed messages and broadcasts the average uncompressed (or
compressed with `downlink`); with `mode="allgather"` every worker receives every
compressed message (a compressed all-reduce for compressors that do not sum, such as
Top-K or sign) and averages them itself:

    plain:  Δ_i = C(γ g_i);                      x ← x − mean_i Δ_i
    EF:     p_i = e_i + γ g_i;  Δ_i = C(p_i);  e_i ← p_i − Δ_i;  x ← x − mean_i Δ_i

EF is error feedback as in Seide et al. 2014 (1-bit SGD) and Karimireddy, Rebjock, Stich,
Jaggi, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019,
Algorithm 2 (EF-SGD), whose default compressor is the scaled sign (‖p‖₁/d)·sign(p); the
distributed form is the EF21 paper's EF baseline. Heavy-ball momentum (μ) acts on the
worker's gradient before compression. Traffic: each worker's payload to the server, the
server's average back to every worker, counted from the tensors built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compress.base import Compressor
from ..compress.feedback import error_feedback
from ..compress.quantize import Identity
from .base import check_hyper, sgd_direction


@dataclass(frozen=True)
class CompressedSGD:
    lr: float
    compressor: Compressor
    error_feedback: bool = True
    momentum: float = 0.0
    weight_decay: float = 0.0
    downlink: Compressor | None = None  # None: the server's average goes back as float32
    mode: str = "server"  # "server" or "allgather"
    seed: int = 0
    name: str = "compressed_sgd"

    def __post_init__(self):
        check_hyper(self.lr, self.momentum, self.weight_decay)
        if self.mode not in ("server", "allgather"):
            raise ValueError("mode must be 'server' or 'allgather'")

    def init(self, x0, comm):
        return {
            "x": x0.clone(),
            "momentum": None,
            "error": torch.zeros_like(x0) if self.error_feedback else None,
            "rng": torch.Generator().manual_seed(self.seed * 7919 + comm.start).get_state(),
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        g = torch.Generator()
        g.set_state(state["rng"])
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, False
        )
        payload, error = error_feedback(self.compressor, self.lr * direction, state["error"], g)
        if self.mode == "allgather":
            update = self.compressor.decompress(comm.all_gather_payload(payload)).mean(0, keepdim=True)
        else:
            at_server = comm.gather_payload(payload)
            avg = self.compressor.decompress(at_server).mean(0, keepdim=True)  # the server's mean
            down = self.downlink or Identity()
            update = down.decompress(comm.broadcast_payload(down.compress(avg, g)))
        return {
            "x": x.sub_(update),
            "momentum": buf,
            "error": error,
            "rng": g.get_state(),
            "t": state["t"] + 1,
        }
