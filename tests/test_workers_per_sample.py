"""The engine's options: per-sample gradients, given indices, a batch size per call, the
sample counter, and the default stream left as it was."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from distsgd.errors import UserError
from distsgd.tasks import make_task
from distsgd.tasks.task import Samples, Task, loss_for
from distsgd.workers import WorkerBatchSampler, Workers, _worker_seed, draw_permutations, refill_epochs


@pytest.fixture(scope="module")
def task():
    return make_task("mnist1d", n_workers=3, model="mlp", hidden=(12, 8), batch_size=8, num_samples=600, seed=0)


def _x(w, seed=0):
    return w.x0() + 0.05 * torch.randn(w.m, w.d, generator=torch.Generator().manual_seed(seed))


def _autograd(task, w, x_row, xs, ys):
    """The gradient of the mean loss of (xs, ys) at the flat parameters x_row, by plain autograd."""
    params = {k: v.clone().requires_grad_(True) for k, v in w.flat.unflatten(x_row).items()}
    loss = task.loss(functional_call(task.model, params, (xs,)), ys)
    grads = torch.autograd.grad(loss, list(params.values()))
    return torch.cat([t.reshape(-1) for t in grads]), loss


def test_per_sample_gradients_equal_a_loop_of_single_sample_autograd(task):
    w = Workers(task, seed=1)
    x = _x(w)
    state = w.state_dict()
    g, loss = w.gradients(x, per_sample=True)
    assert g.shape == (w.m, task.batch_size, w.d) and loss.shape == (w.m,)
    w.load_state_dict(state)
    idx = w.next_batch()
    data = task.train
    for i in range(w.m):
        losses = []
        for j in range(task.batch_size):
            s = idx[i, j : j + 1]
            gij, lij = _autograd(task, w, x[i], data.x[s], data.y[s])
            torch.testing.assert_close(g[i, j], gij, atol=1e-5, rtol=1e-5)
            losses.append(lij)
        torch.testing.assert_close(loss[i], torch.stack(losses).mean(), atol=1e-6, rtol=1e-6)  # the batch's mean loss


def test_mean_of_per_sample_gradients_is_the_batch_gradient(task):
    w = Workers(task, seed=2)
    x = _x(w, 1)
    idx = torch.stack([s[:16] for s in w.shards])
    per, loss_per = w.gradients(x, indices=idx, per_sample=True)
    batch, loss = w.gradients(x, indices=idx)
    torch.testing.assert_close(per.mean(1), batch, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss_per, loss, atol=1e-6, rtol=1e-6)


def test_indices_use_exactly_those_samples_and_leave_the_streams_alone(task):
    w, fresh = Workers(task, seed=3), Workers(task, seed=3)
    x = _x(w, 2)
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, len(task.train), (w.m, 5), generator=g)
    got, loss = w.gradients(x, indices=idx)
    for i in range(w.m):
        want, li = _autograd(task, w, x[i], task.train.x[idx[i]], task.train.y[idx[i]])
        torch.testing.assert_close(got[i], want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(loss[i], li, atol=1e-6, rtol=1e-6)
    assert w.samples_drawn.tolist() == [5] * w.m  # counted, padding included
    assert torch.equal(w.next_batch(), fresh.next_batch())  # the streams did not move
    rows = torch.tensor([2, 0])
    got_rows, _ = w.gradients(x[rows], rows, indices=idx[rows], per_sample=True)
    assert got_rows.shape == (2, 5, w.d)
    torch.testing.assert_close(got_rows[0].mean(0), got[2], atol=1e-6, rtol=1e-5)


def test_the_default_stream_is_the_one_the_drop_in_sampler_draws(task):
    """The default call draws what WorkerBatchSampler (the torchrun drop-in's independent
    implementation of the same stream) yields, through several reshuffles and refills."""
    w = Workers(task, seed=4)
    steps = 120
    drawn = [w.next_batch() for _ in range(steps)]
    for i in range(w.m):
        sampler = WorkerBatchSampler(task.shards[i], task.batch_size, seed=4, worker=i, steps=steps)
        for t, batch in enumerate(sampler):
            assert drawn[t][i].tolist() == batch
    assert w.samples_drawn.tolist() == [steps * task.batch_size] * w.m


def test_an_explicit_default_batch_size_and_the_default_call_are_bit_identical(task):
    a, b = Workers(task, seed=5), Workers(task, seed=5)
    x = _x(a, 3)
    for _ in range(40):
        ga, la = a.gradients(x)
        gb, lb = b.gradients(x, batch_size=task.batch_size)
        assert torch.equal(ga, gb) and torch.equal(la, lb)


def _permutations(shard, seed, worker, batch_size, count):
    """Worker `worker`'s first `count` permutations of its shard, drawn as the engine does."""
    g = torch.Generator().manual_seed(_worker_seed(seed, worker))
    epochs = refill_epochs(len(shard), batch_size)
    perms = []
    while len(perms) < count:
        perms += list(draw_permutations(shard, epochs, g))
    return perms[:count]


def test_a_larger_batch_drops_the_rest_of_a_partly_used_epoch():
    task = make_task("digits", n_workers=2, model="linear", batch_size=10, seed=1)
    w = Workers(task, seed=0)
    size = len(task.shards[0])
    first = torch.cat([w.next_batch(batch_size=10)[0] for _ in range(size // 10 - 1)])
    assert size - len(first) < 30  # fewer than 30 left in this permutation
    big = w.next_batch(batch_size=30)[0]
    small = w.next_batch(batch_size=5)[0]
    p0, p1 = _permutations(task.shards[0], 0, 0, 10, 2)
    assert torch.equal(first, p0[: len(first)])
    assert torch.equal(big, p1[:30])  # the rest of p0 dropped: the big batch starts the next permutation
    assert torch.equal(small, p1[30:35])  # and a smaller one goes on where it stopped
    assert w.samples_drawn.tolist() == [len(first) + 35] * 2


def test_varying_batch_sizes_are_independent_of_the_split_and_resume_exactly():
    task = make_task("digits", n_workers=4, model="linear", batch_size=16, seed=0)
    full, part = Workers(task, seed=5), Workers(task, seed=5, start=2, m=2)
    sizes = [16, 40, 7, 100, 16, 33, 1, 64] * 6  # crosses reshuffles and refills
    for b in sizes[:20]:
        assert torch.equal(full.next_batch(batch_size=b)[2:], part.next_batch(batch_size=b))
    saved = full.state_dict()
    rest = [full.next_batch(batch_size=b) for b in sizes[20:]]
    again = Workers(task, seed=5)
    again.load_state_dict(saved)
    for b, want in zip(sizes[20:], rest, strict=True):
        assert torch.equal(again.next_batch(batch_size=b), want)
    assert torch.equal(again.samples_drawn, full.samples_drawn)
    assert full.samples_drawn.tolist() == [sum(sizes)] * 4


def test_rows_draw_what_the_full_set_draws_with_varying_batches():
    task = make_task("digits", n_workers=3, model="linear", batch_size=8, seed=0)
    full, rowwise = Workers(task, seed=2), Workers(task, seed=2)
    for t, b in enumerate([8, 20, 3, 50, 8, 12] * 5):
        want = full.next_batch(batch_size=b)
        got = torch.stack([rowwise.next_batch(torch.tensor([i]), batch_size=b)[0] for i in (2, 0, 1)])
        assert torch.equal(got[[1, 2, 0]], want), t
    assert torch.equal(full.samples_drawn, rowwise.samples_drawn)


def test_a_state_from_before_the_sample_cursor_loads(task):
    """Older checkpoints held `taken` (batches of the task's size) and no sample counter."""
    w = Workers(task, seed=6)
    for _ in range(7):
        w.next_batch()
    s = w.state_dict()
    per_epoch = w.sizes // task.batch_size
    old = {k: v for k, v in s.items() if k not in ("cursor", "samples_drawn")}
    old["taken"] = (s["cursor"] // w.sizes) * per_epoch + (s["cursor"] % w.sizes) // task.batch_size
    back = Workers(task, seed=6)
    back.load_state_dict(old)
    for _ in range(60):
        assert torch.equal(back.next_batch(), w.next_batch())
    assert back.samples_drawn.tolist() == [60 * task.batch_size] * w.m  # counted from the load on


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 10_000}, "batch_size=10000 does not fit: worker"),
        ({"batch_size": 0}, "batch_size=0 does not fit"),
        ({"batch_size": 4, "indices": torch.zeros(3, 4, dtype=torch.long)}, "give batch_size or indices, not both"),
        ({"indices": torch.zeros(2, 4, dtype=torch.long)}, "indices must be [3, B]"),
        ({"indices": torch.zeros(3, 4)}, "indices must be a LongTensor"),
        ({"indices": torch.full((3, 4), 10**6)}, "indices must lie in [0, 480)"),
    ],
)
def test_bad_options_are_one_line_user_errors(task, kw, message):
    w = Workers(task, seed=0)
    with pytest.raises(UserError) as e:
        w.gradients(w.x0(), **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_per_sample_gradients_refuse_batchnorm_in_one_line():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    task = Task(Samples((x, y)), None, [torch.arange(32), torch.arange(32, 64)], net, 8, {}, loss_for("multiclass"), "multiclass", 3)
    w = Workers(task)
    w.gradients(w.x0())  # the batch gradient works
    with pytest.raises(UserError, match="per-sample gradients need a model whose forward leaves its buffers alone"):
        w.gradients(w.x0(), per_sample=True)


# -- clipped per-sample sums: ghost clipping (Linear / Conv1d) == the vmap path --------------------


def _clipped_both(task, c, seed=0, b=12):
    from distsgd.workers import Workers as W

    w = W(task, seed=0)
    x = _x(w, seed)
    idx = torch.stack([s[:b] for s in w.shards])
    xb, y = task.train.batch(idx)
    layers = {n: w.flat.layer(x, n) for n in w.flat.names}
    mask = torch.rand(w.m, b, generator=torch.Generator().manual_seed(seed)) < 0.7
    fast = w.clipped_sums(layers, w.buffers, xb, y, c, mask, fast=True)
    slow = w.clipped_sums(layers, w.buffers, xb, y, c, mask, fast=False)
    return w, fast, slow


@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
@pytest.mark.parametrize("c", [0.05, 1.0, float("inf")])
def test_ghost_clipping_equals_the_vmap_path(model, c):
    """Norms from activations and output gradients, sums by book-keeping: the per-sample
    gradients' own norms and clipped sums (Li et al. 2022; Bu et al. 2023), to 1e-5."""
    task = make_task("mnist1d", n_workers=3, model=model, hidden=(12, 8), batch_size=8, num_samples=600, seed=0)
    w, (s1, n1, l1), (s2, n2, l2) = _clipped_both(task, c)
    assert w.ghost_clipping
    assert s1.shape == (3, w.d) and n1.shape == (3, 12)
    torch.testing.assert_close(n1, n2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-6)
    if c == 0.05:  # clipping is active: every real sample's share has norm C
        assert bool((n2 > c).all())


class _Strided(nn.Module):
    """Conv1d with stride, padding and dilation, a sequence Linear (3 positions) and a frozen bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, stride=2, padding=1, dilation=2)
        self.seq = nn.Linear(4, 6)
        self.head = nn.Linear(6 * 9, 10)
        self.head.bias.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.conv(x.unsqueeze(-2)))  # [B, 4, 19]
        h = torch.relu(self.seq(h[..., :9].transpose(-1, -2)))  # [B, 9, 6]: 9 positions
        return self.head(h.flatten(-2))


class _Shared(nn.Module):
    """One Linear called twice: not covered (its per-sample gradient sums two uses)."""

    def __init__(self):
        super().__init__()
        self.inp, self.twice, self.out = nn.Linear(40, 8), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.out(torch.relu(self.twice(torch.relu(self.twice(torch.relu(self.inp(x)))))))


class _Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(40, 8), nn.LayerNorm(8), nn.Linear(8, 10)

    def forward(self, x):
        return self.out(self.norm(torch.relu(self.inp(x))))


def _user_task(module):
    import dataclasses

    base = make_task("mnist1d", n_workers=2, model="mlp", hidden=(8,), batch_size=8, num_samples=600, seed=0)
    return dataclasses.replace(base, model=module)


@pytest.mark.parametrize("c", [0.05, 2.0])
def test_ghost_clipping_covers_strided_convolutions_sequences_and_frozen_parameters(c):
    torch.manual_seed(0)
    w, (s1, n1, _), (s2, n2, _) = _clipped_both(_user_task(_Strided()), c, b=6)
    assert w.ghost_clipping
    torch.testing.assert_close(n1, n2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("module, covered", [(_Shared, True), (_Normed, False)])
def test_models_ghost_clipping_does_not_cover_take_the_vmap_path(module, covered):
    """A layer called twice is found on the first batch; a LayerNorm's parameters up front."""
    torch.manual_seed(0)
    task = _user_task(module())
    w = Workers(task, seed=0)
    assert w.ghost_clipping is covered
    x = _x(w, 3)
    idx = torch.stack([s[:8] for s in w.shards])
    got, _ = w.gradients(x, indices=idx, per_sample=True, max_grad_norm=0.1)
    assert not w.ghost_clipping  # fell back, and stays on the vmap path
    per, _ = w.gradients(x, indices=idx, per_sample=True)
    from distsgd.privacy.mechanisms import clipped_sum

    torch.testing.assert_close(got, clipped_sum(per, 0.1), atol=1e-6, rtol=1e-5)


def test_clipped_sums_through_gradients_count_and_average_the_loss_like_per_sample(task):
    w, ref = Workers(task, seed=4), Workers(task, seed=4)
    x = _x(w, 5)
    idx = torch.stack([s[:10] for s in w.shards])
    mask = torch.ones(w.m, 10, dtype=torch.bool)
    mask[:, 7:] = False
    sums, loss = w.gradients(x, indices=idx, mask=mask, per_sample=True, max_grad_norm=0.5)
    per, loss_ref = ref.gradients(x, indices=idx, mask=mask, per_sample=True)
    from distsgd.privacy.mechanisms import clipped_sum

    torch.testing.assert_close(sums, clipped_sum(per, 0.5, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, loss_ref, atol=1e-6, rtol=1e-6)
    assert w.samples_drawn.tolist() == ref.samples_drawn.tolist() == [7] * w.m
