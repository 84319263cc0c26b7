"""PowerSGD: rank-r all-reduce compression of every weight matrix, with error feedback.

Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for
Distributed Optimization", NeurIPS 2019, Algorithm 1 (compression, linear so it all-reduces)
inside Algorithm 2 (error feedback and momentum). Each layer with two or more dimensions is a
matrix M_i (rows = first dimension, as DDP's PowerSGD hook reshapes it) of worker i's
error-corrected gradient Δ_i = g_i + e_i; with the previous step's Q (warm start):

    P_i = M_i Q;        P = (1/n) Σ_i P_i          (all-reduce)
    P̂ = orthogonalize(P)
    Q_i = M_iᵀ P̂;       Q = (1/n) Σ_i Q_i          (all-reduce)
    Δ' = P̂ Qᵀ  (= (1/n) Σ_i P̂P̂ᵀ M_i);   e_i ← Δ_i − Δ'

Vectors (biases, norms) and matrices too small to gain ((rows + cols)·r ≥ rows·cols) are
all-reduced uncompressed, with no error, in the same message as P. The step on Δ' is
torch.optim.SGD's (momentum μ, weight decay λ after aggregation, optional Nesterov), which
is what DDP's PowerSGD communication hook feeds; `start_iter` steps of exact all-reduce
come first, as the hook's `start_powerSGD_iter`. Traffic per step: two all-reduces of
Σ (rows + cols)·r + dense floats, against d for AllReduce-SGD. The warm-start Q, the
momentum and the errors live in the state (so they are checkpointed).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field

from .base import ALGORITHMS, options, seed_of, sgd_direction


def _layout(shapes, rank: int, d: int):
    """(matrices, dense): matrices as (offset, numel, rows, cols, r); dense as (offset, numel)."""
    matrices, dense, off = [], [], 0
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= s
        rows = shape[0] if len(shape) >= 2 else 1
        cols = numel // max(rows, 1)
        r = min(rank, rows, cols)
        if len(shape) >= 2 and (rows + cols) * r < rows * cols:
            matrices.append((off, numel, rows, cols, r))
        else:
            dense.append((off, numel))
        off += numel
    if off != d:
        raise ValueError(f"PowerSGD: the layer shapes cover {off} parameters, the model has {d}")
    return matrices, dense


@ALGORITHMS.register(paper="Vogels, Karimireddy, Jaggi, NeurIPS 2019")
@options
class PowerSGD:
    """PowerSGD: rank-r power-iteration compression of each weight matrix, all-reduced, with error feedback."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: Annotated[float, Field(gt=0, description="step size γ")]
    rank: Annotated[int, Field(ge=1, description="rank r of the approximation of each matrix")] = 1
    momentum: Annotated[float, Field(ge=0, lt=1, description="heavy-ball momentum μ (torch.optim.SGD form)")] = 0.0
    weight_decay: Annotated[float, Field(ge=0, description="L2 weight decay λ")] = 0.0
    nesterov: Annotated[bool, Field(description="Nesterov momentum")] = False
    error_feedback: Annotated[bool, Field(description="keep each worker's compression error e_i")] = True
    warm_start: Annotated[bool, Field(description="start each power iteration from the previous Q")] = True
    start_iter: Annotated[int, Field(ge=0, description="steps of exact all-reduce before compressing")] = 0
    seed: Annotated[int | None, Field(ge=0, description="seed of the initial Q (default: the run's)")] = None
    shapes: Annotated[tuple[tuple[int, ...], ...] | None, Field(description="layer shapes (set by the engine)")] = None
    name: str = "powersgd"

    def _layers(self, d: int):
        if self.shapes is None:
            raise ValueError("PowerSGD needs the model's layer shapes: run it through distsgd.simulate, "
                             "train or DistributedOptimizer (they bind them), or pass shapes=")
        return _layout(self.shapes, self.rank, d)

    def init(self, x0, comm):
        matrices, _ = self._layers(x0.shape[1])
        g = torch.Generator().manual_seed(seed_of(self))  # the same Q on every worker
        qs = [torch.randn(cols * r, generator=g) for (_, _, _, cols, r) in matrices]
        q = torch.cat(qs).unsqueeze(0) if qs else x0.new_zeros(1, 0)
        return {
            "x": x0.clone(),
            "momentum": None,
            "error": torch.zeros_like(x0) if self.error_feedback else None,
            "q": q.to(x0.device),
            "t": 0,
        }

    def step(self, state, oracle, comm):
        x = state["x"]
        grad = oracle(x)
        t = state["t"]
        if t < self.start_iter:
            g = comm.all_reduce_mean(grad)[:1]
            error, q = state["error"], state["q"]
        else:
            g, error, q = self._compress_all_reduce(grad, state, comm)
        direction, buf = sgd_direction(g, x, state["momentum"], self.momentum, self.weight_decay, self.nesterov)
        return {"x": x.sub_(direction, alpha=self.lr), "momentum": buf, "error": error, "q": q, "t": t + 1}

    def _compress_all_reduce(self, grad, state, comm):
        m, d = grad.shape
        matrices, dense = self._layers(d)
        delta = grad + state["error"] if state["error"] is not None else grad
        q_all = state["q"] if self.warm_start else self._fresh_q(state, matrices)
        # P_i = M_i Q for every matrix, and the uncompressed layers, in one all-reduce
        ps, qs, pos = [], [], 0
        for off, numel, rows, cols, r in matrices:
            mat = delta[:, off : off + numel].view(m, rows, cols)
            q = q_all[:, pos : pos + cols * r].view(1, cols, r)
            pos += cols * r
            ps.append((mat @ q).reshape(m, -1))
        first = torch.cat(ps + [delta[:, off : off + numel] for off, numel in dense], dim=1)
        first = comm.all_reduce_mean(first)[:1]
        out = torch.empty(1, d, dtype=grad.dtype, device=grad.device)
        pos = 0
        p_hats = []
        for off, numel, rows, cols, r in matrices:
            p = first[:, pos : pos + rows * r].view(rows, r)
            pos += rows * r
            p_hats.append(torch.linalg.qr(p).Q)  # orthogonalize (reduced QR)
        for off, numel in dense:
            out[:, off : off + numel] = first[:, pos : pos + numel]
            pos += numel
        # Q_i = M_iᵀ P̂, one all-reduce for all matrices
        new_q = []
        for (off, numel, rows, cols, r), p_hat in zip(matrices, p_hats, strict=True):
            mat = delta[:, off : off + numel].view(m, rows, cols)
            new_q.append((mat.transpose(1, 2) @ p_hat).reshape(m, -1))
        if new_q:
            q_all = comm.all_reduce_mean(torch.cat(new_q, dim=1))[:1].clone()
        pos = 0
        for (off, numel, rows, cols, r), p_hat in zip(matrices, p_hats, strict=True):
            q = q_all[:, pos : pos + cols * r].view(cols, r)
            pos += cols * r
            out[:, off : off + numel] = (p_hat @ q.T).reshape(1, -1)
        error = None
        if state["error"] is not None:
            error = delta.sub_(out)  # e_i = Δ_i − Δ' (zero on the uncompressed layers)
            for off, numel in dense:
                error[:, off : off + numel] = 0
        return out, error, q_all

    def _fresh_q(self, state, matrices):
        g = torch.Generator().manual_seed(seed_of(self) * 1_000_003 + state["t"])
        qs = [torch.randn(cols * r, generator=g) for (_, _, _, cols, r) in matrices]
        return torch.cat(qs).unsqueeze(0).to(state["q"].device) if qs else state["q"]
