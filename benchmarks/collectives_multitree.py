"""MultiTree against every baseline all-reduce that applies to each interconnect of the
MultiTree paper (ISCA 2021), on our packet simulator: ring, bidirectional ring (biring),
edge-disjoint rings using every link (multiring, tori), double binary tree, 2D ring,
halving-doubling and hierarchical. Every speedup headline is against the *best* baseline
(per size, the least time of all baselines), the per-baseline figures stay in the JSON.

Links 16 GB/s and 150 ns as in the paper; 4 network interfaces per node on the tori and
the mesh (the paper's β configuration), one and then four on the switched networks; sizes 32 KiB to
64 MiB. Reports every algorithm's time and ratio to the bandwidth lower bound
2(n−1)/n · S / B_node, MultiTree's speedup over the best baseline and over each one, MultiTree's steps per
phase beside the lower bound on steps, and the speed of schedule building and
simulation on a 16×16 torus.

MultiTree here is what `distsgd collectives` runs: the trees, or at a size where a ring
schedule of the same network (ring, biring, multiring, ring2d) is faster, that ring (the
row's `fallback` names it). The trees' own time is kept beside it (`multitree_seconds`) and
reported as "trees alone". Steps per phase are compared with the authors' construction
(their simulator's compute_trees, run on the same topologies; see tests/test_collectives.py).
Writes benchmarks/results/collectives_multitree.json and
benchmarks/results/collectives_multitree.png (with --quick: collectives_multitree_quick.*).

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

from distsgd.collectives import (  # noqa: E402
    ALGORITHMS,
    build_schedule,
    make_interconnect,
    simulate,
    steps_lower_bound,
)
from distsgd.collectives.report import compare, human, parse_sizes  # noqa: E402
from distsgd.errors import UserError  # noqa: E402
from distsgd.plots import save_figure  # noqa: E402

# steps per phase of the authors' construction (compute_trees in their simulator, run here;
# its BiGraph and fat-tree give a node one interface, so only the 1-NI setups have a figure)
AUTHORS_STEPS = {("torus:4x4", 4): 5, ("torus:8x8", 4): 17, ("mesh:8x8", 4): 33, ("fattree:8", 1): 63,
                 ("bigraph:4x8", 1): 31}

# (interconnect, network interfaces per node); the baselines are every algorithm that builds there
SETUPS = [
    ("torus:4x4", 4),
    ("torus:8x8", 4),
    ("mesh:8x8", 4),
    ("fattree:8", 1),
    ("bigraph:4x8", 1),
    ("fattree:8", 4),
    ("bigraph:4x8", 4),
]


def applicable(net) -> dict:
    """Every all-reduce schedule that exists on `net` (multiring needs a torus, ring2d a grid)."""
    out = {}
    for name in ALGORITHMS:
        try:
            out[name] = build_schedule(name, net)
        except UserError:
            pass
    return out


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
    ap.add_argument(
        "--quick", action="store_true", help="three sizes only (writes collectives_multitree_quick.json)"
    )
    args = ap.parse_args()
    sizes = parse_sizes("32KiB,1MiB,64MiB" if args.quick else "32KiB..64MiB")
    report = {"link_bandwidth": 16e9, "link_latency": 150e-9, "sizes": sizes, "topologies": []}
    for spec, nis in SETUPS:
        net = make_interconnect(spec, bandwidth=16e9, latency=150e-9, nis=nis)
        schedules = applicable(net)
        algos = list(schedules)
        rows = compare(net, schedules, sizes)
        mt = {r["size"]: r["seconds"] for r in rows if r["algorithm"] == "multitree"}
        own = {r["size"]: r["multitree_seconds"] for r in rows if r["algorithm"] == "multitree"}
        fell = {r["size"]: r["fallback"] for r in rows if r["algorithm"] == "multitree" and r["fallback"]}
        speedups = {}
        for a in algos:
            if a == "multitree":
                continue
            ratios = [r["seconds"] / mt[r["size"]] for r in rows if r["algorithm"] == a]
            speedups[a] = {"at_64MiB": ratios[-1], "mean_over_sizes": statistics.mean(ratios)}
        best = []  # per size: the fastest baseline
        for size in sizes:
            base = [r for r in rows if r["size"] == size and r["algorithm"] != "multitree"]
            b = min(base, key=lambda r: r["seconds"])
            best.append({"size": size, "algorithm": b["algorithm"], "seconds": b["seconds"]})
        over_best = [b["seconds"] / mt[b["size"]] for b in best]
        alone = [b["seconds"] / own[b["size"]] for b in best]
        report["topologies"].append(
            {
                "interconnect": net.summary() | {"spec": spec},
                "baselines": [a for a in algos if a != "multitree"],
                "rows": rows,
                "best_baseline": best,
                "multitree_speedup_over_best": {
                    "at_64MiB": over_best[-1],
                    "best_at_64MiB": best[-1]["algorithm"],
                    "mean_over_sizes": statistics.mean(over_best),
                    "min_over_sizes": min(over_best),
                },
                "trees_alone_speedup_over_best": {
                    "at_64MiB": alone[-1],
                    "mean_over_sizes": statistics.mean(alone),
                    "min_over_sizes": min(alone),
                },
                "fallback": {str(k): v for k, v in fell.items()},
                "authors_steps_per_phase": AUTHORS_STEPS.get((spec, nis)),
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
            f" (lower bound {steps_lower_bound(net)}, the authors' construction "
            f"{AUTHORS_STEPS.get((spec, nis), '-')}); falls back to a ring at "
            + (", ".join(f"{human(k)} ({v})" for k, v in fell.items()) or "no size")
        )
        ob = report["topologies"][-1]["multitree_speedup_over_best"]
        ta = report["topologies"][-1]["trees_alone_speedup_over_best"]
        print(
            f"  MultiTree vs best baseline ({ob['best_at_64MiB']} at {human(sizes[-1])}): x{ob['at_64MiB']:.2f};"
            f" over sizes mean x{ob['mean_over_sizes']:.2f}, min x{ob['min_over_sizes']:.2f}"
            f" (trees alone: x{ta['at_64MiB']:.2f}; mean x{ta['mean_over_sizes']:.2f}, min x{ta['min_over_sizes']:.2f})"
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
    name = "collectives_multitree_quick" if args.quick else "collectives_multitree"
    print(write_result(name, report))
    _plot(report, name)


def _plot(report: dict, name: str) -> None:
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
    out = RESULTS / f"{name}.png"
    save_figure(fig, out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
