"""The torch.distributed communicator (gloo on loopback) against the simulated one."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from dist_helpers import make_algorithm, primitives, rendezvous, train_slice

from distsgd import SimulatedCommunicator, make_task, make_topology, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


@pytest.mark.parametrize(
    "algo_name",
    [
        "allreduce",
        "dpsgd_ring",
        "signum",
        "ef21_topk",
        "ef_topk",
        "robust_geomed_alie",
        "robust_bgmd_label_flip",
        "d2_ring",
        "choco_topk",
    ],
)
def test_simulated_and_torch_distributed_give_the_same_parameters(tmp_path, algo_name):
    out = tmp_path / "x.pt"
    mp.spawn(train_slice, args=(2, rendezvous(), algo_name, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    task = make_task("digits", n_workers=8, model="mlp", hidden=(16,), batch_size=8, seed=0)
    ref = train(task, make_algorithm(algo_name), steps=20, eval_every=10, seed=3)
    assert got["x"].shape == ref.state["x"].shape
    assert (got["x"] - ref.state["x"]).abs().max() < 1e-5
    assert got["traffic"] == ref.summary["traffic"]
    for a, b in zip(got["metrics"], ref.metrics, strict=True):
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-3)


def test_point_to_point_primitives_match_the_simulation(tmp_path):
    out = tmp_path / "p.pt"
    mp.spawn(primitives, args=(3, rendezvous(), str(out)), nprocs=3, join=True)
    got = torch.load(out)
    n, d = 12, 5
    sim = SimulatedCommunicator(n)
    x = torch.arange(n * d, dtype=torch.float32).reshape(n, d) ** 1.5
    assert torch.allclose(got["gossip"], sim.gossip(x, make_topology("exponential", n)), rtol=1e-6)
    assert torch.equal(got["exchange"], sim.exchange(x, [(0, 11), (1, 2), (5, 6)]))
    assert torch.allclose(got["broadcast"], sim.broadcast_from_server(sim.gather_to_server(x).sum(0), x))
    assert torch.allclose(got["all_reduce"], sim.all_reduce_mean(x))
    assert got["traffic"]["bytes_sent_per_worker"] > 0


def test_cli_under_torchrun_matches_the_simulation(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "tr"\nn_workers = 4\nsteps = 20\neval_every = 10\n'
        '[task]\ndataset = "digits"\nmodel = "linear"\nbatch_size = 8\n'
        '[algorithm]\nname = "dpsgd"\nlr = 0.1\n'
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "distsgd.cli",
        "run",
        str(cfg),
        "--backend",
        "torch",
        "--quiet",
        "--out",
        str(tmp_path / "dist"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    from distsgd.cli import main

    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "sim")]) == 0
    rows = [
        [json.loads(x) for x in (tmp_path / k / "tr/metrics.jsonl").read_text().splitlines()]
        for k in ("dist", "sim")
    ]
    assert [r["step"] for r in rows[0]] == [10, 20]
    for a, b in zip(*rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["bytes_sent_per_worker"] == b["bytes_sent_per_worker"]


@pytest.mark.parametrize("world", [3, 4])
def test_schedules_run_over_point_to_point_and_equal_all_reduce(tmp_path, world):
    from dist_helpers import schedules_vs_all_reduce

    out = tmp_path / "s.pt"
    mp.spawn(schedules_vs_all_reduce, args=(world, rendezvous(), str(out)), nprocs=world, join=True)
    results = torch.load(out)
    assert len(results) >= 5
    assert all(results.values()), results
