"""Collective simulator speed: the packet model's compiled event loop against its Python
loop, and the flow model against the packet model, 16 to 1024 nodes.

A 64 MiB ring all-reduce (and MultiTree up to 256 nodes) on a torus, 16 GB/s links,
500 ns, one interface per node, packets of size/2048. Per node count, measured in
interleaved rounds (the order rotating; the median of the per-round ratios):

- packet model, cut-through (the default), compiled event loop (numba): wall seconds and
  events per second, what `simulate` runs for a run this large;
- the same run on the Python event loop (`engine="python"`, the loop the compiled one
  replaces and the reference it equals event for event): the compiled loop's speed-up;
- packet model, store-and-forward, compiled;
- the flow model (max-min fair flows): its speed-up over the compiled packet model (the
  fastest packet run, the fair baseline) and its simulated time's difference.

The Python packet loop is skipped at 1024 nodes (minutes per run). Wall seconds include
building the arrays, not numba's one-time load of its cached code (measured once, first).

Goals: the packet model ≥ 5 M events/s; flow ≥ 50× faster than packets and within 2% of
them on bandwidth-bound runs; a 256-node 64 MiB all-reduce in ≤ 10 s.

    python benchmarks/simulator_speed.py [--quick]

Writes benchmarks/results/simulator_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd.collectives import build_schedule, make_interconnect, simulate  # noqa: E402
from distsgd.collectives.flow import simulate_flows  # noqa: E402
from distsgd.collectives.report import packet_for  # noqa: E402

SIZE = 64 * 2**20
SHAPES = {16: "4x4", 64: "8x8", 256: "16x16", 1024: "32x32"}


def measure(n: int, algorithm: str, rounds: int, python: bool) -> dict:
    net = make_interconnect(f"torus:{SHAPES[n]}", bandwidth=16e9, latency=500e-9, nis=1)
    sched = build_schedule(algorithm, net)
    pk = packet_for(SIZE, None)
    last = {}

    def run(name, fn):
        def go():
            last[name] = fn()
        return go

    fns = {
        "packet": run("packet", lambda: simulate(sched, net, SIZE, packet_bytes=pk, engine="compiled")),
        "store_and_forward": run("store_and_forward", lambda: simulate(sched, net, SIZE, packet_bytes=pk, cut_through=False,
                                                                        engine="compiled")),
        "flow": run("flow", lambda: simulate_flows(sched, net, SIZE)),
    }
    if python:
        fns["packet_python"] = run("packet_python", lambda: simulate(sched, net, SIZE, packet_bytes=pk, engine="python"))
    times = harness.interleave(fns, "packet", rounds=rounds, warmup=0)
    row = {"n": n, "algorithm": algorithm, "messages": len(sched.messages), "packet_bytes": pk, "rounds": rounds}
    for name, t in times.items():
        res = last[name]
        row[name] = {"simulated_us": res.seconds * 1e6, "wall_seconds": t["seconds_median"], "events": res.events,
                     "events_per_second": res.events / t["seconds_median"]}
    if python:
        assert last["packet_python"].seconds == last["packet"].seconds, "the compiled loop must equal the Python loop"
        r = times["packet_python"]
        row["compiled_speedup"] = r["ratio_median"]  # per-round python / compiled
        row["compiled_speedup_spread"] = [r["ratio_q25"], r["ratio_q75"]]
    f = times["flow"]
    row["flow_speedup_vs_packet"] = 1 / f["ratio_median"]  # per-round packet / flow
    row["flow_speedup_spread"] = [1 / f["ratio_q75"], 1 / f["ratio_q25"]]
    row["flow_error_vs_packet"] = row["flow"]["simulated_us"] / row["packet"]["simulated_us"] - 1
    return row


def first_load() -> float:
    """Seconds numba takes to load (or, on a fresh machine, compile) the event loop: one
    small compiled run in a fresh interpreter state."""
    net = make_interconnect("torus:4x4")
    t = time.perf_counter()
    simulate(build_schedule("ring", net), net, 1 << 20, engine="compiled")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 and 64 nodes only")
    ap.add_argument("--recheck", metavar="PATH")
    a = ap.parse_args()
    t0 = time.time()
    load = first_load()
    print(f"numba's first load of the compiled loop: {load:.2f} s", flush=True)
    plan = [(16, "ring", 5, True), (64, "ring", 3, True), (16, "multitree", 5, True), (64, "multitree", 3, True)]
    if not (a.quick or a.recheck):
        plan += [(256, "ring", 3, True), (256, "multitree", 3, True), (1024, "ring", 1, False)]
    rows = []
    for n, algorithm, rounds, python in plan:
        rows.append(measure(n, algorithm, rounds, python))
        r = rows[-1]
        extra = f", {r['compiled_speedup']:.1f}× the Python loop" if python else ""
        print(f"n={n} {algorithm}: packet {r['packet']['wall_seconds']:.2f} s ({r['packet']['events_per_second'] / 1e6:.2f} "
              f"M ev/s){extra}; flow {r['flow']['wall_seconds']:.2f} s, {r['flow_speedup_vs_packet']:.1f}× faster, "
              f"{100 * r['flow_error_vs_packet']:+.2f}%", flush=True)
    figures = {
        "packet_events_per_second": harness.stats([r["packet"]["events_per_second"] for r in rows]),
        "compiled_speedup": harness.stats([r["compiled_speedup"] for r in rows if "compiled_speedup" in r]),
        "flow_speedup_vs_packet": harness.stats([r["flow_speedup_vs_packet"] for r in rows]),
        "flow_abs_error_vs_packet_pct": harness.stats([100 * abs(r["flow_error_vs_packet"]) for r in rows]),
    }
    if a.recheck:
        harness.write_recheck(a.recheck, {k: v["mean"] for k, v in figures.items()})
        return
    if a.quick:  # a smoke run: the committed results stay
        print(markdown(rows, load))
        return
    payload = {"size": SIZE, "first_load_seconds": load, "rows": rows, "figures": figures, "wall_seconds": time.time() - t0}
    print(write_result("simulator_speed", payload))
    write_text(RESULTS / "simulator_speed.md", markdown(rows, load))


def markdown(rows: list[dict], load: float) -> str:
    out = ["# Simulator speed: 64 MiB all-reduce on a torus", "",
           "Packet model: cut-through, compiled event loop (numba), against the same run on the Python loop; "
           "store-and-forward compiled; flow model against the compiled packet model. Median wall seconds over "
           f"interleaved rounds; speed-ups are medians of per-round ratios. numba's one-time load of the compiled "
           f"loop in a process: {load:.2f} s (not included).", "",
           "| nodes | algorithm | messages | packet: wall s (M events/s) | Python loop: wall s | compiled speed-up | "
           "store-and-forward: wall s | flow: wall s | flow vs packet time | flow faster than packet |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        py = (f"{r['packet_python']['wall_seconds']:.2f} | {r['compiled_speedup']:.1f}× "
              f"[{r['compiled_speedup_spread'][0]:.1f}, {r['compiled_speedup_spread'][1]:.1f}]") if "packet_python" in r else "– | –"
        out.append(
            f"| {r['n']} | {r['algorithm']} | {r['messages']} | {r['packet']['wall_seconds']:.2f} "
            f"({r['packet']['events_per_second'] / 1e6:.2f}) | {py} | {r['store_and_forward']['wall_seconds']:.2f} | "
            f"{r['flow']['wall_seconds']:.3f} | {100 * r['flow_error_vs_packet']:+.2f}% | {r['flow_speedup_vs_packet']:.1f}× |")
    return "\n".join(out) + "\n"



if __name__ == "__main__":
    main()
