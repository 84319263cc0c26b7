"""The flow model's loop compiled with numba: the same arithmetic, in the same order, as
the Python loop in `flow.simulate_flows` (which stays the reference and the fallback).

Active flows are kept in the order they began (the Python loop's dict order), every sum
runs over them in that order, and the max-min rates come from the same progressive
filling (`max_min`, keyed like `flow.max_min_rates`), so both loops give identical
results (tests/test_collectives_flow.py checks it). Routes, dependents and steps are in CSR
form as for the packet core (`simulator.flat_ordering`).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _distinct(route_ptr, route_items, i, p):
    """The link at position p of flow i's route, or -1 where it appeared earlier in the
    route (each link counts once per flow: `set(route)` in the Python loop)."""
    link = route_items[p]
    for q in range(route_ptr[i], p):
        if route_items[q] == link:
            return -1
    return link


@njit(cache=True)
def max_min(act, nact, route_ptr, route_items, capacity, rate, frozen, call, count, ptr, users, load, unfrozen, version,
            mark, stamp, links, touched):
    """Max-min fair rates of the flows act[:nact] by progressive filling (see
    `flow.max_min_rates`), written into `rate`. `frozen` (per message) holds the number of
    the call that froze it, `mark` (per link) the round that last touched it (rounds are
    numbered across calls from `stamp`; returns the next number); `count` must be zero on
    entry and is left zero; the other arrays are scratch of one entry per link."""
    nl = 0  # links with users, in the order first met
    for k in range(nact):
        for p in range(route_ptr[act[k]], route_ptr[act[k] + 1]):
            link = _distinct(route_ptr, route_items, act[k], p)
            if link >= 0:
                if count[link] == 0:
                    links[nl] = link
                    nl += 1
                count[link] += 1
    shared = False
    for q in range(nl):
        shared = shared or count[links[q]] > 1
    if not shared:  # every link has one user: each flow runs at its slowest link's capacity
        for q in range(nl):  # (what the filling below gives: the first of its links to fill
            count[links[q]] = 0  # is its slowest, at level = that capacity / 1)
        for k in range(nact):
            i = act[k]
            r = math.inf
            for p in range(route_ptr[i], route_ptr[i + 1]):
                r = min(r, capacity[route_items[p]] / 1)
            rate[i] = r
            frozen[i] = call
        return stamp
    total = 0
    for q in range(nl):  # each link's users, in flow order
        link = links[q]
        ptr[link] = total
        total += count[link]
        unfrozen[link] = count[link]
        load[link] = 0.0
        version[link] = 0
        count[link] = 0
    for k in range(nact):
        for p in range(route_ptr[act[k]], route_ptr[act[k] + 1]):
            link = _distinct(route_ptr, route_items, act[k], p)
            if link >= 0:
                users[ptr[link] + count[link]] = act[k]
                count[link] += 1
    heap = [(capacity[links[q]] / unfrozen[links[q]], 0, links[q]) for q in range(nl)]
    heapq.heapify(heap)
    level = 0.0
    while len(heap) > 0:
        fill, ver, link = heapq.heappop(heap)
        if ver != version[link] or unfrozen[link] == 0:
            continue  # stale: a flow of this link froze elsewhere since
        level = max(level, fill)
        stamp += 1
        nt = 0
        for u in range(ptr[link], ptr[link] + count[link]):
            f = users[u]
            if frozen[f] == call:
                continue
            frozen[f] = call
            rate[f] = level
            for p in range(route_ptr[f], route_ptr[f + 1]):
                other = _distinct(route_ptr, route_items, f, p)
                if other >= 0:
                    load[other] += level
                    unfrozen[other] -= 1
                    if mark[other] != stamp:
                        mark[other] = stamp
                        touched[nt] = other
                        nt += 1
        for q in range(nt):
            other = touched[q]
            version[other] += 1
            if unfrozen[other] > 0:
                heapq.heappush(heap, ((capacity[other] - load[other]) / unfrozen[other], version[other], other))
    for q in range(nl):
        count[links[q]] = 0
    return stamp


@njit(cache=True, inline="always")
def _release(items, a, b, waiting, released, nrel):
    """One wait less for each of items[a:b]; those left waiting for nothing are appended
    to released[:nrel]; returns the new count."""
    for q in range(a, b):
        j = items[q]
        waiting[j] -= 1
        if waiting[j] == 0:
            released[nrel] = j
            nrel += 1
    return nrel


@njit(cache=True)
def run(route_ptr, route_items, nbytes, src, step, capacity, lat, delay, waiting, dep_ptr, dep_items, step_ptr,
        step_items, next_step, step_left, lockstep, record):
    """The flow loop. Returns (finish, events, link bytes, link busy, segments [k, 4]
    (start, end, link, busy fraction) when `record`); `waiting` is left as the loop
    leaves it."""
    m = len(nbytes)
    nlinks = len(capacity)
    route_lat = np.zeros(m)  # Σ latency of each route, summed hop by hop as the Python loop sums
    for i in range(m):
        for p in range(route_ptr[i], route_ptr[i + 1]):
            route_lat[i] += lat[route_items[p]]
    lbytes = np.zeros(nlinks)
    lbusy = np.zeros(nlinks)
    segs = [(0.0, 0.0, 0.0, 0.0)]
    segs.pop()
    left = np.zeros(m)  # bytes not yet sent, of the active flows
    rate = np.zeros(m)
    frozen = np.full(m, -1, dtype=np.int64)
    act = np.empty(m, dtype=np.int64)  # the active flows, in the order they began
    nact = 0
    ends = np.empty(m)
    count = np.zeros(nlinks, dtype=np.int64)
    ptr = np.zeros(nlinks, dtype=np.int64)
    users = np.empty(len(route_items) + 1, dtype=np.int64)
    load = np.zeros(nlinks)
    unfrozen = np.zeros(nlinks, dtype=np.int64)
    version = np.zeros(nlinks, dtype=np.int64)
    mark = np.full(nlinks, -1, dtype=np.int64)
    links = np.empty(nlinks, dtype=np.int64)
    touched = np.empty(nlinks, dtype=np.int64)
    used = np.zeros(nlinks)
    released = np.empty(m, dtype=np.int64)
    heap = [(0.0, 0, 0, 0)]  # (time, seq, kind, message): kind 0 may start, 1 delivered
    heap.pop()
    seq = 0
    events = 0
    finish = 0.0
    now = 0.0
    changed = False
    calls = 0
    stamp = 0

    nrel = 0
    for i in range(m):
        if waiting[i] == 0:
            released[nrel] = i
            nrel += 1
    while True:
        # Every event at `now`, each as the Python loop handles it when popped: a message
        # whose wait is over is ready (it begins now, or when its node's delay is over); a
        # delivered message completes, readying its dependents, then the next step.
        while True:
            for r in range(nrel):
                i = released[r]
                if delay[src[i]] > now:
                    heapq.heappush(heap, (delay[src[i]], seq, 0, i))
                    seq += 1
                    continue
                events += 1  # begin
                a, b = route_ptr[i], route_ptr[i + 1]
                if b == a or nbytes[i] <= 0:
                    heapq.heappush(heap, (now, seq, 1, i))
                    seq += 1
                    continue
                act[nact] = i
                nact += 1
                left[i] = nbytes[i]
                for p in range(a, b):
                    lbytes[route_items[p]] += nbytes[i]
                changed = True
            nrel = 0
            if len(heap) == 0 or heap[0][0] > now:
                break
            _, _, kind, i = heapq.heappop(heap)
            if kind == 0:  # its node's delay is over
                released[0] = i
                nrel = 1
                continue
            events += 1  # complete
            finish = max(finish, now)
            nrel = _release(dep_items, dep_ptr[i], dep_ptr[i + 1], waiting, released, nrel)
            s = step[i]
            step_left[s] -= 1
            if lockstep and step_left[s] == 0 and next_step[s] >= 0:
                ns = next_step[s]
                nrel = _release(step_items, step_ptr[ns], step_ptr[ns + 1], waiting, released, nrel)
        if nact == 0 and len(heap) == 0:
            break
        if changed:
            stamp = max_min(act, nact, route_ptr, route_items, capacity, rate, frozen, calls, count, ptr, users, load,
                            unfrozen, version, mark, stamp, links, touched)
            calls += 1
            changed = False
        t_end = math.inf
        for k in range(nact):
            i = act[k]
            ends[k] = now + left[i] / rate[i]
            t_end = min(t_end, ends[k])
        t_event = heap[0][0] if len(heap) > 0 else math.inf
        t = min(t_end, t_event)
        dt = t - now
        if dt > 0 and nact > 0:
            nl = 0
            for k in range(nact):
                i = act[k]
                left[i] -= rate[i] * dt
                for p in range(route_ptr[i], route_ptr[i + 1]):
                    link = route_items[p]
                    if used[link] == 0.0:
                        links[nl] = link
                        nl += 1
                    used[link] += rate[i]
            for q in range(nl):
                link = links[q]
                u = min(1.0, used[link] / capacity[link])
                lbusy[link] += u * dt
                if record:
                    segs.append((now, t, float(link), u))
                used[link] = 0.0
        now = t
        if t_end <= t_event:  # the flows that end now (to a relative 1e-12) leave; delivered Σ latency later
            tol = 1e-12 * max(t_end, 1e-12)
            kept = 0
            for k in range(nact):
                i = act[k]
                if ends[k] <= t_end + tol:
                    events += 1
                    heapq.heappush(heap, (now + route_lat[i], seq, 1, i))
                    seq += 1
                else:
                    act[kept] = i
                    ends[kept] = ends[k]
                    kept += 1
            nact = kept
            changed = True
    out = np.empty((len(segs), 4))
    for k in range(len(segs)):
        a0, b0, l0, u0 = segs[k]
        out[k, 0], out[k, 1], out[k, 2], out[k, 3] = a0, b0, l0, u0
    return finish, events, lbytes, lbusy, out
