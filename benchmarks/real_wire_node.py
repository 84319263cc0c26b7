"""One node of benchmarks/real_wire.py: run under `distsgd netem` (one process per node,
RANK/WORLD_SIZE/MASTER_ADDR from the harness), with a JSON plan as the only argument.

Plan keys: mode ("steps" | "train" | "adpsgd"), methods (names below), and for "steps"
warmup and timed steps; for "train" one method with lr, seed, max_steps, eval_every,
target; out (rank 0 writes its JSON there).

Every method trains the same model (a wide MLP, ≥ 5 M parameters) on the same synthetic
task with torch.optim.SGD, one rank per worker, each rank drawing its own examples:

- PyTorch's own: DDP (fp32 all-reduce), DDP + fp16_compress_hook, DDP + PowerSGD hook
  (rank 1 and 4, error feedback and warm start on, one bucket: gloo needs
  bucket_cap_mb ≥ the model), post-local SGD (DDP's post_localSGD_hook and
  PeriodicModelAverager, period 8);
- distsgd's drop-in DistributedOptimizer with each algorithm.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IN, HIDDEN, CLASSES = 512, 2048, 10
BATCH = 64
EVAL = 4096


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )


class Mixture:
    """An endless stream of examples from a Gaussian mixture: 10 classes of 4 clusters each
    (means ~ N(0, 0.25² I) in 512 dimensions, unit noise). Fresh examples at every step, so
    accuracy measures learning, not memorizing; validation and test are fixed draws."""

    def __init__(self, data_seed: int = 1234):
        g = torch.Generator().manual_seed(data_seed)
        self.means = torch.randn(CLASSES * 4, IN, generator=g) * 0.25
        self.validation = self.draw(EVAL, torch.Generator().manual_seed(data_seed + 1))
        self.test = self.draw(EVAL, torch.Generator().manual_seed(data_seed + 2))

    def draw(self, n: int, g: torch.Generator):
        comp = torch.randint(0, CLASSES * 4, (n,), generator=g)
        return self.means[comp] + torch.randn(n, IN, generator=g), comp % CLASSES

    def batches(self, rank: int, seed: int):
        """This rank's stream: BATCH fresh examples per step."""
        g = torch.Generator().manual_seed(seed * 1000 + rank)
        while True:
            yield self.draw(BATCH, g)


DISTSGD = {
    "allreduce_sgd": {"name": "allreduce_sgd"},
    "allreduce_sgd_no_overlap": {"name": "allreduce_sgd"},  # the all-reduce in step(), after backward
    "local_sgd_h8": {"name": "local_sgd", "local_steps": 8},
    "dpsgd_ring": {"name": "dpsgd", "topology": "ring"},
    "choco_top1pct": {"name": "choco_sgd", "topology": "ring", "compressor": "topk:0.01", "gamma": 0.05},
    "signum_mv": {"name": "signum_mv"},
    "ef21_topk": {"name": "ef21", "compressor": "topk:0.01"},
    "powersgd_r1": {"name": "powersgd", "rank": 1},
    "powersgd_r4": {"name": "powersgd", "rank": 4},
    "d2_ring": {"name": "d2", "topology": "ring"},
}
TORCH = ("ddp", "ddp_fp16", "ddp_powersgd_r1", "ddp_powersgd_r4", "ddp_postlocal_h8")


class Method:
    """model + a step(x, y) that trains one step; `wire()` its byte counters where it has them."""

    def __init__(self, name: str, lr: float, seed: int, momentum: float = 0.0, start_iter: int = 2):
        from distsgd import DistributedOptimizer

        self.name, self.model = name, make_model(seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.dsgd = None
        self.averager = None
        d = sum(p.numel() for p in self.model.parameters())
        if name in TORCH:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
            from torch.nn.parallel import DistributedDataParallel as DDP

            one_bucket = math.ceil(4 * d / 2**20) + 1  # MiB: gloo's PowerSGD needs a single bucket
            self.net = DDP(self.model, bucket_cap_mb=one_bucket if "powersgd" in name else 25)
            if name == "ddp_fp16":
                self.net.register_comm_hook(None, default_hooks.fp16_compress_hook)
            elif name.startswith("ddp_powersgd"):
                state = powerSGD_hook.PowerSGDState(
                    process_group=None,
                    matrix_approximation_rank=int(name[-1]),
                    start_powerSGD_iter=start_iter,
                    use_error_feedback=True,
                    warm_start=True,
                )
                self.net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
            elif name == "ddp_postlocal_h8":
                from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as pl
                from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

                # one process per node: the intra-node subgroup is the process itself, so after
                # start_iter the hook communicates nothing and the averager averages every 8 steps
                solo, _ = dist.new_subgroups(group_size=1)
                state = pl.PostLocalSGDState(process_group=None, subgroup=solo, start_localSGD_iter=start_iter)
                self.net.register_comm_hook(state, pl.post_localSGD_hook)
                self.averager = PeriodicModelAverager(period=8, warmup_steps=start_iter)
        else:
            spec = dict(DISTSGD[name])
            if name.startswith("powersgd"):
                spec["start_iter"] = start_iter
            self.net = self.model
            self.dsgd = DistributedOptimizer(self.opt, self.model, spec, seed=seed,
                                             overlap=False if name.endswith("_no_overlap") else None)

    def step(self, x, y, slowdown: float = 1.0) -> None:
        opt = self.dsgd or self.opt
        opt.zero_grad()
        t = time.perf_counter()
        F.cross_entropy(self.net(x), y).backward()  # DDP communicates inside backward
        if slowdown > 1:  # a straggler: compute takes `slowdown` times as long
            time.sleep((slowdown - 1) * (time.perf_counter() - t))
        opt.step()
        if self.averager is not None:
            self.averager.average_parameters(self.model.parameters())

    def counters(self) -> dict:
        if self.dsgd is None:
            return {}
        c = self.dsgd.comm
        t = c.traffic
        return {
            "logical_sent_per_worker": float(t.sent.mean()),
            "logical_received_per_worker": float(t.received.mean()),
            "wire_sent": c.wire.sent,
            "wire_received": c.wire.received,
        }

    @torch.no_grad()
    def averaged_accuracy(self, x, y) -> float:
        """Test accuracy of the model averaged over the ranks (the decentralized methods'
        evaluation model; for the others every rank holds the same one)."""
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        saved = [p.detach().clone() for p in self.model.parameters()]
        off = 0
        for p in self.model.parameters():
            p.copy_(flat[off : off + p.numel()].view_as(p))
            off += p.numel()
        acc = float((self.model(x).argmax(1) == y).float().mean())
        for p, s in zip(self.model.parameters(), saved, strict=True):
            p.copy_(s)
        return acc


def kernel() -> tuple[int, int]:
    from distsgd.netem import interface_bytes

    return interface_bytes()


def steps_mode(plan, rank, world, data):
    out = {}
    for name in plan["methods"]:
        m = Method(name, lr=plan.get("lr", 0.01), seed=0)
        batches = data.batches(rank, seed=0)
        for _ in range(plan["warmup"]):
            m.step(*next(batches))
        dist.barrier()
        before_c, before_k = m.counters(), kernel()
        times = []
        t0 = time.perf_counter()
        for _ in range(plan["steps"]):
            s = time.perf_counter()
            m.step(*next(batches))
            times.append(time.perf_counter() - s)
        dist.barrier()
        total = time.perf_counter() - t0
        after_c, after_k = m.counters(), kernel()
        row = {
            "seconds_per_step_median": statistics.median(times),
            "seconds_per_step_mean": total / plan["steps"],
            "step_seconds": times,
            "kernel_tx_per_step": (after_k[0] - before_k[0]) / plan["steps"],
            "kernel_rx_per_step": (after_k[1] - before_k[1]) / plan["steps"],
        }
        for k in after_c:
            row[f"{k}_per_step"] = (after_c[k] - before_c[k]) / plan["steps"]
        every = [None] * world
        dist.all_gather_object(every, row)
        out[name] = every  # one row per rank
        del m
    return out


def train_mode(plan, rank, world, data):
    xev, yev = data.validation if plan.get("split", "test") == "validation" else data.test
    m = Method(plan["method"], lr=plan["lr"], seed=plan["seed"], momentum=plan.get("momentum", 0.0),
               start_iter=plan.get("start_iter", 2))
    batches = data.batches(rank, seed=plan["seed"])
    curve, clock, reached = [], 0.0, None
    slow = plan.get("slowdown", {}).get(str(rank), 1.0)
    dist.barrier()
    for step in range(1, plan["max_steps"] + 1):
        s = time.perf_counter()
        m.step(*next(batches), slowdown=slow)
        clock += time.perf_counter() - s
        if step % plan["eval_every"] == 0:
            # the clock stops for evaluation: agree on the slowest rank's training time
            t = torch.tensor([clock], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            acc = m.averaged_accuracy(xev, yev)
            if not math.isfinite(acc):
                curve.append({"step": step, "seconds": float(t), "accuracy": None})
                break
            curve.append({"step": step, "seconds": float(t), "accuracy": acc})
            if reached is None and acc >= plan["target"]:
                reached = {"step": step, "seconds": float(t)}
                if plan.get("stop_at_target", True):
                    break
    return {"curve": curve, "reached": reached}


def adpsgd_mode(plan, rank, world, data):
    """AD-PSGD for real (distsgd.adpsgd_real): no barrier in the loop; the averaged model is
    snapshotted every `snapshot_every` seconds and evaluated after the run."""
    from distsgd.adpsgd_real import load_flat, run_adpsgd

    xev, yev = data.validation if plan.get("split", "test") == "validation" else data.test
    model = make_model(plan["seed"])
    result = run_adpsgd(
        model,
        F.cross_entropy,
        data.batches(rank, seed=plan["seed"]),
        lr=plan["lr"],
        topology="ring",
        max_seconds=plan["max_seconds"],
        snapshot_every=plan["snapshot_every"],
        slowdown=plan.get("slowdown", {}).get(str(rank), 1.0),
        seed=plan["seed"],
    )
    curve, reached = [], None
    with torch.no_grad():
        for t, flat in result.snapshots:
            load_flat(model, flat)
            acc = float((model(xev).argmax(1) == yev).float().mean())
            curve.append({"seconds": t, "accuracy": acc})
            if reached is None and acc >= plan["target"]:
                reached = {"seconds": t}
    stats = [None] * world
    dist.all_gather_object(
        stats,
        {
            "gradients": result.gradients,
            "averagings": result.averagings,
            "seconds_per_gradient": result.seconds_per_gradient,
            "staleness": vars(result.staleness),
        },
    )
    return {"curve": curve, "reached": reached, "ranks": stats}


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(plan.get("threads", 1))
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    data = Mixture()
    try:
        if plan["mode"] == "steps":
            result = steps_mode(plan, rank, world, data)
        elif plan["mode"] == "adpsgd":
            result = adpsgd_mode(plan, rank, world, data)
        else:
            result = train_mode(plan, rank, world, data)
        if rank == 0:
            tmp = Path(plan["out"] + ".tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, plan["out"])
        dist.barrier()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
