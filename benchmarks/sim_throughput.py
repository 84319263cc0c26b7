"""Simulation throughput: worker-steps per second of AllReduce-SGD on the MNIST-1D MLP.

For n in {16, 64, 256} workers with batch 32 each, three ways to do the same work:

- distsgd: stacked parameters [n, d], one vmapped gradient call, one all-reduce, one update
  (and "compiled": the same with `compile=True`);
- loop: n separate torch modules, each with its own torch.optim.SGD, stepping one after
  another and averaged after each step (how most research code simulates workers);
- floor: one model stepping on the whole n·32 batch (the compute floor: the same samples
  and FLOPs, but one set of weights).

Targets (issue 2): at n = 256, distsgd ≥ 10× the loop and no slower than 1.5× the floor.

Timing (benchmarks/harness.py `interleave`): the contenders run round by round, the order
rotating, and each round gives a ratio (loop / distsgd, distsgd / floor). One block is one
fresh process running `--rounds` such rounds; the block's figure is the median of its
per-round ratios (quartiles kept). At n = 256 the run repeats `--blocks` blocks, each in a
fresh process (its own allocator, thread pool and compilation), because the ratio moves
more between reruns than between the rounds of one run; the headline figures ("figures":
`harness.stats` over the block medians) carry that rerun-to-rerun spread. The load
average is recorded at the start and end of every block and of the whole run.

Writes benchmarks/results/sim_throughput.json and .md and prints a table.
Run: python benchmarks/sim_throughput.py [--quick] [--blocks 5] [--rounds 7]
     python benchmarks/sim_throughput.py --recheck PATH   (one fresh block at n = 256, 5 rounds)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

BATCH = 32
HEADLINE_N = 256
MODES = ("distsgd", "compiled")


def loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def summary(ratios: list[float]) -> dict:
    """harness.spread of per-round ratios, with the ratios themselves."""
    return {**harness.spread(ratios), "rounds": [float(r) for r in ratios]}


def bench(n: int, quick: bool, compiled: bool, rounds: int) -> dict:
    """One block: the contenders in `rounds` interleaved rounds (harness.interleave, the order
    rotating); per contender the median step time, and per mode the per-round ratios."""
    import torch
    import torch.nn.functional as F

    from distsgd import AllReduceSGD, SimulatedCommunicator, make_task
    from distsgd.workers import Workers

    load_start = loadavg()
    # enough samples for 4 batches per worker per local epoch
    num_samples = max(5000, math.ceil(n * BATCH * 4 / 0.8 / 1000) * 1000)
    task = make_task("mnist1d", n_workers=n, model="mlp", batch_size=BATCH, num_samples=num_samples)
    calls = max(3, (30 if not quick else 10) * 16 // n)
    data = task.dataset

    def distsgd_step(compile: bool):
        workers = Workers(task, seed=0, compile=compile)
        comm = SimulatedCommunicator(n)
        algo = AllReduceSGD(lr=0.05)
        box = {"state": algo.init(workers.x0(), comm)}

        def step():
            box["state"] = algo.step(box["state"], lambda x: workers.gradients(x)[0], comm)

        return step

    # loop over n modules with their own optimizers, averaged after each step
    models = [copy.deepcopy(task.model) for _ in range(n)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    params = [list(m.parameters()) for m in models]
    loop_workers = Workers(task, seed=0)  # the same per-worker batches

    def loop_step():
        idx = loop_workers.next_batch()
        for i, (m, o) in enumerate(zip(models, opts, strict=True)):
            o.zero_grad()
            F.cross_entropy(m(data.x[idx[i]]), data.y[idx[i]]).backward()
            o.step()
        with torch.no_grad():
            for k in range(len(params[0])):
                avg = torch.stack([p[k] for p in params]).mean(0)
                for p in params:
                    p[k].copy_(avg)

    # floor: one model, the whole n·B batch
    floor_model = copy.deepcopy(task.model)
    floor_opt = torch.optim.SGD(floor_model.parameters(), lr=0.05)
    floor_workers = Workers(task, seed=0)

    def floor_step():
        idx = floor_workers.next_batch().reshape(-1)
        floor_opt.zero_grad()
        F.cross_entropy(floor_model(data.x[idx]), data.y[idx]).backward()
        floor_opt.step()

    contenders = {"distsgd": distsgd_step(False), "loop": loop_step, "floor": floor_step}
    if compiled:
        t = time.perf_counter()
        contenders["compiled"] = distsgd_step(True)
        contenders["compiled"]()  # compilation
        compile_s = time.perf_counter() - t
    steps = {k: max(2, calls // 4) if k == "loop" else calls for k in contenders}
    per_step: dict[str, list[float]] = {k: [] for k in contenders}

    def timed(name: str, fn):
        # each call of a round: `steps[name]` steps, kept per step so the loop (fewer steps
        # per round, being slow) and the others compare per step within the same round
        def run():
            t = time.perf_counter()
            for _ in range(steps[name]):
                fn()
            per_step[name].append((time.perf_counter() - t) / steps[name])

        return run

    for fn in contenders.values():  # warm-up: 3 steps each, as before
        for _ in range(3):
            fn()
    harness.interleave({k: timed(k, fn) for k, fn in contenders.items()}, "floor", rounds=rounds, calls=1,
                       warmup=0)

    row = {"n": n, "parameters": task.description["parameters"], "rounds": rounds,
           "steps_per_round": steps, "threads": torch.get_num_threads()}
    if compiled:
        row["compile_seconds"] = compile_s
    for name in contenders:
        t = statistics.median(per_step[name])
        row[f"{name}_ms_per_step"] = t * 1e3
        row[f"{name}_worker_steps_per_s"] = n / t
    for mode in [k for k in MODES if k in contenders]:
        row[f"{mode}_speedup_vs_loop"] = summary([a / b for a, b in zip(per_step["loop"], per_step[mode],
                                                                         strict=True)])
        row[f"{mode}_time_vs_floor"] = summary([a / b for a, b in zip(per_step[mode], per_step["floor"],
                                                                       strict=True)])
    row["load_start"], row["load_end"] = load_start, loadavg()
    return row


def block(n: int, quick: bool, compiled: bool, rounds: int) -> dict:
    """`bench` in a fresh process (so blocks are reruns: own allocator, threads, compilation)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--block-out", str(out), "--sizes", str(n), "--rounds", str(rounds)]
        cmd += ["--quick"] if quick else []
        cmd += [] if compiled else ["--no-compile"]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def figures(blocks: list[dict]) -> dict:
    """The headline figures at n = 256: harness.stats over the blocks' median ratios."""
    figs = {}
    for mode in [k for k in MODES if f"{k}_speedup_vs_loop" in blocks[0]]:
        prefix = "" if mode == "distsgd" else "compiled_"
        figs[f"{prefix}speedup_vs_loop_256"] = harness.stats([b[f"{mode}_speedup_vs_loop"]["median"] for b in blocks])
        figs[f"{prefix}time_vs_floor_256"] = harness.stats([b[f"{mode}_time_vs_floor"]["median"] for b in blocks])
    return figs


def pooled(blocks: list[dict], key: str) -> dict:
    """Median and quartiles over every round of every block."""
    s = summary([r for b in blocks for r in b[key]["rounds"]])
    return {k: s[k] for k in ("median", "q25", "q75", "min", "max")}


def table(result: dict) -> str:
    f = result["figures"]
    lines = [
        "# Simulation throughput (MNIST-1D MLP, AllReduce-SGD, batch 32 per worker)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']} ({result['machine']['threads']} threads). Load average "
        f"(1, 5, 15 min) at start {result['load_start']}, at end {result['load_end']}.",
        "",
        "Per block: the median over interleaved rounds (quartiles in brackets). "
        f"n = {HEADLINE_N}: {result['blocks']} blocks, each a fresh process of {result['rounds']} rounds.",
        "",
        "| n | block | mode | worker-steps/s | × loop's throughput | time / floor's |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        for mode in [k for k in MODES if f"{k}_speedup_vs_loop" in r]:
            lx, fx = r[f"{mode}_speedup_vs_loop"], r[f"{mode}_time_vs_floor"]
            lines.append(
                f"| {r['n']} | {r['block']} | {mode} | {r[f'{mode}_worker_steps_per_s']:.0f} | {lx['median']:.2f} "
                f"({lx['q25']:.2f}–{lx['q75']:.2f}) | {fx['median']:.2f} ({fx['q25']:.2f}–{fx['q75']:.2f}) |"
            )
        lines.append(f"| {r['n']} | {r['block']} | loop | {r['loop_worker_steps_per_s']:.0f} | | |")
        lines.append(f"| {r['n']} | {r['block']} | floor | {r['floor_worker_steps_per_s']:.0f} | | |")
    lines += ["", f"Headline figures, n = {HEADLINE_N}: mean ± std over the blocks' medians [95% interval] "
              "(values); target in brackets.", ""]
    for name, s in f.items():
        vals = ", ".join(f"{v:.2f}" for v in s["values"])
        ci = f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s["ci"] else ""
        target = "(≥ 10)" if "loop" in name else "(≤ 1.5)"
        lines.append(f"- {name} {target}: {harness.show(s, 2)} {ci} ({vals})")
    lines.append("")
    for mode, t in result["targets"].items():
        for k, v in t.items():
            lines.append(f"- {mode} {k}: {v['verdict']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--blocks", type=int, default=5, help=f"fresh-process blocks at n = {HEADLINE_N}")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--recheck", metavar="PATH", help="one fresh block at n = 256 (5 rounds); write its figures")
    ap.add_argument("--block-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.block_out:  # a child: one block
        (n,) = [int(s) for s in args.sizes.split(",")]
        Path(args.block_out).write_text(json.dumps(bench(n, args.quick, not args.no_compile, args.rounds)))
        return
    if args.recheck:
        committed = harness.load("sim_throughput")
        b = block(HEADLINE_N, committed.get("quick", False), "compiled_speedup_vs_loop_256" in committed["figures"],
                  min(5, committed["rounds"]))
        harness.write_recheck(args.recheck, {k: v["mean"] for k, v in figures([b]).items()})
        print(json.dumps({k: v["mean"] for k, v in figures([b]).items()}, indent=2))
        return

    load_start, t0 = loadavg(), time.time()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for i in range(args.blocks if n == HEADLINE_N else 1):
            rows.append({"block": i, **block(n, args.quick, not args.no_compile, args.rounds)})
            r = rows[-1]
            print(f"n={n} block {i}: " + ", ".join(
                f"{m} ×loop {r[f'{m}_speedup_vs_loop']['median']:.2f} /floor {r[f'{m}_time_vs_floor']['median']:.2f}"
                for m in MODES if f"{m}_speedup_vs_loop" in r) + f" (load {r['load_start']} → {r['load_end']})",
                flush=True)
    at256 = [r for r in rows if r["n"] == HEADLINE_N]
    figs = figures(at256) if at256 else {}
    targets = {}
    for mode in [k for k in MODES if at256 and f"{k}_speedup_vs_loop" in at256[0]]:
        prefix = "" if mode == "distsgd" else "compiled_"
        lx, fx = figs[f"{prefix}speedup_vs_loop_256"], figs[f"{prefix}time_vs_floor_256"]
        hits_l = sum(v >= 10.0 for v in lx["values"])
        hits_f = sum(v <= 1.5 for v in fx["values"])
        targets[mode] = {
            "speedup_vs_loop_at_256": {
                "target": 10.0, "mean": lx["mean"], "ci": lx["ci"], "blocks_met": hits_l, "blocks": lx["n"],
                "pooled_rounds": pooled(at256, f"{mode}_speedup_vs_loop"),
                "verdict": f"≥ 10× in {hits_l} of {lx['n']} blocks; mean {lx['mean']:.2f}"
                           + (f", 95% interval {lx['ci'][0]:.2f}–{lx['ci'][1]:.2f}" if lx["ci"] else "")},
            "time_vs_floor_at_256": {
                "target": 1.5, "mean": fx["mean"], "ci": fx["ci"], "blocks_met": hits_f, "blocks": fx["n"],
                "pooled_rounds": pooled(at256, f"{mode}_time_vs_floor"),
                "verdict": f"≤ 1.5× in {hits_f} of {fx['n']} blocks; mean {fx['mean']:.2f}"
                           + (f", 95% interval {fx['ci'][0]:.2f}–{fx['ci'][1]:.2f}" if fx["ci"] else "")},
        }
    payload = {
        "batch_per_worker": BATCH,
        "model": "mlp 40-100-100-10",
        "algorithm": "allreduce_sgd",
        "quick": args.quick,
        "rounds": args.rounds,
        "blocks": args.blocks,
        "method": "harness.interleave rounds (order rotating); per block the median of per-round ratios; "
                  f"n = {HEADLINE_N}: figures = harness.stats over the medians of {args.blocks} blocks, each a fresh "
                  "process",
        "load_start": load_start,
        "load_end": loadavg(),
        "wall_seconds": time.time() - t0,
        "figures": figs,
        "targets": targets,
        "rows": rows,
    }
    path = write_result("sim_throughput", payload)
    result = json.loads(path.read_text())
    md = table(result)
    write_text(RESULTS / "sim_throughput.md", md)
    print(md)
    print(path)


if __name__ == "__main__":
    main()
