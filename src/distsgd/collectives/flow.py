"""Flow-level (fluid) network model: messages as flows sharing links max-min fairly.

The packet model (`simulator.simulate`) moves every packet through every link; its cost
grows with size / packet. Here a message is a flow over its route that, while active,
moves at a rate r_i fixed by max-min fairness over all active flows (progressive filling:
raise every unfrozen flow's rate together until some link is full, freeze the flows
crossing it, repeat; Bertsekas & Gallager, Data Networks, §6.5.2). Rates change only when
a flow starts or finishes, so the cost grows with the number of messages, not the size.
A message's bytes stream through all its links at once: it is delivered Σ latency after
its last byte leaves the source; waiting (data dependencies, the lockstep barrier, a
node's delay) is as in the packet model.

What it leaves out: a packet's store-and-forward per hop (packet/bandwidth per link,
which the packet model charges and cut-through does not) and FIFO order on a shared link
(fair sharing finishes competing messages together, FIFO one after the other). On
bandwidth-bound runs it agrees with the cut-through packet model; tests/test_collectives_flow.py
and `benchmarks/simulator_speed.py` measure by how much.

Large runs take the same loop compiled with numba (`_flow_core`), which gives identical
results; where every link in use has one flow (a contention-free step) each flow's max-min
rate is its slowest link's capacity, which that loop takes without the filling.
"""

from __future__ import annotations

import heapq
import math
import time

import numpy as np

from .interconnect import Interconnect
from .schedules import Schedule
from .simulator import SimResult, compiled_engine, flat_inputs, node_delays, routes_and_ordering


def max_min_rates(flows: dict[int, list[int]], capacity: list[float]) -> dict[int, float]:
    """Max-min fair rates of `flows` ({flow: its links}) on links of `capacity` (bytes/s),
    by progressive filling: every unfrozen flow runs at the common level; link l fills at
    level (c_l − load of its frozen flows) / its unfrozen flows; the first to fill freezes
    its flows at that level."""
    users: dict[int, list[int]] = {}
    for f, route in flows.items():
        for link in set(route):
            users.setdefault(link, []).append(f)
    load = dict.fromkeys(users, 0.0)
    unfrozen = {link: len(fs) for link, fs in users.items()}
    version = dict.fromkeys(users, 0)
    heap = [(capacity[link] / unfrozen[link], 0, link) for link in users]
    heapq.heapify(heap)
    rate: dict[int, float] = {}
    level = 0.0
    while heap:
        fill, ver, link = heapq.heappop(heap)
        if ver != version[link] or unfrozen[link] == 0:
            continue  # stale: a flow of this link froze elsewhere since
        level = max(level, fill)
        touched = set()
        for f in users[link]:
            if f in rate:
                continue
            rate[f] = level
            for other in set(flows[f]):
                load[other] += level
                unfrozen[other] -= 1
                touched.add(other)
        for other in touched:
            version[other] += 1
            if unfrozen[other] > 0:
                heapq.heappush(heap, ((capacity[other] - load[other]) / unfrozen[other], version[other], other))
    return rate


COMPILED_FROM = 40_000  # messages: above this, `simulate_flows(engine="auto")` runs the compiled loop


def simulate_flows(
    schedule: Schedule,
    net: Interconnect,
    size_bytes: float,
    lockstep: bool = True,
    delays=None,
    timeline: int = 0,
    engine: str = "auto",
) -> SimResult:
    """The schedule's time with messages as max-min fair flows (see the module docstring).
    `events` counts flow starts, transfer ends and deliveries; `packets` is 0. `engine`:
    "compiled" runs the loop compiled with numba (`_flow_core`), "python" the loop below;
    both do the same arithmetic in the same order and give identical results; "auto" takes
    the compiled one for schedules of more than COMPILED_FROM messages where numba imports
    (smaller ones finish in Python before numba has loaded its compiled code)."""
    core = compiled_engine(engine, engine == "auto" and len(schedule.messages) <= COMPILED_FROM, _compiled_core)
    if core is not None:
        return _simulate_flows_compiled(core, schedule, net, size_bytes, lockstep, delays, timeline)
    t_wall = time.perf_counter()
    delay = node_delays(net, delays)
    msgs = schedule.messages
    nbytes = [float(b) for b in schedule.message_bytes(size_bytes)]
    cap = [lk[2] for lk in net.links]
    lat = [lk[3] for lk in net.links]
    routes, waiting, dependents, by_step, next_step, step_left = routes_and_ordering(schedule, net, lockstep)
    route_lat = [sum(lat[link] for link in r) for r in routes]
    nlinks = len(net.links)
    lbytes = [0.0] * nlinks
    lbusy = [0.0] * nlinks
    segments: list[tuple[float, float, int, float]] | None = [] if timeline > 0 else None
    active: dict[int, float] = {}  # message -> bytes not yet sent
    rate: dict[int, float] = {}
    heap: list = []  # (time, seq, kind, message): kind 0 may start (its node's delay is over), 1 delivered
    seq = 0
    events = 0
    finish = 0.0
    now = 0.0
    changed = False

    def push(t: float, kind: int, i: int) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, i))
        seq += 1

    def ready(i: int, t: float) -> None:
        start = delay[msgs[i].src]
        if start > t:
            push(start, 0, i)
        else:
            begin(i, t)

    def begin(i: int, t: float) -> None:
        nonlocal changed, events
        events += 1
        if not routes[i] or nbytes[i] <= 0:
            push(t, 1, i)
            return
        active[i] = nbytes[i]
        for link in routes[i]:
            lbytes[link] += nbytes[i]
        changed = True

    def complete(i: int, t: float) -> None:
        nonlocal finish, events
        events += 1
        finish = max(finish, t)
        for j in dependents[i]:
            release(j, t)
        s = msgs[i].step
        step_left[s] -= 1
        if lockstep and step_left[s] == 0 and s in next_step:
            for j in by_step[next_step[s]]:
                release(j, t)

    def release(j: int, t: float) -> None:
        waiting[j] -= 1
        if waiting[j] == 0:
            ready(j, t)

    for i in range(len(msgs)):
        if waiting[i] == 0:
            ready(i, 0.0)
    while active or heap:
        if changed:
            rate = max_min_rates({i: routes[i] for i in active}, cap)
            changed = False
        ends = {i: now + left / rate[i] for i, left in active.items()}
        t_end = min(ends.values(), default=math.inf)
        t_event = heap[0][0] if heap else math.inf
        t = min(t_end, t_event)
        dt = t - now
        if dt > 0 and active:
            used: dict[int, float] = {}
            for i in active:
                active[i] -= rate[i] * dt
                for link in routes[i]:
                    used[link] = used.get(link, 0.0) + rate[i]
            for link, r in used.items():
                u = min(1.0, r / cap[link])
                lbusy[link] += u * dt
                if segments is not None:
                    segments.append((now, t, link, u))
        now = t
        if t_end <= t_event:
            tol = 1e-12 * max(t_end, 1e-12)
            for i in [i for i, e in ends.items() if e <= t_end + tol]:
                del active[i]
                events += 1
                push(now + route_lat[i], 1, i)
            changed = True
            continue
        while heap and heap[0][0] <= now:
            _, _, kind, i = heapq.heappop(heap)
            if kind == 0:
                begin(i, now)
            else:
                complete(i, now)
    if any(w > 0 for w in waiting):
        raise RuntimeError("schedule has a dependency cycle: some messages never started")
    tl = _timeline(segments, nlinks, timeline, finish) if segments is not None else None
    return SimResult(finish, len(msgs), 0, events, time.perf_counter() - t_wall, np.array(lbytes),
                     np.array(lbusy), tl)


def _compiled_core():
    """The numba flow loop (`_flow_core`), or None where numba does not import."""
    try:
        from . import _flow_core
    except ImportError:
        return None
    return _flow_core


def _simulate_flows_compiled(core, schedule, net, size_bytes, lockstep, delays, timeline) -> SimResult:
    """`simulate_flows` with the compiled loop: the same inputs, flattened to arrays."""
    t_wall = time.perf_counter()
    f, nbytes, cap, lat, delay = flat_inputs(schedule, net, size_bytes, lockstep, delays)
    route_ptr, route_items, wait = f["route_ptr"], f["route_items"], f["waiting"]
    finish, events, lbytes, lbusy, segs = core.run(
        route_ptr, route_items, nbytes, f["src"], f["step"], cap, lat, delay, wait, f["dep_ptr"], f["dep_items"],
        f["step_ptr"], f["step_items"], f["next_step"], f["step_left"], bool(lockstep), timeline > 0)
    if (wait > 0).any():
        raise RuntimeError("schedule has a dependency cycle: some messages never started")
    tl = None
    if timeline > 0:
        tl = _timeline([(a, b, int(k), u) for a, b, k, u in segs.tolist()], len(cap), timeline, float(finish))
    return SimResult(float(finish), len(schedule.messages), 0, int(events), time.perf_counter() - t_wall, lbytes, lbusy,
                     tl)


def _timeline(segments, links: int, bins: int, finish: float) -> np.ndarray:
    """Utilization of each link in each of `bins` equal intervals of [0, finish], from
    segments (start, end, link, busy fraction)."""
    out = np.zeros((links, bins))
    if finish <= 0 or not segments:
        return out
    width = finish / bins
    for a, b, link, u in segments:
        k = min(int(a / width), bins - 1)
        while a < b and k < bins:
            end = min(b, (k + 1) * width)
            out[link, k] += u * (end - a)
            a = end
            k += 1
    return np.clip(out / width, 0.0, 1.0)
