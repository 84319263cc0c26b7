"""AD-PSGD for real: truly asynchronous decentralized SGD over torch.distributed (gloo).

Lian, Zhang, Zhang, Liu, "Asynchronous Decentralized Parallel Stochastic Gradient
Descent", ICML 2018, Algorithm 1. Every rank i loops, with no global barrier:

    1. read its model:  x̂_i ← x_i
    2. compute a stochastic gradient g_i = ∇F_i(x̂_i; ξ_i) on its own mini-batch
    3. average atomically with one neighbour j drawn uniformly:
           x_i, x_j ← (x_i + x_j)/2
    4. apply the gradient:  x_i ← x_i − γ g_i

`distsgd.algorithms.adpsgd` simulates this event by event in one process; this module runs
it with one process per worker:

    result = run_adpsgd(model, F.cross_entropy, batches, lr=0.05, max_gradients=10_000,
                        snapshot_every=0.5)
    result.load(model, result.final)          # the average of the ranks' models

Active/passive split (the paper's deadlock-free scheme for bipartite graphs). The graph must be
bipartite and connected (a ring with an even number of ranks, a torus with even sides, a
hypercube); the colour of rank 0 is *active*. An active rank runs steps 1-4 itself and
initiates every averaging, with a passive neighbour drawn uniformly. A passive rank never
initiates: its main thread runs steps 1, 2 and 4 and a *server thread* answers averaging
requests. Averagings only ever wait on a passive rank's server, which waits on nobody, so
no cycle of waits can form. A graph that is not bipartite raises `UserError`.

One averaging of active i with passive j, on a dedicated gloo group (`dist.new_group`), so
that nothing else the program sends interleaves with the gossip:

- i sends a one-float header (AVERAGE) to j, then sends x_i while it receives x_j (both
  directions at once: the links are full duplex, so an averaging costs one model's
  transfer time, not two); x_i ← (x_i + x_j)/2. Only i's own thread writes x_i, so x_i
  cannot move meanwhile.
- j's server receives the header from any source (`dist.recv(src=None)`), then, holding
  the lock its main thread takes to read x̂_j and to apply a gradient, sends a copy of x_j
  while it receives x_i, and sets x_j ← (x_j + x_i)/2 before releasing the lock. Both
  sides compute the same float sum, so the pair ends with bit-identical models and Σ x is
  conserved exactly (up to the rounding of one addition): the averaging is atomic. j's
  gradient computation goes on meanwhile; only its application waits for the lock.

Thread safety: in every process exactly one thread uses the gossip group (an active rank's
main thread, or a passive rank's server thread), and the server thread only runs between the
barrier that starts the loop and the end of the loop, when the main thread uses no other
group (only the store). So no gloo context is ever used by two threads at once.

Termination with no barrier in the loop: a budget of gradients for all ranks together
(`max_gradients`), counted with the rendezvous store (`store.add` is atomic across
processes), and/or a wall-clock budget (`max_seconds`, from a common start agreed by a
barrier just before the loop). A rank claims a ticket `store.add(key, 1)` after computing a
gradient and applies the gradient only if its ticket is within the budget, so exactly
`max_gradients` gradients are applied in all (a rank that draws a later ticket drops its
gradient and stops). Each active rank then sends a stop flag to each passive neighbour;
a passive server exits after a stop from every neighbour. Then collectives are safe again.

What is measured:

- staleness τ (as the simulation reports it): the number of gradients applied by any rank
  between this rank's read of x̂_i and the application of g_i, from the same store counter
  (the tickets drawn by others since this rank's previous ticket; a ticket is drawn just
  before the gradient is applied, and the read follows this rank's previous ticket);
- mixing staleness: the averaging writes into x_i between the read and the application
  (always 1 on an active rank: its own averaging; on a passive rank, the requests its
  server answered meanwhile);
- gradients and averagings per rank, seconds, compute seconds, bytes sent and received on
  the gossip group (a request carries a 4-byte header and 4d bytes of model, a reply 4d,
  a stop 4 bytes).
- snapshots for time-to-accuracy: every `snapshot_every` seconds each rank copies its x_i
  (at the first gradient boundary after the tick); after the loop, one all_reduce per
  snapshot gives the average over ranks, the same list on every rank, each stamped with the
  latest of the ranks' copy times. The timed loop itself runs no collective. At most
  `max_snapshots` are kept: at the cap, every other one is dropped and the interval doubles
  (the same on every rank, so snapshot k is time k·interval everywhere).

Straggler: `slowdown=s` makes this rank s times slower in compute: after each gradient it
sleeps (s − 1) × the seconds the gradient took.

Liveness: a rank that raises in its loop adds a huge number to the counter, so every other
rank stops at its next gradient, and every rank raises after the loop. A passive rank's
server thread that dies (a gloo error) cannot answer: its active neighbours then wait until
the process group's timeout. The server thread needs the GIL to answer, so a passive rank
whose main thread runs long pure-Python stretches delays replies by up to
`sys.getswitchinterval()` (5 ms) per hand-over; a real backward releases the GIL.

Model: the trainable parameters of `model` become views of one flat float32 vector x̂ (the
read copy, which the gradient is computed at); x_i is a separate flat vector, copied into
the parameters at the end. Buffers (BatchNorm statistics) are rank 0's at the start and then
local to each rank. `weight_decay` adds λ x̂ to the gradient.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.distributed as dist
from torch import nn

from . import rng
from .errors import UserError
from .topology import Topology, TopologySpec
from .workers import Flat

__all__ = ["AsyncResult", "Staleness", "active_set", "load_flat", "run_adpsgd"]

AVERAGE, STOP = 0.0, 1.0  # the one-float header of a request


@dataclass(frozen=True)
class Staleness:
    """Mean, 95th percentile and maximum of a per-gradient count."""

    mean: float
    p95: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> Staleness:
        if not values:
            return cls(0.0, 0, 0)
        v = sorted(values)
        return cls(sum(v) / len(v), v[min(len(v) - 1, math.ceil(0.95 * len(v)) - 1)], v[-1])


@dataclass
class AsyncResult:
    """What `run_adpsgd` returns on every rank (the lists ending in `_per_rank`, `snapshots`
    and `final` are the same on every rank; the rest is this rank's)."""

    rank: int
    active: bool
    gradients: int  # gradients this rank applied
    averagings: int  # averagings this rank took part in (initiated if active, served if passive)
    staleness: Staleness  # τ: gradients applied by any rank between read and application
    mixing_staleness: Staleness  # averaging writes into x_i between read and application
    bytes_sent: int
    bytes_received: int
    seconds: float  # the loop's wall seconds on this rank
    compute_seconds: float  # forward + backward (+ the slowdown's sleep)
    gradients_per_rank: list[int]
    averagings_per_rank: list[int]
    final: torch.Tensor  # [d] the average of the ranks' models after the loop
    snapshots: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (seconds, [d] average)
    snapshot_interval: float | None = None  # seconds between snapshots (doubled at the cap)

    @property
    def seconds_per_gradient(self) -> float:
        return self.seconds / self.gradients if self.gradients else math.inf

    @property
    def total_gradients(self) -> int:
        return sum(self.gradients_per_rank)

    def load(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Copy a flat vector (`final`, a snapshot's) into the model's trainable parameters."""
        load_flat(model, flat)


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector [d] into `model`'s trainable parameters (in `Flat` order)."""
    f = Flat.from_module(model)
    if flat.numel() != f.d:
        raise UserError(f"a flat vector of {flat.numel()} entries for a model of {f.d} parameters")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, view in f.unflatten(flat.reshape(-1)).items():
            params[name].copy_(view)


def active_set(topology: Topology) -> list[bool]:
    """The active ranks of a connected bipartite graph: rank 0's colour (the paper's split)."""
    g = topology.graph
    if topology.n == 1:
        return [True]
    if not nx.is_connected(g):
        raise UserError(f"adpsgd (real): the {topology.name} graph on {topology.n} ranks is not connected")
    if not nx.is_bipartite(g):
        raise UserError(
            f"adpsgd (real) needs a bipartite graph for its deadlock-free active/passive split; "
            f"{topology.name} on {topology.n} ranks is not (use an even ring, a torus with even sides, a hypercube)"
        )
    color = nx.bipartite.color(g)
    return [color[i] == color[0] for i in range(topology.n)]


class _Snapshots:
    """(seconds, x copy) at ticks k·interval; at `cap` every other one goes and the interval doubles."""

    def __init__(self, interval: float | None, cap: int):
        self.interval, self.cap, self.level = interval, cap, 0
        self.items: list[tuple[float, torch.Tensor]] = []

    def due(self, t: float) -> bool:
        return self.interval is not None and t >= len(self.items) * self.interval

    def take(self, t: float, x: torch.Tensor) -> None:
        copy = x.clone()
        while self.due(t):  # a long gradient may pass several ticks: the same x for each
            self.items.append((t, copy))
            if len(self.items) > self.cap:
                self.thin()

    def thin(self) -> None:
        self.items = self.items[::2]
        self.interval *= 2
        self.level += 1


def _flat_views(
    model: nn.Module, flat: Flat, xhat: torch.Tensor, grad: torch.Tensor
) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, view in flat.unflatten(xhat).items():
            params[name].data = view
        for name, view in flat.unflatten(grad).items():
            params[name].grad = view
    return {n: params[n] for n in flat.names}


_GOSSIP: dict[tuple[int, ...], dist.ProcessGroup] = {}


def _gossip_group(ranks: list[int]) -> dist.ProcessGroup:
    """The gloo group the averagings use, one per set of ranks, made once and kept: a group made
    with `use_local_synchronization` is named after its ranks, so a second one for the same ranks
    would meet the first one's stale addresses in the store."""
    key = tuple(ranks)
    pg = _GOSSIP.get(key)
    if pg is None or pg not in dist.distributed_c10d._world.pg_map:  # made before the world was re-made
        pg = _GOSSIP[key] = dist.new_group(ranks, backend="gloo", use_local_synchronization=True)
    return pg


def _collect(named: dict[str, nn.Parameter], flat: Flat, grad: torch.Tensor) -> None:
    """Make the parameters' .grad views of the flat gradient again, copying a replaced one
    (the loss function may have set them to None or to new tensors); None counts as zero."""
    for name, view in flat.unflatten(grad).items():
        p = named[name]
        if p.grad is None:
            view.zero_()
        elif p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
        p.grad = view


def run_adpsgd(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float,
    topology="ring",
    max_gradients: int | None = None,
    max_seconds: float | None = None,
    snapshot_every: float | None = None,
    max_snapshots: int = 256,
    slowdown: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    same_start: bool = True,
    group=None,
    store=None,
) -> AsyncResult:
    """Train `model` (this rank's; updated in place) with AD-PSGD, Algorithm 1 of Lian et al.

    Every rank of `group` (default: the world) calls it. `batches` yields this rank's
    (inputs, targets); the loss is `loss_fn(model(inputs), targets)`. `topology` is a spec
    as the registry takes ("ring", {name = "torus", rows = 2}, ...) or a Topology; it must be
    bipartite. The loop ends when `max_gradients` gradients (all ranks together) are applied
    or `max_seconds` have passed, whichever comes first. `same_start=False` keeps each rank's
    own initial parameters instead of broadcasting rank 0's. `store` defaults to the
    rendezvous store of the default group.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise UserError("run_adpsgd needs torch.distributed initialized (torchrun + init_process_group)")
    if max_gradients is None and max_seconds is None:
        raise UserError("run_adpsgd: give max_gradients or max_seconds (or both)")
    if max_gradients is not None and max_gradients < 0:
        raise UserError(f"max_gradients must be >= 0, got {max_gradients}")
    if not lr >= 0 or not slowdown >= 1 or (snapshot_every is not None and not snapshot_every > 0):
        raise UserError(
            f"need lr >= 0, slowdown >= 1, snapshot_every > 0 (got {lr}, {slowdown}, {snapshot_every})"
        )
    if max_snapshots < 2:
        raise UserError(f"max_snapshots must be >= 2, got {max_snapshots}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    ranks = [dist.get_global_rank(group, i) if group is not None else i for i in range(world)]
    try:
        topo = topology if isinstance(topology, Topology) else TopologySpec.parse(topology).build(world, seed)
    except ValueError as e:
        raise UserError(f"topology: {e}") from None
    if topo.n != world:
        raise UserError(f"the topology has {topo.n} nodes for {world} ranks")
    active = active_set(topo)  # the same error on every rank, before any collective
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        raise UserError("run_adpsgd trains the float32 CPU parameters of a model with trainable parameters")

    flat = Flat.from_module(model)
    d = flat.d
    x = flat.flatten(model).contiguous()  # x_i, the state
    xhat = x.clone()  # x̂_i, the read copy the parameters are views of
    grad = torch.zeros_like(x)
    named = _flat_views(model, flat, xhat, grad)

    # -- start: one x₀, one key for the counter, a gossip group ---------------------------------
    nonce = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(nonce, ranks[0], group=group)
    key = f"distsgd/adpsgd_real/{nonce[0]}/tickets"
    if same_start:
        dist.broadcast(x, ranks[0], group=group)
        for b in model.buffers():
            dist.broadcast(b, ranks[0], group=group)
    store = store if store is not None else dist.distributed_c10d._get_default_store()
    gossip = _gossip_group(ranks)
    neighbours = sorted(topo.graph.neighbors(rank))
    gen = rng.generator(seed, rank, "events")  # this rank's neighbour draws
    batches = iter(batches)
    budget = max_gradients
    abort = 1 << 60  # added to the counter by a failing rank: every other rank stops

    lock = threading.Lock()
    st = {"writes": 0, "averagings": 0, "sent": 0, "received": 0, "error": None}

    def serve() -> None:  # a passive rank's server thread
        flag, incoming, reply = torch.empty(1), torch.empty(d), torch.empty(d)
        waiting = len(neighbours)  # a stop from each (active) neighbour ends it
        try:
            while waiting:
                src = dist.recv(flag, group=gossip)  # a request from any active neighbour
                st["received"] += 4
                if flag.item() == STOP:
                    waiting -= 1
                    continue
                with lock:  # x_j is held from the copy to the average: the averaging is atomic
                    reply.copy_(x)
                    out = dist.isend(reply, src, group=gossip)  # both directions at once
                    dist.recv(incoming, src, group=gossip)
                    torch.add(x, incoming, out=x).mul_(0.5)  # (x_j + x_i)/2, bit-equal to i's
                    st["writes"] += 1
                    st["averagings"] += 1
                out.wait()
                st["sent"] += 4 * d
                st["received"] += 4 * d
        except BaseException:
            st["error"] = traceback.format_exc()
            store.add(key, abort)

    def average(j: int, flag: torch.Tensor, reply: torch.Tensor) -> None:  # active i with passive j
        flag[0] = AVERAGE
        dist.send(flag, ranks[j], group=gossip)
        out = dist.isend(x, ranks[j], group=gossip)  # x_i out while x_j comes in (full duplex)
        dist.recv(reply, ranks[j], group=gossip)
        out.wait()
        torch.add(x, reply, out=x).mul_(0.5)
        st["writes"] += 1
        st["averagings"] += 1
        st["sent"] += 4 * (d + 1)
        st["received"] += 4 * d

    staleness: list[int] = []
    mixing: list[int] = []
    snaps = _Snapshots(snapshot_every, max_snapshots)
    gradients, compute, failure = 0, 0.0, None
    req, reply = torch.empty(1), torch.empty(d)
    server = threading.Thread(target=serve, name="adpsgd-server", daemon=True)

    dist.barrier(group=gossip)  # the common start
    t0 = time.perf_counter()
    if not active[rank] and neighbours:
        server.start()
    ticket = 0  # the counter at this rank's previous ticket (≈ at its read)
    try:
        while True:
            now = time.perf_counter() - t0
            if max_seconds is not None and now >= max_seconds:
                break
            with lock:  # 1. read
                if snaps.due(now):
                    snaps.take(now, x)
                xhat.copy_(x)
                read_writes = st["writes"]
            c = time.perf_counter()  # 2. gradient at x̂
            inputs, targets = next(batches)
            grad.zero_()
            loss_fn(model(inputs), targets).backward()
            _collect(named, flat, grad)
            c = time.perf_counter() - c
            if slowdown > 1:
                time.sleep((slowdown - 1) * c)
                c *= slowdown
            compute += c
            new = store.add(key, 1)  # the ticket
            if new >= abort or (budget is not None and new > budget):
                break
            if st["error"] is not None:
                break
            if active[rank] and neighbours:  # 3. average with a passive neighbour
                average(neighbours[int(torch.randint(len(neighbours), (1,), generator=gen))], req, reply)
            if weight_decay:
                grad.add_(xhat, alpha=weight_decay)
            with lock:  # 4. apply
                x.sub_(grad, alpha=lr)
                mixing.append(st["writes"] - read_writes)
            gradients += 1
            staleness.append(new - ticket - 1)
            ticket = new
    except BaseException as e:  # let the others stop, serve the stops, then report it
        failure = e
        store.add(key, abort)
    seconds = time.perf_counter() - t0
    if active[rank]:  # stop the passive neighbours' servers
        req[0] = STOP
        for j in neighbours:
            dist.send(req, ranks[j], group=gossip)
            st["sent"] += 4
    elif neighbours:
        server.join()
    if snapshot_every is not None:
        with lock:
            snaps.take(seconds, x)

    # -- after the loop: collectives are safe again ----------------------------------------------
    failed = failure is not None or st["error"] is not None
    counts = torch.tensor([gradients, st["averagings"], float(failed), snaps.level], dtype=torch.float64)
    every = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(every, counts, group=group)
    every_t = torch.stack(every)
    if failure is not None:
        raise failure
    if st["error"] is not None:
        raise RuntimeError(f"adpsgd server thread on rank {rank} failed:\n{st['error']}")
    if bool(every_t[:, 2].any()):
        bad = [i for i in range(world) if every_t[i, 2]]
        raise RuntimeError(f"adpsgd: rank(s) {bad} failed; see their errors")

    snapshots: list[tuple[float, torch.Tensor]] = []
    interval = None
    if snapshot_every is not None:
        level = int(every_t[:, 3].max())
        while snaps.level < level:
            snaps.thin()
        interval = snaps.interval
        count = torch.tensor([float(len(snaps.items))])
        dist.all_reduce(count, op=dist.ReduceOp.MIN, group=group)
        items = snaps.items[: int(count)]
        times = torch.tensor([t for t, _ in items], dtype=torch.float64)
        dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)  # the latest rank's copy
        for t, (_, v) in zip(times.tolist(), items, strict=True):
            total = v.double()
            dist.all_reduce(total, group=group)
            snapshots.append((t, (total / world).float()))
    final = x.double()
    dist.all_reduce(final, group=group)
    final = (final / world).float()
    with torch.no_grad():  # the model holds this rank's x_i
        xhat.copy_(x)
    return AsyncResult(
        rank=rank,
        active=active[rank],
        gradients=gradients,
        averagings=st["averagings"],
        staleness=Staleness.of(staleness),
        mixing_staleness=Staleness.of(mixing),
        bytes_sent=st["sent"],
        bytes_received=st["received"],
        seconds=seconds,
        compute_seconds=compute,
        gradients_per_rank=[int(v) for v in every_t[:, 0]],
        averagings_per_rank=[int(v) for v in every_t[:, 1]],
        final=final,
        snapshots=snapshots,
        snapshot_interval=interval,
    )
