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

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from .. import rng
from ..compress.feedback import error_feedback
from ..compress.quantize import Identity
from .base import (
    ALGORITHMS,
    CompressorOption,
    Momentum,
    Seed,
    StepSize,
    WeightDecay,
    options,
    seed_of,
    sgd_direction,
)


@ALGORITHMS.register(paper="Seide et al. 2014; Karimireddy et al., ICML 2019 (EF-SGD)")
@options
class CompressedSGD:
    """Compressed data-parallel SGD with error feedback (EF-SGD)."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: StepSize
    compressor: Annotated[CompressorOption, Field(description="compressor C of each worker's step")] = "scaled_sign"
    error_feedback: Annotated[bool, Field(description="keep the compression error and add it back (EF)")] = True
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    downlink: Annotated[CompressorOption | None, Field(description="compressor of the server's average (None: float32)")] = None
    mode: Annotated[Literal["server", "allgather"], Field(description="server: gather to a server and broadcast; allgather: every worker gets every message")] = "server"
    seed: Seed = None
    name: str = "compressed_sgd"

    def init(self, x0, comm):
        return {
            "x": x0.clone(),
            "momentum": None,
            "error": torch.zeros_like(x0) if self.error_feedback else None,
            "rng": rng.states(seed_of(self), comm.workers, "compress"),  # one stream per worker
            "rng_server": rng.states(seed_of(self), [rng.SERVER], "compress"),  # the downlink's
            "compressor": None,  # what each compressor carries between steps (PowerSGD's Q)
            "downlink": None,
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        gens = rng.load(state["rng"])
        direction, buf = sgd_direction(
            oracle(x), x, state["momentum"], self.momentum, self.weight_decay, False
        )
        payload, error, cstate = error_feedback(self.compressor, self.lr * direction, state["error"], gens, state["compressor"])
        rng_server, dstate = state["rng_server"], state["downlink"]
        if self.mode == "allgather":
            update = self.compressor.decompress(comm.all_gather_payload(payload)).mean(0, keepdim=True)
        else:
            at_server = comm.gather_payload(payload)  # every process sees the server's rows ...
            avg = self.compressor.decompress(at_server).mean(0, keepdim=True)  # ... and its mean
            down = self.downlink or Identity()
            server = rng.load(rng_server)  # the server's stream: every process draws it alike
            message, dstate = down.compress_with(avg, server, dstate)
            update = down.decompress(comm.broadcast_payload(message))
            rng_server = rng.save(server)
        return {
            "x": x.sub_(update),
            "momentum": buf,
            "error": error,
            "rng": rng.save(gens),
            "rng_server": rng_server,
            "compressor": cstate,
            "downlink": dstate,
            "t": state["t"] + 1,
        }
