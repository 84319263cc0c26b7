"""Every algorithm resumes bit-exactly: all its state is in the checkpointed state object.

Each run builds its algorithm afresh, as a new process resuming would, so anything an
algorithm, compressor or aggregator kept on itself (a warm-start Q, an aggregator's memory,
a generator) would show up as a difference.
"""

import pytest
import torch
from dist_helpers import make_test_task

import distsgd
from distsgd.algorithms import ALGORITHMS
from distsgd.compress import PowerSGD
from distsgd.workers import Flat

SPECS = {
    "adpsgd": {"name": "adpsgd", "lr": 0.1},
    "allreduce_sgd": {"name": "allreduce_sgd", "lr": 0.1, "momentum": 0.9},
    "choco_sgd_natural": {"name": "choco_sgd", "lr": 0.1, "momentum": 0.9, "compressor": "natural", "gamma": 0.3},
    "compressed_sgd_qsgd": {"name": "compressed_sgd", "lr": 0.1, "compressor": "qsgd:7", "momentum": 0.9},
    "compressed_sgd_randk_downlink_qsgd": {
        "name": "compressed_sgd", "lr": 0.1, "compressor": {"name": "randk", "ratio": 0.25, "scaled": False},
        "downlink": "qsgd:15",
    },
    "compressed_sgd_powersgd": "powersgd-compressor",  # built below: needs the layer shapes
    "d2": {"name": "d2", "lr": 0.1, "topology": "ring"},
    "dpsgd": {"name": "dpsgd", "lr": 0.1, "momentum": 0.9, "topology": "exponential"},
    "ef21_natural": {"name": "ef21", "lr": 0.1, "compressor": "natural"},
    "local_sgd_randk": {
        "name": "local_sgd", "lr": 0.1, "local_steps": 3, "compressor": {"name": "randk", "ratio": 0.3, "scaled": False},
    },
    "fedavg": {
        "name": "fedavg", "lr": 0.1, "clients_per_round": 5, "local_steps": 3, "local_work": "uniform",
        "participation": 0.8, "failure": 0.2, "server_optimizer": "yogi", "server_lr": 0.05,
    },
    "fednova": {"name": "fednova", "lr": 0.1, "clients_per_round": 4, "local_work": "uniform", "momentum": 0.9},
    "fedaware": {"name": "fedaware", "lr": 0.1, "clients_per_round": 3, "local_steps": 2},
    "diff2": {"name": "diff2", "lr": 0.05, "restart_period": 4, "noise_multiplier": 1.0, "diff_noise_multiplier": 2.0},
    "divebatch": {
        "name": "divebatch", "lr": 0.1, "batch_size": 16, "max_batch_size": 64, "resize_freq": 1, "delta": 0.5,
        "train_samples": 160, "adaptive_lr": True, "momentum": 0.9,
    },
    "dp_sgd": {
        "name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "target_epsilon": 50.0, "momentum": 0.9,
        "inner": {"name": "local_sgd", "local_steps": 3},
    },
    "powersgd": {"name": "powersgd", "lr": 0.1, "rank": 2, "momentum": 0.9},
    "robust_sgd_bgmd_gaussian": {
        "name": "robust_sgd", "lr": 0.1, "aggregator": {"name": "bgmd", "beta": 0.2}, "attack": "gaussian:1.0", "f": 2,
    },
    "robust_sgd_cclip_bucketing": {
        "name": "robust_sgd", "lr": 0.1, "aggregator": {"name": "cclip", "bucket": 2}, "attack": "alie", "f": 1,
        "momentum": 0.9,
    },
    "robust_gossip_cclip": {
        "name": "robust_gossip", "lr": 0.1, "topology": "exponential", "rule": {"name": "cclip", "tau": 0.5},
        "attack": "gaussian:1.0", "byzantine": [3],
    },
    "robust_gossip_bgmd": {
        "name": "robust_gossip", "lr": 0.1, "topology": "exponential", "rule": {"name": "bgmd", "beta": 0.3},
        "attack": "sign_flip", "byzantine": [6],
    },
    "robust_gossip_clipped": {"name": "robust_gossip", "lr": 0.1, "topology": "exponential", "attack": "ipm", "f": 1},
    "signum": {"name": "signum", "lr": 1e-2},
    "signum_mv": {"name": "signum_mv", "lr": 1e-2, "beta": 0.0},
}


def _build(spec, task):
    if spec == "powersgd-compressor":  # the compressor whose warm-start Q used to live on itself
        shapes = Flat.from_module(task.model).shapes
        return ALGORITHMS.create({"name": "compressed_sgd", "lr": 0.1, "compressor": PowerSGD(shapes, rank=2)})
    return ALGORITHMS.create(spec)


@pytest.fixture(scope="module")
def task():
    return make_test_task()


def test_every_registered_algorithm_is_covered():
    assert {s["name"] for s in SPECS.values() if isinstance(s, dict)} == set(ALGORITHMS.names())


@pytest.mark.parametrize("key", list(SPECS))
def test_resume_is_bit_exact(tmp_path, task, key):
    spec = SPECS[key]
    full = distsgd.train(task, _build(spec, task), steps=20, eval_every=10, seed=1)
    d = tmp_path / "run"
    part = distsgd.train(task, _build(spec, task), steps=20, eval_every=10, seed=1, run_dir=d, checkpoint_every=10, stop_after=10)
    assert part.summary["steps"] == 10
    resumed = distsgd.train(task, _build(spec, task), steps=20, eval_every=10, seed=1, run_dir=d, checkpoint_every=10, resume=True)
    assert torch.equal(full.state["x"], resumed.state["x"])
    assert full.metrics[-1]["test_acc"] == resumed.metrics[-1]["test_acc"]
    assert full.summary["traffic"] == resumed.summary["traffic"]


def test_robust_gossip_keeps_each_neighbourhoods_aggregator_state(task):
    spec = SPECS["robust_gossip_cclip"]
    res = distsgd.train(task, _build(spec, task), steps=5, eval_every=5, seed=1)
    states = res.state["aggregator"]
    assert len(states) == task.n
    for i, s in enumerate(states):  # centered clipping starts from its previous aggregate: x_i
        assert torch.equal(s["center"], res.state["x"][i])
    bgmd = distsgd.train(task, _build(SPECS["robust_gossip_bgmd"], task), steps=5, eval_every=5, seed=1)
    assert all(s["t"] == 5 and s["memory"].abs().sum() > 0 for s in bgmd.state["aggregator"])  # memory carried


def test_stochastic_compressors_keep_one_generator_per_worker_in_the_state(task):
    res = distsgd.train(task, _build(SPECS["compressed_sgd_qsgd"], task), steps=3, eval_every=3, seed=1)
    assert res.state["rng"].shape[0] == task.n  # worker i's stream, row i
    assert res.state["rng_server"].shape[0] == 1  # the server's (downlink) stream
    rows = {bytes(r.numpy()) for r in res.state["rng"]}
    assert len(rows) == task.n
