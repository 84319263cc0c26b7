"""The collective simulator against reference simulators: every scenario of
benchmarks/reference/astra_analytical.json (ASTRA-sim's congestion-aware analytical network
backend, built and run here; see that file's `source` and `conventions`) simulated with our
three packet models, and the error of each in percent:

- default: cut-through packets of size/2048 (at least 256 B), what `distsgd collectives` runs;
- store-and-forward packets of the same size (`--store-and-forward`);
- whole messages stored and forwarded (`--store-and-forward --packet` ≥ the largest message),
  the reference backend's own model.

Scenarios: ring all-reduce (reduce-scatter + all-gather, the message pattern of ASTRA-sim's
Ring collective) on a ring of 4–256 nodes and on a switch of 16 and 64, at 1 and 64 MiB;
point-to-point messages of 1 MiB over 1 and 3 ring links and through a switch; seven nodes
sending 1 MiB each to one node of a switch at once. TACOS is not included: it was not built
here. Writes benchmarks/results/collectives_fidelity.json and .md.

Run: python benchmarks/collectives_fidelity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd.collectives import build_schedule, make_interconnect, simulate  # noqa: E402
from distsgd.collectives.report import packet_for  # noqa: E402
from distsgd.collectives.schedules import COPY, Message, Schedule  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "reference" / "astra_analytical.json"


def schedule(scenario: str, net) -> tuple[Schedule, float]:
    """The scenario's schedule and the size that makes each of its messages what ASTRA sent,
    as a function of the scenario's bytes S: (schedule, vector size for S = 1)."""
    n = net.n
    if scenario == "ring_allreduce":
        return build_schedule("ring", net), 1.0
    if scenario.startswith("p2p_"):
        src, dst = (int(x) for x in scenario[4:].split("_to_"))
        return Schedule("p2p", n, 1, [Message(0, src, dst, 0, 1, COPY)]), 1.0
    if scenario == "incast_to_node0":  # every other node sends S to node 0: chunk i is node i's
        return Schedule("incast", n, n, [Message(0, i, 0, i, i + 1, COPY) for i in range(1, n)]), float(n)
    raise ValueError(scenario)


def main() -> None:
    ref = json.loads(REFERENCE.read_text())
    bw, lat = ref["bandwidth_bytes_per_s"], ref["latency_s"]
    rows = []
    for sc in ref["scenarios"]:
        net = make_interconnect(sc["topology"], bandwidth=bw, latency=lat, nis=1)
        sched, scale = schedule(sc["scenario"], net)
        size = sc["size_bytes"] * scale
        largest = float(sched.message_bytes(size).max())
        models = {
            "default": dict(packet_bytes=packet_for(size, None)),
            "store_and_forward": dict(packet_bytes=packet_for(size, None), cut_through=False),
            "whole_messages": dict(packet_bytes=largest, cut_through=False),
        }
        row = {**sc}
        for name, kw in models.items():
            ns = simulate(sched, net, size, **kw).seconds * 1e9
            row[name] = {"ns": ns, "error_pct": 100 * (ns / sc["finish_ns"] - 1)}
        rows.append(row)
        print(f"{sc['scenario']:>16} {sc['topology']:>10} {sc['size_bytes'] // 2**20:>3} MiB: "
              + "  ".join(f"{k} {row[k]['error_pct']:+.3f}%" for k in models), flush=True)
    result = {"reference": {k: v for k, v in ref.items() if k != "scenarios"}, "rows": rows,
              "within_0.5pct": {k: sum(abs(r[k]["error_pct"]) <= 0.5 for r in rows) for k in
                                ("default", "store_and_forward", "whole_messages")},
              "scenarios": len(rows)}
    md = ["# Collective simulator vs ASTRA-sim's congestion-aware analytical backend", "",
          "Error of our simulated time against the reference, in percent (16 GB/s, 150 ns links, one interface "
          "per node). default: cut-through packets of size/2048; s&f: store-and-forward packets of that size; "
          "whole: whole messages stored and forwarded (the reference's own model).", "",
          "| scenario | topology | size | reference (ns) | default | s&f | whole |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['scenario']} | {r['topology']} | {r['size_bytes'] // 2**20} MiB | {r['finish_ns']} | "
                  + " | ".join(f"{r[k]['error_pct']:+.2f}%" for k in ("default", "store_and_forward", "whole_messages"))
                  + " |")
    w = result["within_0.5pct"]
    md += ["", f"Within 0.5%: default {w['default']}/{len(rows)}, store-and-forward {w['store_and_forward']}/{len(rows)}, "
           f"whole messages {w['whole_messages']}/{len(rows)}."]
    print(write_result("collectives_fidelity", result))
    write_text(RESULTS / "collectives_fidelity.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
