import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd.collectives import (
    ALGORITHMS,
    build_schedule,
    build_trees,
    execute,
    lower_bound_seconds,
    make_interconnect,
    simulate,
    steps_lower_bound,
)
from distsgd.errors import UserError

SPECS = st.one_of(
    st.builds(lambda n: f"ring:{n}", st.integers(2, 12)),
    st.builds(lambda r, c: f"torus:{r}x{c}", st.integers(2, 5), st.integers(2, 5)),
    st.builds(lambda r, c: f"mesh:{r}x{c}", st.integers(2, 5), st.integers(2, 5)),
    st.builds(lambda n: f"switch:{n}", st.integers(2, 12)),
    st.builds(lambda k: f"fattree:{k}", st.integers(2, 4)),
    st.builds(lambda p, s: f"bigraph:{p}x{s}", st.integers(1, 3), st.sampled_from([2, 4, 6])),
)


def _algorithms(net):
    names = ["ring", "hd", "dbtree", "hierarchical", "multitree"]
    if net.direct and net.kind != "ring":
        names.append("ring2d")
    return names


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, nis=st.integers(1, 4), seed=st.integers(0, 1000))
def test_every_schedule_computes_the_exact_sum_on_every_node(spec, nis, seed):
    net = make_interconnect(spec, nis=nis)
    rng = np.random.default_rng(seed)
    # integers in float64: every summation order gives the same exact sum
    x = rng.integers(-(2**20), 2**20, size=(net.n, 7 * net.n + 3)).astype(np.float64)
    total = x.sum(0)
    for name in _algorithms(net):
        sched = build_schedule(name, net)
        out = execute(sched, x)
        assert np.array_equal(out, np.broadcast_to(total, out.shape)), (spec, name)
        # every message follows a route of existing links between two distinct nodes
        for m in sched.messages:
            assert m.src != m.dst and 0 <= m.src < net.n and 0 <= m.dst < net.n
            hops = net.route(m.src, m.dst)
            assert net.links[hops[0]][0] == m.src and net.links[hops[-1]][1] == m.dst
            for a, b in zip(hops, hops[1:], strict=False):
                assert net.links[a][1] == net.links[b][0]  # contiguous path


@settings(max_examples=40, deadline=None)
@given(spec=SPECS, nis=st.integers(1, 4))
def test_multitree_never_uses_a_directed_link_twice_in_a_step(spec, nis):
    net = make_interconnect(spec, nis=nis)
    edges, steps = build_trees(net)
    per_step: dict[int, list[int]] = {}
    sends: dict[tuple[int, int], int] = {}
    recvs: dict[tuple[int, int], int] = {}
    for _tree, child, parent, t in edges:
        for k in net.route(parent, child):
            u, v = net.links[k][:2]
            if u >= net.n and v >= net.n:  # network links (not the node's own interfaces)
                per_step.setdefault(t, []).append(k)
        sends[(parent, t)] = sends.get((parent, t), 0) + 1
        recvs[(child, t)] = recvs.get((child, t), 0) + 1
        if net.direct:
            assert child in net.neighbors[parent]  # one hop on a mesh or torus
    for t, links in per_step.items():
        assert len(links) == len(set(links)), f"a link is used twice in step {t}"
    assert max(sends.values()) <= nis and max(recvs.values()) <= nis
    # every tree spans all nodes exactly once
    for r in range(net.n):
        members = [r] + [c for tree, c, _, _ in edges if tree == r]
        assert sorted(members) == list(range(net.n))
    assert steps >= steps_lower_bound(net)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_ring_on_a_ring_matches_the_closed_form(n):
    alpha, bw, size = 150e-9, 16e9, 64 * 2**20
    net = make_interconnect(f"ring:{n}", bandwidth=bw, latency=alpha)
    res = simulate(build_schedule("ring", net), net, size, packet_bytes=64 * 1024, cut_through=True)
    closed = 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / bw
    assert res.seconds == pytest.approx(closed, rel=0.01)
    # store-and-forward adds one packet time per extra hop and message: still within 1%
    res_sf = simulate(build_schedule("ring", net), net, size, packet_bytes=4096)
    assert res_sf.seconds == pytest.approx(closed, rel=0.01)
    assert lower_bound_seconds(net, size) <= res.seconds


def test_contention_is_real():
    # two messages over the same link take twice as long as one
    net = make_interconnect("ring:4", bandwidth=1e9, latency=0.0)
    from distsgd.collectives.schedules import COPY, Message, Schedule

    one = Schedule("t", 4, 2, [Message(0, 0, 2, 0, 1, COPY)])
    two = Schedule("t", 4, 2, [Message(0, 0, 2, 0, 1, COPY), Message(0, 1, 2, 1, 2, COPY)])
    t1 = simulate(one, net, 2e6, packet_bytes=1e4).seconds
    t2 = simulate(two, net, 2e6, packet_bytes=1e4).seconds
    assert t2 == pytest.approx(2 * t1, rel=0.02)  # both need link 1->2 and 2's ejection


def test_multitree_beats_ring_on_a_torus_with_four_interfaces():
    net = make_interconnect("torus:4x4", nis=4)
    size = 16 * 2**20
    ring = simulate(build_schedule("ring", net), net, size, packet_bytes=65536).seconds
    mt = simulate(build_schedule("multitree", net), net, size, packet_bytes=65536).seconds
    assert ring / mt > 1.5


@pytest.mark.parametrize("spec", ["torus:8", "cube:4x4", "mesh:1x4", "bigraph:2x3", "ring"])
def test_bad_interconnects(spec):
    with pytest.raises(UserError):
        make_interconnect(spec)


def test_unknown_algorithm_and_ring2d_needs_a_grid():
    with pytest.raises(UserError, match="unknown all-reduce"):
        build_schedule("butterfly", make_interconnect("ring:4"))
    with pytest.raises(UserError, match="ring2d"):
        build_schedule("ring2d", make_interconnect("switch:4"))
    assert set(ALGORITHMS) >= {"ring", "hd", "dbtree", "ring2d", "hierarchical", "multitree"}
