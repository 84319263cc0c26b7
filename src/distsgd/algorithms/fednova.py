"""FedNova: normalized averaging for clients that do different amounts of local work.

Wang, Liu, Liang, Joshi, Poor, "Tackling the objective inconsistency problem in
heterogeneous federated optimization", NeurIPS 2020 (§4, eq. (7)–(8)). With τ_k local
steps per client, FedAvg's Σ_k p_k Δ_k weights client k's gradients by τ_k and so
minimizes the mismatched objective Σ_k (p_k τ_k / Σ_j p_j τ_j) F_k. FedNova divides each
update by ‖a_k‖₁, the total weight its local optimizer gave its gradients (τ_k for SGD,
Σ_{s=1}^{τ_k} (1 − ρ^s)/(1 − ρ) with heavy-ball momentum ρ), and rescales by the effective
number of steps:

    τ_eff = Σ_k ω_k ‖a_k‖₁ / Σ_k ω_k,     Δ̄ = τ_eff · Σ_k ω_k Δ_k / ‖a_k‖₁

then steps the server optimizer on Δ̄ as FedAvg does (the paper's `gmf` is server_momentum).
With full participation ω_k = p_k and Σ p_k = 1 this is the paper's update; the division
by Σ ω_k keeps τ_eff a mean under partial participation, so that with equal τ_k FedNova
is FedAvg exactly. Everything else (sampling, local steps, deadlines) is FedAvg's.
"""

from __future__ import annotations

from .base import ALGORITHMS, options
from .fedavg import FedAvg, momentum_norm


@ALGORITHMS.register(paper="Wang et al., NeurIPS 2020", hidden=("client_sizes", "batch_size"))
@options
class FedNova(FedAvg):
    """FedNova: FedAvg whose updates are normalized by each client's local work (heterogeneous τ_k)."""

    name: str = "fednova"

    def aggregate(self, state, delta, omega, clients, steps):
        a = momentum_norm(steps, self.momentum)  # ‖a_k‖₁
        tau_eff = float((omega * a).sum() / omega.sum())
        coef = (omega / a * tau_eff).to(delta.dtype)
        return (coef.unsqueeze(1) * delta).sum(0, keepdim=True)
