"""`distsgd.adpsgd_real`: AD-PSGD truly asynchronous over torch.distributed (gloo, 4 ranks on
a ring: 0 and 2 active, 1 and 3 passive). One process group runs four scenarios one after
the other (see adpsgd_real_helpers.scenarios); the tests check what they saved."""

import math

import pytest
import torch
import torch.multiprocessing as mp
from adpsgd_real_helpers import BUDGET, SLOW_RANK, least_squares, not_bipartite, scenarios
from dist_helpers import rendezvous

from distsgd.adpsgd_real import Staleness, _Snapshots, active_set
from distsgd.errors import UserError
from distsgd.topology import make_topology

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

WORLD = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("adpsgd_real") / "runs.pt"
    mp.spawn(scenarios, args=(WORLD, rendezvous(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


def ls_loss(v: torch.Tensor) -> float:
    a, b = least_squares(WORLD)
    return float(((a.double() @ v[:-1].double()[:, None] + v[-1].double() - b.double()) ** 2).mean())


# -- one process ------------------------------------------------------------------------------
def test_active_set_is_rank_0s_colour_and_an_odd_ring_is_refused():
    assert active_set(make_topology("ring", 4)) == [True, False, True, False]
    assert active_set(make_topology("ring", 1)) == [True]
    with pytest.raises(UserError, match="bipartite"):
        active_set(make_topology("ring", 3))


def test_staleness_stats_and_snapshot_thinning():
    assert Staleness.of([0, 1, 2, 3] * 5 + [40]) == Staleness(mean=(6 * 5 + 40) / 21, p95=3, max=40)
    assert Staleness.of([]) == Staleness(0.0, 0, 0)
    s = _Snapshots(0.1, cap=4)
    for k in range(10):  # a tick every 0.1 s; at the cap every other one goes, the interval doubles
        s.take(k * 0.1 + 1e-9, torch.tensor([float(k)]))
    assert len(s.items) <= 4 and s.interval == pytest.approx(0.4)
    assert [float(v) for _, v in s.items] == [0.0, 4.0, 8.0]


# -- four ranks ---------------------------------------------------------------------------------
def test_averaging_is_atomic_the_mean_is_conserved(runs):
    """lr = 0 from four different starts: pairwise averagings must keep Σ x exactly (a
    non-atomic one, e.g. a reply of a value the passive rank did not average with, breaks
    it) and shrink the consensus distance."""
    r = runs["conservation"]
    before, after = r["before"].double(), r["after"].double()
    assert sum(r["averagings_per_rank"][i] for i in (0, 2)) >= 10  # enough averagings to mean something
    assert sum(r["averagings_per_rank"][i] for i in (0, 2)) == sum(
        r["averagings_per_rank"][i] for i in (1, 3)
    )
    mean0, mean1 = before.mean(0), after.mean(0)
    assert float((mean1 - mean0).norm() / mean0.norm()) < 1e-5
    assert torch.allclose(r["final"].double(), mean1, atol=1e-6)  # final is the average, models hold x_i
    spread0 = float(((before - mean0) ** 2).sum())
    spread1 = float(((after - mean1) ** 2).sum())
    assert spread1 < 0.1 * spread0


def test_converges_to_the_least_squares_optimum(runs):
    r = runs["convergence"]
    f_star, f0 = r["optimum"], ls_loss(r["x0"])
    assert f0 - f_star > 1.0
    assert ls_loss(r["final"]) - f_star < 3e-3  # measured ≈ 3e-4 (f* ≈ 9e-3)
    for v in r["models"]:  # every rank's own x_i, not only the average
        assert ls_loss(v) - f_star < 1e-2
    assert sum(r["gradients_per_rank"]) == 1600
    losses = [ls_loss(v) for _, v in r["snapshots"]]
    assert len(losses) >= 2 and losses[0] == pytest.approx(f0, rel=1e-5)  # tick 0: x₀ on every rank
    assert losses[-1] < 0.1 * f0


def test_gradient_budget_staleness_bytes_and_a_straggler(runs):
    ranks = runs["budget_all"]
    grads = ranks[0]["gradients_per_rank"]
    assert sum(grads) == BUDGET  # exactly: a gradient is applied only with a ticket within the budget
    assert [r["gradients"] for r in ranks] == grads
    # a rank 4× slower in compute does fewer gradients than every other rank
    assert grads[SLOW_RANK] < min(g for i, g in enumerate(grads) if i != SLOW_RANK)
    # τ summed over every gradient telescopes to Σ_i (last ticket_i) − budget ≤ (n − 1)·budget
    total = sum(r["staleness"].mean * r["gradients"] for r in ranks)
    assert WORLD - 2 <= total / BUDGET <= WORLD - 1 + 1e-9
    d = runs["budget"]["d"]
    for i, r in enumerate(ranks):
        s, m = r["staleness"], r["mixing_staleness"]
        assert 0 <= s.mean <= s.max
        assert 0 <= s.p95 <= s.max < BUDGET
        assert r["seconds"] > 0 and r["seconds_per_gradient"] > 0
        if r["active"]:  # its own averaging, exactly one, between read and apply
            assert m == Staleness(1.0, 1, 1)
            assert r["bytes_sent"] == 4 * (d + 1) * r["averagings"] + 4 * 2  # + a stop to each neighbour
            assert r["bytes_received"] == 4 * d * r["averagings"]
        else:
            assert m.mean >= 0 and m.max <= r["averagings"]
            assert r["bytes_received"] == 4 * (d + 1) * r["averagings"] + 4 * 2
            assert r["bytes_sent"] == 4 * d * r["averagings"]
        assert r["averagings"] == ranks[0]["averagings_per_rank"][i]
    act = sum(r["averagings"] for r in ranks if r["active"])
    assert act == sum(r["averagings"] for r in ranks if not r["active"]) > 0


def test_wall_clock_budget_and_snapshots_are_the_same_on_every_rank(runs):
    r = runs["clock"]
    snaps = r["snapshots"]  # [rank, k, d]
    assert all(torch.equal(snaps[i], snaps[0]) for i in range(WORLD))
    assert 2 <= snaps.shape[1] <= 4  # the cap
    doublings = math.log2(r["interval"] / 0.05)  # thinned at least once, by doubling
    assert doublings >= 1 and doublings == pytest.approx(round(doublings))
    times = r["times"]
    assert times == sorted(times) and times[0] < r["interval"]
    assert torch.equal(snaps[0, 0], r["x0"])
    assert 0.6 <= r["seconds"] < 5
    assert torch.equal(r["loaded"], r["final"])
    assert ls_loss(r["final"]) < ls_loss(r["x0"])


def test_a_ring_of_three_is_refused_with_one_clear_error(tmp_path):
    out = tmp_path / "err.pt"
    mp.spawn(not_bipartite, args=(3, rendezvous(), str(out)), nprocs=3, join=True)
    msg = torch.load(out, weights_only=False)
    assert msg is not None and "bipartite" in msg and "\n" not in msg
