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


N_WORKERS = 8
STEPS = 20

# Algorithm specs (tables for the registry, so spawned processes and the test build the
# same thing), 8 workers. Every registered algorithm appears, and every registered
# compressor through compressed_sgd and choco_sgd (`ALGORITHM_SPECS` adds those).
BASE_SPECS = {
    "allreduce_sgd": {"name": "allreduce_sgd", "lr": 0.1, "momentum": 0.9},
    "dpsgd_ring": {"name": "dpsgd", "lr": 0.1, "momentum": 0.9, "topology": "ring"},
    "d2_ring": {"name": "d2", "lr": 0.1, "topology": "ring"},
    "signum": {"name": "signum", "lr": 1e-2},
    "signum_mv": {"name": "signum_mv", "lr": 1e-2, "byzantine": [3]},
    "ef21_topk": {"name": "ef21", "lr": 0.1, "compressor": {"name": "topk", "k": 20}},
    "ef21_natural": {"name": "ef21", "lr": 0.1, "compressor": "natural"},
    "local_sgd": {"name": "local_sgd", "lr": 0.1, "local_steps": 4, "momentum": 0.9},
    "local_sgd_qsgd": {"name": "local_sgd", "lr": 0.1, "local_steps": 2, "compressor": "qsgd:4"},
    "powersgd": {"name": "powersgd", "lr": 0.1, "rank": 2, "momentum": 0.9},
    "compressed_sgd_downlink_qsgd": {"name": "compressed_sgd", "lr": 0.1, "compressor": "topk:0.1", "downlink": "qsgd:7"},
    "compressed_sgd_allgather_natural": {"name": "compressed_sgd", "lr": 0.1, "compressor": "natural", "mode": "allgather"},
    "robust_sgd_geomed_alie": {
        "name": "robust_sgd", "lr": 0.1, "aggregator": "geomed", "attack": "alie", "byzantine": [1, 6], "worker_momentum": 0.9,
    },
    "robust_sgd_bgmd_label_flip": {
        "name": "robust_sgd", "lr": 0.1, "aggregator": {"name": "bgmd", "beta": 0.2}, "attack": "label_flip",
        "byzantine": [2, 5], "worker_momentum": 0.0,
    },
    "robust_sgd_cclip_gaussian": {
        "name": "robust_sgd", "lr": 0.1, "aggregator": {"name": "cclip", "tau": 1.0, "bucket": 2}, "attack": "gaussian:1.0",
        "byzantine": [5], "momentum": 0.5,
    },
    "robust_gossip_clipped_sign_flip": {
        "name": "robust_gossip", "lr": 0.1, "topology": "exponential", "attack": "sign_flip", "byzantine": [3],
    },
    "robust_gossip_cclip_gaussian": {
        "name": "robust_gossip", "lr": 0.1, "topology": "exponential", "rule": {"name": "cclip", "tau": 0.5},
        "attack": "gaussian:1.0", "byzantine": [3],
    },
    "fedavg_partial_failures_adam": {
        "name": "fedavg", "lr": 0.1, "clients_per_round": 5, "local_steps": 3, "local_work": "uniform",
        "participation": 0.8, "failure": 0.2, "server_optimizer": "adam", "server_lr": 0.05, "momentum": 0.5,
    },
    "fedavg_replacement_deadline": {
        "name": "fedavg", "lr": 0.1, "clients_per_round": 6, "replacement": True, "sampling": "size",
        "local_epochs": 1.0, "deadline": 0.04, "deadline_policy": "partial", "server_momentum": 0.7,
    },
    "fednova_uniform_steps": {"name": "fednova", "lr": 0.1, "clients_per_round": 4, "local_steps": 4, "local_work": "uniform", "momentum": 0.9},
    "fedaware": {"name": "fedaware", "lr": 0.1, "clients_per_round": 3, "local_steps": 3, "projection": True},
    "diff2_local": {"name": "diff2", "lr": 0.05, "restart_period": 4, "noise_multiplier": 1.0, "diff_noise_multiplier": 2.0},
    "diff2_central": {
        "name": "diff2", "lr": 0.05, "restart_period": 3, "noise_multiplier": 1.0, "diff_noise_multiplier": 2.0, "mode": "central",
    },
    "divebatch_growing": {
        "name": "divebatch", "lr": 0.1, "batch_size": 16, "max_batch_size": 64, "resize_freq": 1, "delta": 0.5,
        "adaptive_lr": True, "momentum": 0.9,
    },
    "dp_sgd_poisson_local": {"name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "momentum": 0.9},
    "dp_sgd_uniform_central": {
        "name": "dp_sgd", "lr": 0.1, "noise_multiplier": 0.8, "sampling": "uniform", "mode": "central", "batch_size": 6,
    },
    "robust_gossip_bgmd_ipm": {
        "name": "robust_gossip", "lr": 0.1, "topology": "exponential", "rule": {"name": "bgmd", "beta": 0.3},
        "attack": "ipm", "byzantine": [6],
    },
}


def compressor_specs() -> dict:
    """compressed_sgd (EF, server) and choco_sgd with every registered compressor."""
    from distsgd.compress import COMPRESSORS

    out = {}
    for c in COMPRESSORS.names():
        # Rand-K unscaled: contractive (δ = k/d), what EF and CHOCO need; scaled it diverges here
        spec = {"name": "topk", "k": 20} if c == "topk" else {"name": "randk", "ratio": 0.25, "scaled": False} if c == "randk" else c
        out[f"compressed_sgd_{c}"] = {"name": "compressed_sgd", "lr": 0.1, "compressor": spec}
        out[f"choco_sgd_{c}"] = {
            "name": "choco_sgd", "lr": 0.1, "momentum": 0.9, "topology": "exponential", "compressor": spec, "gamma": 0.3,
        }
    return out


def algorithm_specs() -> dict:
    return {**BASE_SPECS, **compressor_specs()}


# 200-step runs whose final test accuracy must agree: every stochastic compressor and
# every attack
ACCURACY_SPECS = {
    "compressed_sgd_qsgd": {"name": "compressed_sgd", "lr": 0.1, "compressor": "qsgd"},
    "compressed_sgd_natural": {"name": "compressed_sgd", "lr": 0.1, "compressor": "natural"},
    # scaled Rand-K is unbiased, not contractive: plain compressed SGD (EF diverges with it)
    "compressed_sgd_randk": {"name": "compressed_sgd", "lr": 0.1, "compressor": "randk:0.25", "error_feedback": False},
    **{
        f"robust_sgd_{a}": {
            "name": "robust_sgd", "lr": 0.1, "aggregator": "cclip", "attack": a, "byzantine": [1, 6], "worker_momentum": 0.9,
        }
        for a in ("gaussian", "alie", "ipm", "sign_flip", "scaled_flip", "label_flip")
    },
}


def make_algorithm(spec):
    from distsgd.algorithms import ALGORITHMS

    return ALGORITHMS.create(spec)


def make_test_task():
    from distsgd import make_task

    return make_task("digits", n_workers=N_WORKERS, model="mlp", hidden=(16,), batch_size=8, seed=0)


def train_many(rank, world, rdzv, specs, steps, out_path):
    """Train every spec (name -> algorithm table) with 8 workers split over `world`
    processes, one after the other in the same process group; rank 0 saves, per name, all
    rows of x, the metrics and the traffic, or the error a run raised."""
    from distsgd import train
    from distsgd.comm.torchdist import TorchDistCommunicator
    from distsgd.errors import UserError

    _init(rank, world, rdzv)
    try:
        task = make_test_task()
        results = {}
        for name, spec in specs.items():
            comm = TorchDistCommunicator(N_WORKERS)
            try:
                res = train(task, make_algorithm(spec), steps=steps, eval_every=steps // 2, comm=comm, seed=3)
            except UserError as e:  # e.g. an algorithm that refuses torch.distributed
                results[name] = {"error": f"UserError: {e}"}
                continue
            traffic = comm.traffic.summary()  # before the gather below adds its own traffic
            results[name] = {"x": comm.all_gather(res.state["x"]), "metrics": res.metrics, "traffic": traffic}
        if rank == 0:
            torch.save(results, out_path)
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
