"""DP-SGD: accountants against the libraries, the mechanism's properties, the algorithm end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import dp_accounting as dpa
import pytest
import torch
import torch.multiprocessing as mp
from dist_helpers import _init, _leave, rendezvous
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

import distsgd
from distsgd import rng
from distsgd.algorithms import ALGORITHMS
from distsgd.algorithms.allreduce_sgd import AllReduceSGD
from distsgd.algorithms.dp_sgd import DPSGDPrivate
from distsgd.comm.simulated import SimulatedCommunicator
from distsgd.errors import UserError
from distsgd.privacy import accounting, mechanisms
from distsgd.tasks.task import make_task
from distsgd.workers import Workers

# -- accounting: the libraries' own values -----------------------------------------------------


def _opacus(kind, sigma, q, steps, delta):
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(3):  # three segments of the same (σ, q): the accountant merges them
        acc.history.append((sigma, q, steps // 3))
    acc.history.append((sigma, q, steps - 3 * (steps // 3)))
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize(
    "kind, sigma, q, steps, golden",
    [("rdp", 1.5, 0.04, 2250, 7.32911117143), ("prv", 1.5, 0.04, 2249, 6.777395712150674), ("rdp", 0.8, 0.001, 100, None)],
)
def test_epsilon_equals_opacus(kind, sigma, q, steps, golden):
    eps = accounting.epsilon(sigma, q, steps, 1e-5, kind)
    assert abs(eps - _opacus(kind, sigma, q, steps, 1e-5)) < 1e-6
    if golden is not None:  # Opacus's own test values (accountants_test.py)
        assert abs(eps - golden) < 1e-6


def test_uniform_sampling_is_accounted_by_dp_accounting_replace_one_with_sensitivity_2c():
    eps = accounting.epsilon(2.0, 32 / 1000, 500, 1e-5, sampling="uniform", dataset_size=1000)
    lib = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    lib.compose(dpa.SampledWithoutReplacementDpEvent(1000, 32, dpa.GaussianDpEvent(1.0)), 500)  # σC / 2C
    assert abs(eps - lib.get_epsilon(1e-5)) < 1e-6
    with pytest.raises(UserError, match="prv"):
        accounting.epsilon(2.0, 0.032, 500, 1e-5, "prv", sampling="uniform", dataset_size=1000)


def test_calibration_is_opacus_get_noise_multiplier():
    """Golden σ of Opacus's tests (target ε = 8, δ = 1e-5, q = 0.04)."""
    assert round(accounting.noise_multiplier(8, 1e-5, 0.04, 2250), 4) == 1.4160
    assert round(accounting.noise_multiplier(8, 1e-5, 0.04, 2000), 4) == 1.3562
    assert round(accounting.noise_multiplier(8, 1e-5, 0.04, 2000, "prv"), 4) == 1.2915
    s = accounting.noise_multiplier(3, 1e-5, 0.05, 300, sampling="uniform", dataset_size=200)
    assert accounting.epsilon(s, 0.05, 300, 1e-5, sampling="uniform", dataset_size=200) <= 3
    assert accounting.epsilon(s * 0.99, 0.05, 300, 1e-5, sampling="uniform", dataset_size=200) > 3


def test_accountant_state_resumes_the_sum_exactly():
    acc = accounting.Accountant("rdp")
    for _ in range(700):
        acc.step(1.1, 0.02)
    again = accounting.Accountant.from_state(acc.state_dict())
    for _ in range(300):
        again.step(1.1, 0.02)
    again.step(0.9, 0.02, 5)
    assert again.history == [(1.1, 0.02, 1000), (0.9, 0.02, 5)]
    lib = RDPAccountant()
    lib.history = [(1.1, 0.02, 1000), (0.9, 0.02, 5)]
    assert abs(again.epsilon(1e-5) - lib.get_epsilon(1e-5)) < 1e-6


def test_max_steps_is_the_last_step_within_the_budget():
    t = accounting.max_steps(1.2, 0.05, 1e-5, 4.0)
    assert accounting.epsilon(1.2, 0.05, t, 1e-5) <= 4.0 < accounting.epsilon(1.2, 0.05, t + 1, 1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: accounting.epsilon(-1.0, 0.1, 10, 1e-5), "noise_multiplier"),
        (lambda: accounting.epsilon(1.0, 0.0, 10, 1e-5), "sample_rate"),
        (lambda: accounting.epsilon(1.0, 1.5, 10, 1e-5), "sample_rate"),
        (lambda: accounting.epsilon(1.0, 0.1, 10, 0.0), "delta"),
        (lambda: accounting.epsilon(1.0, 0.1, 10, 1.0), "delta"),
        (lambda: accounting.noise_multiplier(0.1, 1e-5, 0.04, 2000), r"unreachable in 2000 steps"),
        (lambda: mechanisms.clip(torch.ones(2, 3), 0.0), "max_grad_norm"),
        (lambda: mechanisms.clip(torch.ones(2, 3), -1.0), "max_grad_norm"),
    ],
)
def test_bad_input_to_the_privacy_functions_is_one_line(call, match):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert "\n" not in str(e.value) and e.value.exit_code == 2


# -- the mechanism -----------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 5), st.integers(1, 7), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1)
)
def test_clipped_per_sample_norms_are_at_most_c(m, b, d, c, seed):
    g = torch.randn(m, b, d, generator=torch.Generator().manual_seed(seed)) * torch.logspace(-4, 4, b).view(1, b, 1)
    clipped = mechanisms.clip(g, c)
    norms = torch.linalg.vector_norm(clipped, dim=-1)
    assert bool((norms <= c * (1 + 1e-6)).all())
    small = torch.linalg.vector_norm(g, dim=-1) + mechanisms.CLIP_EPS <= c  # those inside the ball stay put
    assert torch.equal(clipped[small], g[small])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_no_noise_and_no_clipping_is_the_plain_mean(m, b, d, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, b, d, generator=gen) * 100
    mask = torch.rand(m, b, generator=gen) < 0.7
    gens = rng.generators(0, range(m), "dp_noise")
    out = mechanisms.privatize(g, None, max_grad_norm=math.inf, noise_std=0.0, generators=gens, normalizer=float(b))
    torch.testing.assert_close(out, g.mean(1), rtol=1e-6, atol=1e-4)
    out = mechanisms.privatize(g, mask, max_grad_norm=math.inf, noise_std=0.0, generators=gens, normalizer=3.0)
    torch.testing.assert_close(out, (g * mask.unsqueeze(-1)).sum(1) / 3.0, rtol=1e-6, atol=1e-4)


def test_noise_has_mean_zero_and_variance_sigma_c_squared():
    """200 000 draws per worker: mean within 5 standard errors of 0, variance within 2% of (σC)²,
    each worker's row from its own stream."""
    sigma, c, m, d = 1.3, 0.7, 3, 200_000
    gens = rng.generators(5, range(m), "dp_noise")
    out = mechanisms.privatize(
        torch.zeros(m, 1, d), None, max_grad_norm=c, noise_std=sigma * c, generators=gens, normalizer=1.0
    ).double()
    std = sigma * c
    assert bool((out.mean(1).abs() < 5 * std / math.sqrt(d)).all())
    assert bool(((out.var(1) / std**2 - 1).abs() < 0.02).all())
    again = mechanisms.gaussian_noise(rng.generators(5, [1], "dp_noise"), (1, d), std)
    torch.testing.assert_close(again[0], out[1].float())


def test_poisson_batches_have_mean_qn_and_uniform_batches_exactly_b():
    shards = [torch.arange(0, 300), torch.arange(300, 500)]
    gens = rng.generators(1, range(2), "dp_sampling")
    sizes = []
    for _ in range(400):
        idx, mask = mechanisms.poisson_sample(shards, [0.1, 0.1], gens)
        sizes.append(mask.sum(1).double())
        for i in range(2):
            assert bool(torch.isin(idx[i], shards[i]).all())
    mean = torch.stack(sizes).mean(0)
    assert abs(float(mean[0]) - 30) < 1.5 and abs(float(mean[1]) - 20) < 1.2
    idx, mask = mechanisms.uniform_sample(shards, [16, 16], gens)
    assert bool(mask.all()) and idx.shape == (2, 16)
    assert all(len(idx[i].unique()) == 16 and bool(torch.isin(idx[i], shards[i]).all()) for i in range(2))


# -- the algorithm -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task():
    return make_task("least_squares", n_workers=4, samples_per_worker=64, batch_size=8, dim=10, seed=0)


class ZeroOracle:
    """Per-sample gradients all zero: what moves x is the noise alone."""

    def __init__(self, sizes, d):
        start = 0
        self.shards = []
        for s in sizes:
            self.shards.append(torch.arange(start, start + s))
            start += s
        self.d = d

    def __call__(self, x, rows=None, *, indices=None, per_sample=False, mask=None, count=True):
        assert per_sample and indices is not None
        return torch.zeros(x.shape[0], indices.shape[1], self.d)


@pytest.mark.parametrize("mode", ["local", "central"])
def test_the_mean_update_carries_noise_sigma_c_once_in_central_mode_and_per_worker_in_local_mode(mode):
    n, d, b, sigma, c, lr = 8, 50_000, 10, 2.0, 0.5, 1.0
    algo = DPSGDPrivate(lr=lr, noise_multiplier=sigma, max_grad_norm=c, sampling="uniform", batch_size=b,
                        mode=mode, client_sizes=(100,) * n, seed=3)
    comm = SimulatedCommunicator(n)
    state = algo.init(torch.zeros(n, d), comm)
    state = algo.step(state, ZeroOracle([100] * n, d), comm)
    step = state["x"][0].double()  # -lr · mean_i (Z_i / b)
    want = lr * sigma * c / (n * b) if mode == "central" else lr * sigma * c / (b * math.sqrt(n))
    assert abs(float(step.std()) / want - 1) < 0.02


def _same_batches_reference(task, steps, b, seed, algo=None):
    """AllReduce-SGD (or `algo`, bound like the engine binds it) fed the batches DP-SGD's
    uniform sampler draws (the same streams)."""
    workers = Workers(task, seed=seed)
    gens = rng.generators(seed, range(task.n), "dp_sampling")
    algo = AllReduceSGD(lr=0.1, momentum=0.5) if algo is None else distsgd.algorithms.bind(algo, task.n, seed, workers.flat.shapes)
    comm = SimulatedCommunicator(task.n)
    state = algo.init(workers.x0(), comm)
    for _ in range(steps):
        idx, _ = mechanisms.uniform_sample(workers.shards, [b] * task.n, gens)
        state = algo.step(state, lambda x, idx=idx: workers.gradients(x, indices=idx)[0], comm)
    return state["x"]


def test_no_noise_and_no_clipping_equals_allreduce_sgd(task):
    dp = DPSGDPrivate(lr=0.1, momentum=0.5, noise_multiplier=0.0, max_grad_norm=None, sampling="uniform", batch_size=8)
    res = distsgd.train(task, dp, steps=6, eval_every=3, seed=2)
    ref = _same_batches_reference(task, 6, 8, seed=2)
    torch.testing.assert_close(res.state["x"], ref, rtol=0, atol=1e-6)
    assert res.metrics[-1]["epsilon"] == math.inf


# the compressed synchronous methods dp_sgd also privatizes, with the plain method they equal
# without noise or clipping: (inner spec, dp_sgd's shared options, the reference algorithm)
NEW_INNER = {
    "ef21": ({"name": "ef21", "compressor": "topk:0.3"}, {}, {"name": "ef21", "compressor": "topk:0.3"}),
    "ef21_w": (
        {"name": "ef21", "compressor": "topk:0.5", "weights": [1.0, 2.0, 3.0, 4.0]}, {},
        {"name": "ef21", "compressor": "topk:0.5", "weights": [1.0, 2.0, 3.0, 4.0]},
    ),
    "powersgd": (
        {"name": "powersgd", "rank": 2}, {"momentum": 0.5, "weight_decay": 1e-3},
        {"name": "powersgd", "rank": 2, "momentum": 0.5, "weight_decay": 1e-3},
    ),
    "powersgd_nesterov": (
        {"name": "powersgd", "rank": 1, "start_iter": 2}, {"momentum": 0.9, "nesterov": True},
        {"name": "powersgd", "rank": 1, "start_iter": 2, "momentum": 0.9, "nesterov": True},
    ),
    "signum": ({"name": "signum", "beta": 0.5}, {"weight_decay": 1e-3}, {"name": "signum", "beta": 0.5, "weight_decay": 1e-3}),
    "signum_mean": ({"name": "signum_mv", "beta": 0.0, "aggregate": "mean"}, {}, {"name": "signum_mv", "beta": 0.0, "aggregate": "mean"}),
}


@pytest.fixture(scope="module")
def mlp_task():
    """A task with weight matrices PowerSGD compresses (16 × 10, 1 × 16 is sent dense)."""
    return make_task("least_squares", n_workers=4, samples_per_worker=64, batch_size=8, dim=10, model="mlp", hidden=(16,), seed=0)


@pytest.mark.parametrize("key", list(NEW_INNER))
def test_no_noise_and_no_clipping_equals_the_plain_inner_method(mlp_task, key):
    inner, shared, plain = NEW_INNER[key]
    dp = DPSGDPrivate(lr=0.05, noise_multiplier=0.0, max_grad_norm=None, sampling="uniform", batch_size=8, inner=inner, **shared)
    res = distsgd.train(mlp_task, dp, steps=5, eval_every=5, seed=2)
    ref = _same_batches_reference(mlp_task, 5, 8, seed=2, algo=ALGORITHMS.create({**plain, "lr": 0.05}))
    torch.testing.assert_close(res.state["x"], ref, rtol=0, atol=1e-6)
    assert not torch.equal(res.state["x"], _same_batches_reference(mlp_task, 0, 8, seed=2))  # it moved
    assert res.metrics[-1]["epsilon"] == math.inf


@pytest.mark.parametrize("inner", [{"name": "ef21", "compressor": "topk:0.2"}, {"name": "powersgd", "rank": 1}, "signum"])
def test_dp_sgd_privatizes_ef21_powersgd_and_signum(mlp_task, inner):
    spec = {"name": "dp_sgd", "lr": 0.02, "noise_multiplier": 1.0, "batch_size": 8, "inner": inner}
    res = distsgd.train(mlp_task, ALGORITHMS.create(spec), steps=6, eval_every=3, seed=0)
    assert all(math.isfinite(r["test_loss"]) for r in res.metrics)
    assert abs(res.metrics[-1]["epsilon"] - accounting.epsilon(1.0, 8 / 64, 6, 1e-5)) < 1e-9
    assert DPSGDPrivate.privacy_steps(res.state) == 6  # one privatized gradient a step


@pytest.mark.parametrize("inner", [{"name": "ef21", "compressor": "topk:0.2"}, {"name": "powersgd", "rank": 1}, {"name": "signum", "beta": 0.9}])
def test_resume_with_a_compressed_inner_method_is_bit_exact(tmp_path, mlp_task, inner):
    def algo():
        return DPSGDPrivate(lr=0.02, noise_multiplier=0.8, max_grad_norm=0.5, sample_rate=0.1, inner=inner)

    full = distsgd.train(mlp_task, algo(), steps=8, eval_every=4, seed=1)
    d = tmp_path / "run"
    distsgd.train(mlp_task, algo(), steps=8, eval_every=4, seed=1, run_dir=d, checkpoint_every=4, stop_after=4)
    resumed = distsgd.train(mlp_task, algo(), steps=8, eval_every=4, seed=1, run_dir=d, checkpoint_every=4, resume=True)
    assert torch.equal(full.state["x"], resumed.state["x"])
    assert full.state["dp"]["accountants"] == resumed.state["dp"]["accountants"]


def test_every_metrics_row_reports_the_librarys_epsilon(task):
    dp = DPSGDPrivate(lr=0.1, noise_multiplier=1.1, max_grad_norm=1.0, batch_size=8)
    res = distsgd.train(task, dp, steps=12, eval_every=4, seed=0)
    q = 8 / 64
    for row in res.metrics:
        lib = RDPAccountant()
        lib.history = [(1.1, q, row["step"])]
        assert abs(row["epsilon"] - lib.get_epsilon(1e-5)) < 1e-6 and row["delta"] == 1e-5


def test_target_epsilon_calibrates_sigma_before_training(task):
    dp = DPSGDPrivate(lr=0.1, target_epsilon=2.0, steps=40, batch_size=8, accountant="prv")
    res = distsgd.train(task, dp, steps=40, eval_every=20)
    sigma = res.metrics[-1]["noise_multiplier"]
    assert sigma == accounting.noise_multiplier(2.0, 1e-5, 8 / 64, 40, "prv")
    assert res.metrics[-1]["epsilon"] <= 2.0


def test_the_runs_steps_set_by_the_engine_are_the_planned_steps_when_none_are_given():
    dp = DPSGDPrivate(lr=0.1, target_epsilon=2.0, batch_size=8)
    bound = distsgd.algorithms.bind(dp, 4, 0, data={"client_sizes": (64,) * 4, "run_steps": 30})
    assert bound.noise_multiplier == accounting.noise_multiplier(2.0, 1e-5, 8 / 64, 30)
    explicit = distsgd.algorithms.bind(dataclasses.replace(dp, epochs=2.0), 4, 0, data={"client_sizes": (64,) * 4, "run_steps": 30})
    assert explicit.noise_multiplier == accounting.noise_multiplier(2.0, 1e-5, 8 / 64, 16)  # int(2 / (8/64))


def test_the_budget_runs_out_at_the_last_step_within_target_epsilon(task):
    dp = DPSGDPrivate(lr=0.1, noise_multiplier=1.0, target_epsilon=3.0, batch_size=8)
    limit = accounting.max_steps(1.0, 8 / 64, 1e-5, 3.0)
    assert 1 < limit < 60
    res = distsgd.train(task, dp, steps=limit, eval_every=limit)
    bound = dataclasses.replace(dp, client_sizes=(64,) * 4, seed=0)
    assert bound.budget_exhausted(res.state) and not bound.budget_exhausted({"dp": {**res.state["dp"], "max_steps": limit + 1}})
    assert res.metrics[-1]["epsilon"] <= 3.0
    more = distsgd.train(task, dp, steps=limit + 1, eval_every=limit + 1)  # one step more: never taken
    assert more.summary["stopped"] == "privacy budget exhausted" and more.summary["steps"] == limit
    assert torch.equal(more.state["x"], res.state["x"])


def test_resume_continues_noise_sampling_and_accountant_bit_exactly(tmp_path, task):
    def algo():
        return DPSGDPrivate(lr=0.1, noise_multiplier=0.8, max_grad_norm=0.5, sample_rate=0.1, momentum=0.9)

    full = distsgd.train(task, algo(), steps=20, eval_every=10, seed=1)
    d = tmp_path / "run"
    distsgd.train(task, algo(), steps=20, eval_every=10, seed=1, run_dir=d, checkpoint_every=10, stop_after=10)
    resumed = distsgd.train(task, algo(), steps=20, eval_every=10, seed=1, run_dir=d, checkpoint_every=10, resume=True)
    assert torch.equal(full.state["x"], resumed.state["x"])
    assert full.metrics[-1]["epsilon"] == resumed.metrics[-1]["epsilon"]
    assert full.state["dp"]["accountants"] == resumed.state["dp"]["accountants"]


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "local_sgd", "local_steps": 3},
        {"name": "local_sgd", "local_steps": 2, "compressor": {"name": "randk", "ratio": 0.5, "scaled": False}},
        {"name": "compressed_sgd", "compressor": "qsgd:7"},
        {"name": "compressed_sgd", "compressor": "scaled_sign"},
    ],
)
def test_dp_sgd_privatizes_local_and_compressed_sgd(task, inner):
    spec = {"name": "dp_sgd", "lr": 0.05, "noise_multiplier": 1.0, "batch_size": 8, "inner": inner}
    res = distsgd.train(task, ALGORITHMS.create(spec), steps=6, eval_every=6, seed=0)
    assert math.isfinite(res.metrics[-1]["test_loss"])
    assert abs(res.metrics[-1]["epsilon"] - accounting.epsilon(1.0, 8 / 64, 6, 1e-5)) < 1e-9


def test_central_mode_reports_the_per_message_epsilon_of_sigma_over_root_n(task):
    dp = DPSGDPrivate(lr=0.1, noise_multiplier=2.0, batch_size=8, mode="central")
    row = distsgd.train(task, dp, steps=5, eval_every=5).metrics[-1]
    assert abs(row["epsilon"] - accounting.epsilon(2.0, 8 / 64, 5, 1e-5)) < 1e-9
    assert abs(row["epsilon_per_message"] - accounting.epsilon(1.0, 8 / 64, 5, 1e-5)) < 1e-9  # σ/√4


def test_batchnorm_is_refused_with_the_fix(task):
    bn = dataclasses.replace(task, model=nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)))
    with pytest.raises(UserError, match="GroupNorm") as e:
        distsgd.train(bn, DPSGDPrivate(lr=0.1, noise_multiplier=1.0, batch_size=8), steps=2)
    assert "\n" not in str(e.value) and "'1' (BatchNorm1d)" in str(e.value)


def test_a_user_model_with_groupnorm_trains(task):
    gn = dataclasses.replace(task, model=nn.Sequential(nn.Linear(10, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 1)))
    res = distsgd.train(gn, DPSGDPrivate(lr=0.1, noise_multiplier=1.0, batch_size=8), steps=4, eval_every=4)
    assert math.isfinite(res.metrics[-1]["test_loss"])


BAD = [
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"max_grad_norm": -2.0}, "max_grad_norm"),
    ({"delta": 1.0}, "delta"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.5}, "delta"),
    ({"sample_rate": 0.0}, "sample_rate"),
    ({"sample_rate": 1.5}, "sample_rate"),
    ({"max_grad_norm": None}, "no clipping"),
    ({"sampling": "uniform", "accountant": "prv"}, "prv"),
    ({"mode": "central", "inner": "local_sgd"}, "secure aggregation"),
    ({"inner": "dpsgd"}, "inner must be one of"),
    ({"inner": "fedavg"}, "inner must be one of"),
    ({"inner": {"name": "allreduce_sgd", "lr": 0.3}}, "set lr on dp_sgd"),
    ({"inner": "signum", "momentum": 0.9}, "has no momentum: Signum's momentum is its beta"),
    ({"inner": "ef21", "momentum": 0.9}, "inner ef21 has no momentum"),
    ({"inner": "ef21", "weight_decay": 0.1}, "inner ef21 has no weight_decay"),
    ({"inner": "compressed_sgd", "nesterov": True, "momentum": 0.9}, "inner compressed_sgd has no nesterov"),
    ({"inner": {"name": "powersgd", "momentum": 0.9}}, "set momentum on dp_sgd"),
    ({"mode": "central", "inner": "powersgd"}, "secure aggregation"),
    ({"mode": "central", "inner": "signum"}, "secure aggregation"),
]


@pytest.mark.parametrize("options, match", BAD)
def test_bad_options_are_one_line_exit_2(options, match):
    with pytest.raises(UserError, match=match) as e:
        ALGORITHMS.create({"name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "batch_size": 8, **options})
    assert "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"noise_multiplier": 0.5, "target_epsilon": 1.0, "steps": 50}, r"σ = \d.* would be needed"),
        ({"noise_multiplier": None, "target_epsilon": 0.05, "steps": 50}, "unreachable in 50 steps"),
        ({"noise_multiplier": None}, "set noise_multiplier σ or target_epsilon"),
        ({"batch_size": 100}, "outside"),
        ({"sampling": "uniform", "batch_size": 100}, "does not fit"),
    ],
)
def test_bad_runs_are_refused_before_training_in_one_line(task, options, match):
    algo = ALGORITHMS.create({"name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "batch_size": 8, **options})
    with pytest.raises(UserError, match=match) as e:
        distsgd.train(task, algo, steps=50)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_calibrating_without_planned_steps_is_refused():
    algo = ALGORITHMS.create({"name": "dp_sgd", "lr": 0.1, "target_epsilon": 1.0, "batch_size": 8})
    with pytest.raises(UserError, match="needs the planned steps"):
        distsgd.algorithms.bind(algo, 4, 0, data={"client_sizes": (64,) * 4})
    bound = distsgd.algorithms.bind(algo, 4, 0, data={"client_sizes": (64,) * 4, "run_steps": 50})  # distsgd.train's case
    assert bound.noise_multiplier == accounting.noise_multiplier(1.0, 1e-5, 8 / 64, 50)


# -- simulation == torch.distributed -----------------------------------------------------------

DIST_SPECS = {
    "poisson_local": {"noise_multiplier": 1.0, "max_grad_norm": 0.5, "sample_rate": 0.15, "momentum": 0.9},
    "uniform_central": {"noise_multiplier": 1.0, "sampling": "uniform", "batch_size": 8, "mode": "central"},
}


def _dist_task():
    return make_task("least_squares", n_workers=4, samples_per_worker=64, batch_size=8, dim=10, seed=0)


def _train_dist(rank, world, rdzv, out_path):
    from distsgd.comm.torchdist import TorchDistCommunicator

    _init(rank, world, rdzv)
    try:
        results = {}
        for key, spec in DIST_SPECS.items():
            comm = TorchDistCommunicator(4)
            res = distsgd.train(_dist_task(), DPSGDPrivate(lr=0.1, **spec), steps=8, eval_every=4, comm=comm, seed=3)
            results[key] = {"x": comm.all_gather(res.state["x"]), "metrics": res.metrics}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        _leave()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torch_distributed_draws_the_simulated_noise_and_batches(tmp_path):
    out = tmp_path / "dist.pt"
    mp.spawn(_train_dist, args=(2, rendezvous(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    for key, spec in DIST_SPECS.items():
        ref = distsgd.train(_dist_task(), DPSGDPrivate(lr=0.1, **spec), steps=8, eval_every=4, seed=3)
        assert float((got[key]["x"] - ref.state["x"]).abs().max()) < 1e-5, key
        assert [r["epsilon"] for r in got[key]["metrics"]] == [r["epsilon"] for r in ref.metrics]


def test_the_run_stops_cleanly_when_the_budget_is_spent(tmp_path):
    """σ given, target ε small: the runner stops before the step that would exceed ε, with a
    last metrics row, `finished` false and the reason in the summary."""
    from dist_helpers import make_test_task

    task = make_test_task()
    alg = distsgd.algorithms.ALGORITHMS.create(
        {"name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "target_epsilon": 3.0, "batch_size": 8}
    )
    res = distsgd.train(task, alg, steps=5000, eval_every=50, seed=0, run_dir=tmp_path / "run")
    s = res.summary
    assert s["stopped"] == "privacy budget exhausted" and not s["finished"] and 0 < s["steps"] < 5000
    last = res.metrics[-1]
    assert last["step"] == s["steps"] and last["epsilon"] <= 3.0
    q = max(8 / n for n in (len(sh) for sh in task.shards))
    assert accounting.epsilon(1.0, q, s["steps"] + 1, 1e-5) > 3.0  # one more step would have spent too much
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == s["steps"]


def test_epochs_count_the_poisson_batches_without_their_padding():
    from dist_helpers import make_test_task

    task = make_test_task()
    q = 0.1
    alg = ALGORITHMS.create({"name": "dp_sgd", "lr": 0.1, "noise_multiplier": 1.0, "sample_rate": q})
    res = distsgd.train(task, alg, steps=40, eval_every=40, seed=0)
    # E[epochs] = steps·q; the Poisson batches of 8 workers over 40 steps vary by a few percent
    assert res.metrics[-1]["epoch"] == pytest.approx(40 * q, rel=0.1)
