"""MultiTree against ring, double binary tree, 2D ring, halving-doubling and hierarchical
all-reduce on the interconnects of the MultiTree paper (ISCA 2021), on our packet simulator.

Links 16 GB/s and 150 ns as in the paper; 4 network interfaces per node on the tori and
the mesh (the paper's β configuration), one and then four on the switched networks; sizes 32 KiB to
64 MiB. Reports every algorithm's time and ratio to the bandwidth lower bound
2(n−1)/n · S / B_node, MultiTree's speedup over each baseline, MultiTree's steps per
phase beside the lower bound on steps, and the speed of schedule building and
simulation on a 16×16 torus. Writes benchmarks/results/collectives_multitree.json and
benchmarks/results/collectives_multitree.png.

Run: python benchmarks/collectives_multitree.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result  # noqa: E402

from distsgd.collectives import build_schedule, make_interconnect, simulate, steps_lower_bound  # noqa: E402
from distsgd.collectives.report import compare, human, parse_sizes  # noqa: E402
from distsgd.plots import save_figure  # noqa: E402

SETUPS = [
    ("torus:4x4", 4, ["ring", "dbtree", "ring2d", "multitree"]),
    ("torus:8x8", 4, ["ring", "dbtree", "ring2d", "multitree"]),
    ("mesh:8x8", 4, ["ring", "dbtree", "ring2d", "multitree"]),
    ("fattree:8", 1, ["ring", "dbtree", "hierarchical", "hd", "multitree"]),
    ("bigraph:4x8", 1, ["ring", "dbtree", "hierarchical", "hd", "multitree"]),
    ("fattree:8", 4, ["ring", "dbtree", "hierarchical", "hd", "multitree"]),
    ("bigraph:4x8", 4, ["ring", "dbtree", "hierarchical", "hd", "multitree"]),
]


def speed() -> dict:
    net = make_interconnect("torus:16x16", nis=4)
    t = time.perf_counter()
    sched = build_schedule("multitree", net)
    build = time.perf_counter() - t
    res = simulate(sched, net, 64 * 2**20, packet_bytes=64 * 1024)
    return {
        "interconnect": "torus:16x16 (256 nodes), 4 NIs",
        "multitree_build_seconds": build,
        "simulate_64MiB_seconds": res.wall_seconds,
        "packet_bytes": 64 * 1024,
        "packet_events": res.events,
        "events_per_second": res.events_per_second,
        "steps_per_phase": sched.info["steps_per_phase"],
        "steps_lower_bound": steps_lower_bound(net),
        "target_seconds": 60,
        "met": build < 60 and res.wall_seconds < 60,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="three sizes only")
    args = ap.parse_args()
    sizes = parse_sizes("32KiB,1MiB,64MiB" if args.quick else "32KiB..64MiB")
    report = {"link_bandwidth": 16e9, "link_latency": 150e-9, "sizes": sizes, "topologies": []}
    for spec, nis, algos in SETUPS:
        net = make_interconnect(spec, bandwidth=16e9, latency=150e-9, nis=nis)
        schedules = {a: build_schedule(a, net) for a in algos}
        rows = compare(net, schedules, sizes)
        mt = {r["size"]: r["seconds"] for r in rows if r["algorithm"] == "multitree"}
        speedups = {}
        for a in algos:
            if a == "multitree":
                continue
            ratios = [r["seconds"] / mt[r["size"]] for r in rows if r["algorithm"] == a]
            speedups[a] = {"at_64MiB": ratios[-1], "mean_over_sizes": statistics.mean(ratios)}
        report["topologies"].append(
            {
                "interconnect": net.summary() | {"spec": spec},
                "rows": rows,
                "multitree_speedup": speedups,
                "multitree_steps_per_phase": schedules["multitree"].info["steps_per_phase"],
                "steps_lower_bound": steps_lower_bound(net),
                "ratio_to_bound_at_64MiB": {
                    r["algorithm"]: r["ratio_to_bound"] for r in rows if r["size"] == sizes[-1]
                },
            }
        )
        print(
            f"{spec} ({nis} NI): MultiTree steps/phase {schedules['multitree'].info['steps_per_phase']}"
            f" (lower bound {steps_lower_bound(net)})"
        )
        for a, s in speedups.items():
            print(
                f"  MultiTree vs {a:>12}: x{s['at_64MiB']:.2f} at {human(sizes[-1])},"
                f" x{s['mean_over_sizes']:.2f} mean over sizes"
            )
        print(
            "  ratio to lower bound at "
            + human(sizes[-1])
            + ": "
            + ", ".join(
                f"{a} {v:.2f}" for a, v in report["topologies"][-1]["ratio_to_bound_at_64MiB"].items()
            )
        )
    report["speed"] = speed()
    sp = report["speed"]
    print(
        f"speed, torus:16x16: build {sp['multitree_build_seconds']:.1f} s, simulate 64MiB "
        f"{sp['simulate_64MiB_seconds']:.1f} s ({sp['packet_events']} events, "
        f"{sp['events_per_second']:.0f}/s)"
    )
    print(write_result("collectives_multitree", report))
    _plot(report)


def _plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tops = report["topologies"]
    fig, axes = plt.subplots(3, 3, figsize=(15, 12))
    for ax, top in zip(axes.flat, tops, strict=False):
        rows = top["rows"]
        for a in dict.fromkeys(r["algorithm"] for r in rows):
            pts = [(r["size"], r["seconds"] * 1e6) for r in rows if r["algorithm"] == a]
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=a)
        lb = sorted({(r["size"], r["lower_bound_seconds"] * 1e6) for r in rows})
        ax.plot(*zip(*lb, strict=True), "k--", label="lower bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{top['interconnect']['spec']} ({top['interconnect']['nis']} NI)")
        ax.set_xlabel("bytes")
        ax.set_ylabel("us")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tops) :]:
        ax.axis("off")
    fig.tight_layout()
    out = RESULTS / "collectives_multitree.png"
    save_figure(fig, out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
