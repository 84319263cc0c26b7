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

import math
from typing import Annotated, ClassVar, NamedTuple

import torch
from pydantic import Field

from .. import rng
from .base import ALGORITHMS, Momentum, Nesterov, StepSize, WeightDecay, options, seed_of, sgd_direction


class Matrix(NamedTuple):
    off: int  # offset in the flat vector
    numel: int
    rows: int
    cols: int
    r: int  # rank used for it: min(rank, rows, cols)


def _layout(shapes, rank: int, d: int) -> tuple[list[Matrix], list[tuple[int, int]]]:
    """(matrices, dense): the layers compressed as rank-r matrices, and the (offset, numel)
    of those sent uncompressed (vectors, and matrices where (rows + cols)·r ≥ rows·cols)."""
    matrices, dense, off = [], [], 0
    for shape in shapes:
        numel = math.prod(shape)
        rows = shape[0] if len(shape) >= 2 else 1
        cols = numel // max(rows, 1)
        r = min(rank, rows, cols)
        if len(shape) >= 2 and (rows + cols) * r < rows * cols:
            matrices.append(Matrix(off, numel, rows, cols, r))
        else:
            dense.append((off, numel))
        off += numel
    if off != d:
        raise ValueError(f"PowerSGD: the layer shapes cover {off} parameters, the model has {d}")
    return matrices, dense


def _random_q(matrices: list[Matrix], seed: int, step: int = 0) -> torch.Tensor:
    """Every matrix's Q [cols, r] ~ N(0, 1), flattened into one row [1, Σ cols·r]: the same
    on every worker (the "powersgd" stream, keyed by the step for a cold start)."""
    g = rng.generator(seed, step, "powersgd")
    return torch.cat([torch.zeros(0)] + [torch.randn(a.cols * a.r, generator=g) for a in matrices]).unsqueeze(0)


@ALGORITHMS.register(paper="Vogels, Karimireddy, Jaggi, NeurIPS 2019")
@options
class PowerSGD:
    """PowerSGD: rank-r power-iteration compression of each weight matrix, all-reduced, with error feedback."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: StepSize
    rank: Annotated[int, Field(ge=1, description="rank r of the approximation of each matrix")] = 1
    momentum: Momentum = 0.0
    weight_decay: WeightDecay = 0.0
    nesterov: Nesterov = False
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
        return {
            "x": x0.clone(),
            "momentum": None,
            "error": torch.zeros_like(x0) if self.error_feedback else None,
            "q": _random_q(matrices, seed_of(self)).to(x0.device),  # the same Q on every worker
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
        """Δ' of Algorithm 1 [1, d], the new errors e_i [m, d] and the new Q."""
        m, d = grad.shape
        matrices, dense = self._layers(d)
        delta = grad + state["error"] if state["error"] is not None else grad
        if self.warm_start:
            q_all = state["q"]
        else:
            q_all = _random_q(matrices, seed_of(self), state["t"]).to(grad.device)

        def mat(a: Matrix) -> torch.Tensor:  # worker i's M_i [m, rows, cols]
            return delta[:, a.off : a.off + a.numel].view(m, a.rows, a.cols)

        q_of = torch.tensor([0] + [a.cols * a.r for a in matrices]).cumsum(0).tolist()
        p_of = torch.tensor([0] + [a.rows * a.r for a in matrices]).cumsum(0).tolist()
        # one all-reduce: P_i = M_i Q of every matrix, then the uncompressed layers
        first = [(mat(a) @ q_all[:, q_of[k] : q_of[k + 1]].view(1, a.cols, a.r)).reshape(m, -1) for k, a in enumerate(matrices)]
        first += [delta[:, off : off + numel] for off, numel in dense]
        first = comm.all_reduce_mean(torch.cat(first, dim=1))[:1]
        out = torch.empty(1, d, dtype=grad.dtype, device=grad.device)
        pos = p_of[-1]
        for off, numel in dense:
            out[:, off : off + numel] = first[:, pos : pos + numel]
            pos += numel
        # P̂ = orthogonalize(P) (reduced QR); one all-reduce of Q_i = M_iᵀ P̂ for every matrix
        p_hat = [torch.linalg.qr(first[0, p_of[k] : p_of[k + 1]].view(a.rows, a.r)).Q for k, a in enumerate(matrices)]
        if matrices:
            q_i = [(mat(a).transpose(1, 2) @ p_hat[k]).reshape(m, -1) for k, a in enumerate(matrices)]
            q_all = comm.all_reduce_mean(torch.cat(q_i, dim=1))[:1].clone()
        for k, a in enumerate(matrices):
            q = q_all[0, q_of[k] : q_of[k + 1]].view(a.cols, a.r)
            out[:, a.off : a.off + a.numel] = (p_hat[k] @ q.T).reshape(1, -1)
        error = None
        if state["error"] is not None:
            error = delta.sub_(out)  # e_i = Δ_i − Δ'
            for off, numel in dense:
                error[:, off : off + numel] = 0  # sent exactly: no error
        return out, error, q_all
