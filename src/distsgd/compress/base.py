"""Compressors with real wire formats.

A compressor maps the stacked vectors x[m, d] of the m local workers to a `Payload`:
the tensors that would really be sent (packed bits, indices, values, seeds, norms), one
row per worker, and back. `Payload.nbytes_per_worker` is the exact size of one worker's
message, computed from those tensors, never from a formula; the communicator counts it.

Randomness: `compress(x, generator)` takes one generator per local worker (a list, row i
drawn from generator i: each worker's own stream of `distsgd.rng`, so any split of the
workers over processes draws the same numbers), one generator for every row, or None
(torch's global one). State: a compressor object holds options only; one that carries
something between calls (PowerSGD's warm-start Q) takes it in and gives it back through
`compress_with(x, generator, state) -> (payload, state)`, and the algorithm keeps it in
its own (checkpointed) state.

Laws each compressor states in its docstring and the tests check:
- contractive (biased) C: ‖C(x) − x‖² ≤ (1 − δ)‖x‖² for some δ ∈ (0, 1];
- unbiased C: E[C(x)] = x with E‖C(x) − x‖² ≤ ω‖x‖².
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..rng import Generators


@dataclass
class Payload:
    """What one compressed message of each local worker consists of on the wire."""

    wire: dict[str, torch.Tensor]  # every tensor has the local workers as first dimension
    d: int  # length of each decompressed vector (known to both sides, not sent)
    meta: dict = field(default_factory=dict)  # shared parameters (k, levels): not sent

    @property
    def m(self) -> int:
        return next(iter(self.wire.values())).shape[0]

    @property
    def nbytes_per_worker(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.wire.values()) if self.m else 0


class Compressor:
    """compress(x[m, d], generator) -> Payload; decompress(Payload) -> [m, d] (float32).

    `generator`: a list of m generators (row i from generator i), one generator, or None."""

    name = "compressor"
    unbiased = False

    def _key(self) -> tuple:
        return (type(self).__name__, tuple(sorted((k, repr(v)) for k, v in vars(self).items())))

    def __eq__(self, other) -> bool:  # same kind, same options
        return isinstance(other, Compressor) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def compress(self, x: torch.Tensor, generator: Generators = None) -> Payload:
        raise NotImplementedError

    def compress_with(self, x: torch.Tensor, generator: Generators = None, state=None) -> tuple[Payload, object]:
        """`compress` from the state the previous call returned (None: a fresh start), and the
        new state, for the caller to keep (tensors, lists and dicts only, so checkpoints hold
        it). Stateless compressors return the state they were given."""
        return self.compress(x, generator), state

    def decompress(self, p: Payload) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return self.decompress(self.compress(x, generator))


# ---- bit packing ------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [m, d] -> uint8 [m, ceil(d/8)], most significant bit first (zero padded)."""
    if bits.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits.contiguous().numpy(), axis=-1))
    m, d = bits.shape
    pad = (-d) % 8
    b = torch.nn.functional.pad(bits.to(torch.uint8), (0, pad)).view(m, -1, 8)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    return (b << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, d: int) -> torch.Tensor:
    """uint8 [m, ceil(d/8)] -> uint8 {0, 1} [m, d]."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.contiguous().numpy(), axis=-1, count=d))
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(packed.shape[0], -1)[:, :d]


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values < 2**bits [m, d] -> uint8 [m, ceil(d·bits/8)] for bits in 1, 2, 4, 8."""
    if bits == 8:
        return values.to(torch.uint8)
    if bits == 1:
        return pack_bits(values.bool())
    per = 8 // bits
    m, d = values.shape
    pad = (-d) % per
    v = torch.nn.functional.pad(values.to(torch.uint8), (0, pad)).view(m, -1, per)
    shifts = torch.arange(per - 1, -1, -1, dtype=torch.uint8, device=values.device) * bits
    return (v << shifts).sum(-1, dtype=torch.uint8)


def unpack_uint(packed: torch.Tensor, bits: int, d: int) -> torch.Tensor:
    if bits == 8:
        return packed
    if bits == 1:
        return unpack_bits(packed, d)
    per = 8 // bits
    shifts = torch.arange(per - 1, -1, -1, dtype=torch.uint8, device=packed.device) * bits
    mask = (1 << bits) - 1
    return ((packed.unsqueeze(-1) >> shifts) & mask).view(packed.shape[0], -1)[:, :d]


def bits_for(levels: int) -> int:
    """The smallest of 1, 2, 4, 8 bits that holds the values 0..levels."""
    for b in (1, 2, 4, 8):
        if levels < (1 << b):
            return b
    raise ValueError(f"at most 255 levels, got {levels}")
