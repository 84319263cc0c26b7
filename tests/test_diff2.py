"""DIFF2-GD: the paper's update by hand, telescoping differences, accounting by the library,
DP-GD as its T = 1 case, resume, bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

import distsgd
import distsgd.algorithms.diff2 as diff2_module
from distsgd.algorithms import ALGORITHMS
from distsgd.algorithms.diff2 import DIFF2, calibrate, paper_sigmas, plan_rounds
from distsgd.algorithms.dp_sgd import DPSGDPrivate
from distsgd.comm.simulated import SimulatedCommunicator
from distsgd.errors import UserError
from distsgd.privacy import accounting
from distsgd.tasks.task import make_task
from distsgd.workers import Workers


@pytest.fixture(scope="module")
def task():
    return make_task("least_squares", n_workers=4, samples_per_worker=24, batch_size=8, dim=6, model="mlp", hidden=(5,), seed=0)


class QuadraticOracle:
    """ℓ(x, z_j) = ½‖x − a_j‖²: per-sample gradients x − a_j (one worker per row of `a`)."""

    def __init__(self, a: torch.Tensor):
        self.a = a  # [m, N, d]
        self.shards = [torch.arange(i * a.shape[1], (i + 1) * a.shape[1]) for i in range(a.shape[0])]

    def __call__(self, x, rows=None, *, indices=None, per_sample=False, mask=None, count=True):
        assert per_sample and rows is None
        local = indices - indices[:, :1]  # shard i starts at i·N
        return x.unsqueeze(1) - torch.gather(self.a, 1, local.unsqueeze(-1).expand(-1, -1, self.a.shape[2]))


def test_the_update_is_the_papers_on_a_hand_checkable_case():
    # one worker, two records a₁ = (3, 4), a₂ = (0, 1); x₀ = 0, η = 1, C1 = 2, C2 = 0.5, σ = 0
    a = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    algo = DIFF2(lr=1.0, restart_period=3, max_grad_norm=2.0, diff_clip=0.5, noise_multiplier=0.0,
                 diff_noise_multiplier=0.0, client_sizes=(2,), seed=0)
    comm = SimulatedCommunicator(1)
    state = algo.init(torch.zeros(1, 2), comm)
    oracle = QuadraticOracle(a)
    # r = 1, restart: v₁ = ½[clip₂(−(3, 4)) + clip₂(−(0, 1))] = ½[(−1.2, −1.6) + (0, −1)]
    state = algo.step(state, oracle, comm)
    torch.testing.assert_close(state["v"][0], torch.tensor([-0.6, -1.3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(state["x"][0], torch.tensor([0.6, 1.3]), atol=1e-5, rtol=0)
    # r = 2, difference: every record's is x₁ − x₀ (norm Δ), clipped at C_{2,2} = 0.5·Δ: half of it
    state = algo.step(state, oracle, comm)
    torch.testing.assert_close(state["v"][0], torch.tensor([-0.6 + 0.3, -1.3 + 0.65]), atol=1e-5, rtol=0)
    torch.testing.assert_close(state["x"][0], torch.tensor([0.9, 1.95]), atol=1e-5, rtol=0)
    # r = 3, difference x₂ − x₁ = (0.3, 0.65): half again; r = 4 restarts at x₃
    state = algo.step(state, oracle, comm)
    torch.testing.assert_close(state["v"][0], torch.tensor([-0.15, -0.325]), atol=1e-5, rtol=0)
    state = algo.step(state, oracle, comm)
    x3 = torch.tensor([1.05, 2.275])
    want = ((x3 - a[0, 0]) * min(1, 2 / float((x3 - a[0, 0]).norm())) + (x3 - a[0, 1]) * min(1, 2 / float((x3 - a[0, 1]).norm()))) / 2
    torch.testing.assert_close(state["v"][0], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["local", "central"])
def test_the_difference_noise_is_sigma2_c2_times_the_last_step(mode):
    # zero gradients: what moves x is the noise; restart std σ1·C1/(N√n), then σ2·C2·‖x₁ − x₀‖/(N√n)
    # (local: n draws of σC averaged); central: the n shares σC/√n sum to one σC, so /(N·n)
    n, d, size, s1, s2, c1, c2 = 8, 40_000, 10, 2.0, 3.0, 0.5, 4.0
    algo = DIFF2(lr=1.0, restart_period=5, max_grad_norm=c1, diff_clip=c2, noise_multiplier=s1,
                 diff_noise_multiplier=s2, client_sizes=(size,) * n, seed=1, mode=mode)
    per = math.sqrt(n) if mode == "local" else n
    comm = SimulatedCommunicator(n)
    state = algo.init(torch.zeros(n, d), comm)
    oracle = QuadraticOracle(torch.zeros(n, size, d))
    oracle_zero = lambda x, **kw: torch.zeros(x.shape[0], kw["indices"].shape[1], d)  # noqa: E731
    oracle_zero.shards = oracle.shards
    state = algo.step(state, oracle_zero, comm)
    v1 = state["v"][0].double()
    assert abs(float(v1.std()) / (s1 * c1 / (size * per)) - 1) < 0.02
    step = float(torch.linalg.vector_norm(state["x"][0] - state["x_prev"][0]))
    state = algo.step(state, oracle_zero, comm)
    noise = state["v"][0].double() - v1
    assert abs(float(noise.std()) / (s2 * c2 * step / (size * per)) - 1) < 0.02


def _full_gradient(workers, x, shards):
    """∇f(x) = (1/P) Σ_p (1/n_p) Σ_{z ∈ shard p} ∇ℓ(x, z)."""
    rows = [workers.gradients(x[p : p + 1], torch.tensor([p]), indices=s.unsqueeze(0))[0] for p, s in enumerate(shards)]
    return torch.cat(rows).double().mean(0)


class EngineOracle:
    def __init__(self, workers):
        self.workers, self.shards = workers, workers.shards

    def __call__(self, x, rows=None, **kw):
        return self.workers.gradients(x, rows, **kw)[0]


@pytest.mark.parametrize("chunk", [None, 7])
def test_without_noise_or_clipping_the_differences_telescope_to_the_full_gradient(task, chunk):
    shards = [s[: 24 - 3 * i] for i, s in enumerate(task.shards)]  # unequal shards: padded and masked
    t = dataclasses.replace(task, shards=shards)
    workers = Workers(t, seed=0)
    algo = DIFF2(lr=0.2, restart_period=1000, max_grad_norm=None, diff_clip=None, noise_multiplier=0.0,
                 diff_noise_multiplier=0.0, chunk=chunk, client_sizes=tuple(len(s) for s in shards), seed=0)
    comm = SimulatedCommunicator(t.n)
    state = algo.init(workers.x0(), comm)
    for _ in range(6):
        x = state["x"].clone()
        state = algo.step(state, EngineOracle(workers), comm)
        torch.testing.assert_close(state["v"][0].double(), _full_gradient(workers, x, shards), atol=2e-5, rtol=1e-4)
        assert not torch.equal(state["x"], x)


def test_the_accountant_composes_restarts_and_differences_with_opacus(task):
    algo = DIFF2(lr=0.05, restart_period=3, noise_multiplier=2.0, diff_noise_multiplier=5.0)
    res = distsgd.train(task, algo, steps=7, eval_every=1, seed=0)
    for row in res.metrics:
        k = row["step"]
        lib = RDPAccountant()
        for r in range(k):  # r = 0, 3, 6: restarts (σ1, q = 1); the others differences (σ2, q = 1)
            lib.history.append((2.0 if r % 3 == 0 else 5.0, 1.0, 1))
        assert abs(row["epsilon"] - lib.get_epsilon(1e-5)) < 1e-9


def test_target_epsilon_calibrates_sigma1_and_sigma2_by_the_papers_formula(task):
    res = distsgd.train(task, DIFF2(lr=0.05, restart_period=4, target_epsilon=3.0), steps=20, eval_every=20, seed=0)
    row = res.metrics[-1]
    k1, k2 = plan_rounds(20, 4)
    assert (k1, k2) == (5, 15)
    alpha = 1 + math.ceil(2 * math.log(1e5) / 3.0)
    assert row["noise_multiplier"] == pytest.approx(math.sqrt(4 * 1.25 * alpha * 20 / (4 * 3.0)), rel=1e-12)
    assert row["diff_noise_multiplier"] == pytest.approx(math.sqrt(4 * 1.25 * alpha * 20 / (0.25 * 3.0)), rel=1e-12)
    assert row["epsilon"] <= 3.0  # the library's accounting is tighter than the paper's one-order bound
    assert calibrate(3.0, 1e-5, 20, 4) == (row["noise_multiplier"], row["diff_noise_multiplier"])


def test_the_accountant_calibration_keeps_the_papers_ratio_and_spends_the_budget(task):
    algo = DIFF2(lr=0.05, restart_period=4, target_epsilon=3.0, calibration="accountant")
    row = distsgd.train(task, algo, steps=20, eval_every=20, seed=0).metrics[-1]
    # σ2/σ1 = √(R/((u − 1)·K1)) = √(20/(0.25·5)) = 4: the restarts' 1/u of the Rényi budget
    assert row["diff_noise_multiplier"] / row["noise_multiplier"] == pytest.approx(4.0)
    assert 2.99 < row["epsilon"] <= 3.0
    s1, s2 = calibrate(3.0, 1e-5, 20, 4, method="accountant")
    assert (s1, s2) == (row["noise_multiplier"], row["diff_noise_multiplier"])
    assert s1 < paper_sigmas(3.0, 1e-5, 20, 4)[0]


@pytest.mark.parametrize("eps, delta, rounds, period", [(3.0, 1e-5, 20, 4), (0.5, 1e-6, 200, 10), (8.0, 1e-5, 30, 7), (2.0, 1e-5, 12, 1)])
def test_the_papers_sigmas_meet_its_renyi_bound(eps, delta, rounds, period):
    """Sensitivity 2C (replace one record), std σC: RDP 2α/σ² a round at the paper's order α;
    the restarts and at most R differences compose to ≤ ε/2, and ε/2 + ln(1/δ)/(α − 1) ≤ ε."""
    s1, s2 = paper_sigmas(eps, delta, rounds, period)
    alpha = 1 + math.ceil(2 * math.log(1 / delta) / eps)
    k1, _ = plan_rounds(rounds, period)
    restarts = k1 * 2 * alpha / s1**2
    diffs = 0.0 if period == 1 else rounds * 2 * alpha / s2**2
    assert restarts == pytest.approx(eps / 2 if period == 1 else eps / (2 * 1.25))
    assert restarts + diffs + math.log(1 / delta) / (alpha - 1) <= eps * (1 + 1e-12)


def test_the_noise_of_each_round_is_the_papers_for_given_epsilon_delta_rounds_period_n_and_c():
    """The authors' calibration (noise on the average of the P workers' means, zero gradients):
    restart std C1·√(4u·α·R/(T·n²·P²·ε)), difference std C2·‖x₁ − x₀‖·√(4u·α·R/((u − 1)·n²·P²·ε)),
    α = 1 + ⌈2 ln(1/δ)/ε⌉, u = 1.25 (central mode: the noise of the sum, once)."""
    eps, delta, rounds, period, n, p, c1, c2, d = 2.0, 1e-5, 20, 5, 12, 4, 0.5, 4.0, 40_000
    alpha = 1 + math.ceil(2 * math.log(1 / delta) / eps)
    restart_std = c1 * math.sqrt(4 * 1.25 * alpha * rounds / (period * n**2 * p**2 * eps))
    diff_std_per_step = c2 * math.sqrt(4 * 1.25 * alpha * rounds / (0.25 * n**2 * p**2 * eps))
    algo = DIFF2(lr=1.0, restart_period=period, max_grad_norm=c1, diff_clip=c2, target_epsilon=eps, delta=delta,
                 steps=rounds, mode="central", client_sizes=(n,) * p, seed=4)
    algo = distsgd.algorithms.bind(algo, p, 4)
    comm = SimulatedCommunicator(p)
    state = algo.init(torch.zeros(p, d), comm)
    oracle = lambda x, **kw: torch.zeros(x.shape[0], kw["indices"].shape[1], d)  # noqa: E731
    oracle.shards = QuadraticOracle(torch.zeros(p, n, 1)).shards
    state = algo.step(state, oracle, comm)
    v1 = state["v"][0].double()
    assert abs(float(v1.std()) / restart_std - 1) < 0.02
    step = float(torch.linalg.vector_norm(state["x"][0] - state["x_prev"][0]))
    state = algo.step(state, oracle, comm)
    assert abs(float((state["v"][0].double() - v1).std()) / (diff_std_per_step * step) - 1) < 0.02


def test_restart_period_one_is_dp_gd_with_its_epsilon(task):
    diff2 = DIFF2(lr=0.1, restart_period=1, max_grad_norm=0.5, noise_multiplier=1.3, diff_noise_multiplier=1.3)
    dpgd = DPSGDPrivate(lr=0.1, max_grad_norm=0.5, noise_multiplier=1.3, sample_rate=1.0)
    a = distsgd.train(task, diff2, steps=5, eval_every=5, seed=3)
    b = distsgd.train(task, dpgd, steps=5, eval_every=5, seed=3)
    torch.testing.assert_close(a.state["x"], b.state["x"], atol=1e-6, rtol=0)
    assert a.metrics[-1]["epsilon"] == b.metrics[-1]["epsilon"] == accounting.epsilon(1.3, 1.0, 5, 1e-5)


def test_resume_is_bit_exact(tmp_path, task):
    def algo():
        return DIFF2(lr=0.05, restart_period=4, max_grad_norm=0.5, diff_clip=3.0, noise_multiplier=1.0, diff_noise_multiplier=2.0)

    full = distsgd.train(task, algo(), steps=14, eval_every=7, seed=1)
    d = tmp_path / "run"
    distsgd.train(task, algo(), steps=14, eval_every=7, seed=1, run_dir=d, checkpoint_every=7, stop_after=7)
    resumed = distsgd.train(task, algo(), steps=14, eval_every=7, seed=1, run_dir=d, checkpoint_every=7, resume=True)
    for k in ("x", "x_prev", "v", "noise_rng"):
        assert torch.equal(full.state[k], resumed.state[k])
    assert full.state["accountant"] == resumed.state["accountant"]
    assert full.metrics[-1]["epsilon"] == resumed.metrics[-1]["epsilon"]


def test_the_run_stops_when_the_budget_is_spent(task):
    algo = DIFF2(lr=0.05, restart_period=2, noise_multiplier=1.0, diff_noise_multiplier=1.5, target_epsilon=8.0)
    res = distsgd.train(task, algo, steps=500, eval_every=500, seed=0)
    assert res.summary["stopped"] == "privacy budget exhausted"
    done = res.summary["steps"]
    assert 1 < done < 500
    one_more = diff2_module.epsilon(1.0, 1.5, done + 1, 2, 1e-5)
    assert res.metrics[-1]["epsilon"] <= 8.0 < one_more


BAD = [
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
    ({"diff_noise_multiplier": -0.5}, "diff_noise_multiplier"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"diff_clip": 0.0}, "diff_clip"),
    ({"restart_period": 0}, "restart_period"),
    ({"restart_period": -3}, "restart_period"),
    ({"diff_noise_multiplier": None}, "set both"),
    ({"max_grad_norm": None}, "no clipping"),
    ({"accountant": "gdp"}, "accountant"),
    ({"calibration": "rdp"}, "calibration"),
]


@pytest.mark.parametrize("options, match", BAD)
def test_bad_options_are_one_line_exit_2(options, match):
    with pytest.raises(UserError, match=match) as e:
        ALGORITHMS.create({"name": "diff2", "lr": 0.1, "noise_multiplier": 1.0, "diff_noise_multiplier": 1.0, **options})
    assert "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"noise_multiplier": None, "diff_noise_multiplier": None}, "set noise_multiplier and diff_noise_multiplier"),
        ({"target_epsilon": 0.5, "steps": 30}, "spend ε"),
        ({"noise_multiplier": None, "diff_noise_multiplier": None, "target_epsilon": 1e-9, "calibration": "accountant"}, "unreachable"),
    ],
)
def test_bad_runs_are_refused_before_training_in_one_line(task, options, match):
    algo = ALGORITHMS.create({"name": "diff2", "lr": 0.1, "noise_multiplier": 1.0, "diff_noise_multiplier": 1.0, **options})
    with pytest.raises(UserError, match=match) as e:
        distsgd.train(task, algo, steps=30)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_epochs_count_each_record_once_per_round():
    """A round reads every record (the difference rounds at two points, counted once)."""
    from dist_helpers import make_test_task

    task = make_test_task()
    alg = distsgd.algorithms.ALGORITHMS.create(
        {"name": "diff2", "lr": 0.05, "restart_period": 4, "noise_multiplier": 1.0, "diff_noise_multiplier": 2.0}
    )
    res = distsgd.train(task, alg, steps=10, eval_every=10, seed=0)
    assert res.metrics[-1]["epoch"] == pytest.approx(10.0)
