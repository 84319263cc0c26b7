"""Event-driven network simulator for collective schedules.

Every message is cut into packets of `packet_bytes`. Every directed link is a FIFO that
serves one packet at a time at its bandwidth, so concurrent messages that share a link
really wait for each other. With `cut_through` (the default) the next link may start a
packet once its head has arrived, `latency(l)` after it started on link l, though never
finishing before the previous link has finished plus the latency; without it
(store-and-forward) a packet leaves link l `latency(l)` after its last byte went out and
the next link receives it whole.

Cut-through is the default because it reproduces ASTRA-sim's congestion-aware analytical
backend on direct networks to the nanosecond (ring all-reduce on a ring of 4–256 nodes,
1 and 64 MiB; tests/test_collectives_reference.py), where store-and-forward packets of
size/2048 are 0.4% (4 nodes) to 25% (256 nodes) slower. On a switch that backend stores
and forwards whole messages; store-and-forward with `packet_bytes` ≥ the largest message
reproduces it exactly.

A message enters the network when the data it carries is complete: when every
earlier-step message into its source that overlaps its chunk range has been delivered.
With `lockstep` (the default, as the MultiTree paper runs every algorithm) it also waits
until every message of the previous step has been delivered: the schedule's steps are
then executed as built, and a contention-free schedule stays contention-free. Without
it (dataflow) messages start as early as their data allows, and messages of different
steps may collide. The result is the time the last message is delivered.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

import numpy as np

from .interconnect import Interconnect
from .schedules import Schedule


@dataclass
class SimResult:
    seconds: float
    messages: int
    packets: int
    events: int
    wall_seconds: float
    link_bytes: np.ndarray | None = None  # [links] bytes that crossed each directed link
    link_busy: np.ndarray | None = None  # [links] seconds each link spent sending
    link_timeline: np.ndarray | None = None  # [links, K] busy fraction per interval (timeline=K)

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    @property
    def link_utilization(self) -> np.ndarray:
        """Busy time / total time per link (0 for a run of no time)."""
        if self.seconds <= 0:
            return np.zeros_like(self.link_busy)
        return self.link_busy / self.seconds


def dependencies(schedule: Schedule) -> list[list[int]]:
    """For each message, the messages it waits for (see module docstring)."""
    incoming: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for j, m in enumerate(schedule.messages):
        for c in range(m.lo, m.hi):
            incoming.setdefault((m.dst, c), []).append((m.step, j))
    deps = []
    for m in schedule.messages:
        d = set()
        for c in range(m.lo, m.hi):
            for s, j in incoming.get((m.src, c), ()):
                if s < m.step:
                    d.add(j)
        deps.append(sorted(d))
    return deps


def ordering(schedule: Schedule, lockstep: bool):
    """What each message waits for: (waiting counts, dependents, messages by step, the next
    step of each step, messages left per step); with `lockstep` every message of a step
    also waits for the step before it (one count, released when that step is done)."""
    msgs = schedule.messages
    deps = dependencies(schedule)
    waiting = [len(d) for d in deps]
    dependents: list[list[int]] = [[] for _ in msgs]
    for i, d in enumerate(deps):
        for j in d:
            dependents[j].append(i)
    by_step: dict[int, list[int]] = {}
    for i, m in enumerate(msgs):
        by_step.setdefault(m.step, []).append(i)
    steps = sorted(by_step)
    next_step = dict(zip(steps, steps[1:], strict=False))
    step_left = {s: len(v) for s, v in by_step.items()}
    if lockstep:
        for s in steps[1:]:
            for i in by_step[s]:
                waiting[i] += 1  # the barrier of the step before
    return waiting, dependents, by_step, next_step, step_left


def node_delays(net: Interconnect, delays) -> list[float]:
    """Seconds before each node may send (a dict {node: seconds} or a list), checked."""
    delay = [0.0] * net.n
    if delays is not None:
        items = delays.items() if isinstance(delays, dict) else enumerate(delays)
        for node, d in items:
            if not 0 <= node < net.n or not (math.isfinite(d) and d >= 0):
                raise ValueError(f"bad delay {d!r} for node {node}")
            delay[node] = float(d)
    return delay


def message_routes(schedule: Schedule, net: Interconnect) -> list[list[int]]:
    """The links each message crosses: the interconnect's route, with the node's interfaces
    taken round-robin in step order for the first (injection) and last (ejection) link."""
    msgs = schedule.messages
    route_cache: dict[tuple[int, int], list[int]] = {}
    outs = [net.parallel(v, net.attach(v)) for v in range(net.n)]  # a node's injection links
    ins = [net.parallel(net.attach(v), v) for v in range(net.n)]  # and its ejection links
    routes: list[list[int]] = [[] for _ in msgs]
    sent = [0] * net.n  # messages so far per node: interfaces are taken round-robin
    got = [0] * net.n
    for k in sorted(range(len(msgs)), key=lambda k: msgs[k].step):  # stable: step, then k
        m = msgs[k]
        src, dst = m.src, m.dst
        route = route_cache.get((src, dst))
        if route is None:
            route = route_cache[(src, dst)] = net.route(src, dst)
        if route:
            route = list(route)
            o, i = outs[src], ins[dst]
            route[0] = o[sent[src] % len(o)]
            route[-1] = i[got[dst] % len(i)]
            sent[src] += 1
            got[dst] += 1
        routes[k] = route
    return routes


def simulate(
    schedule: Schedule,
    net: Interconnect,
    size_bytes: float,
    packet_bytes: float = 4096,
    cut_through: bool = True,
    lockstep: bool = True,
    delays=None,
    timeline: int = 0,
    engine: str = "auto",
) -> SimResult:
    """The schedule's time on `net` for `size_bytes` (see the module docstring). `engine`:
    "compiled" runs the event loop compiled with numba (`_packet_core`), "python" the loop
    below; both process the same events in the same order and give identical results;
    "auto" takes the compiled one for runs of more than COMPILED_FROM events (estimated)
    where numba imports, and the Python loop for smaller ones, which it finishes before
    numba has loaded its compiled code (about a second; the first use on a machine compiles
    it, about 20 s, and caches it)."""
    small = engine == "auto" and _estimated_events(schedule, size_bytes, packet_bytes) <= COMPILED_FROM
    core = compiled_engine(engine, small, _compiled_core)
    if core is not None:
        return _simulate_compiled(core, schedule, net, size_bytes, packet_bytes, cut_through, lockstep, delays, timeline)
    t_wall = time.perf_counter()
    delay = node_delays(net, delays)
    msgs = schedule.messages
    nbytes = schedule.message_bytes(size_bytes)
    bw = np.array([lk[2] for lk in net.links])
    lat = np.array([lk[3] for lk in net.links])
    bw_l, lat_l = bw.tolist(), lat.tolist()
    routes = message_routes(schedule, net)
    waiting, dependents, by_step, next_step, step_left = ordering(schedule, lockstep)
    free = [0.0] * len(net.links)
    lbytes = [0.0] * len(net.links)
    lbusy = [0.0] * len(net.links)
    spans: list[tuple[int, float, float]] | None = [] if timeline > 0 else None
    left = [0] * len(msgs)  # packets not yet delivered
    heap: list = []
    seq = 0
    events = 0
    packets = 0
    finish = 0.0

    def inject(i: int, now: float) -> None:
        """All packets of message i arrive at its first link now: serve them in order."""
        nonlocal seq, packets
        size = float(nbytes[i])
        route = routes[i]
        if not route or size <= 0:
            complete(i, now)
            return
        count = max(1, math.ceil(size / packet_bytes))
        left[i] = count
        packets += count
        link = route[0]
        t0 = t = max(now, free[link], delay[msgs[i].src])
        last = size - (count - 1) * packet_bytes
        for k in range(count):
            pk = packet_bytes if k < count - 1 else last
            start = t
            t = start + pk / bw_l[link]
            nxt = (start if cut_through else t) + lat_l[link]
            heapq.heappush(heap, (nxt, seq, i, 1, pk, t + lat_l[link]))
            seq += 1
        free[link] = t
        lbytes[link] += size
        lbusy[link] += t - t0
        if spans is not None:
            spans.append((link, t0, t))

    def release(j: int, now: float) -> None:
        waiting[j] -= 1
        if waiting[j] == 0:
            inject(j, now)

    def complete(i: int, now: float) -> None:
        nonlocal finish
        finish = max(finish, now)
        for j in dependents[i]:
            release(j, now)
        s = msgs[i].step
        step_left[s] -= 1
        if lockstep and step_left[s] == 0 and s in next_step:
            for j in by_step[next_step[s]]:
                release(j, now)

    for i in [i for i in range(len(msgs)) if waiting[i] == 0]:  # those ready at the start, once each (a
        inject(i, 0.0)  # message that completes at once may release later ones: they are injected then)

    while heap:
        now, _, i, hop, pk, prev_done = heapq.heappop(heap)
        events += 1
        route = routes[i]
        if hop == len(route):  # delivered
            left[i] -= 1
            if left[i] == 0:
                complete(i, now)
            continue
        link = route[hop]
        start = max(now, free[link])
        done = start + pk / bw_l[link]
        if cut_through:
            done = max(done, prev_done)
            arrive = start + lat_l[link] if hop + 1 < len(route) else done + lat_l[link]
        else:
            arrive = done + lat_l[link]
        free[link] = done
        lbytes[link] += pk
        lbusy[link] += pk / bw_l[link]
        if spans is not None:
            spans.append((link, done - pk / bw_l[link], done))
        heapq.heappush(heap, (arrive, seq, i, hop + 1, pk, done + lat_l[link]))
        seq += 1
    if any(w > 0 for w in waiting):
        raise RuntimeError("schedule has a dependency cycle: some messages never started")
    tl = _timeline(spans, len(net.links), timeline, finish) if spans is not None else None
    return SimResult(
        finish,
        len(msgs),
        packets,
        events,
        time.perf_counter() - t_wall,
        np.array(lbytes),
        np.array(lbusy),
        tl,
    )


COMPILED_FROM = 300_000  # events: above this, `simulate(engine="auto")` runs the compiled loop


def _estimated_events(schedule: Schedule, size_bytes: float, packet_bytes: float) -> float:
    """About how many events a run takes: every packet of every message, over two links
    and its delivery (the route lengths are not known yet)."""
    nbytes = np.asarray(schedule.message_bytes(size_bytes), dtype=np.float64)
    return 3.0 * float(np.maximum(1.0, np.ceil(nbytes / packet_bytes)).sum())


def compiled_engine(engine: str, small: bool, load):
    """The compiled core (`load()`) that `engine` asks for, or None for the Python loop:
    "python", or "auto" for a `small` run or where numba does not import."""
    if engine not in ("auto", "compiled", "python"):
        raise ValueError(f"engine must be auto, compiled or python, got {engine!r}")
    if engine == "python" or small:
        return None
    core = load()
    if core is None and engine == "compiled":
        raise RuntimeError("engine='compiled' needs numba, which does not import here")
    return core


def flat_inputs(schedule: Schedule, net: Interconnect, size_bytes: float, lockstep: bool, delays):
    """What both compiled loops take: (`flat_ordering`, bytes per message, link bandwidths,
    link latencies, node delays) as arrays."""
    f = flat_ordering(schedule, net, lockstep, _compiled_core())
    nbytes = np.ascontiguousarray(schedule.message_bytes(size_bytes, f["fields"]), dtype=np.float64)
    bw = np.array([lk[2] for lk in net.links], dtype=np.float64)
    lat = np.array([lk[3] for lk in net.links], dtype=np.float64)
    return f, nbytes, bw, lat, np.array(node_delays(net, delays), dtype=np.float64)


def _compiled_core():
    """The numba event loop (`_packet_core`), or None where numba does not import."""
    try:
        from . import _packet_core
    except ImportError:
        return None
    return _packet_core


def _offsets(counts: np.ndarray) -> np.ndarray:
    """CSR offsets ptr [len + 1] of rows with `counts` items: row i is items[ptr[i]:ptr[i+1]]."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def flat_ordering(schedule: Schedule, net: Interconnect, lockstep: bool, core) -> dict:
    """`message_routes` and `ordering` as flat arrays, built by numpy and the compiled
    dependency scan instead of Python loops (the same contents, tested through both
    simulators): routes and dependents in CSR form, waiting counts, dense step ids, each
    step's messages (CSR), the next step (-1: none) and messages per step."""
    fields = schedule.fields()
    m = len(fields)
    raw_step, src, dst, lo, hi = (np.ascontiguousarray(fields[:, k]) for k in range(5))
    route_ptr, route_items = _route_arrays(schedule, net, raw_step, src, dst)
    wait_ptr, wait_items = core.dependencies(src, dst, raw_step, lo, hi, net.n, max(schedule.chunks, int(hi.max(initial=0))))
    wait = np.diff(wait_ptr)
    waiter = np.repeat(np.arange(m, dtype=np.int64), wait)
    by_dep = np.argsort(wait_items, kind="stable")  # dependents of j, ascending as ordering() lists them
    steps, step = np.unique(raw_step, return_inverse=True)
    step = step.astype(np.int64).reshape(-1)
    left = np.bincount(step, minlength=len(steps)).astype(np.int64)
    k = np.arange(len(steps), dtype=np.int64)
    wait = wait.astype(np.int64)
    if lockstep:
        wait += step > 0  # the barrier of the step before
    return {"fields": fields, "src": src, "route_ptr": route_ptr, "route_items": route_items, "waiting": wait,
            "dep_ptr": _offsets(np.bincount(wait_items, minlength=m)),
            "dep_items": waiter[by_dep], "steps": steps, "step": step, "step_ptr": _offsets(left),
            "step_items": np.argsort(step, kind="stable").astype(np.int64), "next_step": np.where(k + 1 < len(steps), k + 1, -1).astype(np.int64),
            "step_left": left}


def routes_and_ordering(schedule: Schedule, net: Interconnect, lockstep: bool):
    """(message_routes, *ordering) as the Python structures they return, built through
    `flat_ordering` where numba imports (the Python builders cost seconds at 256 nodes)."""
    core = _compiled_core()
    if core is None:
        return (message_routes(schedule, net), *ordering(schedule, lockstep))
    f = flat_ordering(schedule, net, lockstep, core)

    def lists(ptr, items):
        flat, p = items.tolist(), ptr.tolist()
        return [flat[p[i] : p[i + 1]] for i in range(len(p) - 1)]

    steps = f["steps"].tolist()
    per_step = lists(f["step_ptr"], f["step_items"])
    return (
        lists(f["route_ptr"], f["route_items"]),
        f["waiting"].tolist(),
        lists(f["dep_ptr"], f["dep_items"]),
        dict(zip(steps, per_step, strict=True)),
        dict(zip(steps, steps[1:], strict=False)),
        dict(zip(steps, f["step_left"].tolist(), strict=True)),
    )


def _simulate_compiled(core, schedule, net, size_bytes, packet_bytes, cut_through, lockstep, delays, timeline):
    """`simulate` with the compiled event loop: the same inputs, flattened to arrays."""
    t_wall = time.perf_counter()
    f, nbytes, bw, lat, delay = flat_inputs(schedule, net, size_bytes, lockstep, delays)
    route_ptr, wait = f["route_ptr"], f["waiting"]
    nspans = 0
    if timeline > 0:  # one span per message on its first link, one per packet on each later link
        hops = np.diff(route_ptr)
        count = np.maximum(1, np.ceil(nbytes / packet_bytes))
        nspans = int((((hops > 0) & (nbytes > 0)) * (1 + count * np.maximum(hops - 1, 0))).sum())
    finish, packets, events, lbytes, lbusy, spans = core.run(
        route_ptr, f["route_items"], nbytes, f["src"], f["step"], bw, lat, delay, wait, f["dep_ptr"], f["dep_items"],
        f["step_ptr"], f["step_items"], f["next_step"], f["step_left"], float(packet_bytes),
        bool(cut_through), bool(lockstep), timeline > 0, nspans,
    )
    if (wait > 0).any():
        raise RuntimeError("schedule has a dependency cycle: some messages never started")
    tl = None
    if timeline > 0:
        tl = _timeline([(int(k), a, b) for k, a, b in spans.tolist()], len(net.links), timeline, finish)
    return SimResult(float(finish), len(schedule.messages), int(packets), int(events), time.perf_counter() - t_wall, lbytes, lbusy, tl)


def _route_arrays(schedule, net, step, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """`message_routes` as CSR (ptr, items), vectorized: each (src, dst) pair's route once,
    then the first and last link turned round-robin over the node's interfaces in step
    order."""
    pairs, pair_of = np.unique(src * net.n + dst, return_inverse=True)
    pair_of = pair_of.reshape(-1)
    base = [net.route(int(p // net.n), int(p % net.n)) for p in pairs]
    blen = np.array([len(r) for r in base], dtype=np.int64)
    bptr = _offsets(blen)
    bitems = np.fromiter((v for r in base for v in r), dtype=np.int64, count=int(bptr[-1]))
    length = blen[pair_of]
    ptr = _offsets(length)
    offset = np.arange(int(ptr[-1]), dtype=np.int64) - np.repeat(ptr[:-1], length)
    items = bitems[np.repeat(bptr[pair_of], length) + offset]
    routed = length > 0
    outs = [net.parallel(v, net.attach(v)) for v in range(net.n)]
    ins = [net.parallel(net.attach(v), v) for v in range(net.n)]
    if any(len(o) > 1 for o in outs) or any(len(i) > 1 for i in ins):
        order = np.argsort(step, kind="stable")  # step, then message index, as message_routes
        for ends, nodes, at in ((outs, src, ptr[:-1]), (ins, dst, ptr[1:] - 1)):
            seen = np.zeros(net.n, dtype=np.int64)
            for k in order[routed[order]]:
                v = nodes[k]
                choice = ends[v]
                items[at[k]] = choice[seen[v] % len(choice)]
                seen[v] += 1
    return ptr, items


def _timeline(spans, links: int, bins: int, finish: float) -> np.ndarray:
    """Busy fraction of each link in each of `bins` equal intervals of [0, finish]."""
    out = np.zeros((links, bins))
    if finish <= 0 or not spans:
        return out
    width = finish / bins
    for link, a, b in spans:
        k = min(int(a / width), bins - 1)
        while a < b and k < bins:
            end = min(b, (k + 1) * width)
            if end > a:
                out[link, k] += end - a
            a = end
            k += 1
    return np.clip(out / width, 0.0, 1.0)
