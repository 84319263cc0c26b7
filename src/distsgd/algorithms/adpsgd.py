"""AD-PSGD: asynchronous decentralized parallel SGD, simulated event by event.

Lian, Zhang, Zhang, Liu, "Asynchronous Decentralized Parallel Stochastic Gradient
Descent", ICML 2018, Algorithm 1. Every worker i loops, with no global barrier:

    1. read its model:  x̂_i ← x_i
    2. compute a stochastic gradient g_i = ∇F_i(x̂_i; ξ_i)              (takes C_i seconds)
    3. average atomically with one neighbour j drawn uniformly:
           x_i, x_j ← (x_i + x_j)/2                                    (one model exchange)
    4. apply the gradient:  x_i ← x_i − γ g_i

In matrix form X_{k+1} = X_k W_k − γ ∂F(X̂_k; ξ_k), with W_k the pairwise averaging of the
k-th update and X̂_k stale: other workers may average into x_i while i computes, so g_i is
taken at a model that is several updates old by the time it is applied. On a bipartite
graph (a ring with an even number of workers, a torus with even sides, a hypercube) the
paper splits the workers into active and passive sets and only active workers initiate
averaging, with passive neighbours: no two averagings wait on each other in a cycle, so
there is no deadlock. Passive workers run steps 1, 2 and 4. `split="none"` (or a graph that
is not bipartite) makes every worker active.

What the simulation assumes (a discrete-event model, one seeded event queue):

- C_i comes from the network model's compute clock, per gradient: per-worker speeds, a
  log-normal jitter (`speed_jitter`) and transient stragglers (`straggler_prob`), so slow
  workers come and go. An exchange of the model (d float32 each way, full duplex) takes
  latency + 4d/bandwidth, times `link_slowdown` with probability `link_slow_prob`.
- Atomicity: each model has a lock. An averaging of i and j starts when both are free,
  holds both for the transfer and writes (x_i + x_j)/2 of the values at its end; i then
  applies its gradient before releasing. A passive worker's gradient waits for its own
  lock. Reads never wait: a read during an averaging sees the model before it.
- Gradients are computed at the read models; the simulation evaluates pending ones in a
  batch when the first of them is needed, which changes nothing (each worker's mini-batch
  sequence comes from its own generator).
- One runner step = n applied gradients (the computation of one synchronous step), so
  steps and epochs compare with the synchronous algorithms; the run's simulated seconds
  are the event clock. Staleness = the number of gradients applied by any worker between
  a gradient's read and its application (the paper's τ); its mean, 95th percentile and
  maximum are reported.

Runs on the simulated backend (one process holds every worker's model).
"""

from __future__ import annotations

import heapq
from typing import Annotated, Literal

import networkx as nx
import torch
from pydantic import Field

from .. import rng
from ..errors import UserError
from .base import ALGORITHMS, Graph, Seed, StepSize, WeightDecay, options, seed_of

GRAD, AVG, APPLY = 0, 1, 2  # event kinds


@ALGORITHMS.register(paper="Lian et al., ICML 2018")
@options
class ADPSGD:
    """AD-PSGD: asynchronous decentralized SGD with atomic pairwise averaging (event-driven simulation)."""

    lr: StepSize
    topology: Graph = "ring"
    weight_decay: WeightDecay = 0.0
    split: Annotated[Literal["auto", "none"], Field(description="auto: active/passive sets on a bipartite graph; none: all active")] = "auto"
    seed: Seed = None
    name: str = "adpsgd"

    def active_set(self) -> torch.Tensor:
        """[n] bool: the workers that initiate averaging."""
        g = self.topology.graph
        if self.split == "auto" and nx.is_connected(g) and nx.is_bipartite(g):
            color = nx.bipartite.color(g)
            return torch.tensor([color[i] == color[0] for i in range(self.topology.n)])  # worker 0 active
        return torch.ones(self.topology.n, dtype=torch.bool)

    def init(self, x0, comm):
        if self.topology.n != comm.n:
            raise ValueError(f"topology has {self.topology.n} nodes for {comm.n} workers")
        if comm.m != comm.n:
            raise UserError("adpsgd is an event-driven simulation: run it on the simulated backend")
        n = comm.n
        active = self.active_set()
        neighbours = []
        for i in range(n):
            nb = sorted(self.topology.graph.neighbors(i))
            if active.any() and not active.all():
                nb = [j for j in nb if not active[j]]
            neighbours.append(nb)
        events = []
        for i in range(n):  # every worker reads x0 at time 0 and starts computing
            events.append((float(comm.clock.gradient_seconds(i)), i, GRAD, i, -1))
        heapq.heapify(events)
        return {
            "x": x0.clone(),
            "snap": x0.clone(),  # x̂_i, the model each worker's pending gradient is taken at
            "grad": torch.zeros_like(x0),
            "computed": torch.zeros(n, dtype=torch.bool),
            "active": active,
            "neighbours": neighbours,
            "events": events,
            "seq": n,
            "free_at": [0.0] * n,
            "read_at": [0] * n,  # gradients applied (by anyone) when worker i read
            "applied": 0,
            "clock": 0.0,
            "staleness": [],  # histogram: staleness[s] = gradients applied with staleness s
            "averagings": 0,
            "rng": rng.generator(seed_of(self), 0, "events").get_state(),  # the event simulation's one stream
            "t": 0,
        }

    # -- the event loop ------------------------------------------------------------------
    def step(self, state, oracle, comm):
        gen = torch.Generator()
        gen.set_state(state["rng"])
        target = (state["t"] + 1) * comm.n
        events = state["events"]
        nbytes = state["x"][0].numel() * state["x"].element_size()
        while state["applied"] < target:
            now, _, kind, i, j = heapq.heappop(events)
            state["clock"] = now
            if kind == GRAD:
                if state["active"][i]:
                    nb = state["neighbours"][i]
                    j = nb[int(torch.randint(len(nb), (1,), generator=gen))]
                    start = max(now, state["free_at"][i], state["free_at"][j])
                    end = start + comm.clock.link_seconds(nbytes)
                    state["free_at"][i] = state["free_at"][j] = end
                    comm.record_pair_exchange(i, j, nbytes)
                    self._push(state, end, AVG, i, j)
                else:
                    self._push(state, max(now, state["free_at"][i]), APPLY, i, -1)
            elif kind == AVG:
                x = state["x"]
                mid = (x[i] + x[j]) / 2
                x[i], x[j] = mid, mid
                state["averagings"] += 1
                self._apply(state, i, now, oracle, comm)
            elif state["free_at"][i] > now:  # APPLY, but an averaging holds the lock
                self._push(state, state["free_at"][i], APPLY, i, -1)
            else:
                self._apply(state, i, now, oracle, comm)
        state["rng"] = gen.get_state()
        state["t"] += 1
        comm.traffic.clock = state["clock"]
        return state

    @staticmethod
    def _push(state, time, kind, i, j):
        heapq.heappush(state["events"], (time, state["seq"], kind, i, j))
        state["seq"] += 1

    def _apply(self, state, i, now, oracle, comm):
        if not state["computed"][i]:  # evaluate every pending gradient in one batch
            rows = torch.nonzero(~state["computed"]).flatten()
            snap = state["snap"][rows]
            g = oracle(snap, rows)
            if self.weight_decay:
                g = g + self.weight_decay * snap
            state["grad"][rows] = g
            state["computed"][rows] = True
        state["x"][i].sub_(state["grad"][i], alpha=self.lr)
        stale = state["applied"] - state["read_at"][i]
        hist = state["staleness"]
        hist.extend([0] * (stale + 1 - len(hist)))
        hist[stale] += 1
        state["applied"] += 1
        # read the model again and start the next gradient
        state["snap"][i] = state["x"][i]
        state["read_at"][i] = state["applied"]
        state["computed"][i] = False
        self._push(state, now + float(comm.clock.gradient_seconds(i)), GRAD, i, -1)

    def metrics(self, state) -> dict:
        """Staleness so far (mean, 95th percentile, max) and averagings per applied gradient."""
        hist = torch.tensor(state["staleness"], dtype=torch.float64)
        total = float(hist.sum())
        if not total:
            return {}
        values = torch.arange(len(hist), dtype=torch.float64)
        cdf = hist.cumsum(0) / total
        return {
            "staleness_mean": float((hist * values).sum() / total),
            "staleness_p95": int(torch.searchsorted(cdf, torch.tensor(0.95, dtype=torch.float64))),
            "staleness_max": len(hist) - 1,
            "averagings_per_gradient": state["averagings"] / state["applied"],
        }
