"""The packet model's event loop compiled with numba: the same events, in the same order,
as the Python loop in `simulator.simulate` (which stays the reference and the fallback).

Every structure is a flat array: routes, dependents and each step's messages in CSR form
(`ptr[i]:ptr[i+1]` indexes `items`). The heap is three arrays, keyed by (time, seq) as in
the Python loop, so ties break by the same sequence numbers; each entry points to its
packet's slot, which holds (message, hop, packet bytes, previous link's finish) and is kept
from injection to delivery. A packet that moves on to its next link replaces the heap's top
in one sift (the Python loop pops, then pushes: the keys are unique, so the order of the
events is the same).
The Python loop's recursion (a message that completes at once releases others,
which may complete at once) runs here on an explicit stack of frames that visits
dependents and the next step's messages in the same order, so both give identical
results (tests/test_collectives.py checks it on every schedule and network of the suite).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _put(H, hs, pos, t, s, k):
    """Heap entry pos := key (t, s) pointing to slot k."""
    H[pos] = t
    hs[0, pos] = s
    hs[1, pos] = k


@njit(cache=True, inline="always")
def _push(H, hs, st, t, s, k):
    """Push key (t, s) pointing to slot k on the heap (H: times, hs: [seqs; slots]; st[0] its
    size)."""
    pos = st[0]
    st[0] = pos + 1
    while pos > 0:
        up = (pos - 1) >> 1
        if not (t < H[up] or (t == H[up] and s < hs[0, up])):
            break
        _put(H, hs, pos, H[up], hs[0, up], hs[1, up])
        pos = up
    _put(H, hs, pos, t, s, k)


@njit(cache=True, inline="always")
def _sift_down(H, hs, n, t, s, k):
    """Put key (t, s, slot k) at the root of the heap of size n and sift it down."""
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and (H[c + 1] < H[c] or (H[c + 1] == H[c] and hs[0, c + 1] < hs[0, c])):
            c += 1
        if not (H[c] < t or (H[c] == t and hs[0, c] < s)):
            break
        _put(H, hs, pos, H[c], hs[0, c], hs[1, c])
        pos = c
    _put(H, hs, pos, t, s, k)


@njit(cache=True, inline="always")
def _pop(H, hs, st):
    """Remove the heap's top (read it first)."""
    n = st[0] - 1
    st[0] = n
    if n > 0:
        _sift_down(H, hs, n, H[n], hs[0, n], hs[1, n])


@njit(cache=True, inline="always")
def _slot(st, frees):
    """A free packet slot (st[1]: free slots stacked in `frees`, st[2]: the next unused)."""
    if st[1] > 0:
        st[1] -= 1
        return frees[st[1]]
    st[2] += 1
    return st[2] - 1


@njit(cache=True)
def run(route_ptr, route_items, nbytes, src, step, bw, lat, delay, waiting, dep_ptr, dep_items,
        step_ptr, step_items, next_step, step_left, packet_bytes, cut_through, lockstep, record, nspans):
    """The event loop. Returns (finish, packets, events, link bytes, link busy, spans
    [k, 3] (link, start, end) when `record`); `waiting` is left as the loop leaves it.

    One function, without helpers that take arrays: numba counts references to every array
    passed to a call, with atomic instructions, and those calls cost more than the events."""
    m = len(nbytes)
    nlinks = len(bw)
    free = np.zeros(nlinks)
    lbytes = np.zeros(nlinks)
    lbusy = np.zeros(nlinks)
    spans = np.zeros((nspans if record else 0, 3))
    nspan = 0
    left = np.zeros(m, dtype=np.int64)  # packets of each message not yet delivered
    cap = 1  # every packet of the run at once at most (np.empty: pages are touched as used)
    for i in range(m):
        if route_ptr[i + 1] > route_ptr[i] and nbytes[i] > 0:
            cap += max(1, int(math.ceil(nbytes[i] / packet_bytes)))
    H = np.empty(cap)  # heap: times,
    hs = np.empty((2, cap), dtype=np.int64)  # sequence numbers and slots
    st = np.zeros(3, dtype=np.int64)  # heap size, free slots, next unused slot
    frees = np.empty(cap, dtype=np.int64)
    pi = np.empty((cap, 2), dtype=np.int64)  # per slot: message, hop
    pf = np.empty((cap, 2))  # packet bytes, previous link's finish
    seq = 0
    events = 0
    packets = 0
    finish = 0.0
    # Frames of the Python loop's recursion: message, phase, position. Phase 2 is the start
    # (every message that waits for nothing at the start, in index order), 0 a delivered message's
    # dependents, 1 (lockstep) the next step's messages once its step is done. A released
    # message with nothing to send completes at once: its frame goes on top, depth first.
    fmsg = np.empty(m + 2, dtype=np.int64)
    fphase = np.empty(m + 2, dtype=np.int64)
    fpos = np.empty(m + 2, dtype=np.int64)
    top = 0
    initial = np.flatnonzero(waiting == 0)  # ready at the start, each injected once
    fmsg[0], fphase[0], fpos[0] = -1, 2, 0
    now = 0.0
    while True:
        while top >= 0:  # release what the latest delivery (or the start) frees, at `now`
            i = fmsg[top]
            phase = fphase[top]
            if phase == 2:
                if fpos[top] == len(initial):
                    top -= 1
                    continue
                j = initial[fpos[top]]
                fpos[top] += 1
            else:
                if phase == 0:
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
            # inject j: all its packets arrive at its first link now, served in order
            a = route_ptr[j]
            size = nbytes[j]
            if route_ptr[j + 1] == a or size <= 0:  # nothing to send: j completes now
                top += 1
                fmsg[top], fphase[top], fpos[top] = j, 0, 0
                finish = max(finish, now)
                continue
            count = max(1, int(math.ceil(size / packet_bytes)))
            left[j] = count
            packets += count
            link = route_items[a]
            t = max(now, free[link], delay[src[j]])
            t0 = t
            last = size - (count - 1) * packet_bytes
            for p in range(count):
                pk = packet_bytes if p < count - 1 else last
                start = t
                t = start + pk / bw[link]
                slot = _slot(st, frees)
                pi[slot, 0] = j
                pi[slot, 1] = 1
                pf[slot, 0] = pk
                pf[slot, 1] = t + lat[link]
                _push(H, hs, st, (start if cut_through else t) + lat[link], seq, slot)
                seq += 1
            free[link] = t
            lbytes[link] += size
            lbusy[link] += t - t0
            if record:
                spans[nspan, 0] = link
                spans[nspan, 1] = t0
                spans[nspan, 2] = t
                nspan += 1
        if st[0] == 0:
            break
        now = H[0]
        slot = hs[1, 0]
        i, hop = pi[slot, 0], pi[slot, 1]
        pk, prev_done = pf[slot, 0], pf[slot, 1]
        events += 1
        a = route_ptr[i]
        hops = route_ptr[i + 1] - a
        if hop == hops:  # delivered
            _pop(H, hs, st)
            frees[st[1]] = slot
            st[1] += 1
            left[i] -= 1
            if left[i] == 0:
                top = 0
                fmsg[0], fphase[0], fpos[0] = i, 0, 0
                finish = max(finish, now)
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
        pi[slot, 1] = hop + 1
        pf[slot, 1] = done + lat[link]
        _sift_down(H, hs, st[0], arrive, seq, slot)  # pop the top and push the packet's next hop
        seq += 1
    return finish, packets, events, lbytes, lbusy, spans[:nspan]


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
        for a in range(first + 1, n):  # insertion sort in place: the lists are short
            v = items[a]
            b = a - 1
            while b >= first and items[b] > v:
                items[b + 1] = items[b]
                b -= 1
            items[b + 1] = v
        ptr[i + 1] = n
    return ptr, items[:n].copy()

