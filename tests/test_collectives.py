import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd.collectives import (
    ALGORITHMS,
    COLLECTIVE_ALGORITHMS,
    build_schedule,
    build_trees,
    execute,
    expected,
    lower_bound_seconds,
    make_interconnect,
    simulate,
    steps_lower_bound,
)
from distsgd.collectives.multitree import ORDERS_DIRECT, ORDERS_SWITCHED, STOPS, grow_trees
from distsgd.collectives.schedules import COPY, Message, Schedule, torus_hamiltonian_cycles
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
    names = ["ring", "biring", "hd", "dbtree", "hierarchical", "multitree"]
    if net.direct and net.kind != "ring":
        names.append("ring2d")
    if net.kind == "torus" and min(net.shape) >= 3:
        names.append("multiring")
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


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, nis=st.integers(1, 4), variant=st.integers(0, 3))
def test_multitree_never_uses_a_directed_link_twice_in_a_step(spec, nis, variant):
    net = make_interconnect(spec, nis=nis)
    orders = ORDERS_DIRECT if net.direct else ORDERS_SWITCHED
    trees = grow_trees(net, order=orders[variant % 2], stop=STOPS[variant // 2])
    edges, steps = trees.edges, trees.steps
    assert steps >= build_trees(net).steps  # the kept trees are the fewest steps of all variants
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
    res_sf = simulate(build_schedule("ring", net), net, size, packet_bytes=4096, cut_through=False)
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


# Steps per phase of the MultiTree authors' own construction (compute_trees in their simulator,
# github.com/farabimahmud/accelerator at b241ca1, run here on its topologies): kary − 1 is our
# interfaces per node on tori and meshes; its BiGraph and fat-tree give a node one interface.
AUTHORS_STEPS = [
    ("torus:4x4", 1, 15), ("torus:4x4", 4, 5), ("torus:8x8", 1, 63), ("torus:8x8", 4, 17),
    ("mesh:4x4", 1, 22), ("mesh:4x4", 4, 10), ("mesh:8x8", 1, 89), ("mesh:8x8", 4, 33),
    ("bigraph:4x8", 1, 31), ("fattree:8", 1, 63),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "nis", "steps"), AUTHORS_STEPS)
def test_multitree_matches_or_beats_the_authors_construction(spec, nis, steps):
    net = make_interconnect(spec, nis=nis)
    # their candidate order and step end reproduce their count exactly ...
    paper = grow_trees(net, order="nswe" if net.direct else "adjacent", stop="last")
    assert paper.steps == steps
    # ... and what we build is never worse
    assert build_trees(net).steps <= steps
    assert build_schedule("multitree", net).info["steps_per_phase"] <= steps


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
    assert set(ALGORITHMS) >= {
        "ring",
        "biring",
        "multiring",
        "hd",
        "dbtree",
        "ring2d",
        "hierarchical",
        "multitree",
    }
    with pytest.raises(UserError, match="multiring needs a torus"):
        build_schedule("multiring", make_interconnect("mesh:4x4"))
    with pytest.raises(UserError, match="multiring needs a torus"):
        build_schedule("multiring", make_interconnect("torus:2x4"))


@pytest.mark.parametrize("rows,cols", [(3, 3), (3, 5), (4, 4), (4, 7), (6, 4), (8, 8), (5, 12), (16, 16)])
def test_multiring_rings_use_every_directed_link_exactly_once(rows, cols):
    net = make_interconnect(f"torus:{rows}x{cols}", nis=4)
    a, b = torus_hamiltonian_cycles(rows, cols)
    used = []
    for order in (a, a[::-1], b, b[::-1]):
        assert sorted(order) == list(range(net.n))  # a Hamiltonian cycle
        for u, v in zip(order, order[1:] + order[:1], strict=True):
            hops = [k for k in net.route(u, v) if net.links[k][0] >= net.n and net.links[k][1] >= net.n]
            assert len(hops) == 1  # consecutive nodes are neighbours
            used += hops
    network = [k for k, (u, v, *_r) in enumerate(net.links) if u >= net.n and v >= net.n]
    assert sorted(used) == network


def test_fair_baselines_on_a_torus_with_four_interfaces():
    """Two counter-rotating rings halve the ring's time, four edge-disjoint rings quarter it
    (cut-through, 64 MiB: bandwidth-bound). A biring whose second ring ran the same way, or
    rings sharing links, would contend and fail this."""
    net = make_interconnect("torus:8x8", nis=4)
    size = 64 * 2**20

    def t(name):
        return simulate(build_schedule(name, net), net, size, packet_bytes=2**20, cut_through=True).seconds

    ring, biring, multiring = t("ring"), t("biring"), t("multiring")
    assert biring <= ring / 2 * 1.02
    assert multiring <= ring / 4 * 1.02
    assert multiring <= lower_bound_seconds(net, size) * 1.02  # at the bandwidth bound


@settings(max_examples=40, deadline=None)
@given(spec=SPECS, nis=st.integers(1, 4), seed=st.integers(0, 1000))
def test_reduce_scatter_all_gather_broadcast_leave_what_they_promise(spec, nis, seed):
    net = make_interconnect(spec, nis=nis)
    rng = np.random.default_rng(seed)
    x = rng.integers(-(2**20), 2**20, size=(net.n, 8 * net.n + 5)).astype(np.float64)
    root = int(rng.integers(net.n))
    built = 0
    for collective, names in COLLECTIVE_ALGORITHMS.items():
        if collective == "allreduce":
            continue
        for name in names:
            try:
                sched = build_schedule(name, net, collective, root=root)
            except UserError:
                assert name in ("multiring", "hd")  # off a torus, off a power of two
                continue
            built += 1
            assert sched.collective == collective
            want, mask = expected(sched, x)
            start = x.copy()
            if collective == "allgather":  # only each node's own block is input: poison the rest
                bounds = sched.chunk_bounds(x.shape[1])
                start[:] = np.nan
                for i in range(net.n):
                    lo, hi = sched.block(i)
                    start[i, bounds[lo] : bounds[hi]] = x[i, bounds[lo] : bounds[hi]]
            out = execute(sched, start)
            assert np.array_equal(out[mask], want[mask]), (spec, collective, name)
    assert built >= 5


@pytest.mark.parametrize("name", ["ring", "biring", "multiring", "hd", "multitree"])
def test_all_reduce_is_reduce_scatter_then_all_gather(name):
    net = make_interconnect("torus:4x4", nis=4)
    ar = build_schedule(name, net)
    rs = build_schedule(name, net, "reduce_scatter")
    ag = build_schedule(name, net, "allgather")
    shift = rs.steps
    assert sorted(ar.messages, key=repr) == sorted(
        rs.messages + [type(m)(m.step + shift, m.src, m.dst, m.lo, m.hi, m.op) for m in ag.messages], key=repr
    )
    assert ar.chunks == rs.chunks == ag.chunks and ar.chunks % net.n == 0


@pytest.mark.parametrize("n", [4, 8])
def test_ring_reduce_scatter_all_gather_and_broadcast_times(n):
    alpha, bw, size = 150e-9, 16e9, 64 * 2**20
    net = make_interconnect(f"ring:{n}", bandwidth=bw, latency=alpha)
    for collective in ("reduce_scatter", "allgather"):
        res = simulate(
            build_schedule("ring", net, collective), net, size, packet_bytes=2**20, cut_through=True
        )
        closed = (n - 1) * alpha + (n - 1) / n * size / bw
        assert res.seconds == pytest.approx(closed, rel=0.01)
        assert lower_bound_seconds(net, size, collective) == pytest.approx((n - 1) / n * size / bw)
    # a chain pipelined in 2n pieces: (2n + n − 2) piece times of S/(2n)
    bc = simulate(
        build_schedule("ring", net, "broadcast", root=1), net, size, packet_bytes=2**20, cut_through=True
    )
    assert bc.seconds == pytest.approx((3 * n - 2) / (2 * n) * size / bw, rel=0.02)
    assert bc.seconds >= lower_bound_seconds(net, size, "broadcast") == size / bw


def test_collective_errors():
    net = make_interconnect("switch:6")
    with pytest.raises(UserError, match="dbtree has no reduce_scatter"):
        build_schedule("dbtree", net, "reduce_scatter")
    with pytest.raises(UserError, match="hd allgather needs a power-of-two"):
        build_schedule("hd", net, "allgather")
    with pytest.raises(UserError, match="unknown collective 'gather'"):
        build_schedule("ring", net, "gather")
    with pytest.raises(UserError, match="bad broadcast root 6"):
        build_schedule("ring", net, "broadcast", root=6)


def test_link_statistics_count_every_byte_and_every_busy_second():
    net = make_interconnect("torus:4x4", nis=4)
    size = 4 * 2**20
    for name in ("ring", "multiring", "multitree"):
        sched = build_schedule(name, net)
        res = simulate(sched, net, size, packet_bytes=16384, timeline=8)
        per_msg = sched.message_bytes(size)
        hops = np.array([len(net.route(m.src, m.dst)) for m in sched.messages])
        assert res.link_bytes.sum() == pytest.approx((per_msg * hops).sum())
        inj = [k for k, (u, *_r) in enumerate(net.links) if u < net.n]
        assert res.link_bytes[inj].sum() == pytest.approx(per_msg.sum())  # each byte injected once
        bw = np.array([lk[2] for lk in net.links])
        assert np.allclose(res.link_busy, res.link_bytes / bw)  # store-and-forward: bytes / bandwidth
        assert 0 < res.link_utilization.max() <= 1 + 1e-9
        # the timeline spreads the same busy time over 8 intervals
        assert res.link_timeline.shape == (len(net.links), 8)
        assert np.allclose(res.link_timeline.sum(1) * res.seconds / 8, res.link_busy)
    # multiring: every directed network link carries the same 2(n−1)/n · S/4 bytes
    res = simulate(build_schedule("multiring", net), net, size, packet_bytes=16384)
    network = [k for k, (u, v, *_r) in enumerate(net.links) if u >= net.n and v >= net.n]
    assert np.allclose(res.link_bytes[network], 2 * 15 / 16 * size / 4)
    # the ring uses one network link out of each router, the others stay idle
    res = simulate(build_schedule("ring", net), net, size, packet_bytes=16384)
    assert (res.link_bytes[network] > 0).sum() == net.n


def test_a_straggler_delays_a_lockstep_ring_by_its_delay():
    net = make_interconnect("ring:4", bandwidth=1e9, latency=0.0)
    sched = build_schedule("ring", net)
    base = simulate(sched, net, 4e6, packet_bytes=1e5).seconds
    late = simulate(sched, net, 4e6, packet_bytes=1e5, delays={2: 1e-3}).seconds
    assert late == pytest.approx(base + 1e-3)
    assert simulate(sched, net, 4e6, packet_bytes=1e5, delays=[0, 0, 0, 0]).seconds == base
    with pytest.raises(ValueError, match="bad delay"):
        simulate(sched, net, 4e6, delays={5: 1.0})


def test_multitree_falls_back_to_the_best_ring_and_says_so():
    from distsgd.collectives.report import compare, ring_family

    net = make_interconnect("torus:4x4", nis=4)
    small, large = 32 * 2**10, 64 * 2**20
    rows = compare(net, {"multitree": build_schedule("multitree", net)}, [small, large])
    rings = compare(net, ring_family(net), [small, large], fallback=False)
    alone = compare(net, {"multitree": build_schedule("multitree", net)}, [small, large], fallback=False)
    for size in (small, large):
        mt = next(r for r in rows if r["size"] == size)
        own = next(r for r in alone if r["size"] == size)["seconds"]
        best = min((r for r in rings if r["size"] == size), key=lambda r: r["seconds"])
        assert mt["multitree_seconds"] == own
        assert mt["seconds"] == min(own, best["seconds"])  # never worse than the best ring
        assert mt["fallback"] == (best["algorithm"] if best["seconds"] < own else None)
    # the trees win small messages (fewer steps); four edge-disjoint rings win 64 MiB on a 4x4 torus
    assert [r["fallback"] for r in rows] == [None, "multiring"]


# -- the compiled event loop (numba) against the Python loop -----------------------------------

ENGINE_CASES = [
    ("torus:4x4", "ring", 1), ("torus:4x4", "multitree", 4), ("switch:16", "hd", 1), ("fattree:4", "dbtree", 1),
    ("mesh:4x4", "multitree", 1), ("bigraph:4x4", "hierarchical", 2), ("ring:8", "biring", 1), ("torus:4x4", "ring2d", 2),
]
ENGINE_OPTIONS = [{}, {"cut_through": False}, {"lockstep": False}, {"delays": {1: 1e-5, 6: 3e-6}, "timeline": 8},
                  {"packet_bytes": 1e9}]


@pytest.mark.parametrize("spec, algorithm, nis", ENGINE_CASES)
def test_the_compiled_event_loop_equals_the_python_loop(spec, algorithm, nis):
    """The same events in the same order: time, event and packet counts, per-link bytes,
    busy time and timeline identical (not close) under every option, for all-reduce and a
    broadcast (whose messages from one root share links)."""
    net = make_interconnect(spec, nis=nis)
    for sched in (build_schedule(algorithm, net), build_schedule("biring", net, "broadcast", root=3)):
        for kw in ENGINE_OPTIONS:
            a = simulate(sched, net, 1 << 20, engine="python", **kw)
            b = simulate(sched, net, 1 << 20, engine="compiled", **kw)
            assert (a.seconds, a.events, a.packets, a.messages) == (b.seconds, b.events, b.packets, b.messages), kw
            assert np.array_equal(a.link_bytes, b.link_bytes) and np.array_equal(a.link_busy, b.link_busy), kw
            assert (a.link_timeline is None) == (b.link_timeline is None), kw
            if a.link_timeline is not None:
                assert np.array_equal(a.link_timeline, b.link_timeline), kw


def test_auto_takes_the_python_loop_for_small_runs_and_the_compiled_one_for_large(monkeypatch):
    from distsgd.collectives import simulator

    net = make_interconnect("torus:4x4")
    sched = build_schedule("ring", net)
    used = []
    monkeypatch.setattr(simulator, "_simulate_compiled", lambda *a, **k: used.append("compiled") or "compiled")
    small = simulate(sched, net, 1 << 20)  # 480 messages of 2 packets
    assert isinstance(small, simulator.SimResult) and not used
    assert simulate(sched, net, 1 << 30, packet_bytes=4096) == "compiled"
    with pytest.raises(ValueError, match="engine"):
        simulate(sched, net, 1 << 20, engine="numba")


@pytest.mark.parametrize("spec, algorithm, nis", ENGINE_CASES)
def test_the_flat_set_up_builds_the_python_routes_and_ordering(spec, algorithm, nis):
    """`routes_and_ordering` (numpy and the compiled dependency scan, what both simulators
    use for large runs) returns exactly `message_routes` and `ordering`."""
    from distsgd.collectives import simulator

    net = make_interconnect(spec, nis=nis)
    for sched in (build_schedule(algorithm, net), build_schedule("biring", net, "allgather")):
        for lockstep in (True, False):
            want = (simulator.message_routes(sched, net), *simulator.ordering(sched, lockstep))
            got = simulator.routes_and_ordering(sched, net, lockstep)
            for name, a, b in zip(("routes", "waiting", "dependents", "by_step", "next_step", "step_left"), want, got, strict=True):
                assert a == b, name


def test_an_imported_schedule_is_checked_and_runs():
    """`from_transfers`: a hand-made all-gather on a ring of 3 (each chunk twice round), and
    the transfers it refuses."""
    from distsgd.collectives import from_transfers
    from distsgd.errors import UserError

    ring = [(0, 0, 1, 0), (0, 1, 2, 1), (0, 2, 0, 2), (1, 1, 2, 0), (1, 2, 0, 1), (1, 0, 1, 2)]
    sched = from_transfers(3, ring)
    x = np.arange(6.0).reshape(3, 2)
    want, mask = expected(sched, x)
    assert np.array_equal(execute(sched, x)[mask], want[mask]) and sched.collective == "allgather"
    net = make_interconnect("ring:3", bandwidth=1e9, latency=1e-6)
    assert simulate(sched, net, 3e3, packet_bytes=1e3).seconds == pytest.approx(2 * (1e-6 + 1e-6))
    with pytest.raises(UserError, match="node 2 sends chunk 0 before holding it"):
        from_transfers(3, [(0, 2, 1, 0)])
    with pytest.raises(UserError, match="bad transfer"):
        from_transfers(3, [(0, 0, 3, 0)])


def test_a_message_that_completes_at_once_releases_the_next_one_once():
    """A message with no bytes (a zero-size chunk) or no route (to itself) completes during
    the start and releases the messages that wait for it: each is injected once, by both
    engines (the compiled one sizes its heap by the packets of one injection each)."""
    net = make_interconnect("ring:4", bandwidth=1e9, latency=1e-6)
    cases = [
        Schedule("t", 4, 2, [Message(0, 0, 1, 0, 1, COPY), Message(1, 1, 2, 1, 2, COPY)], fractions=np.array([0.0, 1.0])),
        Schedule("t", 4, 1, [Message(0, 2, 2, 0, 1, COPY), Message(1, 2, 3, 0, 1, COPY)]),
    ]
    for sched in cases:
        for engine in ("python", "compiled"):
            res = simulate(sched, net, 4e3, packet_bytes=1e3, engine=engine, timeline=4)
            assert res.packets == 4, engine
            assert res.link_bytes.sum() == 4e3 * 3, engine  # one message of 4 kB over 3 links
