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
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import time_per_call, write_result  # noqa: E402

from distsgd import AllReduceSGD, SimulatedCommunicator, make_task  # noqa: E402
from distsgd.workers import Workers  # noqa: E402

BATCH = 32


def bench(n: int, quick: bool, compiled: bool) -> dict:
    # enough samples for 4 batches per worker per local epoch
    num_samples = max(5000, math.ceil(n * BATCH * 4 / 0.8 / 1000) * 1000)
    task = make_task("mnist1d", n_workers=n, model="mlp", batch_size=BATCH, num_samples=num_samples)
    calls = max(3, (60 if not quick else 15) * 16 // n)

    def distsgd_step_time(compile: bool) -> float:
        workers = Workers(task, seed=0, compile=compile)
        comm = SimulatedCommunicator(n)
        algo = AllReduceSGD(lr=0.05)
        box = {"state": algo.init(workers.x0(), comm)}

        def sim_step():
            box["state"] = algo.step(box["state"], lambda x: workers.gradients(x)[0], comm)

        return time_per_call(sim_step, calls, warmup=3)

    t_sim = distsgd_step_time(False)
    t_comp = distsgd_step_time(True) if compiled else None

    # loop over n modules with their own optimizers, averaged after each step
    models = [copy.deepcopy(task.model) for _ in range(n)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    params = [list(m.parameters()) for m in models]
    data = task.dataset
    loop_workers = Workers(task, seed=0)  # same per-worker batches

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

    t_loop = time_per_call(loop_step, max(2, calls // 4))

    # floor: one model, the whole n·B batch
    floor_model = copy.deepcopy(task.model)
    floor_opt = torch.optim.SGD(floor_model.parameters(), lr=0.05)
    floor_workers = Workers(task, seed=0)

    def floor_step():
        idx = floor_workers.next_batch().reshape(-1)
        floor_opt.zero_grad()
        F.cross_entropy(floor_model(data.x[idx]), data.y[idx]).backward()
        floor_opt.step()

    t_floor = time_per_call(floor_step, calls)
    row = {
        "n": n,
        "parameters": task.description["parameters"],
        "distsgd_worker_steps_per_s": n / t_sim,
        "loop_worker_steps_per_s": n / t_loop,
        "floor_worker_steps_per_s": n / t_floor,
        "speedup_vs_loop": t_loop / t_sim,
        "time_vs_floor": t_sim / t_floor,
        "distsgd_ms_per_step": t_sim * 1e3,
        "loop_ms_per_step": t_loop * 1e3,
        "floor_ms_per_step": t_floor * 1e3,
    }
    if t_comp is not None:
        row.update(
            {
                "compiled_worker_steps_per_s": n / t_comp,
                "compiled_speedup_vs_loop": t_loop / t_comp,
                "compiled_time_vs_floor": t_comp / t_floor,
            }
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = ap.parse_args()
    rows = [bench(int(n), args.quick, not args.no_compile) for n in args.sizes.split(",")]
    at256 = next((r for r in rows if r["n"] == 256), None)
    targets = None
    if at256:
        best = "compiled_" if "compiled_speedup_vs_loop" in at256 else ""
        loop_x, floor_x = at256[f"{best}speedup_vs_loop"], at256[f"{best}time_vs_floor"]
        targets = {
            "mode": "torch.compile" if best else "eager",
            "speedup_vs_loop_at_256": {"target": 10.0, "measured": loop_x, "met": loop_x >= 10.0},
            "time_vs_floor_at_256": {"target": 1.5, "measured": floor_x, "met": floor_x <= 1.5},
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
    print(
        f"{'n':>5} {'distsgd w-steps/s':>18} {'loop':>10} {'floor':>10} {'x loop':>8} {'/ floor':>8}"
        f" {'compiled':>10} {'x loop':>8} {'/ floor':>8}"
    )
    for r in rows:
        comp = (
            (
                f" {r['compiled_worker_steps_per_s']:>10.0f} {r['compiled_speedup_vs_loop']:>8.1f}"
                f" {r['compiled_time_vs_floor']:>8.2f}"
            )
            if "compiled_worker_steps_per_s" in r
            else ""
        )
        print(
            f"{r['n']:>5} {r['distsgd_worker_steps_per_s']:>18.0f} {r['loop_worker_steps_per_s']:>10.0f} "
            f"{r['floor_worker_steps_per_s']:>10.0f} {r['speedup_vs_loop']:>8.1f} {r['time_vs_floor']:>8.2f}"
            + comp
        )
    if targets:
        for k, v in list(targets.items())[1:]:
            print(f"{k}: {v['measured']:.2f} (target {v['target']}) {'met' if v['met'] else 'NOT met'}")
    print(path)


if __name__ == "__main__":
    main()
