import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd.comm import SimulatedCommunicator
from distsgd.errors import UserError
from distsgd.topology import build_graph, make_topology, mixing_matrix, spectral_gap


def _valid(name, n):
    if name == "ring":
        return n >= 3
    if name == "torus":
        return any(n % r == 0 and r >= 3 and n // r >= 3 for r in range(3, n))
    if name == "hypercube":
        return n & (n - 1) == 0
    return True


topologies = st.sampled_from(
    ["ring", "torus", "complete", "star", "hypercube", "exponential", "random_regular", "erdos_renyi"]
)


@settings(max_examples=120, deadline=None)
@given(
    name=topologies,
    n=st.integers(2, 64),
    mixing=st.sampled_from(["metropolis", "uniform"]),
    seed=st.integers(0, 1000),
)
def test_mixing_is_symmetric_doubly_stochastic_on_the_graph(name, n, mixing, seed):
    kwargs = {"seed": seed, "degree": 2 if n >= 3 else 1, "p": 0.6}
    if not _valid(name, n):
        with pytest.raises(UserError):
            make_topology(name, n, mixing, **kwargs)
        return
    try:
        topo = make_topology(name, n, mixing, **kwargs)
    except UserError as e:  # random graphs may be disconnected: that must be the reason
        assert name in ("erdos_renyi", "random_regular") and "not connected" in str(e)
        return
    w = topo.mixing
    assert torch.allclose(w, w.T, atol=0)
    assert torch.allclose(w.sum(0), torch.ones(n, dtype=w.dtype), atol=1e-12)
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=w.dtype), atol=1e-12)
    assert (w >= 0).all()
    adj = torch.tensor(nx.to_numpy_array(topo.graph, nodelist=range(n))) > 0
    off = (w > 0) & ~torch.eye(n, dtype=torch.bool)
    assert torch.equal(off, adj)  # weights exactly on the edges
    assert 0 < topo.spectral_gap <= 1 + 1e-9  # connected graphs mix


@settings(max_examples=60, deadline=None)
@given(name=topologies, n=st.integers(3, 40), d=st.integers(1, 50), seed=st.integers(0, 10_000))
def test_gossip_preserves_the_average(name, n, d, seed):
    if not _valid(name, n):
        return
    try:
        topo = make_topology(name, n, degree=2, p=0.7, seed=seed)
    except UserError:
        return
    comm = SimulatedCommunicator(n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 10 + torch.randn(1, d, generator=g)
    y = comm.gossip(x, topo)
    assert torch.allclose(y.mean(0), x.mean(0), atol=1e-4 * (1 + x.abs().max()))
    # and contracts the disagreement (never increases it)
    assert (y - y.mean(0)).norm() <= (x - x.mean(0)).norm() * (1 + 1e-5)


def test_known_spectral_gaps():
    # complete graph with uniform weights: W = 11ᵀ/n, exact averaging
    assert spectral_gap(make_topology("complete", 8, "uniform").mixing) == pytest.approx(1.0)
    # ring with 1/3 weights: eigenvalues (1 + 2cos(2πk/n))/3
    n = 12
    lam2 = (1 + 2 * torch.cos(torch.tensor(2 * torch.pi / n, dtype=torch.float64))) / 3
    assert spectral_gap(make_topology("ring", n).mixing) == pytest.approx(float(1 - lam2))


def test_bad_topologies_are_user_errors():
    with pytest.raises(UserError, match="power of two"):
        build_graph("hypercube", 12)
    with pytest.raises(UserError, match="torus"):
        build_graph("torus", 7)
    with pytest.raises(UserError, match="not connected"):
        build_graph("erdos_renyi", 50, p=0.01, seed=1)
    with pytest.raises(UserError, match="unknown topology"):
        build_graph("moebius", 8)
    with pytest.raises(UserError, match="unknown mixing"):
        mixing_matrix(build_graph("ring", 8), "lazy")


def test_exponential_graph_degree():
    g = build_graph("exponential", 16)
    # hops 1, 2, 4, 8 in both directions; 8 is its own mirror
    assert all(d == 7 for _, d in g.degree())


def test_a_registered_graph_builder_is_a_topology_everywhere():
    """Adding a topology is one registration: specs, algorithms and the listing see it."""
    import networkx as nx

    import distsgd
    from distsgd.topology import GRAPHS, TOPOLOGIES, TopologySpec

    @GRAPHS.register("wheel_test", shorthand="degree")
    def wheel_test(n: int, degree: int = 4) -> nx.Graph:
        """a hub joined to a ring."""
        return nx.wheel_graph(n)

    try:
        assert "wheel_test" in TOPOLOGIES
        topo = TopologySpec.parse("wheel_test:3").build(8)
        assert topo.graph.number_of_edges() == 14 and topo.n == 8
        task = distsgd.make_task("digits", n_workers=8, model="linear", batch_size=8)
        r = distsgd.train(task, distsgd.DPSGD(lr=0.1, topology="wheel_test"), steps=3)
        assert r.summary["algorithm"]["topology"]["topology"] == "wheel_test"
    finally:
        GRAPHS.unregister("wheel_test")
    assert "wheel_test" not in TOPOLOGIES
