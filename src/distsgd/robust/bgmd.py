"""BGMD: block coordinate geometric median descent.

Acharya, Hashemi, Jain, Sanghavi, Dhillon, Topcu, "Robust Training in High Dimensions via
Block Coordinate Geometric Median Descent", AISTATS 2022, Algorithm 1. Per step, with the
n received gradients as the rows of G ∈ R^{n×d}, k = ⌈β·d⌉ and memory m̂ ∈ R^d (m̂₀ = 0):

    G_i ← G_i + m̂                                  memory augmentation (every row)
    s_j = ‖G[:, j]‖²                                column norms
    I_k = k columns drawn ∝ s_j without replacement (the paper: "active norm sampling")
          or the k largest s_j (`selection="topk"`, what the authors' code does)
    Δ = G restricted to the columns I_k
    m̂ ← (1/n) Σ_i (G_i − Δ_i)                        the mean of what was left out
    g̃ = GM(Δ[:, I_k]) on I_k, 0 elsewhere;           x ← x − γ g̃

The paper writes the augmentation as γ·G_i + m̂ with the memory in step units; here the
memory is in gradient units (m̂/γ), which is the same update for a constant γ and lets the
aggregator stay independent of the learning rate. Sampling without replacement ∝ s_j uses
the Gumbel-top-k trick (Efraimidis & Spirakis 2006): the k largest log s_j + Gumbel noise.

The memory is a plain mean of every row's left-out coordinates, so it is not robust: a
Byzantine row of unbounded size (a scaled flip, large Gaussian noise) enters it at 1/n
weight and reaches the model when those coordinates are next selected. Our breakdown
table shows exactly that; `memory=False` (the authors' configuration file leaves memory
off by default) removes the channel at the price of dropping the left-out mass.

Cost: two passes over G for the column norms (computed from column sums and sums of
squares, without materialising G + m̂) plus a geometric median on n × k instead of n × d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .aggregators import Aggregator, _check_f, _need, geometric_median


@dataclass(frozen=True)
class BGMD(Aggregator):
    f: int = 0
    beta: float = 0.1  # block fraction: k = ⌈β·d⌉ coordinates per step (paper: β ≤ 0.15)
    selection: str = "sample"  # "sample" ∝ column norm² (the paper) or "topk" (the authors' code)
    memory: bool = True  # carry the left-out mass (the paper); False: drop it (the code's default config)
    seed: int = 0
    nu: float = 1e-6
    ftol: float = 1e-6
    max_iter: int = 100
    name: str = "bgmd"

    def check(self, n):
        _check_f(self.f)
        _need(2 * self.f < n, "bgmd", n, self.f, "f < n/2")
        if not 0 < self.beta <= 1:
            raise ValueError(f"bgmd needs 0 < beta <= 1, got {self.beta}")
        if self.selection not in ("sample", "topk"):
            raise ValueError(f"bgmd selection must be 'sample' or 'topk', got {self.selection!r}")

    def init(self, d):
        return {"memory": torch.zeros(d), "t": 0}

    def block(self, scores: torch.Tensor, k: int, t: int) -> torch.Tensor:
        """The k coordinates of this step, from the column norms² `scores`."""
        if self.selection == "topk" or k == scores.numel():
            return scores.topk(k, sorted=False).indices
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        u = torch.rand(scores.shape, generator=gen).clamp_(min=1e-30)
        keys = scores.log().sub_(u.log_().neg_().log_())  # log s_j + Gumbel(0, 1)
        return keys.topk(k, sorted=False).indices

    def __call__(self, g, state):
        n, d = g.shape
        k = math.ceil(self.beta * d)
        m = state["memory"]
        colsum = g.sum(0)
        # ‖G[:, j] + m_j‖² = Σ_i G_ij² + 2 m_j Σ_i G_ij + n m_j²
        scores = torch.einsum("ij,ij->j", g, g).add_(m * (2 * colsum + n * m))
        idx = self.block(scores, k, state["t"])
        delta = g.index_select(1, idx).add_(m[idx])
        if self.memory:
            memory = colsum.div_(n).add_(m)  # mean_i (G_i + m̂) ...
            memory[idx] = 0  # ... over the coordinates left out
        else:
            memory = m
        v = torch.zeros(d, dtype=g.dtype)
        v[idx] = geometric_median(delta, nu=self.nu, ftol=self.ftol, max_iter=self.max_iter)[0]
        return v, {"memory": memory, "t": state["t"] + 1}
