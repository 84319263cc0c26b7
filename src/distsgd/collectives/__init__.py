"""Collective algorithms lab: all-reduce schedules, interconnects, a network simulator.

net = make_interconnect("torus:8x8", bandwidth=16e9, latency=150e-9, nis=4)
sched = build_schedule("multitree", net)
simulate(sched, net, 64 * 2**20).seconds
"""

from __future__ import annotations

from ..errors import UserError
from .interconnect import Interconnect, make_interconnect
from .multitree import build_trees, multitree, steps_lower_bound
from .schedules import (
    Message,
    Schedule,
    double_binary_tree,
    execute,
    halving_doubling,
    hierarchical,
    lower_bound_seconds,
    ring,
    ring2d,
)
from .simulator import SimResult, simulate

ALGORITHMS = {
    "ring": ring,
    "hd": halving_doubling,
    "dbtree": double_binary_tree,
    "ring2d": ring2d,
    "hierarchical": hierarchical,
    "multitree": multitree,
}


def build_schedule(name: str, net: Interconnect) -> Schedule:
    if name not in ALGORITHMS:
        raise UserError(f"unknown all-reduce algorithm '{name}' (choose from {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name](net.n, net)


__all__ = [
    "ALGORITHMS",
    "Interconnect",
    "Message",
    "Schedule",
    "SimResult",
    "build_schedule",
    "build_trees",
    "execute",
    "lower_bound_seconds",
    "make_interconnect",
    "multitree",
    "simulate",
    "steps_lower_bound",
]
