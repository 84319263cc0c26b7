"""Collective algorithms (all-reduce, reduce-scatter, all-gather, broadcast) as explicit
schedules of messages.

The vector of S bytes is cut into `chunks` pieces (chunk k has `sizes[k]` bytes). A
message moves the contiguous chunk range [lo, hi) from src to dst at a logical step,
and either adds it into the destination (`reduce`) or overwrites it (`copy`). A schedule
is correct when, executed in step order (messages of one step all read the values from
before that step), every node ends with what its collective promises (`expected`):

- allreduce: every node holds the sum of all nodes' vectors;
- reduce_scatter: node i holds the sum of block i, where block i is the chunks
  [i·chunks/n, (i+1)·chunks/n) (chunks is a multiple of n, all of equal size, so block i
  is the i-th n-th of the vector, as in `torch.distributed.reduce_scatter_tensor`);
- allgather: node i starts with block i only and every node ends with all blocks;
- broadcast: every node ends with the vector of node `root`.

`execute` runs a schedule on numbers, and tests check it against `expected` for every
algorithm, n and interconnect.

Timing is not decided here: the network simulator starts a message as soon as the data
it carries is complete (every earlier-step message into src that overlaps its chunks has
arrived), so steps order data dependencies, not a global lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from ..errors import UserError
from .interconnect import Interconnect

REDUCE, COPY = 0, 1
COLLECTIVES = ("allreduce", "reduce_scatter", "allgather", "broadcast")


@dataclass(frozen=True)
class Message:
    step: int
    src: int
    dst: int
    lo: int  # first chunk
    hi: int  # one past the last chunk
    op: int  # REDUCE or COPY


@dataclass
class Schedule:
    algorithm: str
    n: int
    chunks: int
    messages: list[Message]
    fractions: np.ndarray | None = None  # share of the vector per chunk (default equal)
    info: dict | None = None
    collective: str = "allreduce"  # one of COLLECTIVES
    root: int = 0  # the source of a broadcast

    def __post_init__(self):
        if self.fractions is None:
            self.fractions = np.full(self.chunks, 1.0 / self.chunks)
        if self.collective not in COLLECTIVES:
            raise ValueError(f"unknown collective {self.collective!r}")
        if self.collective in ("reduce_scatter", "allgather") and self.chunks % self.n:
            raise ValueError("a reduce-scatter or all-gather schedule needs a multiple of n chunks")

    def block(self, node: int) -> tuple[int, int]:
        """Chunk range [lo, hi) of node's block (reduce-scatter's result, all-gather's input)."""
        per = self.chunks // self.n
        return node * per, (node + 1) * per

    @property
    def steps(self) -> int:
        return 1 + max(m.step for m in self.messages) if self.messages else 0

    def chunk_bounds(self, length: int) -> np.ndarray:
        """Element offsets of the chunks in a vector of `length` elements [chunks + 1]."""
        edges = np.concatenate([[0.0], np.cumsum(self.fractions)])
        return np.round(edges * length).astype(np.int64)

    def fields(self) -> np.ndarray:
        """The messages as an int64 array [messages, 6]: step, src, dst, lo, hi, op per row
        (read with C-level getters: a 1024-node ring has two million messages)."""
        m = len(self.messages)
        out = np.empty((6, m), dtype=np.int64)
        for k, name in enumerate(("step", "src", "dst", "lo", "hi", "op")):
            out[k] = np.fromiter(map(attrgetter(name), self.messages), dtype=np.int64, count=m)
        return out.T

    def message_bytes(self, size: float, fields: np.ndarray | None = None) -> np.ndarray:
        """Bytes each message carries when the vector has `size` bytes (`fields`: this
        schedule's `fields()`, when the caller has them already)."""
        f = self.fields() if fields is None else fields
        cum = np.concatenate([[0.0], np.cumsum(self.fractions)])
        return (cum[f[:, 4]] - cum[f[:, 3]]) * size


def from_transfers(n: int, transfers, chunks_per_node: int = 1, collective: str = "allgather",
                   algorithm: str = "imported") -> Schedule:
    """A schedule made elsewhere (a synthesizer such as TACOS, or by hand): `transfers` are
    (step, src, dst, chunk) with chunk in [0, n·chunks_per_node), node i's own chunks being
    [i·chunks_per_node, (i+1)·chunks_per_node) as in every all-gather here; each becomes a
    copy of that chunk from src to dst at that step. Checked: nodes and chunks in range, no
    transfer out of a node that does not yet hold its chunk (for an all-gather, where that
    is defined); `execute` and `expected` then say whether it is a complete collective."""
    chunks = n * chunks_per_node
    msgs = []
    for step, src, dst, chunk in sorted(transfers):
        if not (0 <= src < n and 0 <= dst < n and src != dst and 0 <= chunk < chunks and step >= 0):
            raise UserError(f"bad transfer (step {step}, {src} -> {dst}, chunk {chunk}) for {n} nodes, {chunks} chunks")
        msgs.append(Message(int(step), int(src), int(dst), int(chunk), int(chunk) + 1, COPY))
    if collective == "allgather":
        held = {(i, c) for i in range(n) for c in range(i * chunks_per_node, (i + 1) * chunks_per_node)}
        by_step: dict[int, list[Message]] = {}
        for m in msgs:
            by_step.setdefault(m.step, []).append(m)
        for step in sorted(by_step):
            for m in by_step[step]:
                if (m.src, m.lo) not in held:
                    raise UserError(f"transfer at step {step}: node {m.src} sends chunk {m.lo} before holding it")
            held.update((m.dst, m.lo) for m in by_step[step])
    return Schedule(algorithm, n, chunks, msgs, collective=collective)


def execute(schedule: Schedule, vectors: np.ndarray) -> np.ndarray:
    """Run the schedule on data [n, L] (float64) and return every node's result [n, L]."""
    buf = np.array(vectors, dtype=np.float64, copy=True)
    bounds = schedule.chunk_bounds(buf.shape[1])
    by_step: dict[int, list[Message]] = {}
    for m in schedule.messages:
        by_step.setdefault(m.step, []).append(m)
    for s in sorted(by_step):
        msgs = by_step[s]
        payload = [buf[m.src, bounds[m.lo] : bounds[m.hi]].copy() for m in msgs]
        for m, p in zip(msgs, payload, strict=True):
            seg = slice(bounds[m.lo], bounds[m.hi])
            if m.op == REDUCE:
                buf[m.dst, seg] += p
            else:
                buf[m.dst, seg] = p
    return buf


def expected(schedule: Schedule, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the collective must leave on every node, for data [n, L]: (values [n, L], mask
    [n, L] of the entries the collective defines; the others are free scratch space).
    For all-gather only block i of node i's input counts."""
    x = np.asarray(vectors, dtype=np.float64)
    n, length = x.shape
    mask = np.ones_like(x, dtype=bool)
    if schedule.collective == "allreduce":
        return np.broadcast_to(x.sum(0), x.shape).copy(), mask
    if schedule.collective == "broadcast":
        return np.broadcast_to(x[schedule.root], x.shape).copy(), mask
    bounds = schedule.chunk_bounds(length)
    if schedule.collective == "allgather":
        out = np.empty_like(x)
        for i in range(n):
            lo, hi = schedule.block(i)
            out[:, bounds[lo] : bounds[hi]] = x[i, bounds[lo] : bounds[hi]]
        return out, mask
    total = x.sum(0)  # reduce_scatter
    out = np.zeros_like(x)
    mask[:] = False
    for i in range(n):
        lo, hi = schedule.block(i)
        out[i, bounds[lo] : bounds[hi]] = total[bounds[lo] : bounds[hi]]
        mask[i, bounds[lo] : bounds[hi]] = True
    return out, mask


# ---- ring ---------------------------------------------------------------------------
def ring_order(net: Interconnect | None, n: int) -> list[int]:
    """A cycle through all nodes whose consecutive nodes are one hop apart when possible:
    a Hamiltonian cycle on a mesh or torus with an even side, node order otherwise."""
    if net is None or not net.direct or net.kind == "ring":
        return list(range(n))
    rows, cols = net.shape
    if rows % 2 == 0:
        order = [c for c in range(cols)]  # row 0, left to right
        for r in range(1, rows):  # snake over columns 1.. in rows 1..R-1
            cs = range(cols - 1, 0, -1) if r % 2 == 1 else range(1, cols)
            order += [r * cols + c for c in cs]
        order += [r * cols for r in range(rows - 1, 0, -1)]  # back up column 0
        return order
    if cols % 2 == 0:  # transpose the construction
        order = [r * cols for r in range(rows)]
        for c in range(1, cols):
            rs = range(rows - 1, 0, -1) if c % 2 == 1 else range(1, rows)
            order += [r * cols + c for r in rs]
        order += [c for c in range(cols - 1, 0, -1)]
        return order
    return [r * cols + (c if r % 2 == 0 else cols - 1 - c) for r in range(rows) for c in range(cols)]


def _ring_phases(order: list[int], chunk_of, step0: int, msgs: list[Message]) -> int:
    """Reduce-scatter then all-gather around `order` (n−1 steps each); chunk_of(k) maps the
    ring's k-th chunk to a global chunk id. Returns the next free step."""
    step0 = _ring_rs(order, chunk_of, step0, msgs)
    return _ring_ag(order, chunk_of, step0, msgs)


def _ring_rs(order: list[int], chunk_of, step0: int, msgs: list[Message]) -> int:
    """Ring reduce-scatter: at step s node k sends chunk (k − s) to k + 1, which adds it;
    node k ends with the sum of chunk (k + 1)."""
    p = len(order)
    for s in range(p - 1):
        for k in range(p):
            c = chunk_of((k - s) % p)
            msgs.append(Message(step0 + s, order[k], order[(k + 1) % p], c, c + 1, REDUCE))
    return step0 + p - 1


def _ring_ag(order: list[int], chunk_of, step0: int, msgs: list[Message]) -> int:
    """Ring all-gather from node k holding chunk (k + 1): at step s node k forwards
    chunk (k + 1 − s) to k + 1."""
    p = len(order)
    for s in range(p - 1):
        for k in range(p):
            c = chunk_of((k + 1 - s) % p)
            msgs.append(Message(step0 + s, order[k], order[(k + 1) % p], c, c + 1, COPY))
    return step0 + p - 1


def _rings(name: str, n: int, orders: list[list[int]], collective: str, root: int, pieces: int | None):
    """The vector split evenly over the rings `orders` (each a cycle through all n nodes),
    every ring running the collective on its share at the same time.

    Reduce-scatter / all-gather / all-reduce: chunks = R·n (R rings); chunk b·R + r is
    ring r's share of block b, so node b ends reduce-scatter owning block b (the ring's
    chunk labels are rotated so that position k of a ring owns its own node's block).
    Broadcast: every ring is cut at the root into a chain, and its share is pipelined down
    the chain in `pieces` pieces (default 2n), n − 1 hops."""
    R = len(orders)
    msgs: list[Message] = []
    if collective == "broadcast":
        k = pieces or 2 * n
        for r, order in enumerate(orders):
            at = order.index(root)
            chain = order[at:] + order[:at]
            for c in range(k):
                for h in range(n - 1):
                    msgs.append(Message(c + h, chain[h], chain[h + 1], r * k + c, r * k + c + 1, COPY))
        return Schedule(name, n, R * k, msgs, collective="broadcast", root=root)
    step = 0
    if collective in ("allreduce", "reduce_scatter"):
        for r, order in enumerate(orders):
            end = _ring_rs(order, lambda j, o=order, r=r: o[(j - 1) % n] * R + r, 0, msgs)
        step = end
    if collective in ("allreduce", "allgather"):
        for r, order in enumerate(orders):
            _ring_ag(order, lambda j, o=order, r=r: o[(j - 1) % n] * R + r, step, msgs)
    return Schedule(name, n, R * n, msgs, collective=collective, root=root)


def ring(
    n: int,
    net: Interconnect | None = None,
    collective: str = "allreduce",
    root: int = 0,
    pieces: int | None = None,
) -> Schedule:
    """Ring all-reduce (Patarasuk & Yuan 2009): n−1 reduce-scatter steps, n−1 all-gather
    steps, each node sending S/n per step: 2(n−1)α + 2(n−1)/n · S/B. Its reduce-scatter
    and all-gather are the two halves; its broadcast is a pipelined chain from the root."""
    return _rings("ring", n, [ring_order(net, n)], collective, root, pieces)


def bidirectional_ring(
    n: int,
    net: Interconnect | None = None,
    collective: str = "allreduce",
    root: int = 0,
    pieces: int | None = None,
) -> Schedule:
    """Two counter-rotating rings over the same cycle, each carrying half of the vector:
    on a network with full-duplex links and ≥ 2 interfaces per node every link is used
    both ways, (n−1)/n · S/B for an all-reduce instead of 2(n−1)/n · S/B."""
    order = ring_order(net, n)
    if n == 2:
        return _rings("biring", n, [order], collective, root, pieces)
    return _rings("biring", n, [order, order[::-1]], collective, root, pieces)


def torus_hamiltonian_cycles(rows: int, cols: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Two edge-disjoint Hamiltonian cycles that together use every link of an R×C torus
    (R, C ≥ 3; every torus has such a decomposition, Kotzig 1973). Start from the rows
    (cycle A) and the columns (cycle B); swapping the colours of the four edges of a unit
    square whose horizontal edges are in one and vertical edges in the other keeps both
    2-regular and merges two cycles of each into one when they were different. Swap along
    the diagonal, then search (seeded, deterministic) over such swaps until each colour is
    one cycle. Returns the two cycles as node orders."""
    import random

    n = rows * cols

    def nid(r: int, c: int) -> int:
        return (r % rows) * cols + (c % cols)

    # edge e = 2·node + 0: node → right neighbour; 2·node + 1: node → lower neighbour
    ends = []
    for v in range(n):
        r, c = divmod(v, cols)
        ends += [(v, nid(r, c + 1)), (v, nid(r + 1, c))]
    color = [e & 1 for e in range(2 * n)]

    def square(r: int, c: int) -> tuple[int, int, int, int]:
        return 2 * nid(r, c), 2 * nid(r + 1, c), 2 * nid(r, c) + 1, 2 * nid(r, c + 1) + 1

    def cycles(col: int) -> int:
        parent = list(range(n))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        k = n
        for e, (a, b) in enumerate(ends):
            if color[e] == col:
                fa, fb = find(a), find(b)
                if fa != fb:
                    parent[fa] = fb
                    k -= 1
        return k

    def swap(r: int, c: int) -> None:
        for e in square(r, c):
            color[e] ^= 1

    for i in range(min(rows, cols) - 1):
        swap(i, i)
    rng = random.Random(seed)
    score = cycles(0) + cycles(1)
    for _ in range(200 * n * n):
        if score == 2:
            break
        r, c = rng.randrange(rows), rng.randrange(cols)
        h1, h2, v1, v2 = square(r, c)
        if not (color[h1] == color[h2] != color[v1] == color[v2]):
            continue
        swap(r, c)
        new = cycles(0) + cycles(1)
        if new < score or (new == score and rng.random() < 0.5):
            score = new
        else:
            swap(r, c)
    if score != 2:  # not seen for any torus up to 16×16
        raise RuntimeError(f"no Hamiltonian decomposition found for torus {rows}x{cols}")
    out = []
    for col in (0, 1):
        adj: list[list[int]] = [[] for _ in range(n)]
        for e, (a, b) in enumerate(ends):
            if color[e] == col:
                adj[a].append(b)
                adj[b].append(a)
        order, prev = [0], -1
        while len(order) < n:
            v = order[-1]
            nxt = adj[v][0] if adj[v][0] != prev else adj[v][1]
            prev = v
            order.append(nxt)
        out.append(order)
    return out[0], out[1]


def multiring(
    n: int,
    net: Interconnect | None = None,
    collective: str = "allreduce",
    root: int = 0,
    pieces: int | None = None,
) -> Schedule:
    """Edge-disjoint rings that use every link of an R×C torus (R, C ≥ 3), as NCCL does
    with several rings: the torus split into two Hamiltonian cycles
    (`torus_hamiltonian_cycles`), each run both ways, so four rings carry a quarter of the
    vector each and every directed network link carries exactly one of them: (n−1)/n ·
    S/(2B) for an all-reduce with 4 interfaces per node, the bandwidth lower bound."""
    if net is None or net.kind != "torus" or min(net.shape) < 3:
        raise UserError("multiring needs a torus RxC with both sides >= 3 (use biring elsewhere)")
    a, b = torus_hamiltonian_cycles(*net.shape)
    return _rings("multiring", n, [a, a[::-1], b, b[::-1]], collective, root, pieces)


# ---- recursive halving-doubling -------------------------------------------------------
def halving_doubling(n: int, net: Interconnect | None = None, collective: str = "allreduce") -> Schedule:
    """Rabenseifner's all-reduce (Thakur, Rabenseifner, Gropp 2005): reduce-scatter by
    recursive halving, all-gather by recursive doubling, 2·log₂p steps for p = 2^⌊log₂ n⌋.
    When n is not a power of two, the r = n − p extra nodes first add their vector into
    a partner and get the result back at the end (two extra steps). Its reduce-scatter
    and all-gather (the two halves) need n to be a power of two."""
    p = 1 << (n.bit_length() - 1)
    r = n - p
    if collective not in ("allreduce", "reduce_scatter", "allgather"):
        raise UserError(f"hd has no {collective}")
    if collective != "allreduce" and r:
        raise UserError(f"hd {collective} needs a power-of-two number of nodes, not {n}")
    msgs: list[Message] = []
    step = 0
    # node ids of the p participants; extra node p + i folds into participant i
    if r:
        for i in range(r):
            msgs.append(Message(step, p + i, i, 0, p, REDUCE))
        step += 1
    k = p.bit_length() - 1
    # reduce-scatter: chunk c ends on participant c; bit b processed from the top
    if collective != "allgather":
        for j in range(k):
            b = 1 << (k - 1 - j)
            for u in range(p):
                partner = u ^ b
                high = ~((b << 1) - 1) & (p - 1)  # bits already processed
                base = (u & high) | (partner & b)
                msgs.append(Message(step, u, partner, base, base + b, REDUCE))
            step += 1
    if collective != "reduce_scatter":
        for j in range(k):  # all-gather: reverse order
            b = 1 << j
            for u in range(p):
                partner = u ^ b
                lo = u & ~(b - 1)  # u owns the chunks agreeing with it on every bit >= b
                msgs.append(Message(step, u, partner, lo, lo + b, COPY))
            step += 1
    if r:
        for i in range(r):
            msgs.append(Message(step, i, p + i, 0, p, COPY))
    return Schedule("halving_doubling", n, p, msgs, collective=collective)


# ---- double binary tree ---------------------------------------------------------------
def _inorder_tree(nodes: list[int]) -> tuple[int, dict[int, int]]:
    """Balanced in-order binary tree over `nodes`: the middle is the root. Returns (root,
    parent map). Interior nodes of one tree are leaves of its mirror (NCCL's observation)."""
    parent: dict[int, int] = {}

    def build(lo: int, hi: int, up: int | None) -> int | None:
        if lo >= hi:
            return None
        mid = (lo + hi) // 2
        v = nodes[mid]
        if up is not None:
            parent[v] = up
        build(lo, mid, v)
        build(mid + 1, hi, v)
        return v

    root = build(0, len(nodes), None)
    return root, parent


def _tree_messages(root, parent, n, chunks: range, step0: int, msgs: list[Message]) -> int:
    """Pipelined reduce to the root then broadcast, for each chunk of `chunks`."""
    depth = {root: 0}
    order = [root]
    children: dict[int, list[int]] = {}
    for v, u in parent.items():
        children.setdefault(u, []).append(v)
    for v in order:
        for c in children.get(v, []):
            depth[c] = depth[v] + 1
            order.append(c)
    height = max(depth.values())
    last = step0
    for i, c in enumerate(chunks):
        for v, u in parent.items():  # reduce: deeper nodes first
            s = step0 + i + (height - depth[v])
            msgs.append(Message(s, v, u, c, c + 1, REDUCE))
            last = max(last, s)
        for v, u in parent.items():  # broadcast: parent to child after the root has it
            s = step0 + i + height + depth[u] + 1
            msgs.append(Message(s, u, v, c, c + 1, COPY))
            last = max(last, s)
    return last + 1


def double_binary_tree(n: int, net: Interconnect | None = None, pipeline: int = 8) -> Schedule:
    """NCCL's double binary tree (Sanders, Speck, Träff 2009; NCCL 2.4): two in-order
    binary trees, the second the mirror image of the first, each reducing and
    broadcasting half of the vector, pipelined in `pipeline` pieces per tree."""
    if n == 1:
        return Schedule("dbtree", 1, 1, [])
    nodes = list(range(n))
    msgs: list[Message] = []
    r1, p1 = _inorder_tree(nodes)
    r2, p2 = _inorder_tree(nodes[::-1])
    _tree_messages(r1, p1, n, range(0, pipeline), 0, msgs)
    _tree_messages(r2, p2, n, range(pipeline, 2 * pipeline), 0, msgs)
    return Schedule("dbtree", n, 2 * pipeline, msgs)


# ---- 2D ring and hierarchical -----------------------------------------------------------
def _two_level(groups: list[list[int]], chunk0: int, step0: int, msgs) -> int:
    """Reduce-scatter within each group, all-reduce across groups (nodes of equal position),
    all-gather within groups, on chunks chunk0 .. chunk0 + g·G (g = group size)."""
    g = len(groups[0])
    cross = [[grp[k] for grp in groups] for k in range(g)]
    G = len(groups)
    step = step0
    # within groups: reduce-scatter over g super-chunks of G chunks each
    for s in range(g - 1):
        for grp in groups:
            for k in range(g):
                c = chunk0 + ((k - s) % g) * G
                msgs.append(Message(step + s, grp[k], grp[(k + 1) % g], c, c + G, REDUCE))
    step += g - 1
    # node at position k now owns super-chunk (k + 1) % g; ring all-reduce across groups
    for k in range(g):
        base = chunk0 + ((k + 1) % g) * G
        step_k = _ring_phases(cross[k], lambda j, base=base: base + j, step, msgs)
    step = step_k
    for s in range(g - 1):  # all-gather within groups
        for grp in groups:
            for k in range(g):
                c = chunk0 + ((k + 1 - s) % g) * G
                msgs.append(Message(step + s, grp[k], grp[(k + 1) % g], c, c + G, COPY))
    return step + g - 1


def ring2d(n: int, net: Interconnect) -> Schedule:
    """2D ring on an R×C mesh or torus (Ying et al. 2018; Jia et al. 2018): half of the
    vector goes rows-then-columns, the other half columns-then-rows, at the same time,
    each a ring reduce-scatter, a ring all-reduce in the other dimension and a ring
    all-gather, so the X and Y links are busy together."""
    if net is None or not net.direct or len(net.shape) != 2 or min(net.shape) < 2:
        raise UserError("ring2d needs a mesh or torus interconnect (mesh:RxC or torus:RxC)")
    rows, cols = net.shape
    row_groups = [[r * cols + c for c in range(cols)] for r in range(rows)]
    col_groups = [[r * cols + c for r in range(rows)] for c in range(cols)]
    msgs: list[Message] = []
    half = rows * cols
    _two_level(row_groups, 0, 0, msgs)
    _two_level(col_groups, half, 0, msgs)
    return Schedule("ring2d", n, 2 * half, msgs)


def hierarchical(n: int, net: Interconnect) -> Schedule:
    """Hierarchical all-reduce: ring reduce-scatter among the nodes of each switch (or row),
    ring all-reduce across switches on 1/g of the vector, ring all-gather within."""
    if net is None or not net.groups or len(net.groups) < 1:
        raise UserError("hierarchical needs an interconnect with switches or rows")
    groups = net.groups
    msgs: list[Message] = []
    _two_level(groups, 0, 0, msgs)
    return Schedule("hierarchical", n, n, msgs)


def lower_bound_seconds(net: Interconnect, size: float, collective: str = "allreduce") -> float:
    """Bandwidth lower bound, B_node the least injection bandwidth of a node:
    all-reduce 2(n−1)/n · S / B_node; reduce-scatter and all-gather (n−1)/n · S / B_node
    (S the whole vector: reduce-scatter's input, all-gather's output); broadcast S / B_node
    (every other node must receive all S bytes, the root must send them)."""
    factor = {"allreduce": 2 * (net.n - 1) / net.n, "broadcast": 1.0}.get(collective, (net.n - 1) / net.n)
    return factor * size / net.node_bandwidth


__all__ = [
    "COLLECTIVES",
    "COPY",
    "REDUCE",
    "Message",
    "Schedule",
    "bidirectional_ring",
    "double_binary_tree",
    "execute",
    "expected",
    "halving_doubling",
    "hierarchical",
    "lower_bound_seconds",
    "multiring",
    "ring",
    "ring2d",
    "ring_order",
    "torus_hamiltonian_cycles",
]
