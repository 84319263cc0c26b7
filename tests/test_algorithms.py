import copy

import pytest
import torch

from distsgd import DPSGD, AllReduceSGD, LocalSGD, SimulatedCommunicator, make_topology
from distsgd.workers import Workers


def _oracle(workers, record):
    def oracle(x):
        idx = workers.next_batch()
        record.append(idx)
        data = workers.task.dataset
        layers = {k: workers.flat.layer(x, k) for k in workers.flat.names}
        grads, _ = workers._grad(layers, workers.buffers, data.x[idx], data.y[idx])
        return torch.cat([grads[k].reshape(workers.m, -1) for k in workers.flat.names], 1)

    return oracle


@pytest.mark.parametrize("momentum,wd,nesterov", [(0.0, 0.0, False), (0.9, 1e-3, False), (0.9, 0.0, True)])
def test_allreduce_sgd_equals_single_worker_sgd_on_the_concatenated_batch(
    digits_task, momentum, wd, nesterov
):
    n = digits_task.n
    w = Workers(digits_task, seed=3)
    comm = SimulatedCommunicator(n)
    algo = AllReduceSGD(lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    state = algo.init(w.x0(), comm)
    batches = []
    oracle = _oracle(w, batches)
    for _ in range(20):
        state = algo.step(state, oracle, comm)

    model = copy.deepcopy(digits_task.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    data = digits_task.dataset
    for idx in batches:
        flat_idx = idx.reshape(-1)  # the n mini-batches, concatenated
        opt.zero_grad()
        digits_task.loss(model(data.x[flat_idx]), data.y[flat_idx]).backward()
        opt.step()
    ref = w.flat.flatten(model)
    assert (state["x"] - ref).abs().max() < 1e-5
    assert (state["x"] - state["x"][0]).abs().max() == 0  # every worker holds the same model


def _run(algo, task, steps=20, seed=3):
    w = Workers(task, seed=seed)
    comm = SimulatedCommunicator(task.n)
    state = algo.init(w.x0(), comm)
    batches = []
    oracle = _oracle(w, batches)
    for _ in range(steps):
        state = algo.step(state, oracle, comm)
    return state, comm


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dpsgd_on_the_complete_graph_with_uniform_weights_equals_allreduce_sgd(digits_task, momentum):
    topo = make_topology("complete", digits_task.n, "uniform")
    a, _ = _run(AllReduceSGD(lr=0.1), digits_task)
    d, _ = _run(DPSGD(lr=0.1, topology=topo, variant="atc"), digits_task)
    assert (a["x"] - d["x"]).abs().max() < 1e-5
    if momentum == 0.0:
        return
    # with momentum, workers keep local buffers; on the complete graph they stay averaged
    a, _ = _run(AllReduceSGD(lr=0.05, momentum=momentum), digits_task)
    d, _ = _run(DPSGD(lr=0.05, momentum=momentum, topology=topo, variant="atc"), digits_task)
    assert (a["x"] - d["x"]).abs().max() < 1e-5


def test_dpsgd_paper_form_moves_the_average_by_the_mean_gradient(digits_task):
    """Alg. 1 of Lian et al.: x̄_{k+1} = x̄_k − γ·mean_i ∇F_i(x_{k,i}) for doubly stochastic W."""
    n = digits_task.n
    topo = make_topology("ring", n)
    w = Workers(digits_task, seed=0)
    comm = SimulatedCommunicator(n)
    algo = DPSGD(lr=0.1, topology=topo)
    state = algo.init(w.x0(), comm)
    oracle = _oracle(w, [])
    grads = []

    def spy(x):
        g = oracle(x)
        grads.append(g)
        return g

    for _ in range(5):
        before = state["x"].mean(0)
        state = algo.step(state, spy, comm)
        assert torch.allclose(state["x"].mean(0), before - 0.1 * grads[-1].mean(0), atol=1e-6)
    assert comm.consensus_distance(state["x"]) > 0  # a ring does not average exactly


def test_local_sgd_communicates_every_h_steps_and_h1_is_allreduce(digits_task):
    n = digits_task.n
    a, _ = _run(AllReduceSGD(lr=0.1), digits_task)
    l1, _ = _run(LocalSGD(lr=0.1, local_steps=1), digits_task)
    assert (a["x"] - l1["x"]).abs().max() < 1e-5
    l4, comm = _run(LocalSGD(lr=0.1, local_steps=4), digits_task, steps=10)
    d = l4["x"].shape[1]
    assert comm.traffic.sent[0] == pytest.approx(2 * 2 * (n - 1) / n * 4 * d)  # rounds at t=4, 8
    assert (l4["x"] - l4["x"][0]).abs().max() > 0  # 2 local steps since the last average


def test_hyperparameters_are_checked():
    with pytest.raises(ValueError):
        AllReduceSGD(lr=-1.0)
    with pytest.raises(ValueError):
        LocalSGD(lr=0.1, local_steps=0)
    with pytest.raises(ValueError):
        DPSGD(lr=0.1, topology=make_topology("ring", 4), variant="magic")
