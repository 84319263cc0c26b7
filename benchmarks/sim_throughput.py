"""Simulation throughput: worker-steps per second of AllReduce-SGD on the MNIST-1D MLP.

For n in {16, 64, 256} workers with batch 32 each, three ways to do the same work:

- distsgd: stacked parameters [n, d], one vmapped gradient call, one all-reduce, one update;
- loop: n separate torch modules, each with its own torch.optim.SGD, stepping one after
  another and averaged after each step (how most research code simulates workers);
- floor: one model stepping on the whole n·32 batch (the compute floor: the same samples
  and FLOPs, but one set of weights).

Targets (issue 2): at n = 256, distsgd ≥ 10× the loop and no slower than 1.5× the floor.
Writes benchmarks/results/sim_throughput.json and prints a table.
Run: python benchmarks/sim_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import time_per_call, write_result  # noqa: E402

from distsgd import AllReduceSGD, SimulatedCommunicator, make_task  # noqa: E402
from distsgd.workers import Workers  # noqa: E402

BATCH = 32


def bench(n: int, quick: bool, compiled: bool, rounds: int) -> dict:
    """Time the contenders in interleaved rounds; report per-round ratios (median, range).

    This machine's speed drifts by tens of percent within a minute; timing the baseline
    and distsgd back to back in every round and taking the median of the per-round
    ratios keeps that drift out of the comparison.
    """
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
        contenders["compiled"] = distsgd_step(True)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():
        time_per_call(fn, 1, repeats=1, warmup=3)
    for _ in range(rounds):
        for name, fn in contenders.items():
            c = max(2, calls // 4) if name == "loop" else calls
            times[name].append(time_per_call(fn, c, repeats=1, warmup=0))

    def ratios(a: str, b: str) -> dict:
        r = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}

    row = {"n": n, "parameters": task.description["parameters"], "rounds": rounds}
    for name in contenders:
        t = statistics.median(times[name])
        row[f"{name}_ms_per_step"] = t * 1e3
        row[f"{name}_worker_steps_per_s"] = n / t
    for name in [k for k in ("distsgd", "compiled") if k in contenders]:
        row[f"{name}_speedup_vs_loop"] = ratios("loop", name)
        row[f"{name}_time_vs_floor"] = ratios(name, "floor")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    args = ap.parse_args()
    rows = [bench(int(n), args.quick, not args.no_compile, args.rounds) for n in args.sizes.split(",")]
    targets = None
    at256 = next((r for r in rows if r["n"] == 256), None)
    if at256:
        targets = {}
        for mode in [k for k in ("distsgd", "compiled") if f"{k}_speedup_vs_loop" in at256]:
            loop_x = at256[f"{mode}_speedup_vs_loop"]["median"]
            floor_x = at256[f"{mode}_time_vs_floor"]["median"]
            targets[mode] = {
                "speedup_vs_loop_at_256": {"target": 10.0, "median": loop_x, "met": loop_x >= 10.0},
                "time_vs_floor_at_256": {"target": 1.5, "median": floor_x, "met": floor_x <= 1.5},
            }
    path = write_result(
        "sim_throughput",
        {
            "batch_per_worker": BATCH,
            "model": "mlp 40-100-100-10",
            "algorithm": "allreduce_sgd",
            "rows": rows,
            "targets": targets,
        },
    )
    print(f"{'n':>5} {'mode':>9} {'w-steps/s':>10} {'x loop (min..max)':>22} {'/ floor (min..max)':>22}")
    for r in rows:
        for mode in [k for k in ("distsgd", "compiled") if f"{k}_speedup_vs_loop" in r]:
            lx, fx = r[f"{mode}_speedup_vs_loop"], r[f"{mode}_time_vs_floor"]
            print(
                f"{r['n']:>5} {mode:>9} {r[f'{mode}_worker_steps_per_s']:>10.0f} "
                f"{lx['median']:>6.1f} ({lx['min']:.1f}..{lx['max']:.1f}){'':>6}"
                f"{fx['median']:>6.2f} ({fx['min']:.2f}..{fx['max']:.2f})"
            )
        print(f"{r['n']:>5} {'loop':>9} {r['loop_worker_steps_per_s']:>10.0f}")
        print(f"{r['n']:>5} {'floor':>9} {r['floor_worker_steps_per_s']:>10.0f}")
    for mode, t in (targets or {}).items():
        for k, v in t.items():
            print(
                f"{mode} {k}: median {v['median']:.2f} (target {v['target']}) {'met' if v['met'] else 'NOT met'}"
            )
    print(path)


if __name__ == "__main__":
    main()
