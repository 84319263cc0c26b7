"""Federated algorithms: sampling schemes and their weights, FedAvg's reductions, FedNova,
FedAWARE's solver and exploration, faults (dropouts, failures, deadlines), bad input."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distsgd
from distsgd.algorithms import ALGORITHMS, AllReduceSGD, FedAvg, FedAWARE, FedNova
from distsgd.algorithms.fedavg import (
    client_weights,
    draw_clients,
    local_steps_of_epochs,
    momentum_norm,
    reporting_weights,
)
from distsgd.algorithms.fedaware import min_norm_weights
from distsgd.comm.network import NetworkModel
from distsgd.errors import UserError
from distsgd.tasks.task import make_task


@pytest.fixture(scope="module")
def task():
    # 8 clients of 40 samples each (equal shards): FedAvg's p_k are then 1/N
    return make_task("logistic", n_workers=8, samples_per_worker=40, dim=10, heterogeneity=1.0, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def skewed():
    return make_task("mnist1d", n_workers=12, partition="dirichlet", alpha=0.3, batch_size=8, num_samples=2000, seed=1)


# -- sampling ---------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(2, 7),
    data=st.data(),
    scheme=st.sampled_from([("uniform", False), ("uniform", True), ("size", True)]),
)
def test_every_sampling_scheme_is_unbiased(n, data, scheme):
    """E[Σ_{k∈S} ω_k e_k] = p, computed exactly: over all orderings for uniform sampling
    without replacement, over all K-tuples otherwise (enumerated with their probabilities;
    K kept to n^K <= 4000 tuples there: 7^7 would take minutes)."""
    sampling, replacement = scheme
    k = data.draw(st.integers(1, n if not replacement else min(n, int(math.log(4000) / math.log(n)))))
    sizes = torch.tensor(data.draw(st.lists(st.integers(1, 9), min_size=n, max_size=n)), dtype=torch.float64)
    p = sizes / sizes.sum()
    expect = torch.zeros(n, dtype=torch.float64)
    if not replacement:
        subsets = list(itertools.combinations(range(n), k))
        for s in subsets:
            clients, w = client_weights(torch.tensor(s), p, k, sampling, "unbiased")
            expect[clients] += w / len(subsets)
    else:
        q = p if sampling == "size" else torch.full((n,), 1.0 / n, dtype=torch.float64)
        for draws in itertools.product(range(n), repeat=k):
            prob = float(torch.prod(q[list(draws)]))
            clients, w = client_weights(torch.tensor(draws), p, k, sampling, "unbiased")
            expect[clients] += prob * w
    torch.testing.assert_close(expect, p, rtol=1e-9, atol=1e-12)


def test_size_sampling_with_equal_client_weights_is_unbiased():
    """Drawing ∝ n_k while the objective weighs clients equally: ω = c·p/(K·q) keeps E = p."""
    sizes = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    q = sizes / sizes.sum()
    p = torch.full((3,), 1 / 3, dtype=torch.float64)
    expect = torch.zeros(3, dtype=torch.float64)
    for draws in itertools.product(range(3), repeat=2):
        clients, w = client_weights(torch.tensor(draws), p, 2, "size", "unbiased", q)
        expect[clients] += float(torch.prod(q[list(draws)])) * w
    torch.testing.assert_close(expect, p)


@pytest.mark.parametrize("participation, failure", [(0.5, 0.0), (0.7, 0.3), (1.0, 0.4)])
def test_inverse_probability_weights_keep_the_update_unbiased_under_absences(participation, failure):
    """Over every pattern of which drawn clients report (each independently with probability
    r = participation·(1 − failure)), E[Σ_reporters ω'_k e_k] = ω with inverse_probability;
    "redistribute" is not unbiased when the weights differ."""
    weights = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)
    r = participation * (1 - failure)
    for absent, unbiased in (("inverse_probability", True), ("redistribute", False)):
        expect = torch.zeros(3, dtype=torch.float64)
        for pattern in itertools.product((False, True), repeat=3):
            reports = torch.tensor(pattern)
            if not reports.any():
                continue
            prob = 1.0
            for rep in pattern:
                prob *= r if rep else 1 - r
            expect[reports] += prob * reporting_weights(weights, reports, absent, r)
        assert torch.allclose(expect, weights) == unbiased, (absent, expect)


def test_renormalized_weights_sum_to_one_and_are_data_size_weights():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    clients, w = client_weights(torch.tensor([3, 1]), p, 2, "uniform", "renormalized")
    assert clients.tolist() == [1, 3]
    torch.testing.assert_close(w, torch.tensor([0.2 / 0.6, 0.4 / 0.6], dtype=torch.float64))


def test_draws_come_from_the_generator_alone():
    p = torch.full((50,), 0.02, dtype=torch.float64)
    a = draw_clients(torch.Generator().manual_seed(3), p, 10, "uniform", False)
    b = draw_clients(torch.Generator().manual_seed(3), p, 10, "uniform", False)
    c = draw_clients(torch.Generator().manual_seed(4), p, 10, "uniform", False)
    assert torch.equal(a, b) and not torch.equal(a, c) and len(a.unique()) == 10


def test_local_epochs_and_fednova_norms():
    assert local_steps_of_epochs(2.0, torch.tensor([10, 33, 1]), 8).tolist() == [3, 9, 1]
    assert momentum_norm(torch.tensor([4]), 0.0).tolist() == [4.0]
    # Σ_{s=1}^{3} (1 − ρ^s)/(1 − ρ) with ρ = 0.5: 1 + 1.5 + 1.75
    torch.testing.assert_close(momentum_norm(torch.tensor([3]), 0.5), torch.tensor([4.25], dtype=torch.float64))


# -- reductions -----------------------------------------------------------------------------------
def test_full_participation_with_one_local_step_is_allreduce_sgd(task):
    fed = FedAvg(lr=0.1, clients_per_round=8, local_steps=1)
    a = distsgd.train(task, fed, steps=25, eval_every=25, seed=2)
    b = distsgd.train(task, AllReduceSGD(lr=0.1), steps=25, eval_every=25, seed=2)
    torch.testing.assert_close(a.state["x"], b.state["x"], rtol=0, atol=1e-6)
    assert a.summary["traffic"]["bytes_sent_per_worker"] > 0


def test_fednova_with_equal_local_steps_is_fedavg(skewed):
    for mom in (0.0, 0.9):
        kw = dict(lr=0.05, clients_per_round=5, local_steps=4, momentum=mom, server_momentum=0.5)
        a = distsgd.train(skewed, FedAvg(**kw), steps=12, eval_every=12, seed=0)
        b = distsgd.train(skewed, FedNova(**kw), steps=12, eval_every=12, seed=0)
        torch.testing.assert_close(a.state["x"], b.state["x"], rtol=0, atol=1e-6)


def test_fednova_differs_from_fedavg_when_local_work_differs(skewed):
    kw = dict(lr=0.05, clients_per_round=5, local_steps=6, local_work="uniform")
    a = distsgd.train(skewed, FedAvg(**kw), steps=6, eval_every=6, seed=0)
    b = distsgd.train(skewed, FedNova(**kw), steps=6, eval_every=6, seed=0)
    assert float((a.state["x"] - b.state["x"]).abs().max()) > 1e-4


def test_fednova_normalizes_updates_by_local_work():
    """Two clients with τ = 1 and τ = 3 sending Δ = τ·g: FedNova averages g (and rescales by
    τ_eff = 2), FedAvg weights the busier client three times as much."""
    alg = FedNova(lr=0.1)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    steps = torch.tensor([1, 3])
    delta = g * steps.unsqueeze(1)
    omega = torch.tensor([0.5, 0.5], dtype=torch.float64)
    out = alg.aggregate({}, delta, omega, torch.tensor([0, 1]), steps)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0]]))
    fedavg = FedAvg(lr=0.1).aggregate({}, delta, omega, torch.tensor([0, 1]), steps)
    torch.testing.assert_close(fedavg, torch.tensor([[0.5, 1.5]]))


def test_aggregation_matches_flowers_weighted_average():
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate").aggregate
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        k, d = 3 + trial, 17
        models = torch.randn(k, d, generator=g, dtype=torch.float64)
        sizes = torch.randint(1, 500, (k,), generator=g)
        ref = aggregate([([m.numpy()], int(s)) for m, s in zip(models, sizes, strict=True)])[0]
        p = sizes.double() / sizes.sum()
        _, omega = client_weights(torch.arange(k), p, k, "uniform", "renormalized")
        ours = FedAvg(lr=0.1).aggregate({}, models, omega, torch.arange(k), torch.ones(k))
        torch.testing.assert_close(ours[0], torch.from_numpy(ref), rtol=1e-12, atol=1e-12)


def test_server_optimizers_follow_their_updates():
    w = torch.zeros(1, 3)
    upd = torch.tensor([[1.0, -2.0, 0.5]])
    state = {"server_m": None, "server_v": None}
    m = FedAvg(lr=0.1, server_lr=1.0, server_momentum=0.5)
    w1 = m.server_step(state, w, upd)
    w2 = m.server_step(state, w1, upd)
    torch.testing.assert_close(w2, -(upd + (0.5 * upd + upd)))  # v₁ = Δ, v₂ = βv₁ + Δ
    state = {"server_m": None, "server_v": None}
    a = FedAvg(lr=0.1, server_optimizer="adam", server_lr=0.1, server_betas=(0.9, 0.99), server_eps=1e-3)
    out = a.server_step(state, w, upd)
    mm, vv = 0.1 * upd, 0.99 * 1e-6 + 0.01 * upd**2
    torch.testing.assert_close(out, -0.1 * mm / (vv.sqrt() + 1e-3))


# -- FedAWARE -------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 9), d=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_min_norm_weights_reach_the_minimum_over_the_simplex(n, d, seed):
    """λᵀGλ is at most the best of many random simplex points and of every vertex and pair
    optimum, to the solver's tolerance; λ is on the simplex."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    gram = u @ u.T
    lam = min_norm_weights(gram)
    assert float(lam.min()) >= 0 and abs(float(lam.sum()) - 1) < 1e-9
    ours = float(lam @ gram @ lam)
    cand = torch.distributions.Dirichlet(torch.full((n,), 0.3, dtype=torch.float64)).sample((4000,))
    best = float(torch.einsum("bi,ij,bj->b", cand, gram, cand).min())
    assert ours <= best + 1e-4


def test_min_norm_weights_of_opposite_vectors_cancel():
    u = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    lam = min_norm_weights(u @ u.T)
    assert float((lam @ u).norm()) < 1e-2  # the clamped pair solver stops at γ = 0.999 at worst


def test_fedaware_explores_every_client_then_samples_uniformly(skewed):
    alg = FedAWARE(lr=0.05, clients_per_round=4, local_steps=2)
    res = distsgd.train(skewed, alg, steps=5, eval_every=1, seed=0)
    exploring = [r["exploring"] for r in res.metrics]
    assert exploring == [True, True, False, False, False]  # 12 clients, 4 a round
    assert len(res.state["explore"]) == 0
    assert bool((res.state["memory"].norm(dim=1) > 0).all())  # every client's update is stored
    # the step after exploration is the min-norm combination: shorter than every unit u_k
    mem = res.state["memory"]
    u = mem / mem.norm(dim=1, keepdim=True)
    lam = min_norm_weights(u.double() @ u.double().T)
    assert float((lam.to(u.dtype) @ u).norm()) < 1.0
    with pytest.raises(UserError, match="uniformly without replacement"):
        distsgd.train(skewed, FedAWARE(lr=0.05, clients_per_round=4, replacement=True), steps=1)


def test_fedaware_memory_is_the_momentum_of_updates():
    alg = FedAWARE(lr=0.1, alpha=0.3)
    state = {"memory": torch.ones(4, 2), "explore": torch.tensor([], dtype=torch.long)}
    delta = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    alg.aggregate(state, delta, torch.ones(2), torch.tensor([1, 3]), torch.ones(2))
    torch.testing.assert_close(state["memory"], torch.tensor([[1.0, 1.0], [1.3, 0.7], [1.0, 1.0], [0.7, 1.9]]))


# -- faults and heterogeneity -----------------------------------------------------------------------
def test_dropped_and_failing_clients_never_stop_the_run(skewed):
    alg = FedAvg(lr=0.05, clients_per_round=3, participation=0.3, failure=0.6)
    res = distsgd.train(skewed, alg, steps=30, eval_every=1, seed=0)
    reporting = [r["clients_reporting"] for r in res.metrics]
    assert 0 in reporting and max(reporting) > 0  # some rounds nobody reported; the run went on
    assert res.summary["finished"]


def test_a_deadline_drops_or_truncates_slow_clients(skewed):
    speeds = tuple([1.0] * 6 + [0.1] * 6)  # half the clients ten times slower
    net = NetworkModel(speeds=speeds, compute_seconds=0.01)
    base = dict(lr=0.05, clients_per_round=12, local_steps=10)
    free = distsgd.train(skewed, FedAvg(**base), steps=2, eval_every=1, network=net, seed=0)
    drop = distsgd.train(skewed, FedAvg(**base, deadline=0.2), steps=2, eval_every=1, network=net, seed=0)
    part = distsgd.train(skewed, FedAvg(**base, deadline=0.2, deadline_policy="partial"), steps=2, eval_every=1, network=net, seed=0)
    assert [r["clients_reporting"] for r in drop.metrics] == [6, 6]
    assert [r["clients_reporting"] for r in part.metrics] == [12, 12]
    assert part.metrics[-1]["mean_local_steps"] == pytest.approx((6 * 10 + 6 * 2) / 12)
    # a round waits for the slowest client (1 s) or the deadline (0.2 s)
    assert free.summary["traffic"]["sim_compute_seconds"] == pytest.approx(2 * 1.0)
    assert drop.summary["traffic"]["sim_compute_seconds"] == pytest.approx(2 * 0.2)


def test_speed_heterogeneity_gives_slow_clients_fewer_steps(skewed):
    speeds = tuple([1.0] * 6 + [0.25] * 6)
    net = NetworkModel(speeds=speeds)
    alg = FedAvg(lr=0.05, clients_per_round=12, local_steps=8, local_work="speed")
    res = distsgd.train(skewed, alg, steps=1, eval_every=1, network=net, seed=0)
    assert res.metrics[-1]["mean_local_steps"] == pytest.approx((6 * 8 + 6 * 2) / 12)


def test_only_sampled_clients_communicate(skewed):
    alg = FedAvg(lr=0.05, clients_per_round=3, local_steps=2)
    res = distsgd.train(skewed, alg, steps=1, eval_every=1, seed=0)
    sent = res.comm.traffic.sent
    d = res.workers.d
    assert int((sent > 0).sum()) == 3 and float(sent.max()) == 4 * d
    assert res.comm.traffic.server_sent == 3 * 4 * d


def test_a_run_is_reproducible_from_its_seed(skewed):
    kw = dict(lr=0.05, clients_per_round=4, local_work="uniform", participation=0.8)
    a = distsgd.train(skewed, FedAvg(**kw), steps=5, eval_every=5, seed=7)
    b = distsgd.train(skewed, FedAvg(**kw), steps=5, eval_every=5, seed=7)
    c = distsgd.train(skewed, FedAvg(**kw), steps=5, eval_every=5, seed=8)
    assert torch.equal(a.state["x"], b.state["x"]) and not torch.equal(a.state["x"], c.state["x"])


def test_a_thousand_clients_train_a_hundred_a_round():
    big = make_task("logistic", n_workers=1000, samples_per_worker=16, dim=8, batch_size=4, seed=0)
    calls = []
    real = distsgd.workers.Workers.gradients

    def counted(self, x, rows=None, **kw):
        calls.append(x.shape[0])
        return real(self, x, rows, **kw)

    distsgd.workers.Workers.gradients = counted
    try:
        res = distsgd.train(big, FedAvg(lr=0.1, clients_per_round=100, local_steps=3), steps=3, eval_every=3, seed=0)
    finally:
        distsgd.workers.Workers.gradients = real
    assert res.metrics[-1]["clients_reporting"] == 100
    assert calls == [100] * 9  # 3 rounds × 3 local steps, each one call for all 100 clients: no loop over them
    assert 100 < int((res.comm.traffic.sent > 0).sum()) <= 300


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, says",
    [
        ({"name": "fedavg", "lr": 0.1, "clients_per_round": 9}, "clients_per_round = 9 is more than the 8 clients"),
        ({"name": "fedavg", "lr": 0.1, "participation": 0.0}, "participation"),
        ({"name": "fedavg", "lr": 0.1, "participation": 1.5}, "participation"),
        ({"name": "fedavg", "lr": 0.1, "local_steps": 0}, "local_steps"),
        ({"name": "fednova", "lr": 0.1, "local_epochs": 0}, "local_epochs"),
        ({"name": "fedavg", "lr": 0.1, "sampling": "size", "clients_per_round": 4}, "no unbiased fixed-K weighting"),
        ({"name": "fedaware", "lr": 0.1, "alpha": 0}, "alpha"),
    ],
)
def test_bad_input_is_one_line(task, spec, says):
    with pytest.raises((UserError, ValueError)) as e:
        distsgd.train(task, ALGORITHMS.create(spec), steps=1)
    msg = str(e.value)
    assert says in msg and "\n" not in msg
