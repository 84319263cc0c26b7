"""MultiTree all-reduce (Huang, Majumder, Kim, Muzahid, Yum, Kim, "Communication
Algorithm-Architecture Co-Design for Distributed Deep Learning", ISCA 2021, §IV).

One spanning tree per node r, rooted at r, carries chunk r (S/N bytes). The trees are
grown together, one level per time step t, so that no directed network link carries two
messages in the same step (contention-free by construction):

- at each time step every link is free again and every node has `slots` sends and
  `slots` receives (its network interfaces: the paper's kary − 1);
- the trees take turns in root order, each turn adding at most one node; a tree's
  candidate parents are the nodes it held when the step began, scanned in the order they
  joined (so the tree grows by one level per step);
- a parent p may adopt a node c not yet in the tree when p has a send slot, c has a
  receive slot, and every network link on the route p → c is unused in this step (on a
  mesh or torus c must be p's neighbour; on switched networks nodes on p's switch come
  first, then nodes by switch distance).

All-gather sends parent → child at step t; reduce-scatter runs the trees upward in
reverse step order, child → parent at step T − 1 − t, so a node forwards its partial sum
after its own subtree's has arrived. T is the number of steps per phase.

The greedy result depends on two choices the paper leaves open, so `build_trees` grows the
trees every way below and keeps the fewest steps (`Trees.variant` says which won):

- the order in which a parent tries its neighbours: "links" (the order of its router's
  links: east, south, west, north) or "nswe" (north, south, west, east, as in the authors'
  simulator); on switched networks "any" (any node by switch distance, routes through
  switches that hold nodes allowed) or "adjacent" (only nodes whose route crosses no other
  switch holding nodes, as the authors' depth-first search over spine switches);
- when a step ends: "round" (after a full round of turns in which no tree grew) or
  "last" (after a round whose last turn added nothing, as in the authors' simulator).

With "nswe"/"adjacent" and "last" the steps per phase equal the authors' construction run
on its own topologies (tests/test_collectives.py keeps that table); the other variants
are never kept unless they need fewer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .interconnect import Interconnect
from .schedules import COPY, REDUCE, Message, Schedule

ORDERS_DIRECT = ("links", "nswe")
ORDERS_SWITCHED = ("any", "adjacent")
STOPS = ("round", "last")


@dataclass(frozen=True)
class Trees:
    edges: list[tuple[int, int, int, int]]  # (tree, child, parent, t)
    steps: int  # T, steps per phase
    variant: tuple[str, str]  # (candidate order, step end)


def _network_links(net: Interconnect, route: list[int]) -> list[int]:
    """The router/switch-to-router/switch links of a route (injection and ejection
    links are the node's interfaces, limited by its slots instead)."""
    return [k for k in route if net.links[k][0] >= net.n and net.links[k][1] >= net.n]


def _candidates(net: Interconnect, order: str) -> dict[int, list[int]]:
    """Every node's possible children, in the order it tries them."""
    n = net.n
    if net.direct:
        if order == "links":
            return {p: list(net.neighbors[p]) for p in range(n)}
        rows, cols = net.shape

        def side(p: int, c: int) -> int:  # 0 north, 1 south, 2 west, 3 east
            (pr, pc), (cr, cc) = divmod(p, cols), divmod(c, cols)
            if cc == pc:
                return 0 if cr == (pr - 1) % rows else 1
            return 2 if cc == (pc - 1) % cols else 3

        return {p: sorted(net.neighbors[p], key=lambda c, p=p: side(p, c)) for p in range(n)}
    holds = {net.attach(i) for i in range(n)}  # switches with nodes on them
    out = {}
    for p in range(n):
        cs = sorted((c for c in range(n) if c != p), key=lambda c, p=p: (len(net.route(p, c)), c))
        if order == "adjacent":  # the route may not pass through a switch that holds nodes
            cs = [c for c in cs if not any(v in holds for v in net.switch_path(net.attach(p), net.attach(c), c)[1:-1])]
        out[p] = cs
    return out


def grow_trees(net: Interconnect, slots: int | None = None, order: str = "links", stop: str = "round") -> Trees:
    """Grow the N trees one way (see the module docstring)."""
    n = net.n
    slots = slots or net.nis
    if order not in (ORDERS_DIRECT if net.direct else ORDERS_SWITCHED) or stop not in STOPS:
        raise ValueError(f"no MultiTree variant ({order}, {stop}) on {net.name}")
    candidates = _candidates(net, order)
    adopters: list[list[int]] = [[] for _ in range(n)]  # who may adopt each node
    for q in range(n):
        for c in candidates[q]:
            adopters[c].append(q)
    need = [[len(candidates[p]) for p in range(n)] for _ in range(n)]  # [tree][p]: p's candidates outside it
    for r in range(n):
        for q in adopters[r]:
            need[r][q] -= 1
    routes: dict[tuple[int, int], list[int]] = {}
    in_tree = [{r} for r in range(n)]
    open_parents = [[r] for r in range(n)]  # members that may still adopt, in joining order
    left = [n - 1] * n  # nodes each tree still lacks
    unfinished = n if n > 1 else 0
    edges: list[tuple[int, int, int, int]] = []
    t = 0
    while unfinished:
        used: set[int] = set()
        send = [slots] * n
        recv = [slots] * n
        parents = [list(o) for o in open_parents]  # those in the tree when the step began
        # Within a step nothing is freed (slots and links are only taken, trees only grow), so a
        # parent, or a parent's candidate, that cannot be used now stays so until the step ends:
        # each tree resumes its scan where it last stopped.
        at_parent = [0] * n
        at_child: dict[tuple[int, int], int] = {}
        added = 0
        turn = 0
        grew_in_round = False
        while True:
            r = turn % n
            grew = False
            if left[r]:
                tree, ps, i = in_tree[r], parents[r], at_parent[r]
                while i < len(ps) and not grew:
                    p = ps[i]
                    if send[p]:
                        cs, j = candidates[p], at_child.get((r, p), 0)
                        while j < len(cs):
                            c = cs[j]
                            j += 1
                            if c in tree or recv[c] == 0:
                                continue
                            links = routes.get((p, c))
                            if links is None:
                                links = routes[(p, c)] = _network_links(net, net.route(p, c))
                            if any(k in used for k in links):
                                continue
                            used.update(links)
                            send[p] -= 1
                            recv[c] -= 1
                            tree.add(c)
                            open_parents[r].append(c)
                            for q in adopters[c]:
                                need[r][q] -= 1
                            left[r] -= 1
                            unfinished -= left[r] == 0
                            edges.append((r, c, p, t))
                            grew = True
                            break
                        at_child[(r, p)] = j
                    if not grew:
                        i += 1
                at_parent[r] = i
            grew_in_round = grew_in_round or grew
            added += grew
            turn += 1
            if not unfinished:
                break
            if turn % n == 0:
                if not (grew if stop == "last" else grew_in_round):
                    break
                grew_in_round = False
        if added == 0:  # cannot happen on a connected network with slots >= 1
            raise RuntimeError(f"MultiTree construction stalled at step {t} on {net.name}")
        for r in range(n):  # a member all of whose candidates are in the tree never adopts again
            still = need[r]
            open_parents[r] = [p for p in open_parents[r] if still[p]]
        t += 1
    return Trees(edges, t, (order, stop))


def build_trees(net: Interconnect, slots: int | None = None) -> Trees:
    """The trees of every variant (module docstring) with the fewest steps per phase; on a
    tie the first in (order, stop) order."""
    orders = ORDERS_DIRECT if net.direct else ORDERS_SWITCHED
    best = None
    for order in orders:
        for stop in STOPS:
            trees = grow_trees(net, slots, order, stop)
            if best is None or trees.steps < best.steps:
                best = trees
    return best


def multitree(n: int, net: Interconnect, slots: int | None = None, collective: str = "allreduce") -> Schedule:
    """The MultiTree all-reduce schedule on `net` (see the module docstring); its
    reduce-scatter (chunk r reduced up tree r to its root r) and all-gather (chunk r sent
    down tree r) are the two phases alone, T steps each."""
    if net is None or net.n != n:
        raise ValueError("multitree needs the interconnect it is built for")
    if collective not in ("allreduce", "reduce_scatter", "allgather"):
        raise UserError(f"multitree has no {collective} (use ring, biring or multiring)")
    trees = build_trees(net, slots)
    edges, T = trees.edges, trees.steps
    msgs = []
    ag0 = T if collective == "allreduce" else 0
    for r, c, p, t in edges:
        if collective != "allgather":
            msgs.append(Message(T - 1 - t, c, p, r, r + 1, REDUCE))  # reduce-scatter, upward
        if collective != "reduce_scatter":
            msgs.append(Message(ag0 + t, p, c, r, r + 1, COPY))  # all-gather, downward
    return Schedule(
        "multitree", n, n, msgs, info={"steps_per_phase": T, "edges": edges, "variant": "/".join(trees.variant)}, collective=collective
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
