"""FedAWARE: server-side gradient-diversity maximization with stored client updates.

Zeng, Xu, Pan, Wang, Tang, "FedAWARE: Maximizing gradient diversity for heterogeneous
federated server-side optimization", arXiv 2310.02702 (v3; v1's title: "Tackling hybrid
heterogeneity on federated optimization via gradient diversity maximization"), Algorithm
1, as its authors' code runs it. The server keeps one momentum of updates per client,
m_k (k = 1..N, initially 0). In round t, with the clients R_t that report:

    d_k = w_t − w_k                                   (client k: E epochs of plain SGD)
    m_k ← (1 − α) m_k + α d_k                          for k ∈ R_t
    exploring (some client has never reported):  e = Σ_{R_t} p_k d_k / Σ_{R_t} p_k
    afterwards:  u_k = m_k / ‖m_k‖  (a zero norm counts as 1),
                 λ = argmin_{λ ∈ Δ_N} ‖Σ_k λ_k u_k‖²     (Frank–Wolfe, ≤ 1000 iterations,
                                                         stop when Σ|Δλ| < 1e-5)
                 e = Σ_k λ_k u_k
    optional projection:  e ← (⟨d̄, e⟩ / ⟨e, e⟩) e,  d̄ = Σ_k p_k m_k
    w_{t+1} = w_t − η_g e                              (η_g = server_lr, 1 in the paper)

The minimum-norm element of the normalized stored updates is the direction on which the
clients' updates agree most (it maximizes their gradient diversity); every client takes
part through its stored m_k, including the ones not sampled this round. Sampling: a
shuffled list of all clients is consumed K at a time until every client has reported
once (exploration; clients that drop out stay on the list), then K uniformly without
replacement; `startup` trains all N in round 0. The authors' code removes the explored
clients with a set difference, which reorders the rest; the list here keeps its order.
Under torch.distributed the server is replicated: every process holds all m_k.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from .base import ALGORITHMS, options
from .fedavg import FedAvg

FW_MAX_ITER = 1000
FW_STOP = 1e-5


def _min_norm_from2(v1v1, v1v2, v2v2):
    """argmin_γ ‖γ v₁ + (1 − γ) v₂‖² from the inner products (elementwise on arrays), with
    the clamps of the multi-objective solver (γ = 0.999 or 0.001 at the ends): (γ, cost)."""
    v1v1, v1v2, v2v2 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (v1v1, v1v2, v2v2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = -(v1v2 - v2v2) / np.maximum(v1v1 + v2v2 - 2 * v1v2, 1e-300)
    cost = v2v2 + gamma * (v1v2 - v2v2)
    right = v1v2 >= v1v1
    left = ~right & (v1v2 >= v2v2)
    gamma = np.where(right, 0.999, np.where(left, 0.001, gamma))
    cost = np.where(right, v1v1, np.where(left, v2v2, cost))
    return gamma, cost


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """λ ∈ the simplex minimizing λᵀ G λ = ‖Σ λ_k u_k‖² for the Gram matrix G = U Uᵀ [N, N]:
    the best pair first, then Frank–Wolfe with exact line search (Sener & Koltun, NeurIPS
    2018, Algorithm 2, as FedAWARE's solver runs it). The loop runs in NumPy (float64):
    up to 1000 small iterations, where torch's per-call overhead would dominate."""
    g = gram.double().cpu().numpy()
    n = g.shape[0]
    sol = np.zeros(n)
    if n == 1:
        sol[0] = 1.0
        return torch.from_numpy(sol)
    diag = np.diag(g)
    gamma, cost = _min_norm_from2(diag[:, None], g, diag[None, :])
    cost = np.where(np.triu(np.ones((n, n), dtype=bool), k=1), cost, np.inf)
    i, j = divmod(int(np.argmin(cost)), n)
    sol[i], sol[j] = gamma[i, j], 1 - gamma[i, j]
    if n < 3:
        return torch.from_numpy(sol)
    for _ in range(FW_MAX_ITER):
        gs = g @ sol
        t = int(np.argmin(gs))
        nc, _ = _min_norm_from2(sol @ gs, gs[t], g[t, t])
        new = float(nc) * sol
        new[t] += 1 - float(nc)
        change = float(np.abs(new - sol).sum())
        sol = new
        if change < FW_STOP:
            break
    return torch.from_numpy(sol)


@ALGORITHMS.register(paper="Zeng et al., arXiv 2310.02702", hidden=("client_sizes", "batch_size"))
@options
class FedAWARE(FedAvg):
    """FedAWARE: the server steps along the min-norm combination of all clients' stored update momenta."""

    alpha: Annotated[float, Field(gt=0, le=1, description="α, the momentum of the stored client updates")] = 0.5
    projection: Annotated[bool, Field(description="rescale e to its projection of d̄ = Σ p_k m_k")] = False
    startup: Annotated[bool, Field(description="train all N clients in round 0")] = False
    name: str = "fedaware"

    def bind(self, n: int):
        if self.sampling != "uniform" or self.replacement:
            raise ValueError("fedaware samples uniformly without replacement (after visiting every client once)")
        return super().bind(n)

    def init(self, x0, comm):
        state = super().init(x0, comm)
        gen = torch.Generator()
        gen.set_state(state["rng"])
        state["explore"] = torch.randperm(comm.n, generator=gen)  # clients never heard from, in visiting order
        state["rng"] = gen.get_state()
        state["memory"] = torch.zeros(comm.n, x0.shape[1], dtype=x0.dtype)
        return state

    def sample(self, state, gen, n):
        explore = state["explore"]
        p = self.p(n)
        if len(explore):
            k = n if self.startup and state["t"] == 0 else self.clients_per_round
            clients = explore[:k].sort().values
            w = p[clients] / p[clients].sum()
            return clients, w
        return super().sample(state, gen, n)

    def aggregate(self, state, delta, omega, clients, steps):
        memory = state["memory"]
        memory[clients] = (1 - self.alpha) * memory[clients] + self.alpha * delta
        p = self.p(memory.shape[0])
        explore = state["explore"]
        if len(explore):
            state["explore"] = explore[~torch.isin(explore, clients)]
            if len(state["explore"]):  # still exploring: the data-size-weighted mean of this round
                pk = (p[clients] / p[clients].sum()).to(delta.dtype)
                return (pk.unsqueeze(1) * delta).sum(0, keepdim=True)
        norms = memory.norm(dim=1)
        u = memory / torch.where(norms == 0, torch.ones_like(norms), norms).unsqueeze(1)
        lam = min_norm_weights(u.double() @ u.double().T)
        state["lambda_density"] = int((lam > 0).sum())
        e = (lam.to(u.dtype) @ u).unsqueeze(0)
        if self.projection:
            dbar = (p.to(u.dtype) @ memory).unsqueeze(0)
            ee = float((e * e).sum())
            if ee > 0:
                e = e * (float((dbar * e).sum()) / ee)
        return e

    def metrics(self, state) -> dict:
        out = super().metrics(state)
        out["exploring"] = bool(len(state["explore"]))
        if "lambda_density" in state:
            out["lambda_density"] = state["lambda_density"]
        return out
