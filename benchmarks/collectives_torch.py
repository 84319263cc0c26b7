"""Our all-reduce schedules executed for real with torch.distributed point-to-point
operations, timed against dist.all_reduce in the same processes (gloo on loopback here;
NCCL where a GPU exists: pass --backend nccl under torchrun on a GPU machine).

Writes benchmarks/results/collectives_torch.json. Run: python benchmarks/collectives_torch.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ALGOS = ["ring", "hd", "dbtree", "multitree"]


def _time(fn, reps):
    fn()
    dist.barrier()
    out = []
    for _ in range(reps):
        dist.barrier()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def worker(rank, world, port, sizes, reps, backend, out_path):
    from distsgd.collectives import build_schedule, make_interconnect
    from distsgd.collectives.executor import ScheduleRunner

    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if backend == "nccl" else "cpu"
    net = make_interconnect(f"switch:{world}")
    runners = {a: ScheduleRunner(build_schedule(a, net)) for a in ALGOS}
    rows = []
    for size in sizes:
        x = torch.randn(size // 4, device=device)
        ref = x.clone()
        dist.all_reduce(ref)
        base = _time(lambda x=x: dist.all_reduce(x.clone()), reps)
        for a, run in runners.items():
            y = x.clone()
            run(y)
            ok = torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
            t = _time(lambda x=x, run=run: run(x.clone()), reps)
            rows.append(
                {
                    "size": size,
                    "algorithm": a,
                    "seconds": t,
                    "all_reduce_seconds": base,
                    "time_vs_all_reduce": t / base,
                    "equal": bool(ok),
                }
            )
    if rank == 0:
        torch.save(rows, out_path)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    sizes = [2**16, 2**20, 2**23]
    out = Path("/tmp/collectives_torch_rows.pt")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if "RANK" in os.environ:  # under torchrun
        worker(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), port, sizes, args.reps, args.backend, out
        )
        if int(os.environ["RANK"]):
            return
    else:
        mp.spawn(worker, args=(args.world, port, sizes, args.reps, args.backend, str(out)), nprocs=args.world)
    rows = torch.load(out)
    print(f"{'size':>9} {'algorithm':>10} {'ms':>8} {'all_reduce ms':>14} {'ratio':>7} equal")
    for r in rows:
        print(
            f"{r['size']:>9} {r['algorithm']:>10} {r['seconds'] * 1e3:>8.2f} {r['all_reduce_seconds'] * 1e3:>14.2f}"
            f" {r['time_vs_all_reduce']:>7.2f} {r['equal']}"
        )
    print(write_result("collectives_torch", {"backend": args.backend, "world": args.world, "rows": rows}))


if __name__ == "__main__":
    main()
