import pytest
import torch

from distsgd import DPSGD, AllReduceSGD, NetworkModel, make_topology, train
from distsgd.algorithms import ADPSGD, D2, ChocoSGD
from distsgd.comm.simulated import SimulatedCommunicator
from distsgd.compress import Sign, TopK
from distsgd.tasks import make_task
from distsgd.workers import Workers


def _task(**kw):
    return make_task("digits", n_workers=8, model="mlp", hidden=(16,), batch_size=8, seed=1, **kw)


def test_d2_on_the_complete_graph_is_allreduce_sgd():
    task = _task()
    complete = make_topology("complete", 8, "uniform")
    a = train(task, D2(lr=0.1, topology=complete), steps=25)
    b = train(task, AllReduceSGD(lr=0.1), steps=25)
    assert torch.allclose(a.state["x"], b.state["x"], atol=1e-5)


def test_d2_checks_the_smallest_eigenvalue_and_offers_lazy_mixing():
    ring = make_topology("ring", 8)  # Metropolis weights 1/3: λ_min = −1/3 exactly
    assert ring.lambda_min == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="λ_min"):
        D2(lr=0.1, topology=ring, lazy=False)
    auto = D2(lr=0.1, topology=ring)
    assert auto.topology.mixing_kind == "lazy metropolis" and auto.topology.lambda_min >= 0
    r = train(_task(), auto, steps=5)
    assert r.summary["algorithm"]["topology"]["mixing"] == "lazy metropolis"
    odd = make_topology("ring", 7)  # λ_min > −1/3: kept as it is
    assert D2(lr=0.1, topology=odd).topology.mixing_kind == "metropolis"


def test_choco_with_identity_and_gamma_1_is_dpsgd_adapt_then_combine():
    task = _task()
    ring = make_topology("ring", 8)
    a = train(task, ChocoSGD(lr=0.1, topology=ring, momentum=0.9, compressor="identity", gamma=1.0), steps=20)
    b = train(task, DPSGD(lr=0.1, topology=ring, momentum=0.9, variant="atc"), steps=20)
    assert torch.allclose(a.state["x"], b.state["x"], atol=1e-5)


@pytest.mark.parametrize("compressor", [TopK(ratio=0.05), Sign(scale="l1")])
def test_choco_keeps_the_average_and_its_public_copies(compressor):
    n, d = 8, 50
    ring = make_topology("ring", n)
    comm = SimulatedCommunicator(n)
    algo = ChocoSGD(lr=0.1, topology=ring, compressor=compressor, gamma=0.2)
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    state = algo.init(x0, comm)
    mean0, spread0 = x0.mean(0), comm.consensus_distance(x0)
    for _ in range(200):
        state = algo.step(state, lambda x: torch.zeros_like(x), comm)
        # the mixing term sums to 0 over the workers (W doubly stochastic): the average stays
        assert torch.allclose(state["x"].mean(0), mean0, atol=1e-4)
        # s_i = Σ_j w_ij x̂_j, maintained from the mixed messages only
        assert torch.allclose(state["s"], ring.mixing.float() @ state["x_hat"], atol=1e-4)
    assert comm.consensus_distance(state["x"]) < 0.05 * spread0
    # traffic: each worker sends its compressed message to its 2 neighbours, every step
    one = compressor.compress(x0[:1]).nbytes_per_worker
    assert comm.traffic.summary()["bytes_sent_per_worker"] == 200 * 2 * one


def _ad_state(n=8, d=30, speeds=None, seed=0):
    ring = make_topology("ring", n)
    comm = SimulatedCommunicator(n, NetworkModel(speeds=speeds))
    algo = ADPSGD(lr=0.5, topology=ring, seed=seed)
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return algo, comm, algo.init(x0, comm)


def test_adpsgd_pairwise_averaging_preserves_the_global_average():
    algo, comm, state = _ad_state()
    c = torch.linspace(-1, 1, 30)

    def constant(x, rows=None):  # every gradient is c: each application moves the sum by −γc
        return c.expand(x.shape[0], -1).clone()

    for _ in range(30):
        before = state["x"].mean(0)
        state = algo.step(state, constant, comm)
        # n gradients applied per step: the average moves by exactly −γc, so every one of
        # the averaging events in between left it unchanged
        assert torch.allclose(state["x"].mean(0), before - algo.lr * c, atol=1e-5)
    assert state["averagings"] > 0
    # bipartite ring: only the even workers initiate, always with an odd neighbour
    assert state["active"].tolist() == [True, False] * 4


def test_adpsgd_is_deterministic_for_a_seed_and_reports_staleness():
    task = _task()
    ring = make_topology("ring", 8)
    net = NetworkModel(speeds=(1, 1, 1, 1, 1, 1, 1, 0.25), speed_jitter=0.3, link_slow_prob=0.2)
    a, b = (
        train(task, ADPSGD(lr=0.1, topology=ring), steps=30, eval_every=10, network=net) for _ in range(2)
    )
    assert torch.equal(a.state["x"], b.state["x"])
    assert a.metrics == [
        {**r, "wall_seconds": s["wall_seconds"]} for r, s in zip(b.metrics, a.metrics, strict=True)
    ]
    final = a.final
    assert 0 < final["staleness_mean"] <= final["staleness_p95"] <= final["staleness_max"]
    assert final["sim_seconds"] > 0 and "worker0_test_acc" in final
    c = train(task, ADPSGD(lr=0.1, topology=ring, seed=1), steps=30, eval_every=10, network=net)
    assert not torch.equal(a.state["x"], c.state["x"])


def test_adpsgd_is_not_held_back_by_a_slow_worker():
    # the same computation (steps × n gradients) in less simulated time than a barrier needs
    task = _task()
    ring = make_topology("ring", 8)
    net = NetworkModel(speeds=(1, 1, 1, 1, 1, 1, 1, 0.25), bandwidth=1e10)
    ad = train(task, ADPSGD(lr=0.1, topology=ring), steps=20, network=net)
    sync = train(task, DPSGD(lr=0.1, topology=ring), steps=20, network=net)
    assert ad.final["sim_seconds"] < 0.5 * sync.final["sim_seconds"]


def test_workers_draw_the_same_batches_one_row_at_a_time():
    task = _task()
    full, part = Workers(task, seed=3), Workers(task, seed=3)
    seq_full = [full.next_batch() for _ in range(5)]
    got = {i: [] for i in range(8)}
    for _ in range(5):
        for rows in ([3, 1], [0, 2, 4, 5, 6, 7]):
            r = torch.tensor(rows)
            for i, b in zip(rows, part.next_batch(r), strict=True):
                got[i].append(b)
    for i in range(8):
        for k in range(5):
            assert torch.equal(got[i][k], seq_full[k][i])
