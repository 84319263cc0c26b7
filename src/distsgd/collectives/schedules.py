"""All-reduce algorithms as explicit schedules of messages.

The vector of S bytes is cut into `chunks` pieces (chunk k has `sizes[k]` bytes). A
message moves the contiguous chunk range [lo, hi) from src to dst at a logical step,
and either adds it into the destination (`reduce`) or overwrites it (`copy`). A schedule
is correct when, executed in step order (messages of one step all read the values from
before that step), every node ends with the sum of all nodes' vectors: `execute` checks
this on numbers, and tests check it for every algorithm, n and interconnect.

Timing is not decided here: the network simulator starts a message as soon as the data
it carries is complete (every earlier-step message into src that overlaps its chunks has
arrived), so steps order data dependencies, not a global lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .interconnect import Interconnect

REDUCE, COPY = 0, 1


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

    def __post_init__(self):
        if self.fractions is None:
            self.fractions = np.full(self.chunks, 1.0 / self.chunks)

    @property
    def steps(self) -> int:
        return 1 + max(m.step for m in self.messages) if self.messages else 0

    def chunk_bounds(self, length: int) -> np.ndarray:
        """Element offsets of the chunks in a vector of `length` elements [chunks + 1]."""
        edges = np.concatenate([[0.0], np.cumsum(self.fractions)])
        return np.round(edges * length).astype(np.int64)

    def message_bytes(self, size: float) -> np.ndarray:
        """Bytes each message carries when the vector has `size` bytes."""
        cum = np.concatenate([[0.0], np.cumsum(self.fractions)])
        lo = np.array([m.lo for m in self.messages])
        hi = np.array([m.hi for m in self.messages])
        return (cum[hi] - cum[lo]) * size


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
    p = len(order)
    for s in range(p - 1):  # reduce-scatter: node k sends chunk (k − s) to k + 1
        for k in range(p):
            c = chunk_of((k - s) % p)
            msgs.append(Message(step0 + s, order[k], order[(k + 1) % p], c, c + 1, REDUCE))
    step0 += p - 1
    for s in range(p - 1):  # all-gather: node k forwards chunk (k + 1 − s)
        for k in range(p):
            c = chunk_of((k + 1 - s) % p)
            msgs.append(Message(step0 + s, order[k], order[(k + 1) % p], c, c + 1, COPY))
    return step0 + p - 1


def ring(n: int, net: Interconnect | None = None) -> Schedule:
    """Ring all-reduce (Patarasuk & Yuan 2009): n−1 reduce-scatter steps, n−1 all-gather
    steps, each node sending S/n per step: 2(n−1)α + 2(n−1)/n · S/B."""
    msgs: list[Message] = []
    _ring_phases(ring_order(net, n), lambda k: k, 0, msgs)
    return Schedule("ring", n, n, msgs)


# ---- recursive halving-doubling -------------------------------------------------------
def halving_doubling(n: int, net: Interconnect | None = None) -> Schedule:
    """Rabenseifner's all-reduce (Thakur, Rabenseifner, Gropp 2005): reduce-scatter by
    recursive halving, all-gather by recursive doubling, 2·log₂p steps for p = 2^⌊log₂ n⌋.
    When n is not a power of two, the r = n − p extra nodes first add their vector into
    a partner and get the result back at the end (two extra steps)."""
    p = 1 << (n.bit_length() - 1)
    r = n - p
    msgs: list[Message] = []
    step = 0
    # node ids of the p participants; extra node p + i folds into participant i
    if r:
        for i in range(r):
            msgs.append(Message(step, p + i, i, 0, p, REDUCE))
        step += 1
    k = p.bit_length() - 1
    # reduce-scatter: chunk c ends on participant c; bit b processed from the top
    for j in range(k):
        b = 1 << (k - 1 - j)
        for u in range(p):
            partner = u ^ b
            high = ~((b << 1) - 1) & (p - 1)  # bits already processed
            base = (u & high) | (partner & b)
            msgs.append(Message(step, u, partner, base, base + b, REDUCE))
        step += 1
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
    return Schedule("halving_doubling", n, p, msgs)


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


def lower_bound_seconds(net: Interconnect, size: float) -> float:
    """Bandwidth lower bound on all-reduce time: 2(n−1)/n · S / B_node."""
    return 2 * (net.n - 1) / net.n * size / net.node_bandwidth


__all__ = [
    "COPY",
    "REDUCE",
    "Message",
    "Schedule",
    "double_binary_tree",
    "execute",
    "halving_doubling",
    "hierarchical",
    "lower_bound_seconds",
    "ring",
    "ring2d",
    "ring_order",
]
