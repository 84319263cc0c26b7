"""Error feedback: compress what you owe, remember what you did not send.

EF (Seide, Fu, Droppo, Li, Yu, "1-bit stochastic gradient descent", Interspeech 2014;
Karimireddy, Rebjock, Stich, Jaggi, ICML 2019, Algorithm 2, EF-SGD):

    p = e + v;  c = C(p);  e ← p − c

where v is what the worker wants to send this round (γ·g for EF-SGD, a model change for
local SGD). The memory e lives in the algorithm's state (`state["error"]`), so a
checkpoint holds it, as does the compressor's own state (PowerSGD's warm start). EF21's memory (the worker's gradient estimate g_i) is different in
kind and lives in `algorithms.ef21`.
"""

from __future__ import annotations

import torch

from ..rng import Generators
from .base import Compressor, Payload


def error_feedback(
    compressor: Compressor,
    v: torch.Tensor,
    error: torch.Tensor | None,
    generator: Generators,
    state=None,
) -> tuple[Payload, torch.Tensor | None, object]:
    """(payload of C(e + v), new memory e + v − C(e + v), the compressor's new state); with
    error=None, plain C(v). `generator`: the local workers' generators (see `compress.base`);
    `state`: what the compressor carries between calls (`Compressor.compress_with`)."""
    p = v if error is None else v + error
    payload, state = compressor.compress_with(p, generator, state)
    if error is None:
        return payload, None, state
    return payload, p - compressor.decompress(payload), state
