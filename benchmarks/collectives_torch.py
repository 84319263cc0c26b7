"""Our all-reduce schedules executed for real with torch.distributed point-to-point
operations, timed against dist.all_reduce in the same processes (gloo on loopback here;
NCCL where a GPU exists: pass --backend nccl under torchrun on a GPU machine).

Timing (benchmarks/harness.py `interleave`): at each size, dist.all_reduce and the four
schedules run round by round, the order rotating by one each round, identically on every
rank (every rank runs the same sequence of collectives). Each call is preceded by a
barrier outside its timing; the time is rank 0's. Per size and schedule: the median and
quartiles of the per-round ratio to dist.all_reduce's time in the same round, and
("figures") `harness.stats` over the per-round ratios, so the spread is the spread over
rounds. The load average is recorded at the start and end.

Writes benchmarks/results/collectives_torch.json and .md.
Run: python benchmarks/collectives_torch.py [--rounds 15]
     python benchmarks/collectives_torch.py --recheck PATH   (7 rounds, same sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

ALGOS = ["ring", "hd", "dbtree", "multitree"]
BASELINE = "all_reduce"
SIZES = [2**16, 2**20, 2**23]
WARMUP = 2


def size_name(size: int) -> str:
    return f"{size // 2**20}MiB" if size >= 2**20 else f"{size // 2**10}KiB"


def worker(rank, world, port, sizes, rounds, backend, out_path):
    from distsgd.collectives import build_schedule, make_interconnect
    from distsgd.collectives.executor import ScheduleRunner

    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if backend == "nccl" else "cpu"
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    net = make_interconnect(f"switch:{world}")
    runners = {a: ScheduleRunner(build_schedule(a, net)) for a in ALGOS}
    rows = []
    for size in sizes:
        x = torch.randn(size // 4, device=device)
        ref = x.clone()
        dist.all_reduce(ref)
        equal = {}
        for a, run in runners.items():
            y = x.clone()
            run(y)
            equal[a] = bool(torch.allclose(y, ref, rtol=1e-5, atol=1e-5))
        ops = {BASELINE: lambda x=x: dist.all_reduce(x.clone()),
               **{a: (lambda x=x, run=run: run(x.clone())) for a, run in runners.items()}}
        times: dict[str, list[float]] = {k: [] for k in ops}

        def timed(name, op, times=times):
            # the barrier stays outside the timing; the same names on every rank, so
            # harness.interleave's rotation gives every rank the same sequence
            def call(times=times):
                dist.barrier()
                sync()
                t = time.perf_counter()
                op()
                sync()
                times[name].append(time.perf_counter() - t)

            return call

        harness.interleave({k: timed(k, op) for k, op in ops.items()}, BASELINE, rounds=rounds, calls=1,
                           warmup=WARMUP)
        times = {k: v[WARMUP:] for k, v in times.items()}  # the warm-up calls were timed too
        base = times[BASELINE]
        for a in ALGOS:
            ratios = [t / b for t, b in zip(times[a], base, strict=True)]
            rows.append({"size": size, "algorithm": a, "rounds": rounds, "seconds": statistics.median(times[a]),
                         "all_reduce_seconds": statistics.median(base), "time_vs_all_reduce": harness.spread(ratios),
                         "ratios": ratios, "equal": equal[a]})
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))
    dist.destroy_process_group()


def measure(world: int, backend: str, rounds: int, sizes: list[int]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if "RANK" in os.environ:  # under torchrun
            worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), port, sizes, rounds, backend, out)
            if int(os.environ["RANK"]):
                return []
        else:
            mp.spawn(worker, args=(world, port, sizes, rounds, backend, out), nprocs=world)
        return json.loads(Path(out).read_text())


def figures(rows: list[dict]) -> dict:
    return {f"{r['algorithm']}_{size_name(r['size'])}": harness.stats(r["ratios"]) for r in rows}


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Schedules over torch.distributed against dist.all_reduce",
        "",
        f"{result['backend']}, {result['world']} processes on loopback, one intra-op thread each; machine: {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']}. {result['rounds']} interleaved rounds per size (order rotating); "
        f"load average (1, 5, 15 min) at start {result['load_start']}, at end {result['load_end']}.",
        "",
        "| size | schedule | ms (median) | all_reduce ms (median) | time / all_reduce: median (quartiles) "
        "| mean ± std over rounds | equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = r["time_vs_all_reduce"]
        f = result["figures"][f"{r['algorithm']}_{size_name(r['size'])}"]
        lines.append(
            f"| {size_name(r['size'])} | {r['algorithm']} | {r['seconds'] * 1e3:.2f} | {r['all_reduce_seconds'] * 1e3:.2f} "
            f"| {s['median']:.2f} ({s['q25']:.2f}–{s['q75']:.2f}) | {harness.show(f, 2)} | {r['equal']} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--recheck", metavar="PATH", help="a shortened rerun (7 rounds, same sizes); write its figures")
    args = ap.parse_args()
    if args.recheck:
        committed = harness.load("collectives_torch")
        rows = measure(committed["world"], committed["backend"], min(7, committed["rounds"]), SIZES)
        if rows:
            fresh = {k: statistics.median(r["ratios"]) for k, r in zip(figures(rows), rows, strict=True)}
            harness.write_recheck(args.recheck, fresh)
            print(json.dumps(fresh, indent=2))
        return
    load_start, t0 = [round(x, 2) for x in os.getloadavg()], time.time()
    rows = measure(args.world, args.backend, args.rounds, SIZES)
    if not rows:  # a torchrun rank other than 0
        return
    payload = {"backend": args.backend, "world": args.world, "rounds": args.rounds,
               "method": "harness.interleave rounds (order rotating, the same on every rank), a barrier before "
                         "each call outside its timing, rank 0's times; figures = harness.stats over the per-round "
                         "ratios to dist.all_reduce",
               "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
               "wall_seconds": time.time() - t0, "figures": figures(rows), "rows": rows}
    path = write_result("collectives_torch", payload)
    md = table(json.loads(path.read_text()))
    write_text(RESULTS / "collectives_torch.md", md)
    print(md)
    print(path)


if __name__ == "__main__":
    main()
