"""Collective simulator speed: the packet model against the flow model, 16 to 1024 nodes.

A 64 MiB ring all-reduce (and MultiTree up to 256 nodes) on a torus, 16 GB/s links,
500 ns, one interface per node. Per node count: the packet model with its default packet
(size/2048, store-and-forward) and with cut-through, and the flow model (max-min fair
flows); wall seconds (median over interleaved rounds, rounds rotating the order),
events per second, and the simulated time's difference from cut-through packets. The
packet model is skipped at 1024 nodes (minutes per run here).

Goals: flow ≥ 50× faster than packets and within 2% of them on bandwidth-bound runs; a
256-node 64 MiB all-reduce in ≤ 10 s; the packet model ≥ 5 M events/s.

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


def measure(n: int, algorithm: str, rounds: int, packets: bool) -> dict:
    net = make_interconnect(f"torus:{SHAPES[n]}", bandwidth=16e9, latency=500e-9, nis=1)
    sched = build_schedule(algorithm, net)
    pk = packet_for(SIZE, None)
    last = {}

    def run(name, fn):
        def go():
            last[name] = fn()
        return go

    fns = {"flow": run("flow", lambda: simulate_flows(sched, net, SIZE))}
    if packets:
        fns["packet"] = run("packet", lambda: simulate(sched, net, SIZE, packet_bytes=pk, cut_through=False))
        fns["cut_through"] = run("cut_through", lambda: simulate(sched, net, SIZE, packet_bytes=pk, cut_through=True))
    times = harness.interleave(fns, "flow", rounds=rounds, warmup=0)
    row = {"n": n, "algorithm": algorithm, "messages": len(sched.messages), "packet_bytes": pk}
    for name, t in times.items():
        res = last[name]
        row[name] = {"simulated_us": res.seconds * 1e6, "wall_seconds": t["seconds_median"], "events": res.events,
                     "events_per_second": res.events / t["seconds_median"]}
    if packets:
        ct = row["cut_through"]
        row["flow_error_vs_cut_through"] = row["flow"]["simulated_us"] / ct["simulated_us"] - 1
        row["flow_error_vs_packet"] = row["flow"]["simulated_us"] / row["packet"]["simulated_us"] - 1
        row["flow_speedup_vs_packet"] = times["packet"]["ratio_median"]  # per-round packet/flow
        row["flow_speedup_vs_cut_through"] = times["cut_through"]["ratio_median"]
        row["flow_speedup_spread"] = [times["packet"]["ratio_q25"], times["packet"]["ratio_q75"]]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 and 64 nodes only")
    ap.add_argument("--recheck", metavar="PATH")
    a = ap.parse_args()
    t0 = time.time()
    plan = [(16, "ring", 5, True), (64, "ring", 3, True), (16, "multitree", 5, True), (64, "multitree", 3, True)]
    if not (a.quick or a.recheck):
        plan += [(256, "ring", 1, True), (256, "multitree", 1, True), (1024, "ring", 1, False)]
    rows = []
    for n, algorithm, rounds, packets in plan:
        rows.append(measure(n, algorithm, rounds, packets))
        r = rows[-1]
        extra = (f", packet {r['packet']['wall_seconds']:.2f} s ({r['packet']['events_per_second'] / 1e6:.2f} M ev/s), "
                 f"flow {100 * r['flow_error_vs_cut_through']:+.2f}% vs cut-through, "
                 f"{r['flow_speedup_vs_packet']:.0f}× faster") if packets else ""
        print(f"n={n} {algorithm}: flow {r['flow']['wall_seconds']:.2f} s{extra}", flush=True)
    with_packets = [r for r in rows if "flow_speedup_vs_packet" in r]
    figures = {
        "flow_speedup_vs_packet": harness.stats([r["flow_speedup_vs_packet"] for r in with_packets]),
        "flow_abs_error_vs_cut_through_pct": harness.stats([100 * abs(r["flow_error_vs_cut_through"]) for r in with_packets]),
        "packet_events_per_second": harness.stats([r["packet"]["events_per_second"] for r in with_packets]),
    }
    if a.recheck:
        harness.write_recheck(a.recheck, {k: v["mean"] for k, v in figures.items()})
        return
    payload = {"size": SIZE, "rows": rows, "figures": figures, "wall_seconds": time.time() - t0}
    print(write_result("simulator_speed", payload))
    write_text(RESULTS / "simulator_speed.md", markdown(rows))


def markdown(rows: list[dict]) -> str:
    out = ["# Simulator speed: 64 MiB all-reduce on a torus, packet vs flow model", "",
           "| nodes | algorithm | messages | packet: wall s (M events/s) | cut-through: wall s | flow: wall s | "
           "flow vs cut-through | flow vs packet | flow faster than packet |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "packet" in r:
            out.append(
                f"| {r['n']} | {r['algorithm']} | {r['messages']} | {r['packet']['wall_seconds']:.2f} "
                f"({r['packet']['events_per_second'] / 1e6:.2f}) | {r['cut_through']['wall_seconds']:.2f} | "
                f"{r['flow']['wall_seconds']:.3f} | {100 * r['flow_error_vs_cut_through']:+.2f}% | "
                f"{100 * r['flow_error_vs_packet']:+.2f}% | {r['flow_speedup_vs_packet']:.0f}× |")
        else:
            out.append(f"| {r['n']} | {r['algorithm']} | {r['messages']} | – | – | {r['flow']['wall_seconds']:.2f} | – | – | – |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
