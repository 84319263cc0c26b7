"""Network and compute model that turns a step's messages into simulated seconds.

Every worker has one full-duplex network interface of `bandwidth` bytes/s; a message costs
`latency` seconds to start (the α–β model: T = α + bytes/β). A collective made of r
rounds in which the busiest interface moves b bytes takes r·α + b/β; the communicator
supplies r and the per-worker byte counts, so the formulas live beside the traffic they
time (see `comm.base`). The parameter server, when an algorithm uses one, has its own
interface of `server_bandwidth` (default: the workers').

Compute: one stochastic gradient takes `compute_seconds / speed_i` on worker i. Speeds are
homogeneous by default, or set per worker, or drawn once from a log-uniform range
(heterogeneous cluster); stragglers come and go: at each gradient, each worker is slowed by
`straggler_slowdown` with probability `straggler_prob`. A synchronous step waits for the
slowest worker. All randomness draws from one seeded generator, saved in checkpoints.

All-reduce time: by default the ring closed form 2(n−1)·α + 2(n−1)/n · b/β. With an
`interconnect` (e.g. "torus:4x4", see `distsgd.collectives`), the all-reduce algorithm
`allreduce` (ring, hd, dbtree, ring2d, hierarchical, multitree) is instead run on the
packet-level network simulator with links of `bandwidth` and `latency` and `nis`
interfaces per node, and its simulated time and per-node bytes are used (cached per
payload size). MultiTree falls back to the fastest ring schedule of the interconnect
where that is faster at this payload.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass(frozen=True)
class NetworkModel:
    latency: float = 50e-6  # α, seconds per message (per round)
    bandwidth: float = 1.25e9  # β, bytes/s per worker interface (10 Gbit/s)
    server_bandwidth: float | None = None
    compute_seconds: float = 5e-3  # one mini-batch gradient on a speed-1 worker
    speeds: tuple[float, ...] | None = None  # per-worker relative speed (1 = reference)
    speed_range: tuple[float, float] | None = None  # draw speeds log-uniformly in [lo, hi]
    straggler_prob: float = 0.0
    straggler_slowdown: float = 4.0
    speed_jitter: float = 0.0  # σ: every gradient's time × exp(σ·Z), Z ~ N(0, 1), drawn per gradient
    link_slow_prob: float = 0.0  # a point-to-point exchange is slow with this probability ...
    link_slowdown: float = 4.0  # ... and then takes this many times longer (asynchronous gossip)
    seed: int = 0
    interconnect: str | None = None  # e.g. "torus:4x4": simulate all-reduce on it
    allreduce: str = "ring"
    nis: int = 1

    def __post_init__(self):
        if self.latency < 0 or self.bandwidth <= 0 or self.compute_seconds < 0:
            raise UserError("network: latency and compute_seconds must be >= 0, bandwidth > 0")
        if self.server_bandwidth is not None and self.server_bandwidth <= 0:
            raise UserError("network: server_bandwidth must be > 0")
        if not 0.0 <= self.straggler_prob <= 1.0:
            raise UserError("network: straggler_prob must be in [0, 1]")
        if self.straggler_slowdown < 1.0:
            raise UserError("network: straggler_slowdown must be >= 1")
        if self.speeds is not None and any(s <= 0 for s in self.speeds):
            raise UserError("network: every speed must be > 0")
        if self.speed_range is not None and not 0 < self.speed_range[0] <= self.speed_range[1]:
            raise UserError("network: speed_range must be 0 < lo <= hi")
        if self.nis < 1:
            raise UserError("network: nis must be >= 1")
        if self.speed_jitter < 0 or not 0.0 <= self.link_slow_prob <= 1.0 or self.link_slowdown < 1.0:
            raise UserError("network: speed_jitter >= 0, link_slow_prob in [0, 1], link_slowdown >= 1")
        if self.interconnect is not None:
            from ..collectives import ALGORITHMS, make_interconnect

            make_interconnect(self.interconnect)  # a bad spec is a UserError now, not mid-run
            if self.allreduce not in ALGORITHMS:
                raise UserError(
                    f"network.allreduce: unknown algorithm '{self.allreduce}' "
                    f"(choose from {', '.join(ALGORITHMS)})"
                )

    def all_reduce_cost(self, n: int, nbytes: int):
        """(sent[n], received[n], messages[n], seconds) of one all-reduce of nbytes per worker."""
        if self.interconnect is None:
            per = 2 * (n - 1) / n * nbytes
            return per, per, 2 * (n - 1), self.transfer_seconds(2 * (n - 1), per)
        return _simulated_all_reduce(
            self.interconnect, self.allreduce, self.nis, self.bandwidth, self.latency, n, nbytes
        )

    def transfer_seconds(self, rounds: int, busiest_bytes: float, server: bool = False) -> float:
        bw = (self.server_bandwidth or self.bandwidth) if server else self.bandwidth
        return rounds * self.latency + busiest_bytes / bw


class ComputeClock:
    """Per-worker compute times under a NetworkModel, with a seeded straggler process."""

    def __init__(self, model: NetworkModel, n: int):
        self.model = model
        self.n = n
        self.generator = torch.Generator().manual_seed(model.seed)
        if model.speeds is not None:
            if len(model.speeds) != n:
                raise UserError(f"network.speeds has {len(model.speeds)} entries for n={n} workers")
            speeds = torch.tensor(model.speeds, dtype=torch.float64)
        elif model.speed_range is not None:
            lo, hi = model.speed_range
            u = torch.rand(n, generator=self.generator, dtype=torch.float64)
            speeds = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            speeds = torch.ones(n, dtype=torch.float64)
        self.speeds = speeds

    def gradient_seconds(self, worker: int | None = None) -> torch.Tensor:
        """Seconds each worker needs for its next gradient [n] (draws the stragglers and the
        per-gradient jitter), or worker `worker`'s alone [1] (asynchronous algorithms)."""
        m = self.model
        t = m.compute_seconds / (self.speeds if worker is None else self.speeds[worker : worker + 1])
        k = t.numel()
        if m.straggler_prob > 0:
            slow = torch.rand(k, generator=self.generator, dtype=torch.float64)
            t = torch.where(slow < m.straggler_prob, t * m.straggler_slowdown, t)
        if m.speed_jitter > 0:
            t = t * torch.exp(m.speed_jitter * torch.randn(k, generator=self.generator, dtype=torch.float64))
        return t

    def link_seconds(self, nbytes: float) -> float:
        """One point-to-point exchange of nbytes each way (full duplex), maybe on a slow link."""
        m = self.model
        t = m.latency + nbytes / m.bandwidth
        if m.link_slow_prob > 0 and float(torch.rand(1, generator=self.generator)) < m.link_slow_prob:
            t *= m.link_slowdown
        return t

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "speeds": self.speeds.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        self.speeds = s["speeds"].clone()


@functools.lru_cache(maxsize=256)
def _simulated_all_reduce(spec, algorithm, nis, bandwidth, latency, n, nbytes):
    from ..collectives import build_schedule, make_interconnect, simulate
    from ..collectives.report import fastest_ring, packet_for, ring_family

    net = make_interconnect(spec, bandwidth=bandwidth, latency=latency, nis=nis)
    if net.n != n:
        raise UserError(f"network.interconnect {spec} has {net.n} nodes, but there are {n} workers")
    sched = build_schedule(algorithm, net)
    res = simulate(sched, net, nbytes, packet_bytes=packet_for(nbytes, None))
    if algorithm == "multitree":  # never worse than the best ring here (collectives.report.compare's rule)
        rings = ring_family(net)
        runs = {k: simulate(s, net, nbytes, packet_bytes=packet_for(nbytes, None)) for k, s in rings.items()}
        best = fastest_ring({"multitree": res.seconds} | {k: r.seconds for k, r in runs.items()})
        if best is not None:
            sched, res = rings[best], runs[best]
    per_msg = sched.message_bytes(nbytes)
    sent = torch.zeros(n, dtype=torch.float64)
    received = torch.zeros(n, dtype=torch.float64)
    messages = torch.zeros(n, dtype=torch.int64)
    for m, b in zip(sched.messages, per_msg.tolist(), strict=True):
        sent[m.src] += b
        received[m.dst] += b
        messages[m.src] += 1
    return sent, received, messages, res.seconds
