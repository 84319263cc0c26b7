"""The flow-level model: max-min fair rates, agreement with the packet model where messages
do not compete, and the command line's --model flow."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd.cli import main
from distsgd.collectives import build_schedule, make_interconnect, simulate
from distsgd.collectives.flow import max_min_rates, simulate_flows


def test_max_min_rates_of_the_textbook_example():
    # A crosses link 0, B links 0 and 1, C link 1; capacities 1 and 2: A = B = 1/2, C = 3/2
    rates = max_min_rates({0: [0], 1: [0, 1], 2: [1]}, [1.0, 2.0])
    assert rates == pytest.approx({0: 0.5, 1: 0.5, 2: 1.5})
    assert max_min_rates({0: [3], 1: [3], 2: [3]}, [0, 0, 0, 9.0]) == pytest.approx({0: 3.0, 1: 3.0, 2: 3.0})


@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.floats(0.5, 10.0), min_size=1, max_size=6),
    routes=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True), min_size=1, max_size=8),
)
def test_max_min_rates_are_feasible_and_every_flow_has_a_bottleneck(caps, routes):
    routes = [[link % len(caps) for link in r] for r in routes]
    routes = [sorted(set(r)) for r in routes]
    flows = dict(enumerate(routes))
    rate = max_min_rates(flows, caps)
    assert set(rate) == set(flows)
    load = [sum(rate[f] for f, r in flows.items() if link in r) for link in range(len(caps))]
    assert all(x <= c * (1 + 1e-9) for x, c in zip(load, caps, strict=True))
    for f, r in flows.items():  # max-min fairness: a saturated link where f's rate is the largest
        assert any(
            load[link] >= caps[link] * (1 - 1e-9)
            and rate[f] >= max(rate[g] for g, rg in flows.items() if link in rg) * (1 - 1e-9)
            for link in r
        ), (f, rate, load)


CASES = [
    ("ring:16", "ring"), ("ring:16", "biring"), ("ring:16", "hd"), ("torus:4x4", "multiring"),
    ("torus:4x4", "multitree"), ("torus:4x4", "ring2d"), ("switch:16", "hd"), ("fattree:4", "ring"),
    ("mesh:4x4", "multitree"), ("bigraph:4x4", "multitree"),
]


@pytest.mark.parametrize("spec,algorithm", CASES)
def test_the_flow_model_agrees_with_cut_through_packets_when_messages_do_not_compete(spec, algorithm):
    size = 64 * 2**20
    net = make_interconnect(spec, bandwidth=16e9, latency=500e-9, nis=1)
    sched = build_schedule(algorithm, net)
    flow = simulate_flows(sched, net, size)
    packet = simulate(sched, net, size, packet_bytes=size / 2**12, cut_through=True)
    assert flow.seconds == pytest.approx(packet.seconds, rel=0.02)
    assert np.allclose(flow.link_bytes, packet.link_bytes)
    assert flow.packets == 0 and flow.messages == packet.messages


def test_a_straggler_delays_the_flow_model_like_the_packet_model():
    net = make_interconnect("ring:8", bandwidth=16e9, latency=500e-9, nis=1)
    sched = build_schedule("ring", net)
    base = simulate_flows(sched, net, 2**24).seconds
    late = simulate_flows(sched, net, 2**24, delays={3: 1e-3}).seconds
    packet = simulate(sched, net, 2**24, packet_bytes=2**10, cut_through=True, delays={3: 1e-3}).seconds
    assert late == pytest.approx(base + 1e-3, rel=1e-6) and late == pytest.approx(packet, rel=0.02)


def test_the_flow_model_takes_a_256_node_all_reduce():
    net = make_interconnect("torus:16x16", bandwidth=16e9, latency=500e-9, nis=1)
    res = simulate_flows(build_schedule("ring", net), net, 64 * 2**20, timeline=4)
    bound = 2 * 255 / 256 * 64 * 2**20 / 16e9  # a ring moves 2(n-1)/n of the vector through each link
    assert bound < res.seconds < 1.1 * bound + 510 * 2e-6
    assert res.link_timeline.shape == (len(net.links), 4) and res.link_timeline.max() <= 1.0


FLOW_ENGINE_CASES = [
    ("torus:4x4", "ring", 1), ("torus:4x4", "multitree", 4), ("switch:16", "hd", 1), ("fattree:4", "dbtree", 1),
    ("mesh:4x4", "multitree", 1), ("bigraph:4x4", "hierarchical", 2), ("ring:8", "biring", 1), ("torus:4x4", "ring2d", 2),
    ("fattree:4", "hd", 2), ("torus:8x8", "multitree", 1),
]
FLOW_ENGINE_OPTIONS = [{}, {"lockstep": False}, {"delays": {1: 1e-5, 6: 3e-6}, "timeline": 8},
                       {"lockstep": False, "delays": {0: 2e-5}, "timeline": 5}]


@pytest.mark.parametrize("spec, algorithm, nis", FLOW_ENGINE_CASES)
def test_the_compiled_flow_loop_equals_the_python_loop(spec, algorithm, nis):
    """The same arithmetic in the same order: time, events, per-link bytes, busy time and
    timeline identical (not close), for all-reduce, a broadcast (flows from one root share
    links, so rates are fair shares) and an all-gather, with and without the lockstep
    barrier and with stragglers."""
    net = make_interconnect(spec, nis=nis)
    scheds = (build_schedule(algorithm, net), build_schedule("biring", net, "broadcast", root=3),
              build_schedule("ring", net, "allgather"))
    for sched in scheds:
        for kw in FLOW_ENGINE_OPTIONS:
            a = simulate_flows(sched, net, 1 << 20, engine="python", **kw)
            b = simulate_flows(sched, net, 1 << 20, engine="compiled", **kw)
            assert (a.seconds, a.events, a.messages) == (b.seconds, b.events, b.messages), kw
            assert np.array_equal(a.link_bytes, b.link_bytes) and np.array_equal(a.link_busy, b.link_busy), kw
            assert (a.link_timeline is None) == (b.link_timeline is None), kw
            if a.link_timeline is not None:
                assert np.array_equal(a.link_timeline, b.link_timeline), kw


@settings(max_examples=40, deadline=None)
@given(
    caps=st.lists(st.floats(0.5, 10.0), min_size=1, max_size=6),
    routes=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=1, max_size=8),
)
def test_the_compiled_max_min_rates_equal_the_python_ones(caps, routes):
    """Progressive filling compiled: the same rates, bit for bit, routes with repeated links
    included (each link counts once per flow, as `set(route)`)."""
    from distsgd.collectives import _flow_core

    routes = [[link % len(caps) for link in r] for r in routes]
    want = max_min_rates(dict(enumerate(routes)), caps)
    ptr = np.cumsum([0] + [len(r) for r in routes]).astype(np.int64)
    items = np.array([x for r in routes for x in r], dtype=np.int64)
    nl, m = len(caps), len(routes)
    rate = np.zeros(m)
    scratch = [np.zeros(nl, dtype=np.int64), np.zeros(nl, dtype=np.int64), np.zeros(len(items) + 1, dtype=np.int64),
               np.zeros(nl), np.zeros(nl, dtype=np.int64), np.zeros(nl, dtype=np.int64), np.full(nl, -1, dtype=np.int64)]
    count, ptr_l, users, load, unfrozen, version, mark = scratch
    for call in range(2):  # twice: the scratch arrays and stamps carry over from call to call
        _flow_core.max_min(np.arange(m, dtype=np.int64), m, ptr, items, np.array(caps, dtype=np.float64), rate,
                           np.full(m, -1, dtype=np.int64), call, count, ptr_l, users, load, unfrozen, version, mark,
                           call * 100, np.empty(nl, dtype=np.int64), np.empty(nl, dtype=np.int64))
        assert rate.tolist() == [want[f] for f in range(m)]
        assert not count.any()


def test_auto_takes_the_compiled_flow_loop_for_large_schedules(monkeypatch):
    from distsgd.collectives import flow

    net = make_interconnect("torus:4x4")
    sched = build_schedule("ring", net)
    used = []
    monkeypatch.setattr(flow, "_simulate_flows_compiled", lambda *a, **k: used.append("compiled") or "compiled")
    assert isinstance(simulate_flows(sched, net, 1 << 20), flow.SimResult) and not used  # 480 messages
    monkeypatch.setattr(flow, "COMPILED_FROM", 100)
    assert simulate_flows(sched, net, 1 << 20) == "compiled"
    with pytest.raises(ValueError, match="engine"):
        simulate_flows(sched, net, 1 << 20, engine="numba")


def test_the_cli_runs_the_flow_model_and_refuses_packet_options(tmp_path, capsys):
    out = tmp_path / "flow.json"
    args = ["collectives", "--topology", "torus:4x4", "--algorithms", "ring,multitree", "--sizes", "1MiB,64MiB"]
    assert main([*args, "--model", "flow", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {"flow"} and all(r["packet_bytes"] is None for r in rows)
    capsys.readouterr()
    assert main([*args, "--model", "flow", "--packet", "4KiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not with --model flow" in err[0]
