"""Reduce-scatter, all-gather and broadcast schedules executed for real over
torch.distributed (gloo on loopback) give what torch.distributed's own collectives give."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_helpers import _init, _leave, rendezvous


def collectives_vs_torch(rank, world, rdzv, out_path):
    from distsgd.collectives import COLLECTIVE_ALGORITHMS, build_schedule, make_interconnect
    from distsgd.collectives.executor import ScheduleRunner
    from distsgd.errors import UserError

    _init(rank, world, rdzv)
    try:
        results = {}
        m = 37  # elements per rank's block: not a multiple of the rings' chunk count
        g = torch.Generator().manual_seed(rank)
        full = torch.randint(-1000, 1000, (world * m,), generator=g).double()
        block = torch.randint(-1000, 1000, (m,), generator=g).double()
        # references from torch.distributed
        parts = [torch.empty(m, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(parts, block)
        ag_ref = torch.cat(parts)
        everyone = [torch.empty_like(full) for _ in range(world)]
        dist.all_gather(everyone, full)
        rs_math = torch.stack(everyone).sum(0)[rank * m : (rank + 1) * m]
        try:  # gloo may not have it: then the mathematically expected block
            rs_ref = torch.empty(m, dtype=torch.float64)
            dist.reduce_scatter_tensor(rs_ref, full.clone())
            results["torch reduce_scatter_tensor == sum"] = bool(torch.equal(rs_ref, rs_math))
        except (RuntimeError, NotImplementedError, ValueError):
            rs_ref = rs_math
        root = world - 1
        bc_ref = full.clone()
        dist.broadcast(bc_ref, root)
        specs = [f"switch:{world}", f"ring:{world}"]
        for spec in specs:
            net = make_interconnect(spec, nis=2)
            for collective in ("reduce_scatter", "allgather", "broadcast"):
                for name in COLLECTIVE_ALGORITHMS[collective]:
                    try:
                        sched = build_schedule(name, net, collective, root=root)
                    except UserError:
                        continue  # multiring off a torus, hd off a power of two
                    run = ScheduleRunner(sched)
                    key = f"{spec}/{collective}/{name}"
                    if collective == "reduce_scatter":
                        out = torch.full((m,), float("nan"), dtype=torch.float64)
                        x = full.clone()
                        run.reduce_scatter(out, x)
                        results[key] = bool(torch.equal(out, rs_ref) and torch.equal(x, full))
                    elif collective == "allgather":
                        out = torch.full((world * m,), float("nan"), dtype=torch.float64)
                        run.all_gather(out, block)
                        results[key] = bool(torch.equal(out, ag_ref))
                    else:
                        y = full.clone()
                        run.broadcast(y)
                        results[key] = bool(torch.equal(y, bc_ref))
        if rank == 0:
            torch.save(results, out_path)
    finally:
        _leave()


@pytest.mark.parametrize("world", [pytest.param(3, marks=pytest.mark.slow), 4])
def test_reduce_scatter_all_gather_broadcast_equal_torch_distributed(tmp_path, world):
    out = tmp_path / "r.pt"
    mp.spawn(collectives_vs_torch, args=(world, rendezvous(), str(out)), nprocs=world, join=True)
    results = torch.load(out)
    names = {k.split("/", 2)[2] for k in results if "/" in k}
    assert {"ring", "biring", "multitree"} <= names
    if world == 4:
        assert "hd" in names
    assert sum("/broadcast/" in k for k in results) >= 4
    assert all(results.values()), {k: v for k, v in results.items() if not v}


def test_runner_refuses_the_wrong_collective_or_sizes():
    from distsgd.collectives.executor import ScheduleRunner
    from distsgd.collectives.schedules import ring

    dist.init_process_group("gloo", init_method=f"file://{rendezvous()}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="schedule is for 2 ranks"):
            ScheduleRunner(ring(2, None, "allgather"))
        run = ScheduleRunner(ring(1, None, "allgather"))
        with pytest.raises(ValueError, match="not a reduce_scatter"):
            run.reduce_scatter(torch.zeros(1), torch.zeros(1))
        with pytest.raises(ValueError, match="world size"):
            run.all_gather(torch.zeros(5), torch.zeros(2))
        out = torch.zeros(3)
        assert torch.equal(run.all_gather(out, torch.arange(3.0)), torch.arange(3.0))
    finally:
        dist.destroy_process_group()
