"""Bodies of the multi-process tests (importable by spawned processes)."""

import os
import sys

import torch
import torch.distributed as dist


def rendezvous() -> str:
    """A fresh file for the processes to meet at (no TCP port to race for)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="distsgd-rdzv-")
    os.close(fd)
    os.unlink(path)  # the store creates it
    return path


def _init(rank, world, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)


def _leave():
    # every rank reaches the barrier before any closes its connections, then the process
    # ends without interpreter teardown, where a leftover runtime thread can abort it
    # (the same reason as in distsgd.cli.main)
    if sys.exc_info()[0] is not None:  # failing: let the exception reach mp.spawn
        dist.destroy_process_group()
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def make_algorithm(name):
    from distsgd import DPSGD, AllReduceSGD, make_topology
    from distsgd.algorithms import D2, EF21, ChocoSGD, CompressedSGD, RobustSGD, Signum
    from distsgd.compress import TopK
    from distsgd.robust import BGMD, Attack, GeometricMedian

    return {
        "allreduce": lambda: AllReduceSGD(lr=0.1, momentum=0.9),
        "dpsgd_ring": lambda: DPSGD(lr=0.1, momentum=0.9, topology=make_topology("ring", 8)),
        "signum": lambda: Signum(lr=1e-2),
        "ef21_topk": lambda: EF21(lr=0.1, compressor=TopK(k=20)),
        "ef_topk": lambda: CompressedSGD(lr=0.1, compressor=TopK(k=20)),
        "d2_ring": lambda: D2(lr=0.1, topology=make_topology("ring", 8)),
        "choco_topk": lambda: ChocoSGD(
            lr=0.1, momentum=0.9, topology=make_topology("exponential", 8), compressor=TopK(k=20), gamma=0.3
        ),
        "robust_geomed_alie": lambda: RobustSGD(
            lr=0.1,
            aggregator=GeometricMedian(f=2),
            attack=Attack("alie"),
            byzantine=(1, 6),
            worker_momentum=0.9,
        ),
        "robust_bgmd_label_flip": lambda: RobustSGD(
            lr=0.1, aggregator=BGMD(f=2, beta=0.2), attack=Attack("label_flip"), byzantine=(2, 5), worker_momentum=0.0
        ),
    }[name]()


def train_slice(rank, world, rdzv, algo_name, out_path):
    """Train 8 workers split over `world` processes; rank 0 saves all rows of x."""
    from distsgd import make_task, train
    from distsgd.comm.torchdist import TorchDistCommunicator

    _init(rank, world, rdzv)
    try:
        task = make_task("digits", n_workers=8, model="mlp", hidden=(16,), batch_size=8, seed=0)
        algo = make_algorithm(algo_name)
        comm = TorchDistCommunicator(8)
        res = train(task, algo, steps=20, eval_every=10, comm=comm, seed=3)
        traffic = comm.traffic.summary()  # before the gather below adds its own traffic
        x = comm.all_gather(res.state["x"])
        if rank == 0:
            torch.save({"x": x, "metrics": res.metrics, "traffic": traffic}, out_path)
    finally:
        _leave()


def primitives(rank, world, rdzv, out_path):
    """exchange, gather/broadcast, all_gather and gossip on a torus over `world` processes."""
    from distsgd import make_topology
    from distsgd.comm.torchdist import TorchDistCommunicator

    _init(rank, world, rdzv)
    try:
        n, d = 12, 5
        comm = TorchDistCommunicator(n)
        x_all = torch.arange(n * d, dtype=torch.float32).reshape(n, d) ** 1.5
        x = x_all[comm.start : comm.start + comm.m]
        topo = make_topology("exponential", n)
        gathered = comm.gather_to_server(x)  # a collective: every rank calls it
        server_value = gathered.sum(0) if gathered is not None else None
        out = {
            "gossip": comm.all_gather(comm.gossip(x, topo)),
            "exchange": comm.all_gather(comm.exchange(x, [(0, 11), (1, 2), (5, 6)])),
            "broadcast": comm.all_gather(comm.broadcast_from_server(server_value, like=x)),
            "all_reduce": comm.all_gather(comm.all_reduce_mean(x)),
            "traffic": comm.traffic.summary(),
        }
        if rank == 0:
            torch.save(out, out_path)
    finally:
        _leave()


def schedules_vs_all_reduce(rank, world, rdzv, out_path):
    """Every schedule executed with point-to-point ops equals dist.all_reduce."""
    from distsgd.collectives import build_schedule, make_interconnect
    from distsgd.collectives.executor import ScheduleRunner

    _init(rank, world, rdzv)
    try:
        results = {}
        g = torch.Generator().manual_seed(rank)
        x = torch.randint(-1000, 1000, (1001,), generator=g).double()
        ref = x.clone()
        dist.all_reduce(ref)
        for spec, algos in (
            (f"switch:{world}", ["ring", "hd", "dbtree", "hierarchical", "multitree"]),
            ("torus:2x2" if world == 4 else f"ring:{world}", ["ring2d", "multitree"]),
        ):
            net = make_interconnect(spec, nis=2)
            for a in algos:
                if a == "ring2d" and net.kind == "ring":
                    continue
                y = x.clone()
                ScheduleRunner(build_schedule(a, net))(y)
                results[f"{spec}/{a}"] = bool(torch.equal(y, ref))
        if rank == 0:
            torch.save(results, out_path)
    finally:
        _leave()
