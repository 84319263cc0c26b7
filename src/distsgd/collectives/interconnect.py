"""Interconnects: which links exist, their bandwidth and latency, and how messages route.

Vertices 0..n−1 are the compute nodes (accelerators); routers and switches come after.
Every node reaches the network through `nis` network interfaces, each one injection and
one ejection link of the link bandwidth, so a node with one interface sends one packet
stream at a time however many links its router has; the simulator spreads a node's
messages over its interfaces round-robin (the MultiTree paper assigns NIs the same way).

- direct networks (ring, mesh R×C, torus R×C): node i has its own router n + i; routers
  are joined by full-duplex links (one directed link each way); routing is
  dimension-order (X then Y, the shorter way round on a torus, ties go +);
- switched networks (switch, fat-tree, BiGraph): node links go to a leaf switch
  (these are the node's injection/ejection links); switches are joined by links of the
  same bandwidth; routing is the shortest up-down path, spreading destinations over the
  spines (fat-tree) or the other group's switches (BiGraph) by destination id.

Directed links are numbered; a route is the list of link ids a message crosses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import UserError

KINDS = ("ring", "mesh", "torus", "switch", "fattree", "bigraph")


@dataclass
class Interconnect:
    name: str
    kind: str
    n: int  # compute nodes
    vertices: int
    bandwidth: float  # bytes/s of one network link
    latency: float  # seconds per network link
    nis: int = 1  # network interfaces per node
    shape: tuple[int, ...] = ()
    groups: list[list[int]] = field(default_factory=list)  # nodes sharing a switch / a row
    links: list[tuple[int, int, float, float]] = field(default_factory=list)  # (u, v, bw, lat)
    _index: dict[tuple[int, int], list[int]] = field(default_factory=dict, repr=False)

    def add_link(self, u: int, v: int, bw: float, lat: float) -> int:
        k = len(self.links)
        self._index.setdefault((u, v), []).append(k)
        self.links.append((u, v, bw, lat))
        return k

    def link(self, u: int, v: int) -> int:
        return self._index[(u, v)][0]

    def parallel(self, u: int, v: int) -> list[int]:
        """All links from u to v (a node's interfaces to its router or switch)."""
        return self._index[(u, v)]

    def has_link(self, u: int, v: int) -> bool:
        return (u, v) in self._index

    @property
    def direct(self) -> bool:
        return self.kind in ("ring", "mesh", "torus")

    def attach(self, node: int) -> int:
        """The router or switch that node attaches to."""
        return self._attach[node]

    @cached_property
    def _attach(self) -> list[int]:
        out = [-1] * self.n
        for u, v, _bw, _lat in self.links:
            if u < self.n:
                out[u] = v
        return out

    @cached_property
    def neighbors(self) -> list[list[int]]:
        """Compute nodes one network hop away (direct networks: adjacent routers)."""
        if not self.direct:
            return [[j for j in range(self.n) if j != i] for i in range(self.n)]
        nb = [[] for _ in range(self.n)]
        for u, v, _bw, _lat in self.links:
            if u >= self.n and v >= self.n:
                nb[u - self.n].append(v - self.n)
        return nb

    def injection_bandwidth(self, node: int) -> float:
        """What node can push into the network per second: its interfaces, capped by its
        router's outgoing network links on a direct network."""
        bw = sum(self.links[k][2] for k in self.parallel(node, self.attach(node)))
        if self.direct:
            r = self.n + node
            out = sum(b for (u, v, b, _) in self.links if u == r and v >= self.n)
            bw = min(bw, out)
        return bw

    @cached_property
    def node_bandwidth(self) -> float:
        """B_node: the least injection bandwidth of any node (the lower bound uses it)."""
        return min(self.injection_bandwidth(i) for i in range(self.n))

    # ---- routing ------------------------------------------------------------------
    def switch_path(self, a: int, b: int, dst: int) -> list[int]:
        """Router/switch vertices from a to b (inclusive)."""
        if a == b:
            return [a]
        if self.direct:
            return self._dimension_order(a - self.n, b - self.n)
        return self._up_down(a, b, dst)

    def route(self, src: int, dst: int) -> list[int]:
        """Link ids from node src to node dst: injection, network hops, ejection."""
        if src == dst:
            return []
        path = self.switch_path(self.attach(src), self.attach(dst), dst)
        hops = [self.link(src, path[0])]
        hops += [self.link(u, v) for u, v in zip(path, path[1:], strict=False)]
        hops.append(self.link(path[-1], dst))
        return hops

    def _dimension_order(self, s: int, d: int) -> list[int]:
        rows, cols = self.shape
        wrap = self.kind in ("torus", "ring")
        r, c = divmod(s, cols)
        dr, dc = divmod(d, cols)
        out = [self.n + s]

        def steps(a, b, size):
            if a == b:
                return []
            fwd = (b - a) % size
            if not wrap:
                return [1 if b > a else -1] * abs(b - a)
            return [1] * fwd if fwd <= size - fwd else [-1] * (size - fwd)

        for k in steps(c, dc, cols):
            c = (c + k) % cols
            out.append(self.n + r * cols + c)
        for k in steps(r, dr, rows):
            r = (r + k) % rows
            out.append(self.n + r * cols + c)
        return out

    def _up_down(self, a: int, b: int, dst: int) -> list[int]:
        if self.has_link(a, b):
            return [a, b]
        mids = self._middle[(a, b)]
        return [a, mids[dst % len(mids)], b]

    @cached_property
    def _middle(self) -> dict[tuple[int, int], list[int]]:
        """For switch pairs two hops apart: the switches in between (spines, other group)."""
        sw = range(self.n, self.vertices)
        nbrs = {s: {v for (u, v, *_r) in self.links if u == s and v >= self.n} for s in sw}
        mids = {}
        for a in sw:
            for b in sw:
                if a != b and b not in nbrs[a]:
                    common = sorted(nbrs[a] & nbrs[b])
                    if common:
                        mids[(a, b)] = common
        return mids

    def summary(self) -> dict:
        return {
            "name": self.name,
            "nodes": self.n,
            "links": len(self.links),
            "link_bandwidth": self.bandwidth,
            "link_latency": self.latency,
            "nis": self.nis,
            "node_bandwidth": self.node_bandwidth,
        }


def _direct(kind: str, rows: int, cols: int, bw: float, lat: float, nis: int) -> Interconnect:
    n = rows * cols
    net = Interconnect(
        f"{kind}:{rows}x{cols}" if kind != "ring" else f"ring:{n}", kind, n, 2 * n, bw, lat, nis, (rows, cols)
    )
    for i in range(n):
        for _ in range(nis):
            net.add_link(i, n + i, bw, 0.0)
            net.add_link(n + i, i, bw, 0.0)
    wrap = kind in ("torus", "ring")
    for r in range(rows):
        for c in range(cols):
            u = r * cols + c
            for dr, dc in ((0, 1), (1, 0)):
                rr, cc = r + dr, c + dc
                if not wrap and (rr >= rows or cc >= cols):
                    continue
                rr, cc = rr % rows, cc % cols
                v = rr * cols + cc
                if v == u or net.has_link(n + u, n + v):
                    continue
                net.add_link(n + u, n + v, bw, lat)
                net.add_link(n + v, n + u, bw, lat)
    net.groups = [list(range(r * cols, (r + 1) * cols)) for r in range(rows)]
    return net


def _switched(kind: str, per_switch: int, switches: int, bw: float, lat: float, nis: int, name: str):
    n = per_switch * switches
    spines = switches if kind == "fattree" else 0
    net = Interconnect(name, kind, n, n + switches + spines, bw, lat, nis, (per_switch, switches))
    for i in range(n):
        s = n + i // per_switch
        for _ in range(nis):
            net.add_link(i, s, bw, lat)
            net.add_link(s, i, bw, lat)
    leaf = [n + k for k in range(switches)]
    if kind == "fattree":
        for a in leaf:
            for k in range(spines):
                sp = n + switches + k
                net.add_link(a, sp, bw, lat)
                net.add_link(sp, a, bw, lat)
    elif kind == "bigraph":
        half = switches // 2
        for a in leaf[:half]:
            for b in leaf[half:]:
                net.add_link(a, b, bw, lat)
                net.add_link(b, a, bw, lat)
    net.groups = [list(range(k * per_switch, (k + 1) * per_switch)) for k in range(switches)]
    return net


def make_interconnect(
    spec: str, bandwidth: float = 16e9, latency: float = 150e-9, nis: int = 1
) -> Interconnect:
    """Parse `ring:N`, `mesh:RxC`, `torus:RxC`, `switch:N`, `fattree:K` (K-ary two-level:
    K leaves of K nodes, K spines), `bigraph:PxS` (S switches of P nodes, two groups of
    S/2 switches, complete bipartite between the groups)."""
    m = re.fullmatch(r"(\w+):(\d+)(?:x(\d+))?", spec.strip().lower())
    if not m or m.group(1) not in KINDS:
        raise UserError(
            f"bad topology '{spec}' (use ring:N, mesh:RxC, torus:RxC, switch:N, fattree:K or bigraph:PxS)"
        )
    kind, a, b = m.group(1), int(m.group(2)), m.group(3)
    b = int(b) if b else None
    if bandwidth <= 0 or latency < 0 or nis < 1:
        raise UserError("bandwidth must be > 0, latency >= 0 and nis >= 1")
    two = kind in ("mesh", "torus", "bigraph")
    if two != (b is not None):
        raise UserError(f"bad topology '{spec}': {kind} takes {'two sizes AxB' if two else 'one size'}")
    if kind == "ring":
        if a < 2:
            raise UserError("ring needs at least 2 nodes")
        return _direct("ring", 1, a, bandwidth, latency, nis)
    if kind in ("mesh", "torus"):
        if a < 2 or b < 2:
            raise UserError(f"{kind} needs at least 2x2 nodes")
        return _direct(kind, a, b, bandwidth, latency, nis)
    if kind == "switch":
        if a < 2:
            raise UserError("switch needs at least 2 nodes")
        return _switched("switch", a, 1, bandwidth, latency, nis, f"switch:{a}")
    if kind == "fattree":
        if a < 2:
            raise UserError("fattree:K needs K >= 2")
        return _switched("fattree", a, a, bandwidth, latency, nis, f"fattree:{a}")
    if a < 1 or b < 2 or b % 2:
        raise UserError("bigraph:PxS needs P >= 1 nodes per switch and an even number S >= 2 of switches")
    return _switched("bigraph", a, b, bandwidth, latency, nis, f"bigraph:{a}x{b}")
