import pytest
import torch

from distsgd.comm import NetworkModel, SimulatedCommunicator
from distsgd.topology import make_topology


@pytest.mark.parametrize("n", [2, 5, 16])
def test_all_reduce_bytes_follow_the_ring_formula(n):
    d = 1000
    net = NetworkModel(latency=1e-5, bandwidth=1e9)
    comm = SimulatedCommunicator(n, net)
    x = torch.randn(n, d)
    y = comm.all_reduce_mean(x)
    assert torch.allclose(y, x.mean(0).expand_as(x))
    per_worker = 2 * (n - 1) / n * 4 * d  # documented in comm.base
    assert torch.allclose(comm.traffic.sent, torch.full((n,), per_worker, dtype=torch.float64))
    assert torch.allclose(comm.traffic.received, comm.traffic.sent)
    assert (comm.traffic.messages == 2 * (n - 1)).all()
    assert comm.traffic.comm_seconds == pytest.approx(2 * (n - 1) * 1e-5 + per_worker / 1e9)


@pytest.mark.parametrize("name,n", [("ring", 8), ("torus", 12), ("star", 6), ("erdos_renyi", 20)])
def test_gossip_bytes_are_4d_to_each_neighbour(name, n):
    d = 333
    topo = make_topology(name, n, p=0.4, seed=3)
    comm = SimulatedCommunicator(n, NetworkModel(latency=0.0, bandwidth=1.0))
    x = torch.randn(n, d)
    y = comm.gossip(x, topo)
    assert torch.allclose(y, topo.mixing.float() @ x, atol=1e-5)
    deg = torch.tensor(topo.degrees(), dtype=torch.float64)
    assert torch.equal(comm.traffic.sent, deg * 4 * d)
    assert torch.equal(comm.traffic.received, deg * 4 * d)
    assert comm.traffic.comm_seconds == pytest.approx(float(deg.max()) * 4 * d)


def test_exchange_gather_broadcast():
    n, d = 6, 10
    comm = SimulatedCommunicator(n)
    x = torch.arange(n * d, dtype=torch.float32).reshape(n, d)
    y = comm.exchange(x, [(0, 3), (1, 5)])
    assert torch.equal(y[0], x[3]) and torch.equal(y[3], x[0]) and torch.equal(y[2], x[2])
    assert comm.traffic.sent.tolist() == [40, 40, 0, 40, 0, 40]
    with pytest.raises(ValueError):
        comm.exchange(x, [(0, 1), (1, 2)])
    g = comm.gather_to_server(x)
    assert torch.equal(g, x) and comm.traffic.server_received == n * 4 * d
    b = comm.broadcast_from_server(x[2], x)
    assert b.shape == (n, d) and torch.equal(b[4], x[2]) and comm.traffic.server_sent == n * 4 * d


def test_compute_clock_waits_for_the_slowest_and_stragglers_are_seeded():
    n = 4
    net = NetworkModel(compute_seconds=0.1, speeds=(1.0, 1.0, 0.5, 1.0))
    comm = SimulatedCommunicator(n, net)
    comm.compute()
    assert comm.traffic.compute_seconds == pytest.approx(0.2)
    a = SimulatedCommunicator(n, NetworkModel(straggler_prob=0.5, seed=7))
    b = SimulatedCommunicator(n, NetworkModel(straggler_prob=0.5, seed=7))
    for _ in range(20):
        a.compute()
        b.compute()
    assert a.traffic.compute_seconds == b.traffic.compute_seconds
    assert a.traffic.compute_seconds > 20 * 5e-3  # some steps straggled


def test_all_reduce_time_can_come_from_the_collectives_simulator():
    from distsgd.collectives import build_schedule, make_interconnect, simulate
    from distsgd.collectives.report import packet_for

    n, d = 16, 5000
    net = NetworkModel(latency=150e-9, bandwidth=16e9, interconnect="torus:4x4", allreduce="multitree", nis=4)
    comm = SimulatedCommunicator(n, net)
    comm.all_reduce_mean(torch.randn(n, d))
    inter = make_interconnect("torus:4x4", bandwidth=16e9, latency=150e-9, nis=4)
    expected = simulate(
        build_schedule("multitree", inter), inter, 4 * d, packet_bytes=packet_for(4 * d, None)
    )
    assert comm.traffic.comm_seconds == pytest.approx(expected.seconds)
    # on average a node sends 2(n−1)/n of the vector, like the ring (each node forwards one
    # chunk up every other tree; the downward fan-out differs from node to node)
    assert float(comm.traffic.sent.mean()) == pytest.approx(2 * (n - 1) / n * 4 * d)
    assert comm.traffic.sent.std() > 0
    assert torch.equal(comm.traffic.sent.sum(), comm.traffic.received.sum())
    ring = SimulatedCommunicator(
        n, NetworkModel(latency=150e-9, bandwidth=16e9, interconnect="torus:4x4", nis=4)
    )
    ring.all_reduce_mean(torch.randn(n, d))
    assert ring.traffic.comm_seconds > 1.5 * comm.traffic.comm_seconds


def test_interconnect_must_fit_the_workers():
    from distsgd.errors import UserError

    comm = SimulatedCommunicator(8, NetworkModel(interconnect="torus:4x4"))
    with pytest.raises(UserError, match="has 16 nodes"):
        comm.all_reduce_mean(torch.randn(8, 10))
    with pytest.raises(UserError, match="bad topology"):
        NetworkModel(interconnect="donut:3")
