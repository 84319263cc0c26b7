"""All n workers in one process: every collective is one vectorized tensor operation."""

from __future__ import annotations

import warnings

import torch

from ..topology import Topology
from .base import CommunicatorBase, check_pairs, payload_bytes
from .network import NetworkModel

# Above this density a dense matmul beats CSR for the gossip product W·X.
_DENSE_ABOVE = 0.25


class GossipOperator:
    """W as a float32 operator on stacked rows: dense when W is dense, CSR otherwise."""

    def __init__(self, mixing: torch.Tensor):
        w = mixing.to(torch.float32)
        density = float((w != 0).float().mean())
        self.dense = density > _DENSE_ABOVE
        if self.dense:
            self.w = w
        else:
            with warnings.catch_warnings():  # CSR is "beta" in torch; we rely on mm only
                warnings.simplefilter("ignore", UserWarning)
                self.w = w.to_sparse_csr()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.w.device != x.device:  # workers on an accelerator: move W there once
            self.w = self.w.to(x.device)
        flat = x.reshape(x.shape[0], -1)
        out = self.w @ flat if self.dense else torch.sparse.mm(self.w, flat)
        return out.reshape(x.shape)


class SimulatedCommunicator(CommunicatorBase):
    """m = n: this process holds every worker."""

    def __init__(self, n: int, network: NetworkModel | None = None):
        super().__init__(n, n, 0, network)
        self._gossip_ops: dict[int, tuple[Topology, GossipOperator]] = {}

    def _operator(self, topology: Topology) -> GossipOperator:
        key = id(topology)
        hit = self._gossip_ops.get(key)
        if hit is None or hit[0] is not topology:
            hit = (topology, GossipOperator(topology.mixing))
            self._gossip_ops[key] = hit
        return hit[1]

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Every row becomes the mean over workers (a read-only broadcast view)."""
        self._record_all_reduce(payload_bytes(x))
        return x.mean(0, keepdim=True).expand_as(x)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        self._record_all_gather(payload_bytes(x))
        return x

    def gossip(self, x: torch.Tensor, topology: Topology) -> torch.Tensor:
        """X ← W X: worker i gets Σ_j W_ij x_j."""
        if topology.n != self.n:
            raise ValueError(f"topology has {topology.n} nodes, communicator {self.n} workers")
        self._record_gossip(payload_bytes(x), topology)
        return self._operator(topology)(x)

    def _mix_payload(self, p, topology, decompress):
        return self._operator(topology)(decompress(p))

    def gossip_rows(self, x: torch.Tensor, topology: Topology) -> torch.Tensor:
        """Every worker sends its row to its neighbours (gossip traffic) and keeps the rows
        it receives apart, for a receiver that aggregates them robustly: returns all rows."""
        if topology.n != self.n:
            raise ValueError(f"topology has {topology.n} nodes, communicator {self.n} workers")
        self._record_gossip(payload_bytes(x), topology)
        return x

    def exchange(self, x: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """Paired workers swap rows; unpaired workers keep theirs."""
        check_pairs(pairs, self.n)
        self._record_exchange(payload_bytes(x), pairs)
        perm = torch.arange(self.n)
        for i, j in pairs:
            perm[i], perm[j] = j, i
        return x[perm]

    def gather_to_server(self, x: torch.Tensor) -> torch.Tensor:
        self._record_gather(payload_bytes(x))
        return x

    def broadcast_from_server(self, v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        self._record_broadcast(v.numel() * v.element_size())
        return v.unsqueeze(0).expand(self.m, *v.shape)

    def _gather_rows(self, p):
        return p

    def _client_rows(self, values, clients):
        return values

    def _broadcast_rows(self, p):
        return p

    def average(self, x: torch.Tensor) -> torch.Tensor:
        """x̄ for evaluation and metrics only: no traffic is recorded."""
        return x.mean(0)

    def consensus_distance(self, x: torch.Tensor) -> float:
        """mean_i ‖x_i − x̄‖² (no traffic: a metric, not a message)."""
        x = x.double()  # identical rows give exactly 0 (n·v/n is exact in float64)
        return float((x - x.mean(0)).pow(2).sum(1).mean())
