"""PowerSGD compression (Vogels, Karimireddy, Jaggi, NeurIPS 2019, Algorithm 1), per worker.

Each weight matrix M (a layer of the flat vector reshaped to rows × cols) is approximated
with rank r by one step of subspace iteration from the previous step's Q (warm start):

    P = M Q;  P̂ = orthogonalize(P);  Q = Mᵀ P̂;  C(M) = P̂ Qᵀ

and the wire carries P̂ and Q ((rows + cols)·r floats instead of rows·cols). Vectors
(biases) and matrices too small to gain are sent uncompressed, as in the paper. This is
the per-worker compressor; in the paper's all-reduce variant P and Q are averaged across
workers between the two products (linearity), which an algorithm can do with the same
building blocks. Biased; contractive in practice, with error feedback as in the paper.
"""

from __future__ import annotations

import torch

from .base import Compressor, Payload


class PowerSGD(Compressor):
    name = "powersgd"

    def __init__(self, shapes: list[tuple[int, ...]], rank: int = 2, seed: int = 0):
        """`shapes`: the layers of the flat vector in order (e.g. `[s for s in Flat.shapes]`);
        layers with two or more dimensions are matrices (rows = first dim)."""
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
        self.q: dict[int, torch.Tensor] = {}  # warm start per layer [m, cols, r]

    def compress(self, x, generator=None):
        m, d = x.shape
        if d != self.d:
            raise ValueError(f"PowerSGD built for d={self.d}, got {d}")
        wire = {}
        for k, (off, numel, rows, cols, r, lowrank) in enumerate(self.layers):
            block = x[:, off : off + numel]
            if not lowrank:
                wire[f"dense{k}"] = block.float().contiguous()
                continue
            mat = block.reshape(m, rows, cols).float()
            q = self.q.get(k)
            if q is None or q.shape[0] != m:
                g = torch.Generator().manual_seed(self.seed + k)
                q = torch.randn(m, cols, r, generator=g)
            p, _ = torch.linalg.qr(mat @ q)  # orthonormal columns [m, rows, r]
            q = mat.transpose(1, 2) @ p  # [m, cols, r]
            self.q[k] = q
            wire[f"p{k}"] = p.contiguous()
            wire[f"q{k}"] = q.contiguous()
        return Payload(wire, d)

    def decompress(self, p):
        parts = []
        for k, (_off, _numel, _rows, _cols, _r, lowrank) in enumerate(self.layers):
            if not lowrank:
                parts.append(p.wire[f"dense{k}"])
            else:
                parts.append((p.wire[f"p{k}"] @ p.wire[f"q{k}"].transpose(1, 2)).reshape(p.m, -1))
        return torch.cat(parts, dim=1)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.q.items()}

    def load_state_dict(self, s: dict) -> None:
        self.q = {k: v.clone() for k, v in s.items()}
