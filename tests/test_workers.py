import torch
from torch.func import functional_call

from distsgd.tasks import make_task
from distsgd.workers import Flat, Workers


def test_flat_round_trip(digits_task):
    flat = Flat.from_module(digits_task.model)
    x = flat.flatten(digits_task.model)
    assert x.shape == (flat.d,)
    views = flat.unflatten(x)
    for name, p in digits_task.model.named_parameters():
        assert torch.equal(views[name], p.detach())
        assert views[name].data_ptr() >= x.data_ptr()  # a view, not a copy


def test_vmapped_gradients_equal_a_loop_of_autograd(digits_task):
    w = Workers(digits_task, seed=1)
    x = w.x0() + 0.01 * torch.randn(w.m, w.d, generator=torch.Generator().manual_seed(0))
    state = w.state_dict()
    g, loss = w.gradients(x)
    w.load_state_dict(state)
    idx = w.next_batch()
    data = digits_task.dataset
    for i in range(w.m):
        params = {k: v.clone().requires_grad_(True) for k, v in w.flat.unflatten(x[i]).items()}
        li = digits_task.loss(functional_call(digits_task.model, params, (data.x[idx[i]],)), data.y[idx[i]])
        grads = torch.autograd.grad(li, list(params.values()))
        gi = torch.cat([t.reshape(-1) for t in grads])
        assert torch.allclose(gi, g[i], atol=1e-6)
        assert torch.allclose(li, loss[i], atol=1e-6)


def test_each_worker_sees_its_shard_once_per_local_epoch():
    task = make_task("digits", n_workers=3, model="linear", batch_size=10, seed=2)
    w = Workers(task, seed=0)
    sizes = [len(s) for s in task.shards]
    epoch_batches = min(sizes) // 10
    seen = [[] for _ in range(3)]
    for _ in range(epoch_batches):
        idx = w.next_batch()
        for i in range(3):
            seen[i] += idx[i].tolist()
    for i in range(3):
        assert len(set(seen[i])) == len(seen[i])  # no repeats within an epoch
        assert set(seen[i]) <= set(task.shards[i].tolist())  # only its own shard


def test_a_slice_of_workers_draws_the_same_batches():
    task = make_task("digits", n_workers=4, model="linear", batch_size=16, seed=0)
    full = Workers(task, seed=5)
    part = Workers(task, seed=5, start=2, m=2)
    for _ in range(30):  # crosses several reshuffles
        assert torch.equal(full.next_batch()[2:], part.next_batch())
