import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd import DPSGD, AllReduceSGD, SimulatedCommunicator, make_task, make_topology
from distsgd.errors import UserError
from distsgd.tasks import partition as part
from distsgd.workers import Workers


def _labels(n_samples, classes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n_samples,), generator=g)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(40, 400), seed=st.integers(0, 99))
def test_iid_is_a_partition(n, size, seed):
    shards = part.iid(size, n, torch.Generator().manual_seed(seed))
    allidx = torch.cat(shards)
    assert len(shards) == n and torch.equal(allidx.sort().values, torch.arange(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 20), k=st.integers(1, 10), seed=st.integers(0, 99))
def test_labels_partition_gives_exactly_k_labels(n, k, seed):
    y = _labels(2000, 10, seed)
    shards = part.labels_per_worker(y, n, k, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.cat(shards).sort().values.unique(), torch.cat(shards).sort().values)
    for s in shards:
        assert len(y[s].unique()) == k


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 16), alpha=st.sampled_from([0.1, 0.5, 1.0, 100.0]), seed=st.integers(0, 99))
def test_dirichlet_is_a_partition_with_a_minimum_size(n, alpha, seed):
    y = _labels(3000, 10, seed)
    shards = part.dirichlet(y, n, alpha, torch.Generator().manual_seed(seed), min_size=8)
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(3000))
    assert min(map(len, shards)) >= 8


def test_dirichlet_skew_grows_as_alpha_shrinks():
    y = _labels(5000, 10, 0)

    def mean_labels(alpha):
        shards = part.dirichlet(y, 10, alpha, torch.Generator().manual_seed(1), min_size=1)
        # classes holding >= 5% of a worker's data
        return sum(int(((torch.bincount(y[s], minlength=10) / len(s)) > 0.05).sum()) for s in shards) / 10

    assert mean_labels(0.1) < mean_labels(1.0) < mean_labels(100.0) == 10


def test_synthetic_heterogeneity_knob():
    iid = make_task("least_squares", n_workers=8, model="linear", heterogeneity=0.0, samples_per_worker=400)
    het = make_task("least_squares", n_workers=8, model="linear", heterogeneity=2.0, samples_per_worker=400)

    def optima(task):  # each worker's least-squares solution
        out = []
        for s in task.shards:
            a, y = task.dataset.x[s], task.dataset.y[s]
            out.append(torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1))
        w = torch.stack(out)
        return (w - w.mean(0)).norm(dim=1).mean()

    assert optima(iid) < 0.1 < 1.0 < optima(het)
    assert iid.description["partition"] == "natural"


def test_datasets_shapes():
    t = make_task("mnist1d", n_workers=4)
    assert t.dataset.x.shape == (4000, 40) and t.dataset.x_test.shape == (1000, 40)
    assert t.dataset.y.unique().tolist() == list(range(10))
    d = make_task("digits", n_workers=4, model="cnn1d")
    assert d.dataset.x.shape[1] == 64 and d.description["parameters"] > 0
    lg = make_task("logistic", n_workers=3, model="linear")
    assert set(lg.dataset.y.unique().tolist()) == {0.0, 1.0}


def test_task_errors():
    with pytest.raises(UserError, match="fewer than batch_size"):
        make_task("digits", n_workers=100, batch_size=32)
    with pytest.raises(UserError, match="no natural partition"):
        make_task("digits", n_workers=4, partition="natural")
    with pytest.raises(UserError, match="needs class labels"):
        make_task("least_squares", n_workers=4, partition="dirichlet")


@pytest.mark.parametrize("n", [1, 1024])
def test_one_to_1024_workers(n):
    task = make_task("logistic", n_workers=n, model="linear", samples_per_worker=20, batch_size=4)
    workers = Workers(task)
    comm = SimulatedCommunicator(n)
    algos = [AllReduceSGD(lr=0.1)]
    if n > 1:
        algos.append(DPSGD(lr=0.1, topology=make_topology("exponential", n)))
    for algo in algos:
        state = algo.init(workers.x0(), comm)
        for _ in range(3):
            state = algo.step(state, lambda x: workers.gradients(x)[0], comm)
        assert state["x"].shape == (n, workers.d) and torch.isfinite(state["x"]).all()


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "labels"])
def test_the_validation_split_is_held_out_of_every_shard(partition):
    t = make_task("mnist1d", n_workers=4, partition=partition, validation=0.15, batch_size=8, seed=3)
    held = set(t.val.tolist())
    trained = torch.cat(t.shards).tolist()
    assert len(held) == round(0.15 * 4000) and not held & set(trained)
    if partition == "iid":  # every sample is either held out or trained on, once
        assert sorted(trained + t.val.tolist()) == list(range(4000))
    assert t.train_samples == 4000 - len(held) and t.description["validation_samples"] == len(held)


def test_validation_metrics_are_the_held_out_samples_and_train_metrics_exclude_them():
    t = make_task("mnist1d", n_workers=2, validation=0.25, seed=0)
    net = t.model

    def f(xb):
        return net(xb)

    val = t.evaluate(f, "val")
    with torch.no_grad():
        out = net(t.train.x[t.val])
        loss = torch.nn.functional.cross_entropy(out, t.train.y[t.val])
        acc = (out.argmax(-1) == t.train.y[t.val]).float().mean()
    assert val["val_loss"] == pytest.approx(float(loss), rel=1e-5) and val["val_acc"] == pytest.approx(float(acc))
    kept = torch.ones(4000, dtype=torch.bool)
    kept[t.val] = False
    with torch.no_grad():
        out = net(t.train.x[kept])
        loss = torch.nn.functional.cross_entropy(out, t.train.y[kept])
    assert t.evaluate(f, "train")["train_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert make_task("mnist1d", n_workers=2, seed=0).evaluate(f, "val") == {}


def test_runs_with_a_validation_split_report_it():
    from distsgd import simulate

    t = make_task("mnist1d", n_workers=2, validation=0.1, seed=0)
    r = simulate(task=t, workers=2, algorithm=AllReduceSGD(lr=0.05), steps=10, eval_every=5)
    assert {"val_loss", "val_acc"} <= set(r.final)
    # the epoch counts the samples trained on: 2 workers x 32 x 10 steps of 3600
    assert r.final["epoch"] == pytest.approx(2 * 32 * 10 / 3600)
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))
    r = simulate(torch.nn.Linear(5, 3), (x, y), workers=2, algorithm=AllReduceSGD(lr=0.05), validation=0.2,
                 steps=4, eval_every=4, batch_size=8)
    assert "val_acc" in r.final


@pytest.mark.parametrize("fraction", [1.0, -0.1, 0.0001])
def test_bad_validation_fractions_are_refused(fraction):
    with pytest.raises(UserError, match="validation"):
        make_task("mnist1d", n_workers=2, validation=fraction)
