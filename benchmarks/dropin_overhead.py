"""Step time of the drop-in `distsgd.DistributedOptimizer` against plain DDP, 4 gloo ranks.

Four processes on loopback (mp.spawn, gloo, file rendezvous, one intra-op thread each),
one MLP 784-1024-512-10 (1.33 M parameters, 5.3 MB of float32 gradients) built from the
same seed in every arm, the same per-rank batches of 32 (synthetic inputs, fixed per
rank), torch.optim.SGD(lr 0.01, momentum 0.9). One step = zero_grad, forward,
cross-entropy, backward, step. The arms:

- ddp: torch.nn.parallel.DistributedDataParallel (default buckets of 25 MB, gradients
  copied into them) + torch.optim.SGD: the baseline;
- ddp_bucket_view: the same with gradient_as_bucket_view=True (information);
- local: the model and SGD with no communication at all (the compute floor, information);
- manual_flat: hand-written, torch only: the parameters and gradients as views of two flat
  vectors (the drop-in's layout), after backward one in-place dist.all_reduce of the flat
  gradient, then in-place momentum and update (information: the least that communicating
  after backward, without DDP's overlap, can cost here);
- allreduce_sgd: DistributedOptimizer(SGD(...), model, algorithm="allreduce_sgd"), no DDP;
- signum_mv (lr 1e-3), powersgd (rank 4), choco_sgd (topk:0.01, ring), dpsgd (ring):
  the drop-in with those algorithms (information).

Timing: every arm runs `WARMUP` steps, then `STEPS` timed steps, one after the other in
each round (the order rotates each round); a barrier precedes each arm. A round's figure
for an arm is the median of its step times pooled over the 4 ranks; ratios to ddp are
taken within the round, then median and range over rounds are reported.
Goal: allreduce_sgd ≤ 1.1× ddp's step time.

A breakdown follows (same processes, after the rounds): the parts of a step timed
separately for ddp, allreduce_sgd and local, plus a bare dist.all_reduce of the same
5.3 MB: forward, backward, the drop-in's gradient gather (`_gradient`), its all-reduce
(`comm._sum`: the copy to a contiguous sum and dist.all_reduce) and the rest of its
update, and DDP's optimizer step.

Writes benchmarks/results/dropin_overhead.json and .md.
Run: python benchmarks/dropin_overhead.py [--rounds 7] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_result, write_text  # noqa: E402

WORLD = 4
BATCH = 32
LR, MOMENTUM = 0.01, 0.9
WARMUP = 5
TARGET = 1.1
DROPIN = {
    "allreduce_sgd": "allreduce_sgd",
    "signum_mv": {"name": "signum_mv", "lr": 1e-3},
    "powersgd": {"name": "powersgd", "rank": 4},
    "choco_sgd": {"name": "choco_sgd", "compressor": "topk:0.01"},
    "dpsgd": "dpsgd",
}
ARMS = ["ddp", "ddp_bucket_view", "local", "manual_flat", *DROPIN]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))


class ManualFlat:
    """AllReduce-SGD by hand on flat parameter and gradient vectors, everything in place."""

    def __init__(self, model: nn.Module):
        params = list(model.parameters())
        self.x = torch.cat([p.detach().reshape(-1) for p in params])
        self.g = torch.zeros_like(self.x)
        self.buf: torch.Tensor | None = None
        self.world = dist.get_world_size()
        off = 0
        for p in params:
            k = p.numel()
            p.data = self.x[off : off + k].view_as(p)
            p.grad = self.g[off : off + k].view_as(p)
            off += k

    def zero_grad(self) -> None:
        self.g.zero_()

    @torch.no_grad()
    def step(self) -> None:
        dist.all_reduce(self.g)
        self.g.div_(self.world)
        if self.buf is None:
            self.buf = self.g.clone()
        else:
            self.buf.mul_(MOMENTUM).add_(self.g)
        self.x.sub_(self.buf, alpha=LR)


class Arm:
    """One arm's model, optimizer and step on this rank."""

    def __init__(self, name: str):
        import distsgd

        self.name = name
        model = make_model()
        self.model = model
        if name.startswith("ddp"):
            self.net = nn.parallel.DistributedDataParallel(
                model, gradient_as_bucket_view=name == "ddp_bucket_view"
            )
            self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        else:
            self.net = model
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            if name == "local":
                self.opt = opt
            elif name == "manual_flat":
                self.opt = ManualFlat(model)
            else:
                self.opt = distsgd.DistributedOptimizer(opt, model, algorithm=DROPIN[name])

    def step(self, x, y, t: dict | None = None) -> None:
        """One training step; with `t`, the seconds of its parts are added to t."""
        if t is None:
            self.opt.zero_grad()
            F.cross_entropy(self.net(x), y).backward()
            self.opt.step()
            return
        c = time.perf_counter
        a = c()
        self.opt.zero_grad()
        b = c()
        loss = F.cross_entropy(self.net(x), y)
        d = c()
        loss.backward()
        e = c()
        self.opt.step()
        f = c()
        for k, v in (("zero_grad", b - a), ("forward", d - b), ("backward", e - d), ("step", f - e)):
            t.setdefault(k, []).append(v)


def instrument(opt, sink: list) -> None:
    """Time the drop-in's gradient gather, its `comm._sum` (the copy into a contiguous sum,
    then the all-reduce) and every dist.all_reduce call; each lands in the dict sink[0]."""

    def wrap(obj, attr: str, key: str):
        inner = getattr(obj, attr)

        def timed(*args, **kw):
            a = time.perf_counter()
            out = inner(*args, **kw)
            sink[0].setdefault(key, []).append(time.perf_counter() - a)
            return out

        setattr(obj, attr, timed)

    wrap(opt, "_gradient", "gradient_gather")
    wrap(opt.comm, "_sum", "sum_and_all_reduce")
    wrap(dist, "all_reduce", "all_reduce")  # the module function, as torchdist and manual_flat call it


def gathered_median(values: list[float]) -> float:
    """The median of every rank's values pooled."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return statistics.median(v for p in parts for v in p)


def rank_main(rank: int, world: int, rdzv: str, rounds: int, steps: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)
        batches = [
            (torch.randn(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(8)
        ]
        arms = {name: Arm(name) for name in ARMS}
        d = sum(p.numel() for p in arms["ddp"].model.parameters())
        times: dict[str, list[float]] = {k: [] for k in ARMS}
        k = 0
        for r in range(rounds):
            order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
            for name in order:
                arm = arms[name]
                for _ in range(WARMUP):
                    arm.step(*batches[k % len(batches)])
                    k += 1
                dist.barrier()
                own = []
                for _ in range(steps):
                    x, y = batches[k % len(batches)]
                    k += 1
                    a = time.perf_counter()
                    arm.step(x, y)
                    own.append(time.perf_counter() - a)
                times[name].append(gathered_median(own))

        # breakdown: the parts of a step, in interleaved rounds
        parts: dict[str, dict[str, list[float]]] = {
            "ddp": {},
            "allreduce_sgd": {},
            "manual_flat": {},
            "local": {},
        }
        all_reduce = dist.all_reduce
        sink: list[dict] = [{}]
        instrument(arms["allreduce_sgd"].opt, sink)
        bare: list[float] = []
        buf = torch.randn(d)
        for _ in range(3):
            for name in parts:
                sink[0] = parts[name]
                dist.barrier()
                for _ in range(steps):
                    arms[name].step(*batches[k % len(batches)], t=parts[name])
                    k += 1
            dist.barrier()
            for _ in range(steps):
                a = time.perf_counter()
                all_reduce(buf)
                bare.append(time.perf_counter() - a)
        breakdown = {
            name: {key: gathered_median(v) for key, v in sorted(p.items())} for name, p in parts.items()
        }
        breakdown["bare_all_reduce"] = {"all_reduce": gathered_median(bare)}
        dist.all_reduce = all_reduce
        if rank == 0:
            torch.save({"times": times, "breakdown": breakdown, "d": d}, out_path)
    finally:
        if sys.exc_info()[0] is not None:
            dist.destroy_process_group()
        else:  # as tests/dist_helpers._leave: everyone reaches the barrier, then exit hard
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def markdown(rows: dict, breakdown: dict, meta: dict) -> str:
    lines = [
        "# dropin_overhead",
        "",
        f"{WORLD} gloo ranks on loopback, 1 thread each, MLP 784-1024-512-10 ({meta['parameters']} parameters), "
        f"batch {BATCH} per rank, SGD lr {LR} momentum {MOMENTUM}; median step time per round (all ranks pooled, "
        f"{meta['steps']} steps after {WARMUP} warm-up), {meta['rounds']} interleaved rounds; ratio to ddp: median "
        f"(min..max) over rounds. Load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}. "
        f"Wall time {meta['wall_seconds']:.0f} s.",
        "",
        "| arm | step ms (median of rounds) | × ddp |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        r = row["vs_ddp"]
        lines.append(
            f"| {name} | {row['median_ms']:.1f} | {r['median']:.2f} ({r['min']:.2f}..{r['max']:.2f}) |"
        )
    lines += [
        "",
        "Breakdown (ms, median over ranks and steps):",
        "",
        "| arm | zero_grad | forward | backward | step | of which gradient gather "
        "| of which comm._sum (copy + all-reduce) | of which dist.all_reduce |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in breakdown.items():

        def ms(key, p=p):
            return f"{p[key] * 1e3:.2f}" if key in p else "–"

        lines.append(
            f"| {name} | {ms('zero_grad')} | {ms('forward')} | {ms('backward')} | {ms('step')} "
            f"| {ms('gradient_gather')} | {ms('sum_and_all_reduce')} | {ms('all_reduce')} |"
        )
    own, hand = breakdown["allreduce_sgd"], breakdown["manual_flat"]
    lines += [
        "",
        f"Outside the gloo call, the drop-in's step() takes {(own['step'] - own['all_reduce']) * 1e3:.1f} ms "
        f"(of which {(own['sum_and_all_reduce'] - own['all_reduce']) * 1e3:.1f} ms copying the gradient into the "
        f"all-reduce buffer in comm._sum), the hand-written flat step {(hand['step'] - hand['all_reduce']) * 1e3:.1f} ms; "
        "both communicate after backward, without DDP's overlap.",
    ]
    goal = rows["allreduce_sgd"]["vs_ddp"]["median"]
    lines += [
        "",
        f"Goal allreduce_sgd ≤ {TARGET}× ddp: median {goal:.2f} — {'met' if goal <= TARGET else 'not met'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    before, t0 = loadavg(), time.perf_counter()
    fd, rdzv = tempfile.mkstemp(prefix="distsgd-rdzv-")
    os.close(fd)
    os.unlink(rdzv)  # the store creates it
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(rank_main, args=(WORLD, rdzv, args.rounds, args.steps, out), nprocs=WORLD, join=True)
        res = torch.load(out)
    wall = time.perf_counter() - t0
    times = res["times"]
    rows = {}
    for name in ARMS:
        r = [a / b for a, b in zip(times[name], times["ddp"], strict=True)]
        rows[name] = {
            "median_ms": statistics.median(times[name]) * 1e3,
            "per_round_ms": [v * 1e3 for v in times[name]],
            "vs_ddp": {"median": statistics.median(r), "min": min(r), "max": max(r), "per_round": r},
        }
    meta = {
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": WARMUP,
        "world": WORLD,
        "batch_per_rank": BATCH,
        "parameters": res["d"],
        "threads_per_rank": 1,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "wall_seconds": wall,
    }
    goal = rows["allreduce_sgd"]["vs_ddp"]["median"]
    path = write_result(
        "dropin_overhead",
        {
            "machine_note": {**machine(), "threads": 1},
            "model": "MLP 784-1024-512-10",
            "meta": meta,
            "arms": rows,
            "breakdown_seconds": res["breakdown"],
            "goal": {"allreduce_sgd_vs_ddp": goal, "target": TARGET, "met": goal <= TARGET},
        },
    )
    write_text(RESULTS / "dropin_overhead.md", markdown(rows, res["breakdown"], meta))
    for name, row in rows.items():
        r = row["vs_ddp"]
        print(
            f"{name:>16} {row['median_ms']:7.1f} ms  x ddp {r['median']:.2f} ({r['min']:.2f}..{r['max']:.2f})"
        )
    for name, p in res["breakdown"].items():
        print(f"{name:>16} " + "  ".join(f"{k} {v * 1e3:.2f}" for k, v in p.items()))
    print(
        f"allreduce_sgd / ddp: {goal:.2f} ({'met' if goal <= TARGET else 'NOT met'}); wall {wall:.0f} s -> {path}"
    )


if __name__ == "__main__":
    main()
