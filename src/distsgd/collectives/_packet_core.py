"""The packet model's event loop compiled with numba: the same events, in the same order,
as the Python loop in `simulator.simulate` (which stays the reference and the fallback).

Every structure is a flat array: routes, dependents and each step's messages in CSR form
(`ptr[i]:ptr[i+1]` indexes `items`). The heap holds (time, seq, message, hop, packet bytes,
previous link's finish) as in the Python loop, so ties break by the same sequence numbers.
The Python loop's recursion (a message that completes at once releases others,
which may complete at once) runs here on an explicit stack of frames that visits
dependents and the next step's messages in the same order, so both give identical
results (tests/test_collectives.py checks it on every schedule and network of the suite).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from numba import njit


@njit(cache=True)
def _inject(i, now, size, route_ptr, route_items, src, delay, free, bw, lat, lbytes, lbusy, heap, seq,
            packet_bytes, cut_through, left, spans, nspan, record):
    """All packets of message i arrive at its first link now (pushed on `heap`); returns
    (seq, packets added, spans recorded), packets = -1 when the message completes at once
    (no route, no bytes)."""
    a, b = route_ptr[i], route_ptr[i + 1]
    if b == a or size <= 0:
        return seq, -1, nspan
    count = max(1, int(math.ceil(size / packet_bytes)))
    left[i] = count
    link = route_items[a]
    t = max(now, free[link], delay[src[i]])
    t0 = t
    last = size - (count - 1) * packet_bytes
    for k in range(count):
        pk = packet_bytes if k < count - 1 else last
        start = t
        t = start + pk / bw[link]
        nxt = (start if cut_through else t) + lat[link]
        heapq.heappush(heap, (nxt, seq, i, 1, pk, t + lat[link]))
        seq += 1
    free[link] = t
    lbytes[link] += size
    lbusy[link] += t - t0
    if record:
        spans[nspan, 0] = link
        spans[nspan, 1] = t0
        spans[nspan, 2] = t
        nspan += 1
    return seq, count, nspan


@njit(cache=True)
def run(route_ptr, route_items, nbytes, src, step, bw, lat, delay, waiting, dep_ptr, dep_items,
        step_ptr, step_items, next_step, step_left, packet_bytes, cut_through, lockstep, record, nspans):
    """The event loop. Returns (finish, packets, events, link bytes, link busy, spans
    [k, 3] (link, start, end) when `record`); `waiting` is left as the loop leaves it."""
    m = len(nbytes)
    nlinks = len(bw)
    free = np.zeros(nlinks)
    lbytes = np.zeros(nlinks)
    lbusy = np.zeros(nlinks)
    spans = np.zeros((nspans if record else 0, 3))
    nspan = 0
    left = np.zeros(m, dtype=np.int64)
    heap = [(0.0, 0, 0, 0, 0.0, 0.0)]
    heap.pop()
    seq = 0
    events = 0
    packets = 0
    finish = 0.0
    # frames of the completion "recursion": message, phase (0 dependents, 1 next step), position
    fmsg = np.empty(m + 1, dtype=np.int64)
    fphase = np.empty(m + 1, dtype=np.int64)
    fpos = np.empty(m + 1, dtype=np.int64)

    for i0 in range(m):  # the messages that wait for nothing, injected at time 0
        if waiting[i0] != 0:
            continue
        seq, added, nspan = _inject(i0, 0.0, nbytes[i0], route_ptr, route_items, src, delay, free, bw, lat, lbytes,
                                    lbusy, heap, seq, packet_bytes, cut_through, left, spans, nspan, record)
        if added >= 0:
            packets += added
            continue
        finish, seq, packets, nspan = _complete(
            i0, 0.0, finish, seq, packets, nspan, fmsg, fphase, fpos, route_ptr, route_items, nbytes, src, step, bw, lat,
            delay, waiting, dep_ptr, dep_items, step_ptr, step_items, next_step, step_left, packet_bytes, cut_through,
            lockstep, record, free, lbytes, lbusy, heap, left, spans)

    while len(heap) > 0:
        now, _, i, hop, pk, prev_done = heapq.heappop(heap)
        events += 1
        a, b = route_ptr[i], route_ptr[i + 1]
        hops = b - a
        if hop == hops:  # delivered
            left[i] -= 1
            if left[i] == 0:
                finish, seq, packets, nspan = _complete(
                    i, now, finish, seq, packets, nspan, fmsg, fphase, fpos, route_ptr, route_items, nbytes, src, step,
                    bw, lat, delay, waiting, dep_ptr, dep_items, step_ptr, step_items, next_step, step_left,
                    packet_bytes, cut_through, lockstep, record, free, lbytes, lbusy, heap, left, spans)
            continue
        link = route_items[a + hop]
        start = max(now, free[link])
        serve = pk / bw[link]
        done = start + serve
        if cut_through:
            done = max(done, prev_done)
            arrive = start + lat[link] if hop + 1 < hops else done + lat[link]
        else:
            arrive = done + lat[link]
        free[link] = done
        lbytes[link] += pk
        lbusy[link] += serve
        if record:
            spans[nspan, 0] = link
            spans[nspan, 1] = done - serve
            spans[nspan, 2] = done
            nspan += 1
        heapq.heappush(heap, (arrive, seq, i, hop + 1, pk, done + lat[link]))
        seq += 1
    return finish, packets, events, lbytes, lbusy, spans[:nspan]


@njit(cache=True)
def _complete(i0, now, finish, seq, packets, nspan, fmsg, fphase, fpos, route_ptr, route_items, nbytes, src, step,
              bw, lat, delay, waiting, dep_ptr, dep_items, step_ptr, step_items, next_step, step_left, packet_bytes,
              cut_through, lockstep, record, free, lbytes, lbusy, heap, left, spans):
    """Message i0 is delivered at `now`: release its dependents, then (lockstep) the next
    step when i0 was its step's last; a released message with nothing to send completes
    at once, depth first, as the Python loop's recursion does."""
    top = 0
    fmsg[0], fphase[0], fpos[0] = i0, 0, 0
    finish = max(finish, now)
    while top >= 0:
        i = fmsg[top]
        if fphase[top] == 0:
            k = dep_ptr[i] + fpos[top]
            if k < dep_ptr[i + 1]:
                fpos[top] += 1
                j = dep_items[k]
            else:
                s = step[i]
                step_left[s] -= 1
                if lockstep and step_left[s] == 0 and next_step[s] >= 0:
                    fphase[top], fpos[top] = 1, 0
                else:
                    top -= 1
                continue
        else:
            ns = next_step[step[i]]
            k = step_ptr[ns] + fpos[top]
            if k < step_ptr[ns + 1]:
                fpos[top] += 1
                j = step_items[k]
            else:
                top -= 1
                continue
        waiting[j] -= 1
        if waiting[j] != 0:
            continue
        seq, added, nspan = _inject(j, now, nbytes[j], route_ptr, route_items, src, delay, free, bw, lat, lbytes, lbusy,
                                    heap, seq, packet_bytes, cut_through, left, spans, nspan, record)
        if added >= 0:
            packets += added
        else:  # nothing to send: complete j now, before the next of i's
            top += 1
            fmsg[top], fphase[top], fpos[top] = j, 0, 0
            finish = max(finish, now)
    return finish, seq, packets, nspan


@njit(cache=True)
def dependencies(src, dst, step, lo, hi, nodes, chunks):
    """`simulator.dependencies` as CSR (ptr, items): message m waits for every message j
    into m's source, of an earlier step, whose chunk range overlaps m's; each m's list
    ascending, without repeats."""
    m = len(src)
    count = np.zeros(nodes * chunks + 1, dtype=np.int64)  # messages into (node, chunk)
    for j in range(m):
        for c in range(lo[j], hi[j]):
            count[dst[j] * chunks + c + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    into = np.empty(start[-1], dtype=np.int64)
    for j in range(m):
        for c in range(lo[j], hi[j]):
            k = dst[j] * chunks + c
            into[fill[k]] = j
            fill[k] += 1
    seen = np.full(m, -1, dtype=np.int64)
    ptr = np.zeros(m + 1, dtype=np.int64)
    items = np.empty(16, dtype=np.int64)
    n = 0
    for i in range(m):
        first = n
        for c in range(lo[i], hi[i]):
            k = src[i] * chunks + c
            for q in range(start[k], start[k + 1]):
                j = into[q]
                if step[j] < step[i] and seen[j] != i:
                    seen[j] = i
                    if n == len(items):
                        grown = np.empty(2 * n, dtype=np.int64)
                        grown[:n] = items
                        items = grown
                    items[n] = j
                    n += 1
        items[first:n] = np.sort(items[first:n])
        ptr[i + 1] = n
    return ptr, items[:n].copy()

