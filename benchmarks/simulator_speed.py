"""Collective simulator speed: the packet model's compiled event loop against its Python
loop, and the flow model against the packet model, 16 to 1024 nodes.

A 64 MiB ring all-reduce (and MultiTree up to 256 nodes) on a torus, 16 GB/s links,
500 ns, one interface per node, packets of size/2048 (the default), and packets of 4 KiB
(a finer, MTU-like choice: more packets per message) from 64 nodes up. Per row, measured
in interleaved rounds (the order rotating; the median of the per-round ratios):

- packet model, cut-through (the default), compiled event loop (numba): wall seconds and
  events per second, what `simulate` runs for a run this large;
- the same run on the Python event loop (`engine="python"`, the loop the compiled one
  replaces and the reference it equals event for event): the compiled loop's speed-up;
- packet model, store-and-forward, compiled;
- the flow model (max-min fair flows), compiled: its speed-up over the compiled packet
  model (the fastest packet run, the fair baseline) and its simulated time's difference;
  and, where the Python packet loop runs, the flow model's Python loop.

The Python loops are skipped at 1024 nodes and with 4 KiB packets (minutes per run). Wall
seconds include building the arrays from the schedule's messages, not numba's one-time
load of its cached code (measured once, first).

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


def measure(n: int, algorithm: str, rounds: int, python: bool, packet: float | None) -> dict:
    net = make_interconnect(f"torus:{SHAPES[n]}", bandwidth=16e9, latency=500e-9, nis=1)
    sched = build_schedule(algorithm, net)
    pk = packet_for(SIZE, packet)
    last = {}

    def run(name, fn):
        def go():
            last[name] = fn()
        return go

    fns = {
        "packet": run("packet", lambda: simulate(sched, net, SIZE, packet_bytes=pk, engine="compiled")),
        "store_and_forward": run("store_and_forward", lambda: simulate(sched, net, SIZE, packet_bytes=pk, cut_through=False,
                                                                        engine="compiled")),
        "flow": run("flow", lambda: simulate_flows(sched, net, SIZE, engine="compiled")),
    }
    if python:
        fns["packet_python"] = run("packet_python", lambda: simulate(sched, net, SIZE, packet_bytes=pk, engine="python"))
        fns["flow_python"] = run("flow_python", lambda: simulate_flows(sched, net, SIZE, engine="python"))
    times = harness.interleave(fns, "packet", rounds=rounds, warmup=0)
    row = {"n": n, "algorithm": algorithm, "messages": len(sched.messages), "packet_bytes": pk, "rounds": rounds,
           "packets_per_message": last["packet"].packets / len(sched.messages)}
    for name, t in times.items():
        res = last[name]
        row[name] = {"simulated_us": res.seconds * 1e6, "wall_seconds": t["seconds_median"], "events": res.events,
                     "events_per_second": res.events / t["seconds_median"]}
    if python:
        assert last["packet_python"].seconds == last["packet"].seconds, "the compiled loop must equal the Python loop"
        r = times["packet_python"]
        row["compiled_speedup"] = r["ratio_median"]  # per-round python / compiled
        row["compiled_speedup_spread"] = [r["ratio_q25"], r["ratio_q75"]]
        assert last["flow_python"].seconds == last["flow"].seconds, "the compiled flow loop must equal the Python loop"
        row["flow_compiled_speedup"] = times["flow_python"]["seconds_median"] / times["flow"]["seconds_median"]
    f = times["flow"]
    events = last["packet"].events
    row["per_round"] = {"packet_events_per_second": [events / t for t in times["packet"]["seconds"]],
                        "flow_speedup_vs_packet": [1 / r for r in f["ratios"]]}
    if python:
        row["per_round"]["compiled_speedup"] = times["packet_python"]["ratios"]
    row["flow_speedup_vs_packet"] = 1 / f["ratio_median"]  # per-round packet / flow
    row["flow_speedup_spread"] = [1 / f["ratio_q75"], 1 / f["ratio_q25"]]
    row["flow_error_vs_packet"] = row["flow"]["simulated_us"] / row["packet"]["simulated_us"] - 1
    return row


def first_load() -> float:
    """Seconds numba takes to load (or, on a fresh machine, compile) the event loops: one
    small compiled run of each model in a fresh interpreter state."""
    net = make_interconnect("torus:4x4")
    t = time.perf_counter()
    simulate(build_schedule("ring", net), net, 1 << 20, engine="compiled")
    simulate_flows(build_schedule("ring", net), net, 1 << 20, engine="compiled")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 and 64 nodes only")
    ap.add_argument("--recheck", metavar="PATH")
    a = ap.parse_args()
    t0 = time.time()
    load = first_load()
    print(f"numba's first load of the compiled loop: {load:.2f} s", flush=True)
    plan = [(16, "ring", 5, True, None), (64, "ring", 3, True, None), (16, "multitree", 5, True, None),
            (64, "multitree", 3, True, None), (64, "ring", 3, False, 4096)]
    if not (a.quick or a.recheck):
        plan += [(256, "ring", 3, True, None), (256, "multitree", 3, True, None), (1024, "ring", 3, False, None),
                 (256, "ring", 3, False, 4096), (1024, "ring", 1, False, 4096)]
    rows = []
    for n, algorithm, rounds, python, packet in plan:
        rows.append(measure(n, algorithm, rounds, python, packet))
        r = rows[-1]
        extra = f", {r['compiled_speedup']:.1f}× the Python loop" if python else ""
        print(f"n={n} {algorithm} packets of {r['packet_bytes']:.0f} B: packet {r['packet']['wall_seconds']:.2f} s "
              f"({r['packet']['events_per_second'] / 1e6:.2f} "
              f"M ev/s){extra}; flow {r['flow']['wall_seconds']:.2f} s, {r['flow_speedup_vs_packet']:.1f}× faster, "
              f"{100 * r['flow_error_vs_packet']:+.2f}%", flush=True)
    summary = {  # over the rows of this run's plan
        "packet_events_per_second": harness.stats([r["packet"]["events_per_second"] for r in rows]),
        "compiled_speedup": harness.stats([r["compiled_speedup"] for r in rows if "compiled_speedup" in r]),
        "flow_speedup_vs_packet": harness.stats([r["flow_speedup_vs_packet"] for r in rows]),
        "flow_compiled_speedup": harness.stats([r["flow_compiled_speedup"] for r in rows if "flow_compiled_speedup" in r]),
        "flow_abs_error_vs_packet_pct": harness.stats([100 * abs(r["flow_error_vs_packet"]) for r in rows]),
    }
    figures = {}  # per row, so that a recheck (the quick plan) compares like with like
    for r in rows:
        tag = f"{r['n']}_{r['algorithm']}_{r['packet_bytes'] / 1024:.0f}KiB"
        for k, values in r["per_round"].items():
            figures[f"{k}_{tag}"] = harness.stats(values)
        figures[f"flow_error_vs_packet_pct_{tag}"] = harness.stats([100 * r["flow_error_vs_packet"]])
    if a.recheck:
        harness.write_recheck(a.recheck, {k: v["mean"] for k, v in figures.items()})
        return
    if a.quick:  # a smoke run: the committed results stay
        print(markdown(rows, load))
        return
    payload = {"size": SIZE, "first_load_seconds": load, "rows": rows, "summary": summary, "figures": figures,
               "wall_seconds": time.time() - t0}
    print(write_result("simulator_speed", payload))
    write_text(RESULTS / "simulator_speed.md", markdown(rows, load))


def markdown(rows: list[dict], load: float) -> str:
    out = ["# Simulator speed: 64 MiB all-reduce on a torus", "",
           "Packet model: cut-through, compiled event loop (numba), against the same run on the Python loop; "
           "store-and-forward compiled; flow model compiled, against the compiled packet model (and its own Python "
           "loop). Median wall seconds over interleaved rounds; speed-ups are medians of per-round ratios. numba's "
           f"one-time load of the compiled loops in a process: {load:.2f} s (not included).", "",
           "| nodes | algorithm | packet | packets / message | packet: wall s (M events/s) | Python loop: wall s | "
           "compiled speed-up | store-and-forward: wall s | flow: wall s | flow compiled vs Python | "
           "flow vs packet time | flow faster than packet |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        py = (f"{r['packet_python']['wall_seconds']:.2f} | {r['compiled_speedup']:.1f}× "
              f"[{r['compiled_speedup_spread'][0]:.1f}, {r['compiled_speedup_spread'][1]:.1f}]") if "packet_python" in r else "– | –"
        fpy = f"{r['flow_compiled_speedup']:.0f}×" if "flow_compiled_speedup" in r else "–"
        out.append(
            f"| {r['n']} | {r['algorithm']} | {r['packet_bytes'] / 1024:.0f} KiB | {r['packets_per_message']:.0f} | "
            f"{r['packet']['wall_seconds']:.2f} ({r['packet']['events_per_second'] / 1e6:.2f}) | {py} | "
            f"{r['store_and_forward']['wall_seconds']:.2f} | {r['flow']['wall_seconds']:.3f} | {fpy} | "
            f"{100 * r['flow_error_vs_packet']:+.2f}% | {r['flow_speedup_vs_packet']:.1f}× "
            f"[{r['flow_speedup_spread'][0]:.1f}, {r['flow_speedup_spread'][1]:.1f}] |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
