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
sending 1 MiB each to one node of a switch at once.

TACOS (topology-aware All-Gather synthesis; benchmarks/reference/tacos.json, built and run
here: its source, conventions and the histogram of its randomized results per scenario):
each All-Gather it synthesized on a ring of 8 and 16, a 4×4 mesh and 4×4 and 8×8 tori, with
1 and 4 chunks per node, at two sizes each (38 scenarios), is imported
(`collectives.from_transfers`, from benchmarks/reference/tacos_schedules.json), checked to
be a complete all-gather by `execute`, and simulated: with whole-message packets (cut-through,
four interfaces per node, so a node sends and receives on all its links at once as TACOS
assumes) its time must equal TACOS's; with our default packets, the difference is shown.
Beside it, our own All-Gathers on the same network (ring, bidirectional ring, four
edge-disjoint rings on a torus, 2D ring, MultiTree, whichever build there), the best of
them with the default packets, as a user would run them: TACOS's time over ours.

Writes benchmarks/results/collectives_fidelity.json and .md.

Run: python benchmarks/collectives_fidelity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd.collectives import build_schedule, execute, expected, from_transfers, make_interconnect, simulate  # noqa: E402
from distsgd.collectives.report import packet_for  # noqa: E402
from distsgd.collectives.schedules import COPY, Message, Schedule  # noqa: E402
from distsgd.errors import UserError  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "reference" / "astra_analytical.json"
TACOS = Path(__file__).resolve().parent / "reference" / "tacos.json"
TACOS_SCHEDULES = Path(__file__).resolve().parent / "reference" / "tacos_schedules.json"
TACOS_TOPOLOGY = {"ring": "ring:{npus}", "mesh2d": "mesh:{dims}", "torus2d": "torus:{dims}"}
OWN_ALLGATHERS = ("ring", "biring", "multiring", "ring2d", "multitree")


def tacos_schedule(scenario: dict, key: str):
    """TACOS's synthesized All-Gather of `scenario` as our schedule: its chunk c (from NPU
    c % n, that NPU's (c // n)-th) is our chunk (c % n)·k + c // n, k chunks per node."""
    n, k = scenario["npus"], scenario["chunks_per_npu"]
    text = json.loads(TACOS_SCHEDULES.read_text())["schedules"][key]
    transfers = []
    for t in text.split(","):
        step, src, dst, c = (int(v) for v in t.split("."))
        transfers.append((step, src, dst, (c % n) * k + c // n))
    return from_transfers(n, transfers, k, algorithm="tacos")


def tacos_rows() -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for sc in json.loads(TACOS.read_text())["scenarios"]:
        n, k = sc["npus"], sc["chunks_per_npu"]
        spec = TACOS_TOPOLOGY[sc["topology"]].format(**sc)
        net = make_interconnect(spec, bandwidth=sc["bandwidth_Bps"], latency=sc["latency_s"], nis=4)
        size = sc["chunk_bytes"] * n * k  # the gathered vector
        sched = tacos_schedule(sc, sc["schedule"])
        x = rng.normal(size=(n, 2 * n * k))
        want, mask = expected(sched, x)
        complete = bool(np.array_equal(execute(sched, x)[mask], want[mask]))
        whole = simulate(sched, net, size, packet_bytes=size).seconds
        default = simulate(sched, net, size, packet_bytes=packet_for(size, None)).seconds
        own = {}
        for name in OWN_ALLGATHERS:
            try:
                mine = build_schedule(name, net, "allgather")
            except UserError:
                continue
            own[name] = simulate(mine, net, size, packet_bytes=packet_for(size, None)).seconds
        best = min(own, key=own.get)
        rows.append({"topology": spec, "size_meaning": sc["size_meaning"], "size_bytes": sc["size_bytes"],
                     "gathered_bytes": size, "chunks_per_node": k, "tacos_seconds": sc["tacos_seconds"],
                     "tacos_runs": sc["unmodified_runs"], "steps": sc["steps"], "complete": complete,
                     "whole_messages_seconds": whole, "whole_messages_error_pct": 100 * (whole / sc["tacos_seconds"] - 1),
                     "default_seconds": default, "default_error_pct": 100 * (default / sc["tacos_seconds"] - 1),
                     "ours_seconds": own, "best_ours": best, "tacos_over_best_ours": sc["tacos_seconds"] / own[best]})
        r = rows[-1]
        print(f"TACOS {spec:>10} {sc['size_meaning']:>13} {sc['size_bytes']:>11} B k={k}: whole {r['whole_messages_error_pct']:+.2e}%"
              f" default {r['default_error_pct']:+.2f}%; TACOS / our {best} {r['tacos_over_best_ours']:.2f}", flush=True)
    return rows


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
    tacos = tacos_rows()
    exact = sum(abs(r["whole_messages_error_pct"]) <= 1e-9 for r in tacos)
    result["tacos"] = {"rows": tacos, "scenarios": len(tacos), "complete": sum(r["complete"] for r in tacos),
                       "whole_messages_equal": exact,
                       "default_within_0.5pct": sum(abs(r["default_error_pct"]) <= 0.5 for r in tacos)}
    md += ["", "## TACOS's synthesized All-Gathers", "",
           "16 GB/s, 500 ns links, four interfaces per node. TACOS's time is the most frequent of its 200 randomized "
           "runs (its range in brackets); ours: the same schedule simulated with whole-message packets (TACOS's link "
           "model) and with our default packets; then the best of our own All-Gathers with default packets.", "",
           "| network | size | chunks/node | TACOS µs [range] | whole messages | default packets | best of ours | "
           "TACOS / ours |", "|---|---|---|---|---|---|---|---|"]
    for r in tacos:
        runs = r["tacos_runs"]
        what = "gathered" if r["size_meaning"] == "output_total" else "per node"
        md.append(f"| {r['topology']} | {r['size_bytes'] / 2**20:g} MiB {what} | {r['chunks_per_node']} | "
                  f"{r['tacos_seconds'] * 1e6:.2f} [{runs['min_us']:.2f}, {runs['max_us']:.2f}] | "
                  f"{r['whole_messages_error_pct']:+.1e}% | {r['default_error_pct']:+.2f}% | "
                  f"{r['best_ours']} {r['ours_seconds'][r['best_ours']] * 1e6:.2f} µs | {r['tacos_over_best_ours']:.2f} |")
    t = result["tacos"]
    md += ["", f"Complete all-gathers: {t['complete']}/{t['scenarios']}; whole messages equal to TACOS: "
           f"{t['whole_messages_equal']}/{t['scenarios']}; default packets within 0.5%: "
           f"{t['default_within_0.5pct']}/{t['scenarios']}."]
    print(write_result("collectives_fidelity", result))
    write_text(RESULTS / "collectives_fidelity.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
