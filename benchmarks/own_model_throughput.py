"""Throughput of `distsgd.simulate` on a user's own CNN with BatchNorm.

A user-style model (conv 3x3 -> BN -> ReLU -> maxpool, twice, then a 2-layer MLP head) on
synthetic single-channel images, n = 64 and 256 workers, AllReduce-SGD (lr 0.05, the
default buffer policy "average": the workers' BatchNorm statistics are all-reduced after
every step). Two shapes: "small" (8x8 images, batch 16 per worker, ~23 k parameters)
and "large" (16x16 images, batch 32 per worker, ~38 k parameters). Per step:

- stacked: one step exactly as `simulate` runs it: the runner's `_Loop.step` (every
  worker's next batch, one vmapped gradient call over the stacked [n, d] parameters with
  per-worker BatchNorm buffers, the all-reduce, the SGD update, the buffer average).
  A whole `distsgd.simulate(...)` run is also timed once per row as a cross-check
  (its wall seconds per step, including one evaluation at the end).
- loop (one module): the loop a user would write instead, with the least overhead: one
  nn.Module whose parameters every worker shares (they are equal under AllReduce-SGD),
  each worker's forward/backward on its own batch accumulating loss/n into .grad, the
  BatchNorm buffers reset to the step's start before each worker and averaged after,
  then one torch.optim.SGD step.
- loop (n copies): n deep copies of the module, each with its own torch.optim.SGD,
  forward/backward/step on its own batch, then parameters and BatchNorm buffers averaged
  over the copies (how research code often simulates workers). The faster of the two
  loops in each row is the baseline of the 5x goal.
- big batch: one module, one forward/backward/SGD step on all n·B samples at once (the
  same samples and FLOPs with one set of weights: the compute floor).

All contenders draw the same per-worker batches (each its own `Workers` sampler with the
same seed), start from the same weights, and are checked to agree after one step before
timing. Timing: the contenders alternate in rounds (median per round of `calls` calls);
ratios are taken within a round, then the median and range over rounds are reported.

Threads: every row is measured with 1 and with 2 intra-op threads (--threads), all
contenders alike. The development machine (2 cores) is shared with other jobs; under such
load 2 OpenMP threads can make every small op wait a scheduler slice for the descheduled
second thread (seen once: a 32-sample forward/backward 9 ms with 1 thread, 115 ms with 2),
which penalises the loop most, so the 1-thread rows are the conservative ones. The load
average before and after is recorded.

Goals: stacked >= 5x the faster loop; stacked <= 1.5x the big-batch step. The ratio
loop (1 module) / big batch is reported too: it bounds any speedup over the loop that a
method no faster than the big batch can reach.
Writes benchmarks/results/own_model_throughput.json and .md.
Run: python benchmarks/own_model_throughput.py [--quick] [--threads 1,2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

import distsgd  # noqa: E402
from distsgd import AllReduceSGD, SimulatedCommunicator  # noqa: E402
from distsgd.algorithms.base import bind  # noqa: E402
from distsgd.runner import _Loop, buffer_policy  # noqa: E402
from distsgd.tasks.user import user_task  # noqa: E402
from distsgd.workers import Flat, Workers  # noqa: E402

LR = 0.05
SHAPES = {"small": {"image": 8, "batch": 16}, "large": {"image": 16, "batch": 32}}
TARGET_LOOP, TARGET_BIG = 5.0, 1.5


class UserCNN(nn.Module):
    """What a user might bring: two conv/BN/ReLU/pool blocks and an MLP head."""

    def __init__(self, image: int, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        hidden = 128 if image <= 8 else 64
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (image // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


def synthetic(image: int, samples: int, seed: int = 0):
    """Images with a class-dependent mean pattern plus noise, labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (samples,), generator=g)
    patterns = torch.randn(10, 1, image, image, generator=g)
    x = patterns[y] + torch.randn(samples, 1, image, image, generator=g)
    return x, y


def float_buffers(m: nn.Module) -> list[torch.Tensor]:
    return [b for b in m.buffers() if b.is_floating_point()]


def contenders(model: nn.Module, task, n: int):
    """The four step functions and the states that the one-step check compares."""
    # (a) the stacked engine: the runner's own step (what `simulate` runs)
    comm = SimulatedCommunicator(n)
    algo = bind(AllReduceSGD(lr=LR), n, 0, Flat.from_module(model).shapes)
    loop = _Loop(task, algo, comm, 0, False, buffer_policy(algo, None))
    assert loop.policy == "average"

    def stacked():
        loop.step(algo)

    def stacked_params():
        return loop.state["x"][0].clone(), [
            b.float().mean(0) for n_, b in loop.workers.buffers.items() if b.is_floating_point()
        ]

    data = task.train

    # (b) one module, every worker's forward/backward accumulated into .grad
    one = copy.deepcopy(model)
    one_opt = torch.optim.SGD(one.parameters(), lr=LR)
    one_buffers = float_buffers(one)
    one_all_buffers = list(one.buffers())
    one_sampler = Workers(task, seed=0)

    def loop_one():
        idx = one_sampler.next_batch()
        xb, yb = data.batch(idx)
        start = [b.clone() for b in one_all_buffers]
        acc = [torch.zeros_like(b) for b in one_buffers]
        one_opt.zero_grad()
        for i in range(n):
            with torch.no_grad():
                for b, s in zip(one_all_buffers, start, strict=True):
                    b.copy_(s)
            (F.cross_entropy(one(xb[i]), yb[i]) / n).backward()
            with torch.no_grad():
                for a, b in zip(acc, one_buffers, strict=True):
                    a.add_(b)
        one_opt.step()
        with torch.no_grad():
            for a, b in zip(acc, one_buffers, strict=True):
                b.copy_(a.div_(n))

    def one_params():
        return Flat.from_module(one).flatten(one), [b.clone() for b in one_buffers]

    # (b') n copies, each its own optimizer, averaged after the step
    copies = [copy.deepcopy(model) for _ in range(n)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in copies]
    cparams = [list(m.parameters()) for m in copies]
    cbuffers = [float_buffers(m) for m in copies]
    copies_sampler = Workers(task, seed=0)

    def loop_copies():
        idx = copies_sampler.next_batch()
        xb, yb = data.batch(idx)
        for i, (m, o) in enumerate(zip(copies, opts, strict=True)):
            o.zero_grad()
            F.cross_entropy(m(xb[i]), yb[i]).backward()
            o.step()
        with torch.no_grad():
            for group in (cparams, cbuffers):
                for k in range(len(group[0])):
                    avg = torch.stack([p[k] for p in group]).mean(0)
                    for p in group:
                        p[k].copy_(avg)

    def copies_params():
        return Flat.from_module(copies[0]).flatten(copies[0]), [b.clone() for b in cbuffers[0]]

    # (c) one module on the whole n·B batch
    big = copy.deepcopy(model)
    big_opt = torch.optim.SGD(big.parameters(), lr=LR)
    big_sampler = Workers(task, seed=0)

    def big_batch():
        idx = big_sampler.next_batch().reshape(-1)
        xb, yb = data.batch(idx)
        big_opt.zero_grad()
        F.cross_entropy(big(xb), yb).backward()
        big_opt.step()

    fns = {"stacked": stacked, "loop_one": loop_one, "loop_copies": loop_copies, "big_batch": big_batch}
    checks = {"stacked": stacked_params, "loop_one": one_params, "loop_copies": copies_params}
    return fns, checks


def agree(checks: dict) -> dict:
    """Max abs difference of parameters and mean BN buffers vs the stacked engine."""
    ref_p, ref_b = checks["stacked"]()
    out = {}
    for name in ("loop_one", "loop_copies"):
        p, b = checks[name]()
        out[name] = {
            "params_max_abs_diff": float((p - ref_p).abs().max()),
            "buffers_max_abs_diff": max(float((x - y).abs().max()) for x, y in zip(b, ref_b, strict=True)),
        }
    return out


def timed(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def bench(shape: str, n: int, rounds: int, budget_s: float) -> dict:
    image, batch = SHAPES[shape]["image"], SHAPES[shape]["batch"]
    torch.manual_seed(0)
    model = UserCNN(image)
    x, y = synthetic(image, max(4096, n * batch * 4))
    task = user_task(model, (x, y), None, n_workers=n, batch_size=batch, partition="iid", seed=0)
    fns, checks = contenders(model, task, n)

    # one step of each from the same start and the same batches: they must agree
    first = {}
    for name, fn in fns.items():
        first[name] = timed(fn, 1)
    agreement = agree(checks)
    for name, d in agreement.items():
        if d["params_max_abs_diff"] > 1e-4 or d["buffers_max_abs_diff"] > 1e-4:
            raise SystemExit(f"{shape} n={n}: {name} disagrees with the stacked engine after one step: {d}")
    # a second warm-up call, then calls per measurement from it (about budget_s each)
    warm = {name: timed(fn, 1) for name, fn in fns.items()}
    calls = {name: max(1, math.ceil(budget_s / t)) for name, t in warm.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, calls[name]))

    def ratio(a: str, b: str) -> dict:
        r = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return {"median": statistics.median(r), "min": min(r), "max": max(r), "per_round": r}

    # cross-check: whole simulate() runs (setup excluded: the runner's loop clock)
    steps = max(3, min(20, math.ceil(2 * budget_s / statistics.median(times["stacked"]))))
    res = distsgd.simulate(
        copy.deepcopy(model),
        (x, y),
        workers=n,
        algorithm=AllReduceSGD(lr=LR),
        batch_size=batch,
        steps=steps,
        eval_every=steps,
        seed=0,
    )
    row = {
        "shape": shape,
        "image": image,
        "batch_per_worker": batch,
        "n": n,
        "parameters": task.description["parameters"],
        "rounds": rounds,
        "calls_per_measurement": calls,
        "first_step_s": first,
        "one_step_agreement": agreement,
        "seconds_per_step": {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v), "per_round": v}
            for k, v in times.items()
        },
        "worker_steps_per_s": {k: n / statistics.median(v) for k, v in times.items()},
        "stacked_speedup_vs_loop_one": ratio("loop_one", "stacked"),
        "stacked_speedup_vs_loop_copies": ratio("loop_copies", "stacked"),
        "stacked_time_vs_big_batch": ratio("stacked", "big_batch"),
        "loop_one_time_vs_big_batch": ratio("loop_one", "big_batch"),
        "simulate_cross_check": {
            "steps": steps,
            "wall_seconds_per_step": res.summary["wall_seconds"] / steps,
            "includes": "the runner's loop clock: the steps plus one evaluation (train subset)",
        },
    }
    print(
        f"{torch.get_num_threads()} thr {shape:>6} n={n:<4} "
        + "  ".join(f"{k} {statistics.median(v) * 1e3:.0f} ms" for k, v in times.items())
        + f"  | x loop_one {row['stacked_speedup_vs_loop_one']['median']:.2f}"
        + f"  / big {row['stacked_time_vs_big_batch']['median']:.2f}",
        flush=True,
    )
    return row


def loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def markdown(rows: list[dict], goals: dict, meta: dict) -> str:
    lines = [
        "# own_model_throughput",
        "",
        f"User CNN with BatchNorm, AllReduce-SGD, intra-op threads {meta['threads']}, {meta['rounds']} interleaved rounds; "
        "ratios are medians over rounds (min..max). Load average before/after: "
        f"{meta['loadavg_before']} / {meta['loadavg_after']}. Wall time {meta['wall_seconds']:.0f} s.",
        "",
        "| threads | shape | n | params | stacked ms | loop (1 module) ms | loop (n copies) ms | big batch ms "
        "| stacked w-steps/s | × loop (1 module) | × loop (n copies) | stacked / big batch "
        "| loop (1 module) / big batch | simulate() ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def r(d, fmt="{:.2f}"):
        return f"{fmt.format(d['median'])} ({fmt.format(d['min'])}..{fmt.format(d['max'])})"

    for row in rows:
        s = row["seconds_per_step"]
        lines.append(
            f"| {row['threads']} | {row['shape']} {row['image']}x{row['image']} B={row['batch_per_worker']} | {row['n']} "
            f"| {row['parameters']} | {s['stacked']['median'] * 1e3:.0f} | {s['loop_one']['median'] * 1e3:.0f} "
            f"| {s['loop_copies']['median'] * 1e3:.0f} | {s['big_batch']['median'] * 1e3:.0f} "
            f"| {row['worker_steps_per_s']['stacked']:.0f} | {r(row['stacked_speedup_vs_loop_one'])} "
            f"| {r(row['stacked_speedup_vs_loop_copies'])} | {r(row['stacked_time_vs_big_batch'])} "
            f"| {r(row['loop_one_time_vs_big_batch'])} "
            f"| {row['simulate_cross_check']['wall_seconds_per_step'] * 1e3:.0f} |"
        )
    lines += [
        "",
        "A method no faster than the big batch can beat the loop by at most loop / big batch (the "
        "second-to-last column); simulate() ms/step is a whole simulate() run's loop clock over a few "
        "steps, including one evaluation.",
    ]
    lines += ["", "| goal | threads | shape | n | median | target | met |", "|---|---|---|---|---|---|---|"]
    for g in goals:
        lines.append(
            f"| {g['goal']} | {g['threads']} | {g['shape']} | {g['n']} | {g['median']:.2f} | {g['target']} | "
            f"{'yes' if g['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 rounds, shorter measurements")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--shapes", default="small,large")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, one full set of rows each")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    budget = 0.25 if args.quick else 0.6
    before, t0 = loadavg(), time.perf_counter()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for shape in args.shapes.split(","):
            for n in args.sizes.split(","):
                rows.append({"threads": threads, **bench(shape, int(n), rounds, budget)})
    wall = time.perf_counter() - t0
    goals = []
    for row in rows:
        # the baseline is the faster of the two loops (what a user would pick)
        s = row["seconds_per_step"]
        base = min(("loop_one", "loop_copies"), key=lambda k: s[k]["median"])
        lx, bx = row[f"stacked_speedup_vs_{base}"]["median"], row["stacked_time_vs_big_batch"]["median"]
        where = {"threads": row["threads"], "shape": row["shape"], "n": row["n"]}
        goals.append(
            {
                "goal": f"stacked ≥ 5× the faster loop ({base})",
                **where,
                "median": lx,
                "target": TARGET_LOOP,
                "met": lx >= TARGET_LOOP,
            }
        )
        goals.append(
            {
                "goal": "stacked ≤ 1.5× big batch",
                **where,
                "median": bx,
                "target": TARGET_BIG,
                "met": bx <= TARGET_BIG,
            }
        )
    meta = {
        "threads": args.threads,
        "rounds": rounds,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "wall_seconds": wall,
    }
    path = write_result(
        "own_model_throughput",
        {
            "model": "UserCNN: conv3x3(1→16)-BN-ReLU-pool, conv3x3(16→32)-BN-ReLU-pool, linear-ReLU-linear(10)",
            "algorithm": "allreduce_sgd lr 0.05, buffers average",
            "stacked_timing": "distsgd.runner._Loop.step (the step simulate runs), not compiled",
            "meta": meta,
            "rows": rows,
            "goals": goals,
        },
    )
    write_text(RESULTS / "own_model_throughput.md", markdown(rows, goals, meta))
    for g in goals:
        print(
            f"{g['goal']} [{g['threads']} thr {g['shape']} n={g['n']}]: {g['median']:.2f} ({'met' if g['met'] else 'NOT met'})"
        )
    print(f"wall {wall:.0f} s -> {path}")


if __name__ == "__main__":
    main()
