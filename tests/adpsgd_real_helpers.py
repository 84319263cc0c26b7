"""Bodies of the multi-process tests of `distsgd.adpsgd_real` (importable by spawned processes)."""

import time

import torch
import torch.distributed as dist
from dist_helpers import _init, _leave
from torch import nn

P = 10  # least-squares features
N_PER_RANK = 64
SLOW_RANK, SLOWDOWN = 2, 4.0  # an active rank: its averagings wait for its gradients
COMPUTE = 0.005  # seconds of fake compute per gradient in the budget run (a sleep: load-proof)
BUDGET = 400


def least_squares(world: int):
    """(A [N, P], b [N, 1]) with b = A w* + c + small noise, the same on every rank."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(world * N_PER_RANK, P, generator=g)
    w = torch.randn(P, 1, generator=g)
    b = a @ w + 0.5 + 0.1 * torch.randn(world * N_PER_RANK, 1, generator=g)
    return a, b


def optimum(a: torch.Tensor, b: torch.Tensor) -> float:
    """min over (w, c) of mean((a w + c − b)²)."""
    a1 = torch.cat([a, torch.ones(len(a), 1)], 1).double()
    sol = torch.linalg.lstsq(a1, b.double()).solution
    return float(((a1 @ sol - b.double()) ** 2).mean())


def batches(inputs: torch.Tensor, targets: torch.Tensor, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(inputs), (size,), generator=g)
        yield inputs[idx], targets[idx]


def slow_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy after COMPUTE seconds of sleep: a gradient that takes a known time
    whatever else the machine runs (the GIL is free meanwhile, as in a real backward)."""
    time.sleep(COMPUTE)
    return nn.functional.cross_entropy(out, target)


def _gather(t: torch.Tensor) -> torch.Tensor:
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.stack(out)


def _summary(res) -> dict:
    return {
        "gradients": res.gradients,
        "averagings": res.averagings,
        "active": res.active,
        "staleness": res.staleness,
        "mixing_staleness": res.mixing_staleness,
        "bytes_sent": res.bytes_sent,
        "bytes_received": res.bytes_received,
        "seconds": res.seconds,
        "seconds_per_gradient": res.seconds_per_gradient,
        "gradients_per_rank": res.gradients_per_rank,
        "averagings_per_rank": res.averagings_per_rank,
    }


def scenarios(rank, world, rdzv, out_path):
    """Four runs in one process group, one after the other; rank 0 saves what the tests check.

    conservation: lr = 0 from different starts (same_start=False); x of every rank before and after.
    convergence: least squares, shards per rank; the final average and the snapshots.
    budget: a 4× slower rank and a gradient budget; the counts and staleness of every rank.
    clock: a wall-clock budget with snapshots and a small cap (thinning); every rank's snapshots.
    """
    from distsgd.adpsgd_real import run_adpsgd
    from distsgd.workers import Flat

    _init(rank, world, rdzv)
    try:
        out = {}
        # -- conservation ----------------------------------------------------------------------
        torch.manual_seed(100 + rank)
        model = nn.Linear(40, 5)
        flat = Flat.from_module(model)
        before = _gather(flat.flatten(model))
        data = torch.randn(64, 40), torch.randn(64, 5)
        res = run_adpsgd(
            model,
            nn.functional.mse_loss,
            batches(*data, 8, rank),
            lr=0.0,
            max_seconds=0.5,
            same_start=False,
            seed=1,
        )
        out["conservation"] = {
            "before": before,
            "after": _gather(flat.flatten(model)),
            "final": res.final,
            **_summary(res),
        }

        # -- convergence -------------------------------------------------------------------------
        a, b = least_squares(world)
        shard = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.manual_seed(0)
        model = nn.Linear(P, 1)
        x0 = Flat.from_module(model).flatten(model)
        res = run_adpsgd(
            model,
            nn.functional.mse_loss,
            batches(a[shard], b[shard], 8, rank),
            lr=0.05,
            max_gradients=1600,
            snapshot_every=0.05,
            seed=2,
        )
        out["convergence"] = {
            "x0": x0,
            "final": res.final,
            "snapshots": res.snapshots,
            "models": _gather(Flat.from_module(model).flatten(model)),
            "optimum": optimum(a, b),
            **_summary(res),
        }

        # -- budget and a straggler ------------------------------------------------------------
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))
        data = torch.randn(256, 16), torch.randint(10, (256,))
        res = run_adpsgd(
            model,
            slow_loss,
            batches(*data, 16, rank),
            lr=0.01,
            max_gradients=BUDGET,
            slowdown=SLOWDOWN if rank == SLOW_RANK else 1.0,
            seed=3,
        )
        out["budget"] = _summary(res) | {"d": Flat.from_module(model).d}
        out["budget_all"] = [None] * world
        dist.all_gather_object(out["budget_all"], _summary(res))

        # -- a wall-clock budget with snapshots (cap 4: thinned at least once) ---------------------
        torch.manual_seed(0)
        model = nn.Linear(P, 1)
        x0 = Flat.from_module(model).flatten(model)
        res = run_adpsgd(
            model,
            nn.functional.mse_loss,
            batches(a[shard], b[shard], 8, rank),
            lr=0.05,
            max_seconds=0.6,
            snapshot_every=0.05,
            max_snapshots=4,
            seed=4,
        )
        snaps = torch.stack([v for _, v in res.snapshots])
        loaded = nn.Linear(P, 1)
        res.load(loaded, res.final)
        out["clock"] = {
            "times": [t for t, _ in res.snapshots],
            "snapshots": _gather(snaps),
            "x0": x0,
            "interval": res.snapshot_interval,
            "final": res.final,
            "loaded": Flat.from_module(loaded).flatten(loaded),
            **_summary(res),
        }
        if rank == 0:
            torch.save(out, out_path)
    finally:
        _leave()


def not_bipartite(rank, world, rdzv, out_path):
    """A ring of 3 ranks: every rank raises the same UserError before any communication."""
    from distsgd.adpsgd_real import run_adpsgd
    from distsgd.errors import UserError

    _init(rank, world, rdzv)
    try:
        model = nn.Linear(3, 1)
        msg = None
        try:
            run_adpsgd(model, nn.functional.mse_loss, iter([]), lr=0.1, max_gradients=10)
        except UserError as e:
            msg = str(e)
        if rank == 0:
            torch.save(msg, out_path)
    finally:
        _leave()
