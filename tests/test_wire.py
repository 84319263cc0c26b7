"""The per-process wire counters of the torch.distributed communicator (comm.base.Wire):
laws of gloo's algorithms that hold for every world size (the kernel-side check is in
test_netem.py)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from distsgd.comm.base import Wire
from distsgd.comm.torchdist import TorchDistCommunicator


def _comm(rank: int, world: int) -> TorchDistCommunicator:
    c = TorchDistCommunicator.__new__(TorchDistCommunicator)  # no process group needed for the counters
    c.rank, c.world, c.wire = rank, world, Wire()
    return c


@given(world=st.integers(1, 70), src=st.integers(0, 69), d=st.integers(1, 1000))
def test_binomial_broadcast_sends_each_byte_once_to_every_other_rank(world, src, d):
    src %= world
    t = torch.zeros(d)
    comms = [_comm(r, world) for r in range(world)]
    for c in comms:
        c._wire_broadcast(t, src)
    b = 4 * d
    assert sum(c.wire.sent for c in comms) == (world - 1) * b  # a tree: world − 1 edges
    assert all(c.wire.received == (0 if c.rank == src else b) for c in comms)
    # the root's fan-out is ⌈log2 world⌉: the binomial tree's depth bound
    assert comms[src].wire.sent == (world - 1).bit_length() * b


@given(world=st.integers(1, 70), d=st.integers(1, 1000))
def test_ring_collectives_and_gather_balance(world, d):
    t = torch.zeros(d)
    comms = [_comm(r, world) for r in range(world)]
    for c in comms:
        c._wire_all_reduce(t)
        c._wire_all_gather(t)
        c._wire_gather(t, 0)
    sent = sum(c.wire.sent for c in comms)
    received = sum(c.wire.received for c in comms)
    assert abs(sent - received) < 1e-6 * max(1.0, sent)  # every byte sent is received
    b = 4 * d
    if world > 1:
        expect = 2 * (world - 1) / world * b + (world - 1) * b  # all-reduce + all-gather per rank
        assert abs(comms[-1].wire.sent - expect - b) < 1e-6 * expect  # + its gather message
