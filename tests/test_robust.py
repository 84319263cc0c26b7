import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import distsgd
from distsgd import DPSGD, AllReduceSGD, make_topology, train
from distsgd.algorithms import RobustGossip, RobustSGD
from distsgd.robust import (
    BGMD,
    NNM,
    Attack,
    Bucketing,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MajorityVote,
    Mean,
    MultiKrum,
    TrimmedMean,
    alie_z,
    geometric_median,
    make_aggregator,
    pick_byzantine,
)
from distsgd.robust.aggregators import Aggregator, pairwise_sq_distances
from distsgd.robust.bgmd import column_sums, top_k_indices
from distsgd.tasks import make_task

seeds = st.integers(0, 2**31 - 1)


def _stack(n, d, seed):
    """Asymmetric inputs: skewed per-row scales and offsets, a heavy-tailed coordinate mix."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3
    x += torch.rand(1, d, generator=g) * 5  # a common offset, not centred at 0
    x[: max(1, n // 4)] += torch.distributions.Exponential(0.2).sample((max(1, n // 4), d))
    return x


def _rules(f):
    return [
        Mean(),
        CoordinateMedian(f=f),
        TrimmedMean(f=f),
        Krum(f=f),
        MultiKrum(f=f),
        GeometricMedian(f=f, ftol=1e-10, max_iter=1000),
        CenteredClipping(f=f, tau=0.5, iterations=3),
        MajorityVote(f=f),
        NNM(GeometricMedian(f=f, ftol=1e-10, max_iter=1000)),
        BGMD(f=f, beta=0.5, selection="topk", ftol=1e-10, max_iter=1000),
    ]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(7, 13), d=st.integers(1, 40), seed=seeds)
def test_aggregators_are_permutation_invariant(n, d, seed):
    g = _stack(n, d, seed).double()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    for rule in _rules(f=(n - 3) // 2 - 1):
        a, b = rule.aggregate(g), rule.aggregate(g[perm])
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), rule.name


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 15), d=st.integers(1, 30), seed=seeds)
def test_median_and_trimmed_mean_equal_numpy(n, d, seed):
    g = _stack(n, d, seed)
    a = g.numpy().astype(np.float64)
    np.testing.assert_allclose(CoordinateMedian().aggregate(g).numpy(), np.median(a, axis=0), rtol=1e-5)
    for f in range(0, (n - 1) // 2 + 1):
        expected = np.sort(a, axis=0)[f : n - f].mean(axis=0)
        np.testing.assert_allclose(TrimmedMean(f=f).aggregate(g).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_krum_picks_the_vector_in_the_middle_of_the_honest_cluster():
    # honest: the centre c and 6 points around it, two of them farther out; Byzantine: 2 far away
    c = torch.tensor([1.0, -2.0, 0.5])
    around = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 3.0], [0, 0, -2.5]])
    byz = torch.tensor([[40.0, 40, 40], [41.0, 39, 40]])
    g = torch.cat([c + around[:3], c.unsqueeze(0), c + around[3:], byz])
    assert torch.equal(Krum(f=2).aggregate(g), c)
    # Multi-Krum with m = 5 averages the 5 lowest scores: never a Byzantine vector
    assert torch.linalg.vector_norm(MultiKrum(f=2, m=5).aggregate(g) - c) < 1.5


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 30), seed=seeds)
@example(n=3, d=2, seed=8)
def test_geometric_median_objective_beats_mean_and_coordinate_median(n, d, seed):
    g = _stack(n, d, seed).double()

    def objective(v):
        return float(torch.linalg.vector_norm(g - v, dim=1).sum())

    v = GeometricMedian(ftol=1e-12, max_iter=2000, nu=1e-12).aggregate(g)
    # Where the geometric median is one of the points (3 points with an angle of 120° or more
    # there), Weiszfeld's iteration creeps towards it sublinearly and stops ~1e-8 above the
    # optimum; the coordinate median can land on that point exactly (n = 3, d = 2, seed = 8)
    tol = 1e-6
    assert objective(v) <= objective(g.mean(0)) * (1 + tol)
    assert objective(v) <= objective(CoordinateMedian().aggregate(g)) * (1 + tol)


def test_geometric_median_equals_the_reference_package():
    from geom_median.torch import compute_geometric_median

    for seed in range(5):
        g = _stack(17, 500, seed)
        ours, _ = geometric_median(g, nu=1e-6, ftol=1e-8, max_iter=200)
        ref = compute_geometric_median(list(g), eps=1e-6, maxiter=200, ftol=1e-8).median
        assert float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref)) < 1e-4


@pytest.mark.parametrize(
    "noise, byzantine, scale",
    [(1.0, 8, -10.0), (1e-3, 0, 1.0), (1e-2, 12, -100.0)],
    ids=["attacked", "nearly_equal_rows", "nearly_equal_rows_far_attackers"],
)
def test_gram_and_direct_weiszfeld_agree_with_the_package(noise, byzantine, scale):
    # the Gram form's distances cancel badly when rows nearly agree far from the origin
    # (second and third cases): it must recentre and still match the reference
    from geom_median.torch import compute_geometric_median

    gen = torch.Generator().manual_seed(7)
    g = torch.randn(4000, generator=gen) + noise * torch.randn(32, 4000, generator=gen) * (
        0.5 + torch.rand(32, 1, generator=gen)
    )
    g[:byzantine] *= scale
    ref = compute_geometric_median(list(g), eps=1e-6, maxiter=300, ftol=1e-10).median
    spread = float(torch.linalg.vector_norm(g[byzantine:] - ref, dim=1).mean())
    for method in ("gram", "direct"):
        v, _ = geometric_median(g, nu=1e-6, ftol=1e-10, max_iter=300, method=method)
        # off by a small fraction of the honest rows' spread around the median
        assert float(torch.linalg.vector_norm(v - ref)) < 2e-3 * spread, method
    with pytest.raises(ValueError, match="method"):
        geometric_median(g, method="newton")


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 300_000), frac=st.floats(0.0, 1.0), seed=seeds, ties=st.booleans())
def test_top_k_indices_is_topk(d, frac, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    # distinct values (a permutation), or a few levels with many ties
    x = (
        torch.randperm(d, generator=gen).float()
        if not ties
        else torch.randint(0, 5, (d,), generator=gen).float()
    )
    k = max(1, round(frac * d))
    idx = top_k_indices(x, k)
    assert idx.numel() == k and idx.unique().numel() == k and bool((idx[1:] > idx[:-1]).all())
    # the same multiset of values as torch.topk's
    assert torch.equal(x[idx].sort().values, x.topk(k).values.sort().values)


def test_top_k_indices_falls_back_when_the_sample_misleads():
    # the strided sample sees only zeros; the k large entries lie between its points
    d, k = 1 << 20, 1 << 14
    x = torch.zeros(d)
    big = torch.arange(1, d, 64)[:k]
    x[big] = 1.0
    assert torch.equal(top_k_indices(x, k), big)


def test_column_sums_are_the_sums_and_sums_of_squares():
    for d in (100, 50_000):
        g = _stack(5, d, 1)
        s, q = column_sums(g)
        assert torch.allclose(s, g.sum(0), rtol=1e-5, atol=1e-4)
        assert torch.allclose(q, (g * g).sum(0), rtol=1e-5, atol=1e-3)


def test_bgmd_samples_columns_in_proportion_to_their_squared_norm():
    # k = 1: one column drawn with probability s_j / Σ s (the Gumbel-max / exponential race)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rule = BGMD(beta=0.25, seed=3)
    counts = torch.bincount(torch.cat([rule.block(scores, 1, t) for t in range(4000)]), minlength=4)
    expected = 4000 * scores / scores.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, (counts, chi2)  # 99.9% quantile of χ² with 3 degrees of freedom


def test_breakdown_checks_refuse_rules_without_a_guarantee():
    for rule in (CoordinateMedian, GeometricMedian, CenteredClipping, MajorityVote, BGMD):
        rule(f=4).check(9)
        with pytest.raises(ValueError, match="f < n/2"):
            rule(f=5).check(10)  # f >= n/2
    TrimmedMean(f=4).check(9)
    with pytest.raises(ValueError, match="n > 2f"):
        TrimmedMean(f=5).check(10)
    Krum(f=3).check(9)
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        Krum(f=4).check(10)
    with pytest.raises(ValueError, match="f = 0"):
        Mean(f=1).check(10)
    with pytest.raises(ValueError, match="bucketing into 5 buckets"):
        Bucketing(GeometricMedian(f=3), s=2).check(10)  # 3 of 5 buckets may be contaminated
    with pytest.raises(ValueError, match="n > 2f"):
        NNM(GeometricMedian(f=5)).check(10)


def test_bgmd_with_the_full_block_is_the_geometric_median():
    g = _stack(9, 50, 3)
    v, state = BGMD(beta=1.0).__call__(g, BGMD(beta=1.0).init(50))
    assert torch.allclose(v, GeometricMedian().aggregate(g), atol=1e-6)
    assert torch.count_nonzero(state["memory"]) == 0


@pytest.mark.parametrize("memory", ["mean", "worker"])
@pytest.mark.parametrize("selection", ["sample", "topk"])
def test_bgmd_memory_conserves_what_is_left_out(selection, memory):
    # with identical honest rows, the geometric median of the block is that block, so every
    # coordinate's total update plus what the memory still holds equals the sum of the rows
    d, rule = 40, BGMD(beta=0.2, selection=selection, memory=memory, seed=1)
    state, applied, total = rule.init(d), torch.zeros(d), torch.zeros(d)
    for t in range(12):
        row = torch.randn(d, generator=torch.Generator().manual_seed(t))
        v, state = rule(row.expand(6, d).clone(), state)
        assert torch.count_nonzero(v) <= math.ceil(0.2 * d)
        applied += v
        total += row
    held = state["memory"] if memory == "mean" else state["memory"][0]
    assert torch.allclose(applied + held, total, atol=1e-4)


def test_bgmd_worker_memory_keeps_a_huge_byzantine_row_out_of_the_model():
    # 4 identical honest rows and one Byzantine row of size 1e4: with per-worker memory the
    # honest mass is conserved as above; the paper's shared memory lets 1/n of the
    # Byzantine row through. (A tight ftol: the stopping rule is relative to an objective
    # that the far row dominates.)
    d = 40
    for memory in ("worker", "mean"):
        rule = BGMD(f=1, beta=0.2, selection="topk", memory=memory, ftol=1e-14, max_iter=1000)
        state, applied, total = rule.init(d), torch.zeros(d), torch.zeros(d)
        for t in range(12):
            gen = torch.Generator().manual_seed(t)
            row = torch.randn(d, generator=gen)
            g = torch.cat([row.expand(4, d), 1e4 * torch.randn(1, d, generator=gen)])
            v, state = rule(g, state)
            applied += v
            total += row
        held = state["memory"][0] if memory == "worker" else torch.zeros(d)
        error = float(torch.linalg.vector_norm(applied + held - total))
        if memory == "worker":
            assert error < 1e-3
        else:
            assert error > 100


def test_bgmd_selection_takes_k_distinct_large_columns():
    scores = torch.cat([torch.full((10,), 100.0), torch.full((990,), 1e-6)])
    for selection in ("sample", "topk"):
        idx = BGMD(beta=0.01, selection=selection).block(scores, 10, t=0)
        assert idx.unique().numel() == 10 and bool((idx < 10).all()), selection


def test_attacks():
    g = _stack(20, 30, 0)
    byz = torch.tensor(pick_byzantine(20, 4, seed=3))
    assert pick_byzantine(20, 4, seed=3) == tuple(byz.tolist()) and len(set(byz.tolist())) == 4
    assert torch.equal(Attack("sign_flip")(g, byz, 0), -g[byz])
    assert torch.equal(Attack("scaled_flip", 5.0)(g, byz, 0), -5 * g[byz])
    noisy = Attack("gaussian", 2.0, seed=1)
    assert torch.equal(noisy(g, byz, 7), noisy(g, byz, 7)) and not torch.equal(
        noisy(g, byz, 7), noisy(g, byz, 8)
    )
    mu, sd = g.mean(0), g.std(0, correction=0)
    assert abs(alie_z(20, 4) - 0.3853) < 1e-3  # s = ⌊20/2 + 1⌋ − 4 = 7, z = Φ⁻¹(13/20)
    assert torch.allclose(Attack("alie")(g, byz, 0), (mu - alie_z(20, 4) * sd).expand(4, -1))
    assert torch.allclose(Attack("ipm")(g, byz, 0), (-0.1 * mu).expand(4, -1))
    # the adaptive attack does at least as much damage as ALIE and IPM, and leaves the state alone
    rule = CenteredClipping(f=4, tau=0.5)
    state = {"center": mu.clone()}
    sent = g.clone()
    sent[byz] = Attack("adaptive")(g, byz, 0, rule, state)
    worst = float(rule(sent, state)[0] @ mu)
    for kind in ("alie", "ipm"):
        other = g.clone()
        other[byz] = Attack(kind)(g, byz, 0)
        assert worst <= float(rule(other, state)[0] @ mu) + 1e-4
    assert torch.equal(state["center"], mu)


def _task(**kw):
    return make_task("digits", n_workers=8, model="mlp", hidden=(16,), batch_size=8, seed=1, **kw)


def test_robust_sgd_with_the_mean_and_no_attack_is_allreduce_sgd():
    task = _task()
    a = train(task, RobustSGD(lr=0.1, momentum=0.9, aggregator="mean", worker_momentum=0), steps=20)
    b = train(task, AllReduceSGD(lr=0.1, momentum=0.9), steps=20)
    assert torch.allclose(a.state["x"], b.state["x"], atol=1e-5)


def test_robust_aggregation_survives_what_breaks_the_mean():
    task = _task()
    byz = pick_byzantine(8, 2, seed=0)

    def run(agg):
        algo = RobustSGD(
            lr=0.2, aggregator=agg, attack=Attack("scaled_flip"), byzantine=byz, check=False, worker_momentum=0
        )
        return train(task, algo, steps=60, eval_every=60).final

    try:
        assert not run(Mean())["train_loss"] < 2.0  # far off
    except distsgd.errors.Diverged:
        pass  # or diverged: the run stops at the first non-finite loss
    clean = train(task, RobustSGD(lr=0.2, aggregator="mean", worker_momentum=0), steps=60, eval_every=60).final["train_acc"]
    assert run(GeometricMedian(f=2))["train_acc"] > clean - 0.15


def test_label_flipping_acts_on_the_byzantine_workers_data_only():
    from distsgd.workers import Workers

    task = _task()
    algo = RobustSGD(lr=0.1, attack=Attack("label_flip"), byzantine=(1, 5), check=False)
    flipped = algo.prepare_task(task)
    assert flipped.label_flip == (1, 5) and task.label_flip == ()
    w, w0 = Workers(flipped, seed=0), Workers(task, seed=0)
    x = w.x0()
    g, g0 = w.gradients(x)[0], w0.gradients(x)[0]
    same = [i for i in range(8) if torch.equal(g[i], g0[i])]
    assert same == [0, 2, 3, 4, 6, 7]


def test_bucketing_and_nnm_compose_and_are_seeded():
    g = _stack(12, 20, 4)
    rule = make_aggregator("median", 2, nnm=True, bucket=2)
    rule.check(12)
    s0 = rule.init(20)
    v1, s1 = rule(g, s0)
    v2, _ = rule(g, s0)
    assert torch.equal(v1, v2) and s1["t"] == 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 30), seed=seeds)
def test_nnm_replaces_each_input_by_the_mean_of_its_nearest(n, d, seed):
    g = _stack(n, d, seed).double()
    f = (n - 1) // 2

    @dataclass(frozen=True)
    class Rows(Aggregator):  # an inner rule that hands back what it was given
        f: int = 0

        def __call__(self, x, state):
            return x, state

    mixed, _ = NNM(Rows(f=f))(g, {})
    dist = ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1).numpy()
    for i in range(n):
        nearest = np.argsort(dist[i], kind="stable")[: n - f]
        want = g[torch.as_tensor(nearest)].mean(0)
        # a tie at the (n − f)-th distance may pick either input
        assert torch.allclose(mixed[i], want, atol=1e-9) or _tie_at_the_cut(dist[i], n - f)


def _tie_at_the_cut(row, m):
    s = np.sort(row)
    return m < len(s) and np.isclose(s[m - 1], s[m])


def test_pairwise_sq_distances_are_exact_in_float64():
    g = _stack(9, 70_000, 5)  # several chunks of columns
    want = ((g.double()[:, None, :] - g.double()[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(pairwise_sq_distances(g), want, rtol=1e-10, atol=1e-6)


def test_robust_gossip_with_a_wide_clip_and_no_attack_is_dpsgd_adapt_then_combine():
    task = _task()
    topo = make_topology("ring", 8)
    a = train(task, RobustGossip(lr=0.1, topology=topo, tau=1e9, worker_momentum=0), steps=15)
    b = train(task, DPSGD(lr=0.1, topology=topo, variant="atc"), steps=15)
    assert torch.allclose(a.state["x"], b.state["x"], atol=1e-5)
    assert a.summary["traffic"]["bytes_sent_per_worker"] == b.summary["traffic"]["bytes_sent_per_worker"]


def test_robust_gossip_clipping_bounds_a_byzantine_neighbour():
    task = _task()
    topo = make_topology("ring", 8)
    atk = Attack("scaled_flip", 1e4)

    def run(**kw):
        algo = RobustGossip(lr=0.1, topology=topo, attack=atk, byzantine=(3,), **kw)
        return train(task, algo, steps=30, eval_every=30).final

    assert run(tau=0.05)["train_acc"] > 0.5
    assert not run(tau=1e9)["train_loss"] < 2.0
