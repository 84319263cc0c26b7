"""torch.distributed communicator: each process holds a contiguous slice of the n workers.

Process r of a world of size P holds workers [r·m, (r+1)·m) with m = n / P. Collectives
run over the process group (gloo on CPU, NCCL on GPU); gossip sends only the rows a
neighbouring process needs, point to point. Traffic is recorded with the same formulas as
the simulated communicator (`comm.base`), for all n workers on every process; `wire`
counts what this process's calls actually moved (`comm.base.Wire`).

A parameter server is realized by replication: `gather_payload` all-gathers every worker's
message to every process, each computes the server's step from the same rows in the same
order (so the same result), and `broadcast_payload` then moves nothing. An all-gather is
one collective with the same per-process bottleneck, (P−1)·b each way, as a gather to one
rank followed by a broadcast of a message of the same size, and the server's compute
overlaps on all ranks instead of serializing on one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import UserError
from ..topology import Topology
from .base import CommunicatorBase, Wire, check_pairs, payload_bytes
from .network import NetworkModel


class _GossipPlan:
    """Which rows this process sends to and receives from every other process."""

    def __init__(self, topology: Topology, rank: int, world: int, m: int):
        w = topology.mixing
        lo, hi = rank * m, (rank + 1) * m
        rows = w[lo:hi]
        self.cols = torch.nonzero(rows.abs().sum(0) > 0).flatten()  # needed workers
        self.weights = rows[:, self.cols].to(torch.float32)  # [m, |cols|]
        self.local_pos = [k for k, j in enumerate(self.cols.tolist()) if lo <= j < hi]
        self.local_rows = [j - lo for j in self.cols.tolist() if lo <= j < hi]
        self.recv: dict[int, tuple[list[int], list[int]]] = {}  # peer -> (positions, -)
        self.send: dict[int, list[int]] = {}
        for q in range(world):
            if q == rank:
                continue
            qlo, qhi = q * m, (q + 1) * m
            pos = [k for k, j in enumerate(self.cols.tolist()) if qlo <= j < qhi]
            if pos:
                self.recv[q] = pos
            # rows of ours that q's workers mix with (W symmetric: the same support)
            need = torch.nonzero(w[qlo:qhi, lo:hi].abs().sum(0) > 0).flatten().tolist()
            if need:
                self.send[q] = need


class TorchDistCommunicator(CommunicatorBase):
    def __init__(self, n: int, network: NetworkModel | None = None, group=None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized (run under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if n % self.world:
            raise UserError(f"workers.n={n} is not divisible by the world size {self.world}")
        m = n // self.world
        super().__init__(n, m, self.rank * m, network)
        self._plans: dict[int, tuple[Topology, _GossipPlan]] = {}
        self.wire = Wire()

    # -- what gloo's algorithms move per process (see comm.base.Wire) --------------------
    def _wire_all_reduce(self, t: torch.Tensor) -> None:
        b = t.numel() * t.element_size()
        if self.world > 1:
            self.wire.add(2 * (self.world - 1) / self.world * b, 2 * (self.world - 1) / self.world * b)

    def _wire_all_gather(self, t: torch.Tensor) -> None:
        b = t.numel() * t.element_size()
        if self.world > 1:
            self.wire.add((self.world - 1) * b, (self.world - 1) * b)

    def _wire_broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        """Binomial tree from src: relative rank r sends to r + 2^k for every 2^k > r below P."""
        b, world = t.numel() * t.element_size(), self.world
        if world == 1:
            return
        r = (self.rank - src) % world
        children = sum(1 for j in range(world.bit_length()) if (1 << j) > r and r + (1 << j) < world)
        self.wire.add(children * b, 0 if r == 0 else b)

    def _wire_gather(self, t: torch.Tensor, dst: int = 0) -> None:
        b = t.numel() * t.element_size()
        if self.world > 1:
            self.wire.add(0 if self.rank == dst else b, (self.world - 1) * b if self.rank == dst else 0)

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over all n workers' rows, in a fresh buffer (one copy: a row's clone for m = 1)."""
        s = x[0].clone(memory_format=torch.contiguous_format) if x.shape[0] == 1 else x.sum(0).contiguous()
        self._wire_all_reduce(s)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=self.group)
        return s

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        self._record_all_reduce(payload_bytes(x))
        return self._sum(x).div_(self.n).unsqueeze(0).expand_as(x)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        self._record_all_gather(payload_bytes(x))
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._wire_all_gather(x)
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts)

    def gossip_rows(self, x: torch.Tensor, topology: Topology) -> torch.Tensor:
        """Every worker's row [n, d] on every process, for receivers that aggregate their
        neighbours' rows robustly (and omniscient attacks that read them all). Counted as
        gossip traffic, what the algorithm sends; the wire carries an all-gather."""
        if topology.n != self.n:
            raise ValueError(f"topology has {topology.n} nodes, communicator {self.n} workers")
        self._record_gossip(payload_bytes(x), topology)
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._wire_all_gather(x)
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts)

    def _plan(self, topology: Topology) -> _GossipPlan:
        hit = self._plans.get(id(topology))
        if hit is None or hit[0] is not topology:
            hit = (topology, _GossipPlan(topology, self.rank, self.world, self.m))
            self._plans[id(topology)] = hit
        return hit[1]

    def _neighbour_rows(self, flat: torch.Tensor, plan: _GossipPlan) -> torch.Tensor:
        """The rows of every worker this process's workers mix with [|cols|, ...], point to point."""
        buf = flat.new_empty(len(plan.cols), *flat.shape[1:])
        buf[plan.local_pos] = flat[plan.local_rows]
        reqs, incoming = [], []
        row = flat[0].numel() * flat.element_size() if flat.shape[0] else 0
        for q, rows in plan.send.items():
            self.wire.add(len(rows) * row, 0)
            reqs.append(dist.isend(flat[rows].contiguous(), q, group=self.group))
        for q, pos in plan.recv.items():
            self.wire.add(0, len(pos) * row)
            t = flat.new_empty(len(pos), *flat.shape[1:])
            reqs.append(dist.irecv(t, q, group=self.group))
            incoming.append((pos, t))
        for r in reqs:
            r.wait()
        for pos, t in incoming:
            buf[pos] = t
        return buf

    def gossip(self, x: torch.Tensor, topology: Topology) -> torch.Tensor:
        if topology.n != self.n:
            raise ValueError(f"topology has {topology.n} nodes, communicator {self.n} workers")
        self._record_gossip(payload_bytes(x), topology)
        plan = self._plan(topology)
        buf = self._neighbour_rows(x.reshape(self.m, -1), plan)
        return (plan.weights @ buf).reshape(x.shape)

    def _mix_payload(self, p, topology, decompress):
        from dataclasses import replace

        plan = self._plan(topology)
        wire = {k: self._neighbour_rows(t, plan) for k, t in p.wire.items()}  # the wire tensors only
        return plan.weights @ decompress(replace(p, wire=wire))

    def exchange(self, x: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
        check_pairs(pairs, self.n)
        self._record_exchange(payload_bytes(x), pairs)
        out = x.clone()
        lo, hi = self.start, self.start + self.m
        reqs, incoming = [], []
        for a, b in pairs:
            for mine, other in ((a, b), (b, a)):
                if not lo <= mine < hi:
                    continue
                if lo <= other < hi:
                    out[mine - lo] = x[other - lo]
                    continue
                peer = other // self.m
                self.wire.add(payload_bytes(x), payload_bytes(x))
                reqs.append(dist.isend(x[mine - lo].contiguous(), peer, group=self.group, tag=mine))
                t = torch.empty_like(x[0])
                reqs.append(dist.irecv(t, peer, group=self.group, tag=other))
                incoming.append((mine - lo, t))
        for r in reqs:
            r.wait()
        for k, t in incoming:
            out[k] = t
        return out

    def gather_to_server(self, x: torch.Tensor) -> torch.Tensor | None:
        """Rank 0 acts as the server: it gets all n rows, the others get None."""
        self._record_gather(payload_bytes(x))
        parts = [torch.empty_like(x) for _ in range(self.world)] if self.rank == 0 else None
        self._wire_gather(x)
        dist.gather(x.contiguous(), parts, dst=0, group=self.group)
        return torch.cat(parts) if parts is not None else None

    def broadcast_from_server(self, v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        buf = v.contiguous() if self.rank == 0 else torch.empty_like(like[0])
        self._record_broadcast(buf.numel() * buf.element_size())
        self._wire_broadcast(buf)
        dist.broadcast(buf, src=0, group=self.group)
        return buf.unsqueeze(0).expand(self.m, *buf.shape)

    def _gather_rows(self, p):
        from dataclasses import replace

        wire = {}
        for k, t in p.wire.items():
            parts = [torch.empty_like(t) for _ in range(self.world)]
            self._wire_all_gather(t)
            dist.all_gather(parts, t.contiguous(), group=self.group)  # the server's view, on every rank
            wire[k] = torch.cat(parts)
        return replace(p, wire=wire)

    def _client_rows(self, values: torch.Tensor, clients: torch.Tensor) -> torch.Tensor:
        """All processes' client rows in the order of `clients`: one all-gather of every
        process's rows, padded to the most any process holds (gloo gathers equal sizes)."""
        per = [int(((clients >= q * self.m) & (clients < (q + 1) * self.m)).sum()) for q in range(self.world)]
        if per[self.rank] != values.shape[0]:
            raise ValueError(f"rank {self.rank} holds {per[self.rank]} of the clients but sent {values.shape[0]} rows")
        most = max(per)
        if most == 0:
            return values.new_zeros(0, *values.shape[1:])
        pad = values.new_zeros(most, *values.shape[1:])
        pad[: values.shape[0]] = values
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        self._wire_all_gather(pad)
        dist.all_gather(parts, pad, group=self.group)
        return torch.cat([parts[q][: per[q]] for q in range(self.world)])  # clients sorted: rank order

    def _broadcast_rows(self, p):
        """Nothing to send: every process computed the server's message from the same rows
        (the replicated server, see the module docstring)."""
        return p

    def average(self, x: torch.Tensor) -> torch.Tensor:
        return self._sum(x).div_(self.n)

    def consensus_distance(self, x: torch.Tensor) -> float:
        x = x.double()  # identical rows give exactly 0 (n·v/n is exact in float64)
        xbar = self.average(x)
        s = (x - xbar).pow(2).sum(1).sum().reshape(1)
        self._wire_all_reduce(s)
        dist.all_reduce(s, group=self.group)
        return float(s) / self.n
