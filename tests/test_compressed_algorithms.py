import math

import pytest
import torch

from distsgd import AllReduceSGD, SimulatedCommunicator, make_task, train
from distsgd.algorithms import EF21, CompressedSGD, Signum, ef21_stepsize, majority_vote
from distsgd.compress import Identity, Sign, TopK, pack_bits, unpack_bits
from distsgd.workers import Workers


def _run(algo, task, steps=20, seed=3):
    w = Workers(task, seed=seed)
    comm = SimulatedCommunicator(task.n)
    state = algo.init(w.x0(), comm)
    for _ in range(steps):
        state = algo.step(state, lambda x: w.gradients(x)[0], comm)
    return state, comm, w


def test_identity_compression_without_feedback_is_allreduce_sgd(digits_task):
    a, _, _ = _run(AllReduceSGD(lr=0.1, momentum=0.9), digits_task)
    c, _, _ = _run(
        CompressedSGD(lr=0.1, momentum=0.9, compressor=Identity(), error_feedback=False), digits_task
    )
    assert (a["x"] - c["x"]).abs().max() < 1e-5


def test_ef21_with_identity_is_allreduce_sgd(digits_task):
    a, _, _ = _run(AllReduceSGD(lr=0.1), digits_task)
    e, _, _ = _run(EF21(lr=0.1, compressor=Identity()), digits_task)
    assert (a["x"] - e["x"]).abs().max() < 1e-5


def test_traffic_is_the_payloads(digits_task):
    n, steps = digits_task.n, 7
    _, comm, w = _run(CompressedSGD(lr=0.1, compressor=TopK(k=10)), digits_task, steps=steps)
    assert float(comm.traffic.sent[0]) == steps * (10 * 4 + 10 * 4)  # values + int32 indices
    assert float(comm.traffic.received[0]) == steps * 4 * w.d  # the float32 average back
    assert comm.traffic.server_received == steps * n * 80
    _, comm, w = _run(Signum(lr=1e-3), digits_task, steps=steps)
    one_bit = math.ceil(w.d / 8)
    assert float(comm.traffic.sent[0]) == steps * one_bit == float(comm.traffic.received[0])
    assert one_bit * 32 >= 4 * w.d  # 32x fewer bits than float32 each way


def test_majority_vote_with_ties_going_plus():
    d = 5
    signs = torch.tensor([[1, -1, 1, -1, 0], [1, -1, -1, 1, 0], [-1, -1, 1, 1, -1], [-1, 1, -1, -1, -1]])
    packed = pack_bits(signs >= 0)  # sign(0) packs as +1
    vote = unpack_bits(majority_vote(packed, d), d).int() * 2 - 1
    # column sums (0 counted +): 0, -2, 0, 0, 0 -> ties give +1
    assert vote.tolist() == [[1, -1, 1, 1, 1]]


def test_error_feedback_fixes_topk_on_a_logistic_problem():
    task = make_task(
        "logistic",
        n_workers=8,
        model="linear",
        samples_per_worker=100,
        batch_size=100,
        heterogeneity=1.0,
        dim=40,
        seed=0,
    )
    k = 2  # 5% of the 41 coordinates
    ef = train(
        task, CompressedSGD(lr=0.5, compressor=TopK(k=k), error_feedback=True), steps=300, eval_every=300
    )
    ef21 = train(task, EF21(lr=0.5, compressor=TopK(k=k)), steps=300, eval_every=300)
    full = train(task, AllReduceSGD(lr=0.5), steps=300, eval_every=300)
    for r in (ef, ef21):
        assert r.final["train_loss"] < full.final["train_loss"] + 0.05


def test_ef21_stepsize():
    assert ef21_stepsize(2.0, [2.0, 2.0], 1.0) == pytest.approx(0.5)
    plain = ef21_stepsize(1.0, [1.0, 9.0], 0.1)
    weighted = ef21_stepsize(1.0, [1.0, 9.0], 0.1, weighted=True)
    assert weighted > plain  # the arithmetic mean 5 < the quadratic mean √41


def test_scaled_sign_error_feedback_trains(digits_task):
    r = train(digits_task, CompressedSGD(lr=0.05, compressor=Sign("l1")), steps=150, eval_every=150)
    assert r.final["test_acc"] > 0.8


def test_negated_minority_cannot_flip_the_vote():
    # 5 workers, 2 Byzantine: every honest worker's momentum is +, so the vote stays +
    from distsgd.comm import SimulatedCommunicator as Sim

    comm = Sim(5)
    algo = Signum(lr=1.0, beta=0.0, byzantine=(0, 1))
    state = algo.init(torch.zeros(5, 3), comm)
    state = algo.step(state, lambda x: torch.ones(5, 3), comm)
    assert torch.equal(state["x"], -torch.ones(5, 3))  # x − lr·(+1)
    mean = Signum(lr=1.0, beta=0.0, byzantine=(0, 1), aggregate="mean")
    s2 = mean.step(mean.init(torch.zeros(5, 3), comm), lambda x: torch.ones(5, 3), comm)
    assert torch.allclose(s2["x"], torch.full((5, 3), -0.2))  # (3 − 2)/5: the attack shrinks it


def test_allgather_mode_matches_server_mode_and_counts_all_gather_bytes(digits_task):
    n = digits_task.n
    a, ca, w = _run(CompressedSGD(lr=0.1, compressor=TopK(k=10), mode="allgather"), digits_task, steps=5)
    s, cs, _ = _run(CompressedSGD(lr=0.1, compressor=TopK(k=10), mode="server"), digits_task, steps=5)
    assert (a["x"] - s["x"]).abs().max() < 1e-6
    assert float(ca.traffic.sent[0]) == 5 * (n - 1) * 80  # ring all-gather of 80-byte payloads


def test_compressed_local_sgd(digits_task):
    from distsgd import LocalSGD

    plain, _, _ = _run(LocalSGD(lr=0.1, local_steps=4), digits_task, steps=12)
    ident, _, _ = _run(LocalSGD(lr=0.1, local_steps=4, compressor=Identity()), digits_task, steps=12)
    assert (plain["x"] - ident["x"]).abs().max() < 1e-5  # identity compression changes nothing
    r = train(
        digits_task, LocalSGD(lr=0.05, local_steps=4, compressor=TopK(ratio=0.05)), steps=200, eval_every=200
    )
    assert r.final["test_acc"] > 0.8
