"""PowerSGD compression (Vogels, Karimireddy, Jaggi, NeurIPS 2019, Algorithm 1), per worker.

Each weight matrix M (a layer of the flat vector reshaped to rows × cols) is approximated
with rank r by one step of subspace iteration from the previous step's Q (warm start):

    P = M Q;  P̂ = orthogonalize(P);  Q = Mᵀ P̂;  C(M) = P̂ Qᵀ

and the wire carries P̂ and Q ((rows + cols)·r floats instead of rows·cols). Vectors
(biases) and matrices too small to gain are sent uncompressed, as in the paper. This is
the per-worker compressor; in the paper's all-reduce variant P and Q are averaged across
workers between the two products (linearity), which an algorithm can do with the same
building blocks. Biased; contractive in practice, with error feedback as in the paper.
The warm-start Q lives in the caller's state (`compress_with`), never in the compressor.
"""

from __future__ import annotations

import torch

from ..rng import generator as stream_generator
from .base import Compressor, Payload


class PowerSGD(Compressor):
    """Per-worker rank-r PowerSGD. The warm-start Q is state, not an attribute: `compress`
    is one power step from the initial Q (pure), `compress_with(x, generator, state)` starts
    from the Q the previous call returned and returns the new one (`{"q": [[m, cols, r] per
    low-rank layer]}`), for the algorithm to keep in its checkpointed state."""

    name = "powersgd"

    def __init__(self, shapes: list[tuple[int, ...]], rank: int = 2, seed: int = 0):
        """`shapes`: the layers of the flat vector in order (e.g. `[s for s in Flat.shapes]`);
        layers with two or more dimensions are matrices (rows = first dim). `seed` seeds the
        initial Q (stream "powersgd" of `distsgd.rng`, one per layer, the same on every worker)."""
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.rank = rank
        self.layers = []
        off = 0
        for shape in shapes:
            numel = 1
            for s in shape:
                numel *= s
            rows = shape[0] if len(shape) >= 2 else 1
            cols = numel // rows
            r = min(rank, rows, cols)
            lowrank = len(shape) >= 2 and (rows + cols) * r < rows * cols
            self.layers.append((off, numel, rows, cols, r, lowrank))
            off += numel
        self.d = off
        self.seed = seed

    def initial_q(self, k: int, m: int) -> torch.Tensor:
        """Layer k's starting Q [m, cols, r] ~ N(0, 1), the same for every worker."""
        _off, _numel, _rows, cols, r, _lowrank = self.layers[k]
        q = torch.randn(cols, r, generator=stream_generator(self.seed, k, "powersgd"))
        return q.expand(m, cols, r)

    def compress(self, x, generator=None):
        return self.compress_with(x, generator)[0]

    def compress_with(self, x, generator=None, state=None):
        m, d = x.shape
        if d != self.d:
            raise ValueError(f"PowerSGD built for d={self.d}, got {d}")
        previous = iter(state["q"]) if state is not None else None
        wire, qs = {}, []
        for k, (off, numel, rows, cols, r, lowrank) in enumerate(self.layers):
            block = x[:, off : off + numel]
            if not lowrank:
                wire[f"dense{k}"] = block.float().contiguous()
                continue
            mat = block.reshape(m, rows, cols).float()
            q = next(previous) if previous is not None else self.initial_q(k, m).to(x.device)
            if q.shape != (m, cols, r):
                raise ValueError(f"PowerSGD state: layer {k}'s Q is {tuple(q.shape)}, expected {(m, cols, r)}")
            p, _ = torch.linalg.qr(mat @ q)  # orthonormal columns [m, rows, r]
            q = mat.transpose(1, 2) @ p  # [m, cols, r]
            qs.append(q)
            wire[f"p{k}"] = p.contiguous()
            wire[f"q{k}"] = q.contiguous()
        return Payload(wire, d), {"q": qs}

    def decompress(self, p):
        parts = []
        for k, (_off, _numel, _rows, _cols, _r, lowrank) in enumerate(self.layers):
            if not lowrank:
                parts.append(p.wire[f"dense{k}"])
            else:
                parts.append((p.wire[f"p{k}"] @ p.wire[f"q{k}"].transpose(1, 2)).reshape(p.m, -1))
        return torch.cat(parts, dim=1)
