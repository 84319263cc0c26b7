"""`distsgd.DistributedOptimizer` in an ordinary torch.distributed loop (gloo, one rank per
worker) against `distsgd.simulate` with the same model, partition, batches and seed."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_helpers import rendezvous
from dropin_helpers import (
    ALGOS,
    BUFFER_CASES,
    BUFFER_STEPS,
    PARTITION,
    RESUME_KEYS,
    RESUME_WORLD,
    SEED,
    STEPS,
    WORLD,
    B,
    Net,
    digits,
    equivalence,
    resume,
    sim_spec,
)

import distsgd

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

ROOT = Path(__file__).resolve().parents[1]

# Relative drift ‖x_dropin − x_sim‖ / ‖x_sim‖ (worst worker) allowed after STEPS steps. The
# two runs execute the same algorithm code on the same batches, but the simulation's
# gradients come from vmapped kernels and the drop-in's from the plain module, so they
# differ by float rounding (~1e-8 after one step), and the rounding grows with the steps.
# Measured after 50 steps: 6e-8 to 2e-7 for most, 8e-7 CHOCO-SGD, 4e-6 D² (its gradient
# tracking amplifies it). 1e-3 is over two orders of magnitude above all of them, and far
# below what a real bug gives (a wrong batch, a missed buffer average, a lost state entry
# or a wrong option: 1e-2 to 1).
DRIFT = dict.fromkeys(ALGOS, 1e-3)
# PowerSGD amplifies rounding: its power iteration orthonormalizes P, and a rank-2
# approximation of a matrix whose 2nd and 3rd singular values are close turns a 1e-8
# change into a different subspace. Measured 1.1e-2 after 50 steps; the simulation against
# itself with x0 perturbed by 1e-7 (relative) drifts 7e-3, so that is rounding. Real bugs
# are ≥ 0.2 (measured in simulation: error_feedback off 0.42, warm_start off 0.21, rank 1
# 0.38, momentum 0 0.61), so 5e-2 still catches them.
DRIFT["powersgd"] = 5e-2
# Signum is checked coordinate by coordinate instead (see SIGNUM_FREE): all its drift is
# in the conv bias in front of BatchNorm (measured 1.4e-1 there, 0 everywhere else).

# Signum steps each coordinate by ±lr·sign(vote). The first conv's bias sits in front of
# BatchNorm, which subtracts the batch mean: its true gradient is exactly zero, and its
# computed gradient is rounding noise (~1e-9) whose sign differs between the vmapped and
# the plain kernels. So those coordinates move in different directions, by 2·lr a step,
# and nothing else notices (BatchNorm cancels the bias exactly in training mode). Every
# other parameter must agree; of the buffers, running_mean includes the bias, running_var
# and the step count do not.
with torch.random.fork_rng():  # building a Net at import must not move other tests' RNG
    _net = Net()
_flat = distsgd.Flat.from_module(_net)
_k = _flat.names.index("c1.bias")
SIGNUM_FREE = slice(_flat.offsets[_k], _flat.offsets[_k] + _flat.shapes[_k].numel())
SIGNUM_BUFFERS = slice(_net.bn.running_mean.numel(), None)  # flat buffers after running_mean


def signum_checked(params: torch.Tensor) -> torch.Tensor:
    """The parameters [n, d] without the conv bias in front of BatchNorm."""
    return torch.cat([params[:, : SIGNUM_FREE.start], params[:, SIGNUM_FREE.stop :]], dim=1)


@functools.cache
def simulated(key: str, steps: int, buffers=None):
    """(x [WORLD, d], buffers {name: [WORLD, ...]}) of distsgd.simulate."""
    train, _ = digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: a second thread only adds contention
    try:
        torch.manual_seed(0)  # the drop-in ranks build their Net() after the same seed
        r = distsgd.simulate(Net(), train, algorithm=sim_spec(key), workers=WORLD, partition=PARTITION,
                             batch_size=B, steps=steps, eval_every=steps, seed=SEED, buffers=buffers)
    finally:
        torch.set_num_threads(threads)
    x = r.state["x"]
    return x.expand(WORLD, -1).clone(), {n: b.clone() for n, b in r.workers.buffers.items()}


def flat_sim_buffers(bufs: dict) -> torch.Tensor:
    return torch.cat([b.reshape(WORLD, -1).double() for b in bufs.values()], dim=1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The worst row's ‖a_i − b_i‖ / ‖b_i‖."""
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-30)).max())


def run_dropin(tmp_path_factory, steps: int) -> dict:
    out = tmp_path_factory.mktemp("dropin") / "eq.pt"
    mp.spawn(equivalence, args=(WORLD, rendezvous(), steps, digits()[0].tensors, str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


def test_the_all_reduce_overlapping_the_backward_pass_equals_reducing_in_step(tmp_path):
    """DDP's overlap (small buckets here) gives the parameters of reducing the whole
    gradient in step(), to rounding, and the same counted traffic: plain steps, two backward
    passes per step, .grad cleared through the model, a parameter with no gradient, a model
    wrapped twice (only the last wrapper's hooks act), and each rank training through another
    head (buckets fill in another order on each rank; they start in bucket order on all)."""
    from dropin_helpers import OVERLAP_STEPS, overlap

    out = tmp_path / "overlap.pt"
    mp.spawn(overlap, args=(2, rendezvous(), digits()[0].tensors, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    assert sorted(got) == ["accumulate", "closure", "model_clears", "plain", "rank_dependent", "replaced_grad",
                           "rewrapped", "unused"]
    for case, (with_overlap, traffic_with, without, traffic_without) in got.items():
        assert rel(with_overlap, without) < 1e-6, case
        assert torch.equal(with_overlap[0], with_overlap[1]), case  # every rank holds the same model
        assert traffic_with[0] == traffic_without[0], case  # the algorithm's traffic: one all-reduce a step
        # on the wire each backward pass moves the gradient (2(w-1)/w of its bytes a rank, w = 2)
        extra = (1 if case == "accumulate" else 0) * OVERLAP_STEPS * 4 * with_overlap.shape[1]
        sent_with, sent_without = traffic_with[1]["wire_bytes_sent"], traffic_without[1]["wire_bytes_sent"]
        assert sent_with == pytest.approx(sent_without + extra), case


@pytest.fixture(scope="module")
def dropin(tmp_path_factory):
    """One process group of WORLD ranks runs STEPS steps of every algorithm (parameters and
    buffers kept after the first and the last), the buffer cases and the DDP-semantics
    checks (see dropin_helpers.equivalence)."""
    return run_dropin(tmp_path_factory, STEPS)


@pytest.mark.parametrize("key", list(ALGOS))
def test_one_step_of_the_dropin_equals_the_simulation(dropin, key):
    params, buffers = dropin[key, 1]
    x, bufs = simulated(key, 1)
    assert rel(buffers, flat_sim_buffers(bufs)) < 1e-5  # BatchNorm statistics, default policy
    if key != "signum_mv":
        assert rel(params, x) < 1e-5
        return
    assert rel(signum_checked(params), signum_checked(x)) < 1e-5  # see SIGNUM_FREE
    diff = (params - x).abs()
    flipped = diff > 1e-6  # a flipped sign: 2·lr = 2e-3 (lr·1 on a tied vote)
    assert int(flipped.sum(1).max()) < 0.01 * x.shape[1]  # few: at most the 8 bias coordinates
    assert not flipped[:, : SIGNUM_FREE.start].any() and not flipped[:, SIGNUM_FREE.stop :].any()


@pytest.mark.slow
def test_drift_after_50_steps_is_rounding_only(dropin, capsys):
    got = dropin
    rows = []
    for key in ALGOS:
        params, buffers = got[key, STEPS]
        x, bufs = simulated(key, STEPS)
        sim_buffers = flat_sim_buffers(bufs)
        row = {"1 step": rel(got[key, 1][0], simulated(key, 1)[0]), f"{STEPS} steps": rel(params, x),
               "buffers": rel(buffers, sim_buffers)}
        if key == "signum_mv":
            row["without c1.bias"] = rel(signum_checked(params), signum_checked(x))
            row["running_var"] = rel(buffers[:, SIGNUM_BUFFERS], sim_buffers[:, SIGNUM_BUFFERS])
        rows.append((key, row))
    with capsys.disabled():
        print(f"\ndrop-in vs simulate, {WORLD} ranks, relative drift of the parameters (worst worker):")
        for key, row in rows:
            print(f"  {key:15s} " + "   ".join(f"{k} {v:.1e}" for k, v in row.items()))
    for key, row in rows:
        if key == "signum_mv":
            assert row["without c1.bias"] < 1e-5 and row["running_var"] < 1e-5, row
        else:
            assert row[f"{STEPS} steps"] < DRIFT[key], (key, row)
            assert row["buffers"] < DRIFT[key], (key, row)


@pytest.mark.parametrize("key, policy", BUFFER_CASES)
def test_buffer_policies(dropin, key, policy):
    params, buffers = dropin[key, policy]
    x, bufs = simulated(key, BUFFER_STEPS, policy)
    assert rel(params, x) < 1e-5
    for name, got in buffers.items():
        ref = bufs[name]
        if not got.is_floating_point():  # num_batches_tracked: one per step on every rank
            assert torch.equal(got, ref) and int(got[0]) == BUFFER_STEPS
            continue
        assert rel(got, ref) < 1e-5, name  # each rank holds its simulated worker's buffers
        spread = float((got - got[:1]).abs().max())
        if policy == "average":
            assert spread == 0.0, name  # one all-reduced value on every rank
        else:
            assert spread > 1e-4, name  # each rank its own batches' statistics


def test_resume_from_a_checkpoint_is_bit_exact(tmp_path):
    full, resumed = tmp_path / "full.pt", tmp_path / "resumed.pt"
    data = digits()[0].tensors
    mp.spawn(resume, args=(RESUME_WORLD, rendezvous(), "full", str(tmp_path), data, str(full)),
             nprocs=RESUME_WORLD, join=True)
    # a fresh process group, fresh processes, models built from other initial weights
    mp.spawn(resume, args=(RESUME_WORLD, rendezvous(), "resumed", str(tmp_path), data, str(resumed)),
             nprocs=RESUME_WORLD, join=True)
    a, b = torch.load(full, weights_only=False), torch.load(resumed, weights_only=False)
    assert sorted(a) == sorted(b) == sorted(RESUME_KEYS)
    for key in RESUME_KEYS:
        assert torch.equal(a[key][0], b[key][0]), key  # parameters
        assert torch.equal(a[key][1], b[key][1]), key  # buffers


@pytest.fixture(scope="module")
def sem(dropin):
    """What dropin_helpers.semantics saw, in the same process group as the equivalence run."""
    return dropin["semantics"]


@pytest.mark.parametrize("algo, clear", [("allreduce_sgd", "opt"), ("allreduce_sgd", "model"), ("dpsgd", "opt")])
def test_frozen_parameters_stay_and_unused_ones_get_zero_gradient(sem, algo, clear):
    r = sem["partly", algo, clear]
    before, after = r["before"], r["after"]
    assert r["d"] == 32 * 10 + 10 + 5  # head and unused: the frozen layer is not in the flat vector
    for name in ("frozen.weight", "frozen.bias"):  # requires_grad=False: never sent, never changed
        assert all(torch.equal(row, before[name]) for row in after[name])
    assert r["frozen_grad"] is None
    # unused in the forward: a zero gradient (zero_grad keeps the .grad a zero view;
    # model.zero_grad leaves it None), so only weight decay moves it: x·(1 − lr·wd)^t,
    # the same on every rank (the gossip average of equal values stays that value)
    for g in r["unused_grads"]:
        assert g is None if clear == "model" else torch.equal(g, torch.zeros(5))
    expect = before["unused"] * (1 - r["lr"] * r["wd"]) ** r["steps"]
    for row in after["unused"]:
        torch.testing.assert_close(row, expect, rtol=1e-6, atol=1e-7)
    assert not torch.equal(after["head.weight"][0], before["head.weight"])  # the head did train


def test_an_lr_scheduler_on_the_wrapped_sgd_scales_the_step(sem):
    rows = sem["steplr"]
    assert [lr for lr, *_ in rows] == [0.4, 0.2, 0.1, 0.05]
    for lr, x0, g, x1 in rows:  # AllReduce-SGD, no momentum: x1 = x0 − lr_t · mean_i g_i
        torch.testing.assert_close(x1, x0 - lr * g, rtol=0, atol=1e-6)
        assert float((x0 - x1).norm() / g.norm()) == pytest.approx(lr, rel=1e-5)


def test_an_lr_scheduler_on_the_wrapped_sgd_does_not_warn(sem):
    # torch's LRScheduler warns on its first step when the optimizer's step() was never
    # called ("Detected call of `lr_scheduler.step()` before `optimizer.step()`"). The
    # drop-in never calls the wrapped SGD's step, so unless it marks the step as done the
    # user's correctly ordered loop gets a warning saying the order is wrong
    assert sem["steplr_warnings"] == []


def test_ranks_start_from_rank_0s_parameters_as_with_ddp(sem):
    # DDP broadcasts rank 0's parameters and buffers at construction, so a script that
    # does not seed every rank alike still trains one model; the simulation starts every
    # worker from the same x0 too. Without the broadcast each rank of AllReduce-SGD keeps
    # its own x0 forever (all apply the same averaged step to different models).
    x = sem["initial_params"]
    assert all(torch.equal(row, x[0]) for row in x)


def test_not_initialized_is_one_clear_error():
    assert not torch.distributed.is_initialized()
    model = Net()
    with pytest.raises(distsgd.UserError, match="init_process_group") as e:
        distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("adam", r"wrap torch\.optim\.SGD .*not Adam"),
        ("unknown", r"unknown algorithm 'no_such_algorithm' \(choose from .*allreduce_sgd.*signum_mv"),
        ("bad_option", r"gamma: .*valid number"),
        ("no_trainable", r"no trainable parameters"),
        ("overlap_gossip", r"overlap: dpsgd does not start its step with an all-reduce of the gradient"),
        ("bucket_cap", r"bucket_cap_mb must be a positive number of MiB, got 0"),
    ],
)
def test_bad_input_is_one_clear_error(sem, case, pattern):
    got = sem["errors"][case]
    assert got is not None, f"{case}: no error"
    kind, msg = got
    assert kind == "UserError", got
    assert "\n" not in msg
    assert re.search(pattern, msg), msg


@pytest.mark.parametrize(
    "extra",
    [
        [],  # allreduce_sgd with a DistributedSampler
        pytest.param(["--algorithm", "powersgd", "--partition", "dirichlet:0.3"], marks=pytest.mark.slow),
    ],
)
def test_the_torchrun_example_runs(tmp_path, extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "examples" / "torchrun_train.py"), "--steps", "5", "--batch-size", "16", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line for line in p.stdout.splitlines() if line.startswith("final test accuracy")]
    assert len(lines) == 1, p.stdout  # rank 0 only
    acc = float(re.search(r"final test accuracy ([0-9.]+)", lines[0]).group(1))
    assert 0.0 <= acc <= 1.0
