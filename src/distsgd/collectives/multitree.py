"""MultiTree all-reduce (Huang, Majumder, Kim, Muzahid, Yum, Kim, "Communication
Algorithm-Architecture Co-Design for Distributed Deep Learning", ISCA 2021, §IV).

One spanning tree per node r, rooted at r, carries chunk r (S/N bytes). The trees are
grown together, one level per time step t, so that no directed network link carries two
messages in the same step (contention-free by construction):

- at each time step every link is free again and every node has `slots` sends and
  `slots` receives (its network interfaces: the paper's kary − 1);
- the trees take turns in root order, each turn adding at most one node, until no tree
  can grow in this step; a tree's candidate parents are the nodes it held when the step
  began, scanned in the order they joined (so the tree grows by one level per step);
- a parent p may adopt a node c not yet in the tree when p has a send slot, c has a
  receive slot, and every network link on the route p → c is unused in this step (on a
  mesh or torus c must be p's neighbour; on switched networks nodes on p's switch come
  first, then nodes by switch distance).

All-gather sends parent → child at step t; reduce-scatter runs the trees upward in
reverse step order, child → parent at step T − 1 − t, so a node forwards its partial sum
after its own subtree's has arrived. T is the number of steps per phase.
"""

from __future__ import annotations

from ..errors import UserError
from .interconnect import Interconnect
from .schedules import COPY, REDUCE, Message, Schedule


def _network_links(net: Interconnect, route: list[int]) -> list[int]:
    """The router/switch-to-router/switch links of a route (injection and ejection
    links are the node's interfaces, limited by its slots instead)."""
    return [k for k in route if net.links[k][0] >= net.n and net.links[k][1] >= net.n]


def build_trees(net: Interconnect, slots: int | None = None):
    """Grow the N trees. Returns (edges, T) with edges = [(tree, child, parent, t)]."""
    n = net.n
    slots = slots or net.nis
    members = [[r] for r in range(n)]
    in_tree = [{r} for r in range(n)]
    if net.direct:
        candidates = {p: list(net.neighbors[p]) for p in range(n)}
    else:  # same switch first, then by number of switch hops, then by id
        candidates = {
            p: sorted((c for c in range(n) if c != p), key=lambda c, p=p: (len(net.route(p, c)), c))
            for p in range(n)
        }
    routes: dict[tuple[int, int], list[int]] = {}
    edges: list[tuple[int, int, int, int]] = []
    t = 0
    while any(len(m) < n for m in members):
        used: set[int] = set()
        send = [slots] * n
        recv = [slots] * n
        frozen = [list(m) for m in members]
        grew = True
        step_edges = 0
        while grew:
            grew = False
            for r in range(n):
                if len(members[r]) == n:
                    continue
                if _grow(
                    net, r, frozen[r], in_tree[r], candidates, routes, used, send, recv, members, edges, t
                ):
                    grew = True
                    step_edges += 1
        if step_edges == 0:  # cannot happen on a connected network with slots >= 1
            raise RuntimeError(f"MultiTree construction stalled at step {t} on {net.name}")
        t += 1
    return edges, t


def _grow(net, r, parents, tree, candidates, routes, used, send, recv, members, edges, t) -> bool:
    for p in parents:
        if send[p] == 0:
            continue
        for c in candidates[p]:
            if c in tree or recv[c] == 0:
                continue
            key = (p, c)
            if key not in routes:
                routes[key] = _network_links(net, net.route(p, c))
            links = routes[key]
            if any(k in used for k in links):
                continue
            used.update(links)
            send[p] -= 1
            recv[c] -= 1
            tree.add(c)
            members[r].append(c)
            edges.append((r, c, p, t))
            return True
    return False


def multitree(n: int, net: Interconnect, slots: int | None = None, collective: str = "allreduce") -> Schedule:
    """The MultiTree all-reduce schedule on `net` (see the module docstring); its
    reduce-scatter (chunk r reduced up tree r to its root r) and all-gather (chunk r sent
    down tree r) are the two phases alone, T steps each."""
    if net is None or net.n != n:
        raise ValueError("multitree needs the interconnect it is built for")
    if collective not in ("allreduce", "reduce_scatter", "allgather"):
        raise UserError(f"multitree has no {collective} (use ring, biring or multiring)")
    edges, T = build_trees(net, slots)
    msgs = []
    ag0 = T if collective == "allreduce" else 0
    for r, c, p, t in edges:
        if collective != "allgather":
            msgs.append(Message(T - 1 - t, c, p, r, r + 1, REDUCE))  # reduce-scatter, upward
        if collective != "reduce_scatter":
            msgs.append(Message(ag0 + t, p, c, r, r + 1, COPY))  # all-gather, downward
    return Schedule(
        "multitree", n, n, msgs, info={"steps_per_phase": T, "edges": edges}, collective=collective
    )


def steps_lower_bound(net: Interconnect, slots: int | None = None) -> int:
    """Steps per phase no tree schedule can beat: every node must receive N − 1 chunks
    through at most min(slots, links into its router) receptions per step, the network
    carries at most one message per directed link per step, and a chunk needs at least
    the network distance from its root to reach the farthest node."""
    n = net.n
    slots = slots or net.nis
    if net.direct:
        indeg = min(len(net.neighbors[i]) for i in range(n))
        per_step = min(slots, indeg)
        net_links = sum(1 for (u, v, *_r) in net.links if u >= n and v >= n)
        by_links = -(-n * (n - 1) // net_links)
        diameter = max(len(_network_links(net, net.route(0, j))) for j in range(n))
        return max(-(-(n - 1) // per_step), by_links, diameter)
    return -(-(n - 1) // slots)
