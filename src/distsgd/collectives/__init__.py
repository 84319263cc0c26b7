"""Collective algorithms lab: all-reduce, reduce-scatter, all-gather and broadcast
schedules, interconnects, a network simulator.

net = make_interconnect("torus:8x8", bandwidth=16e9, latency=150e-9, nis=4)
sched = build_schedule("multitree", net)            # all-reduce
sched = build_schedule("ring", net, "allgather")    # or reduce_scatter, broadcast (root=)
simulate(sched, net, 64 * 2**20).seconds
"""

from __future__ import annotations

from ..errors import UserError
from .interconnect import Interconnect, make_interconnect
from .multitree import build_trees, multitree, steps_lower_bound
from .schedules import (
    COLLECTIVES,
    Message,
    Schedule,
    bidirectional_ring,
    double_binary_tree,
    execute,
    expected,
    from_transfers,
    halving_doubling,
    hierarchical,
    lower_bound_seconds,
    multiring,
    ring,
    ring2d,
)
from .simulator import SimResult, simulate

ALGORITHMS = {  # all-reduce
    "ring": ring,
    "biring": bidirectional_ring,
    "multiring": multiring,
    "hd": halving_doubling,
    "dbtree": double_binary_tree,
    "ring2d": ring2d,
    "hierarchical": hierarchical,
    "multitree": multitree,
}

# the algorithms that have each collective (all-reduce: every one)
COLLECTIVE_ALGORITHMS = {
    "allreduce": tuple(ALGORITHMS),
    "reduce_scatter": ("ring", "biring", "multiring", "hd", "multitree"),
    "allgather": ("ring", "biring", "multiring", "hd", "multitree"),
    "broadcast": ("ring", "biring", "multiring"),
}


def build_schedule(name: str, net: Interconnect, collective: str = "allreduce", root: int = 0) -> Schedule:
    """The schedule of algorithm `name` for `collective` on `net` (`root`: broadcast's source)."""
    if collective not in COLLECTIVE_ALGORITHMS:
        raise UserError(f"unknown collective '{collective}' (choose from {', '.join(COLLECTIVES)})")
    names = COLLECTIVE_ALGORITHMS[collective]
    if name not in ALGORITHMS:
        what = "all-reduce algorithm" if collective == "allreduce" else f"algorithm for {collective}"
        raise UserError(f"unknown {what} '{name}' (choose from {', '.join(names)})")
    if name not in names:
        raise UserError(f"{name} has no {collective} (choose from {', '.join(names)})")
    if collective == "allreduce":
        return ALGORITHMS[name](net.n, net)
    if collective == "broadcast":
        if not 0 <= root < net.n:
            raise UserError(f"bad broadcast root {root}: {net.name} has nodes 0..{net.n - 1}")
        return ALGORITHMS[name](net.n, net, collective=collective, root=root)
    return ALGORITHMS[name](net.n, net, collective=collective)


__all__ = [
    "ALGORITHMS",
    "COLLECTIVES",
    "COLLECTIVE_ALGORITHMS",
    "Interconnect",
    "Message",
    "Schedule",
    "SimResult",
    "build_schedule",
    "build_trees",
    "execute",
    "expected",
    "from_transfers",
    "lower_bound_seconds",
    "make_interconnect",
    "multitree",
    "simulate",
    "steps_lower_bound",
]
