"""The Communicator protocol and the Traffic it records.

Workers are stacked: a communicator serves the `m` workers held by this process, rows
`workers = range(start, start + m)` of the global `n`. Cross-worker data moves only
through these calls; each one adds to `Traffic` the bytes every worker sends and
receives, its messages and the simulated seconds from the `NetworkModel`.

Byte accounting (b = bytes of one worker's payload, e.g. 4·d for d float32 values):

- all_reduce_mean, ring algorithm (reduce-scatter then all-gather, n−1 rounds each):
  every worker sends and receives 2(n−1)/n · b in 2(n−1) messages;
  time 2(n−1)·α + 2(n−1)/n · b/β. With `NetworkModel.interconnect` set, bytes, messages
  and time come from the chosen schedule on the packet simulator instead.
- all_gather, ring: every worker sends and receives (n−1)·b in n−1 messages;
  time (n−1)·α + (n−1)·b/β.
- gossip with mixing W: worker i sends b to each neighbour (W_ij ≠ 0, j ≠ i) and receives
  b from each: deg_i·b each way, deg_i messages; time α + max_i deg_i·b/β (one interface,
  neighbours served one after another).
- exchange over disjoint pairs: each paired worker sends and receives b; time α + b/β.
- gather_to_server: each worker sends b, the server receives n·b; time α + n·b/β_server.
- broadcast_from_server: the server sends n·b, each worker receives b; time α + n·b/β_server.
- federated rounds, K clients taking part: `to_clients` (the server sends K·b, each of
  them receives b) and `from_clients` (each sends b, the server receives K·b); time
  α + K·b/β_server each. Clients not taking part send and receive nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ..topology import Topology
from .network import ComputeClock, NetworkModel


def payload_bytes(x: torch.Tensor) -> int:
    """Bytes of one worker's row of a stacked tensor x[m, ...]."""
    return x[0].numel() * x.element_size() if x.shape[0] else 0


@dataclass
class Traffic:
    """Cumulative traffic of all n workers (and the server), plus the simulated clock.

    Every process records all n workers' counters: they follow from the shapes of the
    calls, which every process sees the same, so rank 0 reports them without a gather.
    """

    sent: torch.Tensor  # [n] float64 bytes
    received: torch.Tensor  # [n] float64 bytes
    messages: torch.Tensor  # [n] int64 messages sent
    server_sent: float = 0.0
    server_received: float = 0.0
    comm_seconds: float = 0.0
    compute_seconds: float = 0.0
    clock: float | None = None  # an asynchronous algorithm's event clock, when it keeps one

    @classmethod
    def zeros(cls, n: int) -> Traffic:
        return cls(
            sent=torch.zeros(n, dtype=torch.float64),
            received=torch.zeros(n, dtype=torch.float64),
            messages=torch.zeros(n, dtype=torch.int64),
        )

    @property
    def seconds(self) -> float:
        """Simulated wall-clock: compute and communication, no overlap assumed; for an
        asynchronous algorithm, its event clock (compute and transfers overlap per worker)."""
        return self.clock if self.clock is not None else self.comm_seconds + self.compute_seconds

    def record(self, sent, received, messages, seconds: float) -> None:
        self.sent += sent
        self.received += received
        self.messages += messages
        self.comm_seconds += seconds

    def summary(self) -> dict:
        return {
            "bytes_sent_per_worker": float(self.sent.mean()),
            "bytes_sent_max_worker": float(self.sent.max()),
            "bytes_received_per_worker": float(self.received.mean()),
            "messages_per_worker": float(self.messages.double().mean()),
            "server_bytes_received": self.server_received,
            "server_bytes_sent": self.server_sent,
            "sim_seconds": self.seconds,
            "sim_comm_seconds": self.comm_seconds,
            "sim_compute_seconds": self.compute_seconds,
        }

    def state_dict(self) -> dict:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}

    def load_state_dict(self, s: dict) -> None:
        for k, v in s.items():
            setattr(self, k, v.clone() if isinstance(v, torch.Tensor) else v)


@dataclass
class Wire:
    """Bytes this process put on and took off the wire (torch.distributed only), modelled on
    gloo's algorithms for each call: ring all-reduce 2(P−1)/P·b and ring all-gather
    (P−1)·b each way per process, binomial-tree broadcast, gather to the root, and the exact
    sizes of point-to-point sends. Payload bytes: the kernel adds Ethernet/IP/TCP headers
    (about 4.5% at a 1500-byte MTU, less with GSO) and ACKs; `distsgd.netem` reads the
    kernel's side to compare.

    Traffic counts what the algorithm sends, per worker (a server's uplink and downlink);
    Wire counts what this process's calls moved, which differs where the torch.distributed
    implementation realizes a server with an all-gather (see `gather_payload`)."""

    sent: float = 0.0
    received: float = 0.0
    calls: int = 0

    def add(self, sent: float, received: float) -> None:
        self.sent += sent
        self.received += received
        self.calls += 1

    def summary(self) -> dict:
        return {"wire_bytes_sent": self.sent, "wire_bytes_received": self.received, "wire_calls": self.calls}


class Communicator(Protocol):
    n: int  # all workers
    m: int  # workers held here
    start: int  # global id of the first local worker
    network: NetworkModel
    traffic: Traffic
    clock: ComputeClock

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor: ...
    def all_gather(self, x: torch.Tensor) -> torch.Tensor: ...
    def gossip(self, x: torch.Tensor, topology: Topology) -> torch.Tensor: ...
    def exchange(self, x: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor: ...
    def gather_to_server(self, x: torch.Tensor) -> torch.Tensor | None: ...
    def broadcast_from_server(self, v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor: ...
    def gather_payload(self, p): ...  # compressed messages to the server (a collective)
    def all_gather_payload(self, p): ...  # compressed messages to every worker
    def broadcast_payload(self, p): ...  # the server's compressed message to every worker
    def gossip_payload(self, p, topology, decompress): ...  # compressed messages to neighbours, mixed
    def average(self, x: torch.Tensor) -> torch.Tensor: ...
    def compute(self) -> None: ...
    def to_clients(self, v: torch.Tensor, clients: torch.Tensor) -> None: ...  # federated downlink
    def from_clients(self, values: torch.Tensor, clients: torch.Tensor) -> torch.Tensor: ...  # uplink


class CommunicatorBase:
    """Shared bookkeeping: traffic formulas and the compute clock (see module docstring)."""

    def __init__(self, n: int, m: int, start: int, network: NetworkModel | None = None):
        self.n, self.m, self.start = n, m, start
        self.network = network or NetworkModel()
        self.traffic = Traffic.zeros(n)
        self.clock = ComputeClock(self.network, n)

    @property
    def workers(self) -> range:
        return range(self.start, self.start + self.m)

    # -- traffic formulas -------------------------------------------------------------
    def _record_all_reduce(self, b: int) -> None:
        if self.n == 1:
            return
        sent, received, messages, seconds = self.network.all_reduce_cost(self.n, b)
        self.traffic.record(sent, received, messages, seconds)

    def _record_all_gather(self, b: int) -> None:
        n = self.n
        if n == 1:
            return
        per = (n - 1) * b
        self.traffic.record(per, per, n - 1, self.network.transfer_seconds(n - 1, per))

    def _record_gossip(self, b: int, topology: Topology) -> None:
        if self.n == 1:
            return
        deg = topology.degree_tensor
        self.traffic.record(deg * b, deg * b, deg, self.network.transfer_seconds(1, float(deg.max()) * b))

    def _record_exchange(self, b: int, pairs) -> None:
        paired = torch.zeros(self.n, dtype=torch.int64)
        for i, j in pairs:
            paired[i] = paired[j] = 1
        if paired.any():
            self.traffic.record(paired * b, paired * b, paired, self.network.transfer_seconds(1, b))

    def record_pair_exchange(self, i: int, j: int, b: int) -> None:
        """Workers i and j swap b bytes (an asynchronous pairwise averaging); time is the
        caller's event clock."""
        one = torch.zeros(self.n, dtype=torch.float64)
        one[i] = one[j] = 1
        self.traffic.record(one * b, one * b, one.long(), 0.0)

    def _record_gather(self, b: int) -> None:
        t = self.traffic
        t.record(float(b), 0.0, 1, self.network.transfer_seconds(1, self.n * b, server=True))
        t.server_received += self.n * b

    def _record_broadcast(self, b: int) -> None:
        t = self.traffic
        t.record(0.0, float(b), 0, self.network.transfer_seconds(1, self.n * b, server=True))
        t.server_sent += self.n * b

    def _record_clients(self, clients: torch.Tensor, b: int, uplink: bool) -> float:
        """K clients each send (uplink) or receive b bytes through the server's interface;
        returns the transfer's seconds (α + K·b/β_server)."""
        k = len(clients)
        if k == 0:
            return 0.0
        one = torch.zeros(self.n, dtype=torch.float64).index_fill_(0, clients, 1.0)
        seconds = self.network.transfer_seconds(1, k * b, server=True)
        t = self.traffic
        if uplink:
            t.record(one * b, 0.0, one.long(), seconds)
            t.server_received += k * b
        else:
            t.record(0.0, one * b, 0, seconds)
            t.server_sent += k * b
        return seconds

    # -- federated rounds: a server and the clients taking part -----------------------------
    def to_clients(self, v: torch.Tensor, clients: torch.Tensor) -> float:
        """The server sends v (one row) to each of `clients` (sorted global ids). The
        server is replicated (every process holds the global model), so nothing moves
        between processes; Traffic records the downlink. Returns its seconds."""
        return self._record_clients(clients, v.numel() * v.element_size(), uplink=False)

    def from_clients(self, values: torch.Tensor, clients: torch.Tensor) -> torch.Tensor:
        """Each of `clients` (sorted global ids) sends its row to the server: `values`
        holds the rows of this process's clients among them, in order; returns all K rows
        in the order of `clients`, on every process (the replicated server)."""
        b = math.prod(values.shape[1:]) * values.element_size()
        self._record_clients(clients, b, uplink=True)
        return self._client_rows(values, clients)

    # -- compressed payloads ------------------------------------------------------------
    def gather_payload(self, p):
        """Every worker sends its compressed message to the server: the server gets a Payload
        with all n rows. Bytes are the payload's own wire size. Under torch.distributed the
        server is replicated: every process receives every row (one all-gather) and computes
        the server's step itself, so the `broadcast_payload` of its result that follows moves
        nothing on the wire (`Wire` counts the all-gather; `Traffic` the server's uplink and
        downlink, what the algorithm sends)."""
        self._record_gather(p.nbytes_per_worker)
        return self._gather_rows(p)

    def all_gather_payload(self, p):
        """Every worker sends its compressed message to every other (ring all-gather:
        (n−1)·b bytes each way per worker) and gets all n rows."""
        self._record_all_gather(p.nbytes_per_worker)
        return self._gather_rows(p)

    def gossip_payload(self, p, topology, decompress):
        """Every worker sends its compressed message to its neighbours (gossip traffic at the
        payload's wire size); returns Σ_j W_ij decompress(p_j) for the local workers [m, d]."""
        if topology.n != self.n:
            raise ValueError(f"topology has {topology.n} nodes, communicator {self.n} workers")
        self._record_gossip(p.nbytes_per_worker, topology)
        return self._mix_payload(p, topology, decompress)

    def broadcast_payload(self, p):
        """The server sends one compressed message (rows: 1) to every worker."""
        self._record_broadcast(p.nbytes_per_worker)
        return self._broadcast_rows(p)

    # -- compute ----------------------------------------------------------------------
    def compute(self) -> None:
        """Every worker computes one gradient; a synchronous step waits for the slowest."""
        self.traffic.compute_seconds += float(self.clock.gradient_seconds().max())

    def state_dict(self) -> dict:
        return {"traffic": self.traffic.state_dict(), "clock": self.clock.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.traffic.load_state_dict(s["traffic"])
        self.clock.load_state_dict(s["clock"])


def check_pairs(pairs, n: int) -> None:
    seen = set()
    for i, j in pairs:
        if i == j or not (0 <= i < n and 0 <= j < n) or i in seen or j in seen:
            raise ValueError(f"exchange pairs must be disjoint pairs of distinct workers: {pairs}")
        seen.update((i, j))
